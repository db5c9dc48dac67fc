"""pytest-benchmark view of genfast/benchmarks/attention.py: the cases `genfast bench attention`
runs (the SAGAN self-attention layer against the materialised bmm + softmax layer, SDPA and
torch.compile; causal attention against SDPA; the double backward of both, where SDPA raises).

One benchmark group per case. `pytest bench` calls each provider once on tiny shapes
(pyproject's addopts disable timing): the CI smoke test.
`pytest bench --benchmark-enable` times them.
"""

import pytest

pytest.importorskip("pytest_benchmark")

from genfast.benchmarks import attention, pytest_view  # noqa: E402


@pytest.mark.parametrize(("case", "provider"), pytest_view.params(attention))
def test_attention(benchmark, prepare, case, provider):
    pytest_view.run(benchmark, prepare(case, provider), case, provider)


def test_layer_cores_compute_the_same_layer():
    """Every core of the timed SAGAN layer (genfast, bmm + softmax, SDPA) gives the same output
    with the same weights, so the ratios compare equal work."""
    import torch

    shape = attention.QUICK_SAGAN[0]
    x = torch.randn(*shape)
    want = attention._layer(shape[1], "bmm", None, torch.float32, "cpu")(x)
    for core, be in (("genfast", "reference"), ("sdpa", None)):
        got = attention._layer(shape[1], core, be, torch.float32, "cpu")(x)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
