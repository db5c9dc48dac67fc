"""pytest-benchmark view of genfast/benchmarks/lstm.py: the cases `genfast bench lstm` runs (a
2-layer LSTM forward and forward+backward against nn.LSTM, an nn.LSTMCell loop and its compiled
cell; a WGAN-GP critic step through an LSTM; generation with the native sampling loop).

One benchmark group per case. `pytest bench` calls each provider once on tiny shapes
(pyproject's addopts disable timing): the CI smoke test.
`pytest bench --benchmark-enable` times them.
"""

import pytest

pytest.importorskip("pytest_benchmark")

from genfast.benchmarks import lstm, pytest_view  # noqa: E402


@pytest.mark.parametrize(("case", "provider"), pytest_view.params(lstm))
def test_lstm(benchmark, prepare, case, provider):
    pytest_view.run(benchmark, prepare(case, provider), case, provider)


def test_cell_loop_baseline_is_the_same_network():
    """The nn.LSTMCell loop timed against genfast computes nn.LSTM's output (same weights), so
    the ratios compare equal work."""
    import torch

    T, B, n_in, H, layers = lstm.QUICK_TRAIN
    net = lstm._lstm(n_in, H, layers, torch.float32, "cpu")
    x = torch.randn(T, B, n_in)
    torch.testing.assert_close(lstm._cell_loop(net, compiled=False)(x), net(x)[0], rtol=1e-5,
                               atol=1e-6)
