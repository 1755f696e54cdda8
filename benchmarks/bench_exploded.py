"""The op graph's two back ends on the same small models: tensor (``check_graph``) beside exploded
(``symgrad.check(..., engine="elementwise")``), and the exploded cross-check of the tensor rules (``crosscheck_exploded``).

Rows: a 2-layer tanh MLP of 50 parameters (batch 8) and a small conv net of 204 parameters (two
3x3 convolutions, tanh and relu, a linear layer; batch 2 of 1x6x6), each with the loss passed as
``loss=`` (one gradient) and as an output, checked through 3 random cotangents by the tensor back
end and through its whole Jacobian by the exploded engine (its default for a tensor output).  ``cold s`` is the
first check of that row in this process (caches empty; the process start-up is paid by an untimed
warm-up check of another function), ``cold cpu s`` the CPU seconds of that check (the fair figure on a
shared machine), ``warm s`` the best of 3 repeats; ``peak MiB`` the process's peak resident memory
after the row; a check that raises (the memory guard's refusal) shows the error's name.  Run:
``PYTHONPATH=. python benchmarks/bench_exploded.py`` (a script's own folder comes first on the path).
"""

from __future__ import annotations

import resource
import time

import torch


def mlp():
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(5, 6), torch.nn.Tanh(), torch.nn.Linear(6, 2)).double()
    return m, {"x": torch.randn(8, 5, dtype=torch.float64)}


def conv():
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Tanh(), torch.nn.Conv2d(4, 2, 3), torch.nn.ReLU(),
                            torch.nn.Flatten(), torch.nn.Linear(8, 10)).double()
    return m, {"x": torch.randn(2, 1, 6, 6, dtype=torch.float64)}


def _timed(run) -> tuple:
    start, cpu = time.perf_counter(), time.process_time()
    try:
        report = run()
    except Exception as err:  # noqa: BLE001 - a refusal (the memory guard) is a row of the table too
        return time.perf_counter() - start, time.process_time() - cpu, float("nan"), type(err).__name__
    cold, cold_cpu = time.perf_counter() - start, time.process_time() - cpu
    warm = min(_once(run) for _ in range(3))
    return cold, cold_cpu, warm, report.passed


def _once(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def _graph_of(model, inputs, loss):
    from symgrad.graph.interpret import to_graph
    from symgrad.graph.trace import trace_callable

    names = [n for n, _ in model.named_parameters()] + list(inputs)
    tensors = [p.detach() for p in model.parameters()] + list(inputs.values())

    def run(*flat):
        params = dict(zip(names[:-1], flat[:-1]))
        return loss(torch.func.functional_call(model, params, (flat[-1],)))

    return to_graph(trace_callable(run, tuple(tensors)), [(n, "param", t) for n, t in zip(names, tensors)])


def main() -> None:
    import symgrad
    from symgrad.graph import check_graph

    def check_exploded(model, inputs, **kw):  # the exploded engine, the forward read through the graph
        return symgrad.check(model, inputs, engine="elementwise", quiet=True, **kw)
    from symgrad.graph.explode_cross import crosscheck_exploded

    check_graph(lambda x: torch.tanh(x).sum(), {"x": torch.randn(3, dtype=torch.float64)})  # start-up
    print(f"{'row':44s} {'back end':10s} {'cold s':>7s} {'cold cpu s':>10s} {'warm s':>7s} {'passed':>11s} {'peak MiB':>9s}")
    for name, make in (("MLP 5-6-2 (50 params)", mlp), ("conv net (204 params)", conv)):
        model, inputs = make()
        target = torch.randn(model(inputs["x"]).shape, dtype=torch.float64)
        loss = lambda out, t: ((out - t) ** 2).mean()  # noqa: E731
        for how, kw in (("loss=", dict(loss=loss, target=target)), ("output (vjps / Jacobian)", {})):
            for backend, check in (("tensor", check_graph), ("exploded", check_exploded)):
                cold, cpu, warm, passed = _timed(lambda: check(model, inputs, **kw))
                peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
                print(f"{name + ', ' + how:44s} {backend:10s} {cold:7.2f} {cpu:10.2f} {warm:7.2f} {passed!s:>11s} {peak:9.0f}")
        graph = _graph_of(model, inputs, lambda out: ((out - target) ** 2).mean())
        cold, cpu, warm, passed = _timed(lambda: _Passed(crosscheck_exploded(graph)))
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"{name + ', cross-check (16 outs x 32 entries)':44s} {'both':10s} {cold:7.2f} {cpu:10.2f} {warm:7.2f} "
              f"{passed!s:>11s} {peak:9.0f}")


class _Passed:
    def __init__(self, result):
        self.passed = result.passed


if __name__ == "__main__":
    main()
