"""pytest-benchmark view of genfast/benchmarks/gumbel.py: the cases `genfast bench gumbel` runs.

One benchmark group per case, so genfast's backends line up with torch eager, torch.compile
and the floor in one table. `pytest bench` calls each provider once on tiny shapes
(pyproject's addopts disable timing): the CI smoke test.
`pytest bench --benchmark-enable` times them.
"""

import pytest

pytest.importorskip("pytest_benchmark")

from genfast.benchmarks import gumbel, pytest_view  # noqa: E402


@pytest.mark.parametrize(("case", "provider"), pytest_view.params(gumbel))
def test_gumbel(benchmark, prepare, case, provider):
    pytest_view.run(benchmark, prepare(case, provider), case, provider)
