"""Autodiff bugs that shipped in public libraries (the sources are in ``shipped_pairs.PAIRS``),
each rebuilt beside its fixed twin, under the mode each bug lives in (reverse with a random
cotangent, forward mode, double backward): the bug fails, the fix passes; a control pair of two
valid sides of a kink passes both.  Known gaps are strict xfails with their reason."""

import pytest
import torch

import symgrad as sg
from symgrad.graph import interpret

from shipped_pairs import KNOWN_DEFECTS, PAIRS, i0_series



@pytest.fixture
def i0_registered():
    """aten.i0 taught by its power series for the i0 pairs, forgotten after."""
    name = str(torch.ops.aten.i0.default)
    had = interpret._USER.get(name)
    sg.register(torch.ops.aten.i0.default, i0_series())
    yield
    if had is None:
        interpret._USER.pop(name, None)
    else:
        interpret._USER[name] = had


def _cases():
    for name, (url, build, kw, dtypes, control) in PAIRS.items():
        for dt in dtypes:
            marks = [pytest.mark.xfail(strict=True, reason=KNOWN_DEFECTS[name])] if name in KNOWN_DEFECTS else []
            yield pytest.param(name, build, kw, dt, control, marks=marks, id=f"{name}-{str(dt)[6:]}")


@pytest.mark.usefixtures("i0_registered")
@pytest.mark.parametrize("name,build,kw,dtype,control", list(_cases()))
def test_a_shipped_bug_fails_and_its_fix_passes(name, build, kw, dtype, control):
    bug, fix, inputs = build(dtype)
    verdicts = []
    for f in (bug, fix):
        def fn(*args, f=f, **named):  # the inputs positionally or by name, in their order
            return f(*args, *named.values())
        verdicts.append(sg.check(fn, inputs, quiet=True, **kw(dtype, inputs, fn)).passed)
    assert verdicts == ([True, True] if control else [False, True])
