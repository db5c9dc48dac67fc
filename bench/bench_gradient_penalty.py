"""pytest-benchmark view of genfast/benchmarks/gradient_penalty.py: the cases
`genfast bench gradient_penalty` runs (WGAN-GP critic steps, every=1 and every=4, and the
per-sample norm kernel alone).

One benchmark group per case, so genfast's backends line up with the plain-torch step and the
plain critic step (floor) in one table. `pytest bench` calls each provider once on tiny shapes
(pyproject's addopts disable timing): the CI smoke test.
`pytest bench --benchmark-enable` times them.
"""

import pytest

pytest.importorskip("pytest_benchmark")

from genfast.benchmarks import gradient_penalty, pytest_view  # noqa: E402


@pytest.mark.parametrize(("case", "provider"), pytest_view.params(gradient_penalty))
def test_gradient_penalty(benchmark, prepare, case, provider):
    pytest_view.run(benchmark, prepare(case, provider), case, provider)
