"""pytest plugin (entry point ``pytest11``; or ``-p symgrad.pytest_plugin``).

Fixtures:

* ``symgrad_check(fn, inputs, symbolic=None, **check_kwargs)``: ``symgrad.testing.assert_gradients``
  with the HTML report of a failure written under ``--symgrad-report-dir`` (default: this session's
  temporary directory, which pytest-xdist makes per worker), named after the test.
* ``symgrad_report_dir``: that directory.

Options (each also an ini setting): ``--symgrad-strict`` (ini ``symgrad_strict = true``) makes an
``inaccurate`` derivative (right, but less accurate than the problem's conditioning allows; an
``InaccurateDerivative`` warning by default) fail the test; ``--symgrad-reference=auto|mpmath|float``
(ini ``symgrad_reference``) picks the exact reference.  Both are the defaults of ``symgrad_check``'s
``strict=`` and ``reference=``, which a call may still pass itself.  (pytest's own ``--strict`` is
about markers and configuration, hence the prefix.)

A failing test gets a "symgrad reports" section with the report's path, and the terminal summary
lists every report written.  The plugin keeps no state outside pytest's own objects (``config.stash``,
``item.user_properties``), so it works under pytest-xdist: workers send their reports' paths to the
controller with the test reports.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .compare.accuracy import REFERENCE_MODES
from .errors import InputError
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
    group.addoption("--symgrad-strict", action="store_true", default=None,
                    help="an 'inaccurate' derivative (right, but less accurate than the problem's conditioning "
                         "allows; a warning by default) fails the symgrad_check test")
    parser.addini("symgrad_strict", "default for --symgrad-strict", type="bool", default=False)
    group.addoption("--symgrad-reference", choices=REFERENCE_MODES, default=None,
                    help="symgrad_check's exact reference: auto (default; mpmath where the extended-precision "
                         "closed form is not accurate enough), mpmath (every entry), float (never mpmath)")
    parser.addini("symgrad_reference", "default for --symgrad-reference", default="auto")


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
    defaults = _check_defaults(request.config)

    def run(fn, inputs, symbolic=None, **check_kwargs):
        calls.append(None)
        check_kwargs = {**defaults, **check_kwargs}
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


def _check_defaults(config) -> dict:
    """``strict=`` and ``reference=`` from the command line, else the ini file."""
    strict = config.getoption("--symgrad-strict")
    strict = bool(config.getini("symgrad_strict")) if strict is None else strict
    reference = config.getoption("--symgrad-reference") or config.getini("symgrad_reference") or "auto"
    if reference not in REFERENCE_MODES:
        raise InputError(f"the ini setting symgrad_reference = {reference!r} is not one of {', '.join(REFERENCE_MODES)}; "
                         "fix it in the pytest configuration (auto is the default)")
    return {"strict": strict, "reference": reference}


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
