"""How genfast times things: a case, its providers, the clock, and the machine it ran on.

An op file (genfast/benchmarks/<op>.py) says *what* to time; this file says *how*
(DESIGN.md section 6, research/ecosystem.md B.9):

* CPU: warm up, calibrate how many calls make one repeat long against the timer's
  resolution, then run the repeats of all providers of a case round-robin, so slow drift
  (turbo, a noisy neighbour) hits every provider alike. Report the median and p20/p80.
* CUDA: triton.testing.do_bench, which times with CUDA events and flushes L2 between reps.
  Never a sync per iteration: on a µs-scale kernel that measures the sync, not the kernel.
"""

from __future__ import annotations

import gc
import math
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch

MODES = ("forward", "forward+backward", "sample")
COMPILED = "torch.compile"  # provider name of the compiled baseline in every case

Inputs = dict[str, torch.Tensor]
# A provider is built lazily from the case's inputs, so listing or parametrizing cases
# allocates nothing and compiles nothing; the built zero-arg callable is what gets timed.
Factory = Callable[[Inputs], Callable[[], object]]


@dataclass(frozen=True)
class Case:
    op: str  # public function, e.g. "gumbel_softmax"; the report prints one table per op
    name: str  # variant of the op, e.g. "hard"
    shape: tuple[int, ...]
    dtype: torch.dtype
    device: str
    mode: str  # one of MODES
    inputs: Callable[[], Inputs] = field(repr=False, compare=False)
    providers: dict[str, Factory] = field(repr=False, compare=False)
    bytes: int  # least memory traffic one call needs; GB/s = bytes / time
    eager: str  # provider names the genfast providers are compared against
    floor: str  # a cheaper op that any implementation must also do: a lower bound on time

    @property
    def id(self) -> str:
        shape = "x".join(map(str, self.shape))
        return f"{self.op}-{self.name}-{self.mode}-{shape}-{dtype_name(self.dtype)}-{self.device}"


@dataclass(frozen=True)
class Settings:
    warmup_s: float = 0.1
    repeat_s: float = 0.02  # one repeat lasts at least this: timer jitter stays < 0.1 %
    repeats: int = 15
    min_repeats: int = 3
    budget_s: float = 2.0  # per provider; a slow one gets fewer repeats, never < min_repeats
    gpu_warmup_ms: int = 25
    gpu_rep_ms: int = 100
    compile: bool = True  # torch.compile costs seconds per case on a small CPU


QUICK = Settings(warmup_s=0.002, repeat_s=0.002, repeats=3, min_repeats=3, budget_s=0.05,
                 gpu_warmup_ms=5, gpu_rep_ms=20, compile=False)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def cuda_timer() -> float:
    """perf_counter after a device sync: pytest-benchmark calls its timer once before and
    once after a round of calls, so this syncs once per round, never per call."""
    torch.cuda.synchronize()
    return time.perf_counter()


def env_device() -> str:
    """Device for pytest runs: GENFAST_BENCH_DEVICE (cpu | cuda), else cuda when present."""
    dev = os.environ.get("GENFAST_BENCH_DEVICE", "auto")
    if dev == "auto":
        dev = "cuda" if torch.cuda.is_available() else "cpu"
    return dev


def env_quick() -> bool:
    """Tiny shapes in pytest unless GENFAST_BENCH_QUICK=0: the bench files are CI smoke tests."""
    return os.environ.get("GENFAST_BENCH_QUICK", "1") != "0"


def env_settings() -> Settings:
    """Settings for pytest runs: as the CLI, torch.compile only with the full shapes unless
    GENFAST_BENCH_COMPILE=1 (or =0) says otherwise."""
    s = QUICK if env_quick() else Settings()
    want = os.environ.get("GENFAST_BENCH_COMPILE")
    return s if want is None else replace(s, compile=want != "0")


def is_unavailable(exc: BaseException) -> bool:
    """A backend that says it cannot run here is not a failure of the benchmark."""
    from genfast.backends import BackendError

    return isinstance(exc, BackendError)


def build(case: Case, inputs: Inputs, name: str) -> Callable[[], object]:
    """The timed callable of one provider, called once: compiles, JITs and raises up front."""
    fn = case.providers[name](inputs)
    fn()
    sync(case.device)
    return fn


def fresh_inputs(case: Case, settings: Settings) -> Inputs:
    if settings.compile and COMPILED in case.providers:
        # Every case compiles the same code objects again (new shape, hard, grad mode); a
        # fresh Dynamo cache keeps each compile specialised and clear of the recompile limit.
        torch._dynamo.reset()
    return case.inputs()


