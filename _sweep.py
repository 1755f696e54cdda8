import warnings, torch, symgrad, time, sys
from symgrad.errors import SymgradError
from symgrad.graph.optable import FACTOR, as_function, wrong_backward, representative_cases
warnings.simplefilter("ignore")
t0 = time.time()
for case in representative_cases("float64"):
    fn, inputs = as_function(case, torch.float64)
    kw = dict(wrt=list(case.wrt) or None, engine="elementwise", quiet=True)
    try:
        right = symgrad.check(fn, inputs, **kw)
    except SymgradError as err:
        print("REFUSED", repr(case.name), str(err)[:150].replace("\n", " "), flush=True)
        continue
    except Exception as err:
        print("ERROR", repr(case.name), type(err).__name__, str(err)[:200], flush=True); continue
    wrong = symgrad.check(wrong_backward(fn, FACTOR["float64"]), inputs, **kw)
    ok = right.passed and wrong.passed == bool(case.zero_grad)
    print("OK" if ok else "BAD", repr(case.name), right.passed, wrong.passed, flush=True)
print("time", time.time() - t0)
