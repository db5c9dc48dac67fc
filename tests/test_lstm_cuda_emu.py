"""The CUDA LSTM kernels' index logic, on the CPU: tests/cuda_emu/ compiles the real device code
of csrc/cuda (the persistent recurrence's bodies in lstm_persist*.cuh, the GEMM path's cells in
lstm_cell.cu) with g++ against the CUDA headers, runs every GPU thread as a host thread, and
compares the results with a double-precision loop of the contract's equations. It needs g++ and
the CUDA toolkit's headers (no GPU); the GPU rows (tests/test_gpu.py) check the same kernels on
a device when one is lent.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"
EMU = Path(__file__).resolve().parent / "cuda_emu"
FLAGS = ["-std=c++20", "-O1", "-pthread", "-Wall", "-Wno-unknown-pragmas",
         "-Wno-unused-function"]


def _cuda_include() -> Path | None:
    """The toolkit's include dir, found as setup.py finds the toolkit: CUDA_HOME / CUDA_PATH,
    then nvcc's own prefix (nvcc may be a wrapper outside the toolkit), then /usr/local/cuda."""
    nvcc = shutil.which("nvcc")
    for cand in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"),
                 Path(nvcc).resolve().parent.parent if nvcc else None, "/usr/local/cuda"):
        if cand and (Path(cand) / "include" / "cuda_runtime.h").exists():
            return Path(cand) / "include"
    return None


def _cell_kernels(src: str) -> str:
    """The kernel namespace of lstm_cell.cu (everything before its host launchers): from
    `namespace genfast::cuda {` to the close of the anonymous namespace inside it."""
    lines = src.split("\n")
    try:
        a = lines.index("namespace genfast::cuda {")
        b = lines.index("}  // namespace", a)
    except ValueError:
        pytest.fail("csrc/cuda/lstm_cell.cu changed shape: no `namespace genfast::cuda {` line "
                    "followed by `}  // namespace` (update _cell_kernels)")
    return "\n".join(lines[a:b + 1]) + "\n}  // namespace genfast::cuda\n"


@pytest.fixture(scope="module")
def binaries(tmp_path_factory) -> dict[str, Path]:
    cxx = os.environ.get("CXX") or shutil.which("g++")
    if cxx is None:
        pytest.skip("g++ not found (the emulation compiles the CUDA device code as host C++)")
    inc = _cuda_include()
    if inc is None:
        pytest.skip("CUDA headers not found (set CUDA_HOME; no GPU is needed)")
    out = tmp_path_factory.mktemp("cuda_emu")
    (out / "lstm_cell_kernels.inc").write_text(
        _cell_kernels((CSRC / "cuda" / "lstm_cell.cu").read_text()))
    builds = {}
    for name in ("persist_emu", "cell_emu"):  # two compilers at once: one per core
        cmd = [cxx, *FLAGS, f"-I{out}", f"-I{EMU}", f"-I{CSRC}", f"-I{inc}",
               str(EMU / f"{name}.cpp"), "-o", str(out / name)]
        builds[name] = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True)
    for name, proc in builds.items():
        log, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"{name}.cpp did not compile:\n{log[-6000:]}"
    return {name: out / name for name in builds}


def _run(binary: Path, checks: int) -> None:
    """Runs a harness; every one of its `checks` lines must say ok, and its summary 0."""
    proc = subprocess.run([str(binary)], capture_output=True, text=True, timeout=600)
    out = proc.stdout
    lines = out.strip().split("\n")
    summary = re.fullmatch(r"(\d+) failures", lines[-1])
    assert summary is not None, f"{binary.name} did not finish:\n{out[-4000:]}\n{proc.stderr}"
    bad = [ln for ln in lines[:-1] if not ln.startswith("ok ")]
    assert int(summary[1]) == 0 and not bad and proc.returncode == 0, \
        f"{binary.name}: {summary[1]} failures (rc {proc.returncode}):\n" + "\n".join(bad)
    assert len(lines) - 1 == checks, f"{binary.name} ran {len(lines) - 1} checks, not {checks}"


def test_persistent_recurrence_matches_reference(binaries):
    # 12 configurations x (forward or inference, backward): float64 with and without the
    # projection, reverse, lengths 0 / partial / > T, every optional pointer null somewhere,
    # partial last CTAs, CTAs without projection columns, chunked staging (S < B), K > 128;
    # then float32, float16 and bfloat16.
    _run(binaries["persist_emu"], 24)


def test_gemm_path_cells_match_reference(binaries):
    # 10 cases: vector and elementwise paths, with and without lengths, saved gates and c_prev,
    # two thread blocks; float32, float64, float16, bfloat16.
    _run(binaries["cell_emu"], 10)
