"""pytest-benchmark view of genfast/benchmarks/spectral_norm.py: the cases `genfast bench
spectral_norm` runs (the SN-GAN discriminator's spectral-norm update, its normalized weights
with their backward, and a whole discriminator step).

One benchmark group per case, so genfast's multi-tensor and per-layer paths line up with
torch's parametrization, torch.compile and the floor in one table. `pytest bench` calls each
provider once on a tiny model (pyproject's addopts disable timing): the CI smoke test.
"""

import pytest

pytest.importorskip("pytest_benchmark")

from genfast.benchmarks import pytest_view, spectral_norm  # noqa: E402


@pytest.mark.parametrize(("case", "provider"), pytest_view.params(spectral_norm))
def test_spectral_norm(benchmark, prepare, case, provider):
    pytest_view.run(benchmark, prepare(case, provider), case, provider)
