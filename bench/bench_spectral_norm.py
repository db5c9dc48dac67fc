"""pytest-benchmark view of genfast/benchmarks/spectral_norm.py: the cases `genfast bench
spectral_norm` runs (the SN-GAN discriminator's spectral-norm update, its normalized weights
with their backward, and a whole discriminator step).

One benchmark group per case, so genfast's multi-tensor and per-layer paths line up with
torch's parametrization, torch.compile and the floor in one table. `pytest bench
--benchmark-disable` calls each provider once on a tiny model: the CI smoke test.
"""

import pytest

pytest.importorskip("pytest_benchmark")

from genfast.benchmarks import report, runner, spectral_norm  # noqa: E402

DEVICE = runner.env_device()
# On CUDA the timer syncs once per round of calls, never per call (see bench_gumbel.py).
TIMING = {"timer": runner.cuda_timer, "warmup": True} if DEVICE.startswith("cuda") else {}

PARAMS = [
    pytest.param(case, name, id=f"{case.id}-{report.slug(name)}",
                 marks=pytest.mark.benchmark(group=case.id, **TIMING))
    for case in spectral_norm.cases(device=DEVICE, quick=runner.env_quick())
    for name in case.providers
]


@pytest.mark.parametrize(("case", "provider"), PARAMS)
def test_spectral_norm(benchmark, prepare, case, provider):
    fn = prepare(case, provider)
    benchmark.extra_info.update(provider=provider, mode=case.mode, shape=list(case.shape),
                                dtype=runner.dtype_name(case.dtype), bytes=case.bytes)
    benchmark(fn)
