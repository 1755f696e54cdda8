"""Accuracy of torch's and scipy's special-function kernels against mpmath (Note [Rounding of the
special functions] in symgrad/lower/special.py states what this prints).

For lgamma, digamma, polygamma n = 1, 2, 3 and erfinv, the largest error over the sample points in
units of the dtype's eps times ``|f(x)| + |x f'(x)|`` (the scale symgrad's rounding bound charges
them on), for torch float64, torch float32 and scipy float64; and atan2's relative error in ulps.

    python benchmarks/special_accuracy.py
"""

from __future__ import annotations

import mpmath as mp
import numpy as np
import scipy.special as sc
import torch

mp.mp.dps = 40


def _worst(name, xs, torch_fn, f, df, scipy_fn) -> list:
    row = [name]
    for dtype, eps in ((torch.float64, 2.0**-52), (torch.float32, 2.0**-23)):
        t = torch.tensor(xs, dtype=dtype)
        xv = t.double().numpy()  # the point torch evaluates at (rounded to float32 there)
        exact = np.array([float(f(mp.mpf(float(x)))) for x in xv])
        scale = np.abs(exact) + np.abs(xv * np.array([float(df(mp.mpf(float(x)))) for x in xv]))
        row.append(float(np.max(np.abs(torch_fn(t).double().numpy() - exact) / (eps * scale))))
    exact = np.array([float(f(mp.mpf(float(x)))) for x in xs])
    scale = np.abs(exact) + np.abs(xs * np.array([float(df(mp.mpf(float(x)))) for x in xs]))
    row.append(float(np.max(np.abs(scipy_fn(xs) - exact) / (2.0**-52 * scale))))
    return row


def main() -> None:
    rng = np.random.default_rng(0)
    gamma_x = np.concatenate([rng.uniform(0.05, 10, 1500), rng.uniform(0.5, 3, 1500), [1.0, 2.0, 1.4616321449683622]])
    unit_x = np.concatenate([rng.uniform(-0.999, 0.999, 2000), rng.uniform(-1e-3, 1e-3, 200)])
    rows = [_worst("lgamma", gamma_x, torch.lgamma, mp.loggamma, lambda x: mp.psi(0, x), sc.gammaln)]
    for n in (0, 1, 2, 3):
        rows.append(_worst(f"polygamma({n})", gamma_x, lambda t, n=n: torch.polygamma(n, t), lambda x, n=n: mp.psi(n, x),
                           lambda x, n=n: mp.psi(n + 1, x), lambda x, n=n: sc.polygamma(n, x)))
    rows.append(_worst("erfinv", unit_x, torch.erfinv, mp.erfinv, lambda x: mp.sqrt(mp.pi) / 2 * mp.exp(mp.erfinv(x) ** 2),
                       sc.erfinv))
    print(f"{'function':14s} {'torch f64':>10s} {'torch f32':>10s} {'scipy f64':>10s}   (eps * (|f| + |x f'|))")
    for name, *cols in rows:
        print(f"{name:14s} " + " ".join(f"{c:10.3g}" for c in cols))
    yx = rng.uniform(-3, 3, (2, 3000))
    for dtype, eps in ((torch.float64, 2.0**-52), (torch.float32, 2.0**-23)):
        t = torch.tensor(yx, dtype=dtype)
        yv = t.double().numpy()
        exact = np.array([float(mp.atan2(mp.mpf(float(a)), mp.mpf(float(b)))) for a, b in yv.T])
        err = np.abs(torch.atan2(t[0], t[1]).double().numpy() - exact) / (eps * np.abs(exact))
        print(f"atan2 {str(dtype)[6:]}: {err.max():.3g} eps relative")


if __name__ == "__main__":
    main()