@dataclass
class Result:
    case: Case
    provider: str
    status: str = "ok"  # ok | unavailable (backend says why) | failed | not run
    reason: str = ""
    times_s: list[float] = field(default_factory=list)  # per call, one value per repeat
    iterations: int = 0  # calls per repeat (CPU); 0 where do_bench chose
    quantiles_s: tuple[float, float, float] | None = None  # p20, median, p80
    peak_mem_bytes: int | None = None  # CUDA only: allocated by one call beyond what existed
    foreign_cores: float | None = None  # CPU only: cores other processes used while we timed

    @property
    def median_s(self) -> float | None:
        return self.quantiles_s[1] if self.quantiles_s else None


def _reason(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0] if lines else ''}"
    return text if len(text) <= 240 else text[:237] + "..."


def _quantiles(xs: list[float]) -> tuple[float, float, float]:
    if len(xs) == 1:
        return xs[0], xs[0], xs[0]
    q = statistics.quantiles(xs, n=10, method="inclusive")
    return q[1], statistics.median(xs), q[7]


def _warm(fn: Callable[[], object], seconds: float) -> float:
    """Run fn for about `seconds` (at least once: build() made the first, cold call);
    returns the mean seconds per call."""
    calls, t0 = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            return elapsed / calls


def _cpu_seconds() -> tuple[float, float] | None:
    """(CPU seconds the whole machine has been busy, CPU seconds of this process)."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal: steal is a neighbour VM on our cores.
    busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7]
    own = os.times()
    return busy / os.sysconf("SC_CLK_TCK"), own.user + own.system


def foreign_cores(before, after, wall_s: float) -> float | None:
    """Cores that other processes kept busy on average: a noisy neighbour inflates times,
    and multi-threaded torch ops (a barrier per op) far more than single-threaded ones."""
    if before is None or after is None or wall_s <= 0:
        return None
    return max(0.0, ((after[0] - before[0]) - (after[1] - before[1])) / wall_s)


def time_cpu(fns: dict[str, Callable[[], object]], s: Settings) -> dict[str, tuple[list, int]]:
    """Per provider: (seconds per call of each repeat, calls per repeat)."""
    plan = {}
    for name, fn in fns.items():
        per_call = max(_warm(fn, s.warmup_s), 1e-9)
        iters = max(1, math.ceil(s.repeat_s / per_call))
        reps = min(s.repeats, max(s.min_repeats, int(s.budget_s / (iters * per_call))))
        plan[name] = (iters, reps)
    times: dict[str, list[float]] = {name: [] for name in fns}
    gc_was_on = gc.isenabled()
    gc.disable()  # a collection inside a repeat is noise that belongs to no provider
    try:
        for r in range(max((reps for _, reps in plan.values()), default=0)):
            for name, fn in fns.items():
                iters, reps = plan[name]
                if r < reps:
                    t0 = time.perf_counter()
                    for _ in range(iters):
                        fn()
                    times[name].append((time.perf_counter() - t0) / iters)
    finally:
        if gc_was_on:
            gc.enable()
    return {name: (times[name], plan[name][0]) for name in fns}


def time_cuda(fn: Callable[[], object], s: Settings) -> tuple[float, float, float]:
    try:
        from triton.testing import do_bench
    except ImportError:  # triton is optional; torch's Timer also syncs once per block only
        from torch.utils.benchmark import Timer

        timer = Timer(stmt="fn()", globals={"fn": fn})
        m = timer.blocked_autorange(min_run_time=s.gpu_rep_ms / 1e3)
        return _quantiles(list(m.times))
    q = [0.2, 0.5, 0.8]
    p20, p50, p80 = do_bench(fn, warmup=s.gpu_warmup_ms, rep=s.gpu_rep_ms, quantiles=q)
    return p20 / 1e3, p50 / 1e3, p80 / 1e3


def peak_memory(fn: Callable[[], object], device: str) -> int:
    """Bytes one call allocates on top of what is live (its output and any workspace)."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


def run_case(case: Case, s: Settings) -> list[Result]:
    """Time every provider of one case side by side; a provider that cannot run is recorded."""
    inputs = fresh_inputs(case, s)
    results, ready = {}, {}
    for name in case.providers:
        res = results[name] = Result(case, name)
        if name == COMPILED and not s.compile:
            res.status, res.reason = "not run", "torch.compile not requested (--compile)"
            continue
        try:
            ready[name] = build(case, inputs, name)
        except Exception as e:  # noqa: BLE001 - recorded per provider, the run goes on
            res.status = "unavailable" if is_unavailable(e) else "failed"
            res.reason = _reason(e)
    if case.device.startswith("cuda"):
        for name, fn in ready.items():
            results[name].quantiles_s = time_cuda(fn, s)
            results[name].peak_mem_bytes = peak_memory(fn, case.device)
    else:
        before, t0 = _cpu_seconds(), time.perf_counter()
        timed = time_cpu(ready, s)
        foreign = foreign_cores(before, _cpu_seconds(), time.perf_counter() - t0)
        for name, (times, iters) in timed.items():
            res = results[name]
            res.times_s, res.iterations, res.quantiles_s = times, iters, _quantiles(times)
            res.foreign_cores = foreign
    return list(results.values())
