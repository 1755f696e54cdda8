"""pytest plugin (entry point ``pytest11``; or ``-p symgrad.pytest_plugin``).

Fixtures:

* ``symgrad_check(fn, inputs, symbolic=None, **check_kwargs)``: ``symgrad.testing.assert_gradients``
  with the HTML report of a failure written under ``--symgrad-report-dir`` (default: this session's
  temporary directory, which pytest-xdist makes per worker), named after the test.
* ``symgrad_report_dir``: that directory.

A failing test gets a "symgrad reports" section with the report's path, and the terminal summary
lists every report written.  The plugin keeps no state outside pytest's own objects (``config.stash``,
``item.user_properties``), so it works under pytest-xdist: workers send their reports' paths to the
controller with the test reports.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .testing import assert_gradients, dtypes, engines

__all__ = ["symgrad_check", "symgrad_report_dir", "dtypes", "engines"]

_PATHS = pytest.StashKey[list]()
_PROPERTY = "symgrad_report"


def pytest_addoption(parser):
    group = parser.getgroup("symgrad")
    group.addoption("--symgrad-report-dir", default=None, metavar="DIR",
                    help="where symgrad writes the HTML report of a failing gradient check "
                         "(default: the session's temporary directory)")
    parser.addini("symgrad_report_dir", "default for --symgrad-report-dir", default="")


def pytest_configure(config):
    config.stash[_PATHS] = []
    config.addinivalue_line("markers", "symgrad: a test that checks derivatives with symgrad")


@pytest.fixture(scope="session")
def symgrad_report_dir(request, tmp_path_factory) -> Path:
    """Where failing checks' HTML reports go (per xdist worker when pytest-xdist runs the tests)."""
    chosen = request.config.getoption("--symgrad-report-dir") or request.config.getini("symgrad_report_dir")
    if chosen:
        return Path(chosen)
    return tmp_path_factory.getbasetemp() / "symgrad-reports"


@pytest.fixture()
def symgrad_check(request, symgrad_report_dir):
    """Check derivatives and fail the test with an ``assert_close``-style message and an HTML report."""
    calls = []

    def run(fn, inputs, symbolic=None, **check_kwargs):
        calls.append(None)
        name = request.node.nodeid.rsplit("/", 1)[-1] + (f"-{len(calls)}" if len(calls) > 1 else "")
        try:
            return assert_gradients(fn, inputs, symbolic, report_dir=symgrad_report_dir, report_name=name,
                                    **check_kwargs)
        except AssertionError as err:
            for line in str(err).splitlines():
                if line.startswith("HTML report: "):
                    request.node.user_properties.append((_PROPERTY, line[len("HTML report: "):]))
            raise

    return run


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call" and rep.failed:
        paths = [v for k, v in item.user_properties if k == _PROPERTY]
        if paths:
            rep.sections.append(("symgrad reports", "\n".join(paths)))


def pytest_report_teststatus(report, config):
    # in the controller for xdist workers' reports too: user_properties travel with the test reports
    if report.when == "call":
        paths = [v for k, v in getattr(report, "user_properties", ()) if k == _PROPERTY]
        if paths:
            config.stash.setdefault(_PATHS, []).extend(p for p in paths if p not in config.stash[_PATHS])


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    paths = list(dict.fromkeys(config.stash.get(_PATHS, [])))
    if paths:
        terminalreporter.section("symgrad reports")
        for path in paths:
            terminalreporter.write_line(f"HTML report of a failing gradient check: {path}")
