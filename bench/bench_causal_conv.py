"""pytest-benchmark view of genfast/benchmarks/causal_conv.py: the cases
`genfast bench causal_conv` runs (the dense and depthwise conv, the WaveNet training step,
whole-network generation against the torch queue loop and naive generation).

One benchmark group per case. `pytest bench` calls each provider once on tiny shapes
(pyproject's addopts disable timing): the CI smoke test.
`pytest bench --benchmark-enable` times them.
"""

import pytest

pytest.importorskip("pytest_benchmark")

from genfast.benchmarks import causal_conv, pytest_view  # noqa: E402


@pytest.mark.parametrize(("case", "provider"), pytest_view.params(causal_conv))
def test_causal_conv(benchmark, prepare, case, provider):
    pytest_view.run(benchmark, prepare(case, provider), case, provider)
