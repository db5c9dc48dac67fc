"""pytest-benchmark view of genfast/benchmarks/sample.py: the cases `genfast bench sample` runs.

One benchmark group per case, so genfast's backends line up with torch eager, torch.compile
and the floor in one table. `pytest bench` calls each provider once on tiny shapes
(pyproject's addopts disable timing): the CI smoke test.
`pytest bench --benchmark-enable` times them.
"""

import pytest

pytest.importorskip("pytest_benchmark")

from genfast.benchmarks import pytest_view, sample  # noqa: E402


@pytest.mark.parametrize(("case", "provider"), pytest_view.params(sample))
def test_sample(benchmark, prepare, case, provider):
    pytest_view.run(benchmark, prepare(case, provider), case, provider)
