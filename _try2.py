import torch, sympy as sp, symgrad as sg, sys, warnings
warnings.simplefilter("ignore")
x = torch.rand(3, dtype=torch.float64) + 0.5
X = sp.Matrix(sp.symbols("x[0] x[1] x[2]"))
cases = {
 "loggamma": (lambda x: torch.lgamma(x).sum(), lambda X: sum(sp.loggamma(e) for e in X)),
 "atan2": (lambda x: torch.atan2(x, x.flip(0) - 0.9).sum(), None),
}
a = sp.MatrixSymbol("x", 3, 1)
for name, sym in {"loggamma": sum(sp.loggamma(a[i, 0]) for i in range(3)), "atan2": sum(sp.atan2(a[i, 0], a[2 - i, 0] - sp.Rational(9, 10)) for i in range(3)),
                  "polygamma": sum(sp.polygamma(1, a[i, 0]) for i in range(3)), "erfinv": sum(sp.erfinv(a[i, 0] - 1) for i in range(3))}.items():
    for fn in (None, "torch"):
        f = None
        if fn == "torch":
            f = {"loggamma": lambda x: torch.lgamma(x).sum(), "atan2": lambda x: torch.atan2(x, x.flip(0) - 0.9).sum(),
                 "polygamma": lambda x: torch.polygamma(1, x).sum(), "erfinv": lambda x: torch.erfinv(x - 1).sum()}[name]
        try:
            r = sg.check(f, {"x": x.reshape(3, 1)}, symbolic=sym, quiet=True)
            print(name, fn, r.passed, r.meta.get("engine"), [(rec.name, str(rec.verdict)) for rec in r.records])
        except Exception as e:
            print(name, fn, "ERR", type(e).__name__, str(e)[:300])
