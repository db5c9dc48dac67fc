"""The fused-attention CUDA kernels' index logic, on the CPU: tests/cuda_emu/attention_emu.cpp
compiles the real device bodies (csrc/cuda/attention*_dev.cuh) and the launch plans the launchers
use (attention_plan.cuh) with g++ against the CUDA headers, runs each CTA's threads as host
threads with a barrier for __syncthreads and a grid of at most 3 CTAs (every grid-stride loop
takes several work items), and compares the forward (with the key-split decode path), the
backward and the double backward with a float64 loop of the contract, itself checked against
central differences. It needs g++ and the CUDA toolkit's headers (no GPU); the GPU rows run the
same kernels on a device when one is lent.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EMU = Path(__file__).resolve().parent / "cuda_emu"
FLAGS = ["-std=c++20", "-O1", "-pthread", "-Wall", "-Wno-unknown-pragmas",
         "-Wno-unused-function"]
CASES = 22


def _cuda_include() -> Path | None:
    """The toolkit's include dir, found as setup.py finds the toolkit."""
    nvcc = shutil.which("nvcc")
    for cand in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"),
                 Path(nvcc).resolve().parent.parent if nvcc else None, "/usr/local/cuda"):
        if cand and (Path(cand) / "include" / "cuda_runtime.h").exists():
            return Path(cand) / "include"
    return None


@pytest.fixture(scope="module")
def emu_output(tmp_path_factory) -> list[str]:
    cxx = os.environ.get("CXX") or shutil.which("g++")
    if cxx is None:
        pytest.skip("g++ not found (the emulation compiles the CUDA device code as host C++)")
    inc = _cuda_include()
    if inc is None:
        pytest.skip("CUDA headers not found (set CUDA_HOME; no GPU is needed)")
    exe = tmp_path_factory.mktemp("cuda_emu") / "attention_emu"
    build = subprocess.run([cxx, *FLAGS, f"-I{EMU}", f"-I{ROOT / 'csrc'}", f"-I{inc}",
                            str(EMU / "attention_emu.cpp"), "-o", str(exe)],
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, f"attention_emu.cpp did not compile:\n{build.stderr[-6000:]}"
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=600)
    lines = run.stdout.strip().split("\n")
    summary = re.fullmatch(r"(\d+) failures", lines[-1])
    assert summary is not None, f"the emulation did not finish:\n{run.stdout[-4000:]}{run.stderr}"
    assert (int(summary[1]) == 0) == (run.returncode == 0)
    return lines[:-1]


def test_every_case_ran(emu_output):
    assert len(emu_output) == CASES, "\n".join(emu_output)


@pytest.mark.parametrize("kind", ["dense", "causal", "pooled", "decode", "empty", "fp16_bf16"])
def test_kernels_match_reference(emu_output, kind):
    # dense: strided q/k/v, Dk != Dv, odd sizes; causal: N = M, N < M (cache view), N > M (rows
    # that see no key), Dk = Dv = 256 (the smallest tiles); pooled: odd and even grids, tied
    # window maxima (the first-maximum routing), a grid too small for any window; decode: the
    # key split and its combine, causal and not; empty: N = 0, M = 0, absent gq / gk / gv.
    pick = {
        "dense": ("dense", "null", "fp32"),
        "causal": ("causal", "Dk=Dv=256"),
        "pooled": ("pooled",),
        "decode": ("decode",),
        "empty": ("N0", "M0", "no keys"),
        "fp16_bf16": ("fp16", "bf16"),
    }[kind]
    rows = [ln for ln in emu_output if any(p in ln for p in pick)]
    assert rows, f"no {kind} case in the emulation output"
    bad = [ln for ln in rows if not ln.startswith("ok ")]
    assert not bad, "\n".join(bad)


def test_decode_splits_keys(emu_output):
    # The decode cases must actually take the key-split path (split > 1) somewhere.
    splits = [int(m[1]) for ln in emu_output if (m := re.search(r"split (\d+)", ln))
              and "decode" in ln]
    assert splits and max(splits) > 1 and min(splits) > 1, splits
