"""The CUDA GPT sampling loop's device code, on the CPU: tests/cuda_emu/attention_generate_emu.cpp
compiles csrc/cuda/attention_generate_dev.cuh (and the block draw of draw_block.cuh) with g++
against the CUDA headers and runs every GPU thread as a host thread. Its tokens must equal
GPTNet.generate's (float64, across cache refills and long primes, with every sampler filter),
must not depend on the grid, the item group or whether refills run batched (bit-identical
logits), and in float32 / float16 / bfloat16 must equal the teacher-forced forward plus
genfast.sample_categorical of the same rounded weights. Needs g++ and the CUDA toolkit's headers
(no GPU); the GPU rows run the same kernel on a device when one is lent.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import genfast
from genfast.models._gpt_net import GPTNet

ROOT = Path(__file__).resolve().parent.parent
EMU = Path(__file__).resolve().parent / "cuda_emu"
FLAGS = ["-std=c++20", "-O1", "-pthread", "-Wall", "-Wno-unknown-pragmas",
         "-Wno-unused-function"]
DTYPES = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}


def _cuda_include() -> Path | None:
    """The toolkit's include dir, found as setup.py finds the toolkit."""
    nvcc = shutil.which("nvcc")
    for cand in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"),
                 Path(nvcc).resolve().parent.parent if nvcc else None, "/usr/local/cuda"):
        if cand and (Path(cand) / "include" / "cuda_runtime.h").exists():
            return Path(cand) / "include"
    return None


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    cxx = os.environ.get("CXX") or shutil.which("g++")
    if cxx is None:
        pytest.skip("g++ not found (the emulation compiles the CUDA device code as host C++)")
    inc = _cuda_include()
    if inc is None:
        pytest.skip("CUDA headers not found (set CUDA_HOME; no GPU is needed)")
    tmp = tmp_path_factory.mktemp("cuda_emu")
    exe = tmp / "attention_generate_emu"
    build = subprocess.run([cxx, *FLAGS, f"-I{ROOT / 'csrc'}", f"-I{inc}",
                            str(EMU / "attention_generate_emu.cpp"), "-o", str(exe)],
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, f"attention_generate_emu.cpp did not compile:\n" \
                                  f"{build.stderr[-6000:]}"

    def run(net: GPTNet, prime: torch.Tensor, n: int, *, dtype=torch.float64, seed=5,
            temperature=1.0, top_k=None, top_p=None, keep=None, ncta=3, chunk=64, group=2,
            global_draw=False):
        """(tokens (B, Tp + n), logits (B, V) of the last draw) of the emulated kernel."""
        pack = genfast.pack_gpt(net)
        L, V, C, Hh, T = pack.meta.tolist()
        B, Tp = prime.shape
        keep = T // 2 if keep is None else keep
        inv = math.inf if temperature == 0 else 1.0 / temperature
        k = 0 if top_k is None or top_k >= V else top_k
        p = 1.0 if top_p is None else top_p
        tokens = torch.zeros(B, Tp + n, dtype=torch.int64)
        tokens[:, :Tp] = prime
        head = f"{DTYPES[dtype]} {L} {V} {C} {Hh} {T} {B} {Tp + n} {Tp} {keep}\n" \
               f"{seed} {inv} {k} {p!r} {ncta} {chunk} {group} {int(global_draw)}\n"
        case = tmp / "case.txt"
        case.write_text(head + " ".join(repr(x) for x in pack.weights.double().tolist()) + "\n"
                        + " ".join(str(t) for t in tokens.flatten().tolist()) + "\n")
        out = subprocess.run([str(exe), str(case)], capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        lines = dict(ln.split(" ", 1) for ln in out.stdout.strip().split("\n"))
        toks = torch.tensor([int(x) for x in lines["tokens"].split()]).view(B, Tp + n)
        logits = torch.tensor([float(x) for x in lines["logits"].split()],
                              dtype=torch.float64).view(B, V)
        return toks, logits

    return run


def _net(V=13, T=8, L=2, Hh=2, C=12, bias=True, seed=0):
    """A float64 GPTNet with weights large enough that attention moves the logits and draws are
    far from uniform (ties unlikely)."""
    torch.manual_seed(seed)
    net = GPTNet(V, T, L, Hh, C, bias=bias).double().eval()
    with torch.no_grad():
        for name, p in net.named_parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.4)
            elif name.endswith("bias"):
                p.normal_(0.0, 0.1)
            else:  # LayerNorm gains
                p.normal_(1.0, 0.1)
    return net


def _last_logits(net, tokens, Tp, keep):
    """The logits of the last draw under the context rule: the forward of the tokens the cache
    holds then, from cache position 0."""
    T, N = net.block_size, tokens.shape[1]
    first = length = 0
    for p in range(Tp, N):
        if p == Tp:
            first = max(0, p - T)
            length = p - first
        elif length == T:
            first, length = p - keep, keep
        else:
            length += 1
    with torch.no_grad():
        return net(tokens[:, first:N - 1])[:, -1]


def _prime(V, B, Tp, seed=2):
    return torch.randint(0, V, (B, Tp), generator=torch.Generator().manual_seed(seed))


LOOPS = {  # name: (net kwargs, batch, prime length, n, keep, filters)
    "refills-keep-3": ({"T": 8}, 2, 3, 17, 3, {}),
    "prime-longer-than-block": ({"T": 8, "V": 20}, 2, 11, 9, 5,
                                {"top_k": 4, "top_p": 0.9, "temperature": 0.7}),
    # more than 32 cached keys: the second warp's key blocks and the merge of the partials
    "keys-past-one-warp": ({"T": 40, "V": 11, "C": 8}, 1, 36, 6, 34, {}),
    "greedy-keep-T-1-head": ({"T": 6, "Hh": 1, "C": 8, "bias": False}, 1, 1, 14, 6,
                             {"temperature": 0.0}),
}


@pytest.mark.parametrize("case", list(LOOPS))
def test_float64_tokens_equal_gptnet_generate(emu, case):
    kw, B, Tp, n, keep, filt = LOOPS[case]
    net = _net(**kw)
    prime = _prime(net.vocab_size, B, Tp)
    want = net.generate(prime, n, seed=5, keep=keep, **filt)
    got, logits = emu(net, prime, n, keep=keep, **filt)
    if filt.get("temperature") != 0.0:  # draws must vary
        assert len(set(got[:, Tp:].flatten().tolist())) > 1
    assert torch.equal(got, want)
    torch.testing.assert_close(logits, _last_logits(net, got, Tp, keep), rtol=1e-10, atol=1e-10)


def test_grid_group_and_batched_refill_do_not_change_bits(emu):
    # One CTA / one item per group / position-by-position refills against three CTAs, groups
    # of 4 and batched refills, the draw in shared memory or in a global row: every token and
    # every bit of the last logits the same.
    net = _net(T=8, Hh=3, C=12)
    prime = _prime(net.vocab_size, 3, 4)
    ref = emu(net, prime, 12, keep=3, ncta=3, chunk=64, group=4)
    for ncta, chunk, group, glob in ((1, 1, 1, False), (2, 2, 2, True), (5, 3, 4, True)):
        got = emu(net, prime, 12, keep=3, ncta=ncta, chunk=chunk, group=group, global_draw=glob)
        assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1]), (ncta, chunk, group)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_low_precision_weights_match_teacher_forced_float32(emu, dtype):
    # Weights rounded to dtype, math and caches in float32: the last logits agree with the
    # float64 forward of the rounded weights, the tokens with the float32 sampler over it.
    net = _net(T=10, V=17)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(p.to(dtype).double())
    B, Tp, n = 2, 2, 8
    prime = _prime(17, B, Tp)
    got, logits = emu(net, prime, n, dtype=dtype, top_k=9)
    with torch.no_grad():
        full = net(got[:, :-1])
    torch.testing.assert_close(logits, full[:, -1], rtol=2e-5, atol=2e-5)
    V = full.shape[-1]
    rows = torch.cat([full.new_zeros(B, 1, V), full], 1).transpose(0, 1).reshape(-1, V)
    want = genfast.sample_categorical(rows.float(), seed=5, top_k=9, backend="reference")
    assert torch.equal(got[:, Tp:], want.view(Tp + n, B).t()[:, Tp:])
