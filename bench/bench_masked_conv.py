"""pytest-benchmark view of genfast/benchmarks/masked_conv.py: the cases
`genfast bench masked_conv` runs (the 7x7 mask-B conv, the gated PixelCNN training step and
cached generation against the torch cached loop and naive generation).

One benchmark group per case. `pytest bench` calls each provider once on tiny shapes
(pyproject's addopts disable timing): the CI smoke test.
`pytest bench --benchmark-enable` times them.
"""

import pytest

pytest.importorskip("pytest_benchmark")

from genfast.benchmarks import masked_conv, pytest_view  # noqa: E402


@pytest.mark.parametrize(("case", "provider"), pytest_view.params(masked_conv))
def test_masked_conv(benchmark, prepare, case, provider):
    pytest_view.run(benchmark, prepare(case, provider), case, provider)


def test_baselines_are_the_same_network():
    """The plain-PyTorch models timed against genfast compute genfast's PixelCNN exactly (up to
    float rounding), masked and cropped, so the ratios compare equal work."""
    import torch

    model = masked_conv.default_pixelcnn(**masked_conv.QUICK_MODEL)
    tokens = masked_conv._tokens(2, 6, 5, masked_conv.QUICK_MODEL["levels"], "cpu")()["tokens"]
    want = model(tokens)
    for masked in (True, False):
        got = masked_conv.TorchPixelCNN(model, masked=masked)(tokens)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
