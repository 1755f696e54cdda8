"""Note [BLAS threads on a busy machine] (symgrad/threads.py)."""

import os

import pytest
import torch

import symgrad as sg
from symgrad import threads


@pytest.mark.parametrize("cores,load,expected", [(2, 0.2, None), (2, 0.9, 1), (2, 5.0, 1), (16, 3.0, 13), (16, 0.0, None)])
def test_threads_follow_the_idle_cores(monkeypatch, cores, load, expected):
    monkeypatch.delenv("SYMGRAD_BLAS_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
    assert threads.blas_threads() == expected


def test_the_environment_sets_them(monkeypatch):
    monkeypatch.setenv("SYMGRAD_BLAS_THREADS", "3")
    assert threads.blas_threads() == 3
    monkeypatch.setenv("SYMGRAD_BLAS_THREADS", "0")
    assert threads.blas_threads() is None


def test_a_check_runs_numpys_blas_with_them(monkeypatch):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    blas = [i for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]
    if not blas or blas[0]["num_threads"] < 2:
        pytest.skip("numpy's BLAS runs one thread here already")
    before = blas[0]["num_threads"]
    seen = []

    def f(x):
        seen.append(min(i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"))
        return torch.tanh(x)

    monkeypatch.setenv("SYMGRAD_BLAS_THREADS", "1")
    assert sg.check(f, {"x": torch.randn(3, dtype=torch.float64)}, quiet=True).passed
    assert seen and max(seen) == 1
    assert [i for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"][0]["num_threads"] == before
