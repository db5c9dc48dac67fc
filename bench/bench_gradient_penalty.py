"""pytest-benchmark view of genfast/benchmarks/gradient_penalty.py: the cases
`genfast bench gradient_penalty` runs (WGAN-GP critic steps, every=1 and every=4, and the
per-sample norm kernel alone).

One benchmark group per case, so genfast's backends line up with the plain-torch step and the
plain critic step (floor) in one table. `pytest bench --benchmark-disable` calls each provider
once on tiny shapes: the CI smoke test. `pytest bench --benchmark-only` times them.
"""

import pytest

pytest.importorskip("pytest_benchmark")

from genfast.benchmarks import gradient_penalty, report, runner  # noqa: E402

DEVICE = runner.env_device()
# On CUDA the timer syncs; pytest-benchmark reads it once per round of calls, so one sync
# is amortised over the round instead of inflating every call.
TIMING = {"timer": runner.cuda_timer, "warmup": True} if DEVICE.startswith("cuda") else {}

PARAMS = [
    pytest.param(case, name, id=f"{case.id}-{report.slug(name)}",
                 marks=pytest.mark.benchmark(group=case.id, **TIMING))
    for case in gradient_penalty.cases(device=DEVICE, quick=runner.env_quick())
    for name in case.providers
]


@pytest.mark.parametrize(("case", "provider"), PARAMS)
def test_gradient_penalty(benchmark, prepare, case, provider):
    fn = prepare(case, provider)
    benchmark.extra_info.update(provider=provider, mode=case.mode, shape=list(case.shape),
                                dtype=runner.dtype_name(case.dtype), bytes=case.bytes)
    benchmark(fn)
