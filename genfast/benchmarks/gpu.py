"""GPU timing, the card's ceilings, and what a timed call achieved against them.

Timing: CUDA events around each call with the L2 cache flushed before it, as
triton.testing.do_bench does, providers in interleaved rounds (runner.interleave); one
synchronize per block of calls, never one per call.

Memory-bound ops are judged by GB/s = (bytes the ideal kernel reads + writes) / time, against
the card's peak DRAM bandwidth: the datasheet figure for known cards, else a large
device-to-device copy measured here (an achievable peak, a bit under the datasheet's).
Compute-bound cases (convolutions) are judged by TFLOP/s against a large matmul of the same
dtype measured here. Everything but the two measurements is plain arithmetic, tested on CPU.
"""

from __future__ import annotations

import contextlib
import re
import statistics
from collections.abc import Callable

import torch

from .runner import Settings, interleave

# Datasheet peak DRAM bandwidth in TB/s. Keys are tokens of torch.cuda.get_device_name (split
# at non-alphanumerics, upper case), all of which must be present; most specific first.
# Tokens, not substrings: "L4" must not match an L40S, "H200" not a GH200.
PEAK_TBPS: tuple[tuple[tuple[str, ...], float], ...] = (
    (("H200",), 4.8),
    (("H100", "PCIE"), 2.0),
    (("H100",), 3.35),  # SXM5 ("NVIDIA H100 80GB HBM3")
    (("A100", "80GB"), 2.0),
    (("A100",), 1.555),  # 40 GB, SXM4 and PCIe
    (("V100",), 0.9),
    (("L4",), 0.3),
)


def peak_tbps(gpu_name: str) -> float | None:
    """Datasheet bandwidth of a card by its name, None for a card not in PEAK_TBPS."""
    tokens = set(re.split(r"[^0-9A-Z]+", gpu_name.upper()))
    for keys, tbps in PEAK_TBPS:
        if all(k in tokens for k in keys):
            return tbps
    return None


def achieved(nbytes: int, flops: int | None, seconds: float | None, *,
             peak_tbps: float | None = None, peak_tflops: float | None = None) -> dict:
    """GB/s and TFLOP/s of one call and their share of the peaks (percent), None where unknown.
    A compute-bound case (flops given) gets no bandwidth share: its bytes are only a floor."""
    out = {"gbps": None, "pct_peak_bw": None, "tflops": None, "pct_peak_flops": None}
    if not seconds or seconds <= 0:
        return out
    out["gbps"] = nbytes / seconds / 1e9
    if flops:
        out["tflops"] = flops / seconds / 1e12
        if peak_tflops:
            out["pct_peak_flops"] = 100 * out["tflops"] / peak_tflops
    elif peak_tbps:
        out["pct_peak_bw"] = 100 * out["gbps"] / (peak_tbps * 1e3)
    return out


def _on(device: str):
    """The device's context, so events land on its stream (a no-op for the CPU, where the
    tests run these functions with stand-in events)."""
    return torch.cuda.device(device) if device.startswith("cuda") else contextlib.nullcontext()


def _event_ms(fn, reps: int) -> float:
    """Median ms of `reps` timed calls after 3 warm-ups, CUDA events, one sync at the end."""
    for _ in range(3):
        fn()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for start, end in zip(starts, ends, strict=True):
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends, strict=True))


def copy_tbps(device: str, nbytes: int = 2**30) -> float:
    """Device-to-device copy of `nbytes`, counting bytes read plus written (METHOD.md)."""
    with _on(device):
        x = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
        y = torch.empty_like(x)
        ms = _event_ms(lambda: y.copy_(x), 10)
    return 2 * nbytes / (ms / 1e3) / 1e12


def matmul_tflops(device: str, dtype: torch.dtype, n: int = 8192) -> float:
    """An n x n x n matmul on random data (zeros run faster, METHOD.md) in `dtype`, with
    torch's default precision settings (float32 stays IEEE unless the user allowed TF32)."""
    with _on(device):
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        ms = _event_ms(lambda: a @ b, 5)
    return 2 * n**3 / (ms / 1e3) / 1e12


def ceilings(device: str, dtypes: list[torch.dtype], copy_bytes: int = 2**30,
             matmul_n: int = 8192) -> dict:
    """The card's name, datasheet and measured peaks; which bandwidth the % column uses.
    A measurement that fails is reported as None with its reason, never fatal."""
    name = torch.cuda.get_device_name(device)
    sheet = peak_tbps(name)
    info = {"gpu_name": name, "peak_tbps_datasheet": sheet, "copy_tbps_measured": None,
            "matmul_tflops_measured": {}, "ceiling_errors": []}
    try:
        info["copy_tbps_measured"] = copy_tbps(device, copy_bytes)
    except Exception as e:  # noqa: BLE001 - see the docstring
        info["ceiling_errors"].append(f"copy: {type(e).__name__}: {e}")
    measured = info["copy_tbps_measured"]
    info["peak_tbps"] = sheet if sheet is not None else measured
    info["peak_source"] = (
        f"datasheet ({sheet} TB/s)" if sheet is not None else
        f"unknown card: measured device-to-device copy ({measured:.2f} TB/s)" if measured else
        "unknown card, copy not measured")
    for dtype in dtypes:
        if dtype.is_floating_point:
            key = str(dtype).removeprefix("torch.")
            try:
                info["matmul_tflops_measured"][key] = matmul_tflops(device, dtype, matmul_n)
            except Exception as e:  # noqa: BLE001 - see the docstring
                info["ceiling_errors"].append(f"matmul {key}: {type(e).__name__}: {e}")
    return info


class CudaClock:
    """Per-call CUDA event times with the L2 flushed before each call (do_bench's method).
    The flush (a memset of a buffer larger than any L2) runs outside the events."""

    def __init__(self, device: str, flush_bytes: int = 256 * 2**20) -> None:
        self.device = device
        self.cache = torch.empty(flush_bytes, dtype=torch.int8, device=device)

    def __call__(self, fn: Callable[[], object], calls: int) -> list[float]:
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(calls)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(calls)]
        for start, end in zip(starts, ends, strict=True):
            self.cache.zero_()
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize(self.device)  # once per block of calls
        return [s.elapsed_time(e) / 1e3 for s, e in zip(starts, ends, strict=True)]


def time_cuda(fns: dict[str, Callable[[], object]], s: Settings,
              device: str) -> dict[str, tuple[list, int]]:
    """Per provider: (seconds of each timed call, calls per round). Each provider gets about
    gpu_rep_ms of timed calls, split over gpu_rounds interleaved rounds."""
    clock = CudaClock(device)
    per_call = {}
    for name, fn in fns.items():
        est = statistics.median(clock(fn, 5))
        warm_calls = max(1, int(s.gpu_warmup_ms / 1e3 / max(est, 1e-7)))
        for _ in range(min(warm_calls, 1000)):
            fn()
        per_call[name] = est
    rounds = max(1, s.gpu_rounds)
    plan = {name: (max(1, min(1000, int(s.gpu_rep_ms / 1e3 / rounds / max(t, 1e-7)))), rounds)
            for name, t in per_call.items()}
    times = interleave(fns, plan, clock)
    del clock
    return {name: (times[name], plan[name][0]) for name in fns}


def peak_memory(fn: Callable[[], object], device: str) -> int:
    """Bytes one call allocates on top of what is live (its output and any workspace)."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base
