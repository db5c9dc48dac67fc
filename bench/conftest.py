"""Shared set-up of the pytest-benchmark files (bench/bench_<op>.py).

Cases come from genfast.benchmarks.<op>, so pytest and `genfast bench` time the same thing.
Environment: GENFAST_BENCH_SCOPE=quick|default|full (the CLI's --quick, default and --full;
default here: quick; GENFAST_BENCH_QUICK=0 means full), GENFAST_BENCH_COMPILE=0|1,
GENFAST_BENCH_DEVICE=cpu|cuda, GENFAST_BENCH_THREADS (default 2, as the CLI; 1 for quick).
"""

import fnmatch
import os

import pytest
import torch

from genfast.benchmarks import runner


def pytest_collect_file(file_path, parent):
    # Collect bench_*.py even where python_files (pyproject) lists only test_*.py; never twice:
    # pytest's own collector takes files named on the command line and python_files matches.
    patterns = parent.config.getini("python_files")
    if (file_path.suffix == ".py" and file_path.name.startswith("bench_")
            and not parent.session.isinitpath(file_path)
            and not any(fnmatch.fnmatch(file_path.name, p) for p in patterns)):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


@pytest.fixture(scope="session", autouse=True)
def _bench_threads():
    # 2 (the CLI's default) when timing: ratios from pytest and `genfast bench` should agree.
    # 1 for the quick smoke run, which times nothing: on a busy 2-core box every parallel
    # region of a 2-thread op waits for a time slice (a tiny D step: 2.4 s instead of 0.06 s).
    before = torch.get_num_threads()
    default = "1" if runner.env_scope() == "quick" else "2"
    torch.set_num_threads(int(os.environ.get("GENFAST_BENCH_THREADS", default)))
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def prepare():
    """prepare(case, provider) -> the warmed zero-arg callable, or a skip saying why not.

    Inputs are built once per case and held for one case at a time: parameters run case by
    case, and a GPU case's tensors can be gigabytes.
    """
    settings = runner.env_settings()
    held: dict = {}

    def get(case: runner.Case, name: str):
        if name == runner.COMPILED and not settings.compiles(case):
            pytest.skip("torch.compile costs ~20 s of compiling on 2 cores: "
                        "GENFAST_BENCH_COMPILE=1 (or GENFAST_BENCH_SCOPE=full) runs it")
        if held.get("id") != case.id:
            held.clear()  # free the last case's tensors before allocating this one's
            held.update(id=case.id, inputs=runner.fresh_inputs(case, settings))
        try:
            return runner.build(case, held["inputs"], name)
        except Exception as e:
            if runner.is_unavailable(e):
                pytest.skip(str(e))
            if name == runner.COMPILED:  # a baseline this machine cannot compile is not our bug
                pytest.skip(f"torch.compile fails here: {type(e).__name__}: {e}")
            raise

    yield get
    held.clear()
