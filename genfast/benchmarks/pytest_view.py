"""What every bench/bench_<op>.py shares: one pytest param per (case, provider), grouped by
case so providers line up in pytest-benchmark's table, and the timed call itself."""

from __future__ import annotations

from types import ModuleType

from . import report, runner


def params(op_module: ModuleType) -> list:
    import pytest  # only the pytest view needs it

    device = runner.env_device()
    # On CUDA the timer syncs; pytest-benchmark reads it once per round of calls, so one sync
    # is amortised over the round instead of inflating every call.
    timing = {"timer": runner.cuda_timer, "warmup": True} if device.startswith("cuda") else {}
    return [
        pytest.param(case, name, id=f"{case.id}-{report.slug(name)}",
                     marks=pytest.mark.benchmark(group=case.id, **timing))
        for case in op_module.cases(device=device, scope=runner.env_scope())
        for name in case.providers
    ]


def run(benchmark, fn, case: runner.Case, provider: str) -> None:
    benchmark.extra_info.update(provider=provider, mode=case.mode, shape=list(case.shape),
                                dtype=runner.dtype_name(case.dtype), bytes=case.bytes)
    benchmark(fn)
