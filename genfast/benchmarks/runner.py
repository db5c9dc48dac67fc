"""How genfast times things: a case, its providers, the clock, and the machine it ran on.

An op file (genfast/benchmarks/<op>.py) says *what* to time; this file says *how*
(DESIGN.md section 6, research/ecosystem.md B.9):

* Every provider of a case is warmed up, then the repeats of all providers run in
  interleaved rounds, so slow drift (turbo, a noisy neighbour, GPU clocks) hits every
  provider alike. Reported: the median and p20/p80 over the repeats.
* CPU: a repeat is enough back-to-back calls to be long against the timer's resolution.
* CUDA: CUDA events around each call with the L2 cache flushed before it, as
  triton.testing.do_bench does; one synchronize per block of calls, never one per call
  (on a µs-scale kernel that would time the sync, not the kernel).
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch

MODES = ("forward", "forward+backward", "sample")
SCOPES = ("quick", "default", "full")  # see cases() of each op module and Settings below
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
    # The one case per op whose torch.compile provider the default run builds: each compiled
    # graph costs seconds (tens on 2 cores), so `genfast bench` compiles one shape per op.
    compile_default: bool = False
    # Compute-bound (convolutions): count the eager provider's FLOPs and report TFLOP/s.
    count_flops: bool = False
    # False: the rows go to JSON and to the op module's own summary, not the generic table.
    table: bool = True

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
    gpu_warmup_ms: float = 25
    gpu_rep_ms: float = 100  # per provider, over all rounds
    gpu_rounds: int = 5
    # torch.compile: "all" cases, the "marked" one per op (Case.compile_default), or "none".
    compile: str = "all"

    def compiles(self, case: Case) -> bool:
        return self.compile == "all" or (self.compile == "marked" and case.compile_default)


FULL = Settings()
# `genfast bench`: < 3 minutes on 2 cores with the compiles, still >= 3 interleaved repeats;
# on a GPU ~90 cases in a few minutes, inside the GPU check's time (bench/gpu_check.sh).
DEFAULT = Settings(warmup_s=0.03, repeat_s=0.01, repeats=9, min_repeats=3, budget_s=0.25,
                   gpu_warmup_ms=10, gpu_rep_ms=60, gpu_rounds=3, compile="marked")
QUICK = Settings(warmup_s=0.002, repeat_s=0.002, repeats=3, min_repeats=3, budget_s=0.05,
                 gpu_warmup_ms=5, gpu_rep_ms=20, gpu_rounds=2, compile="none")
SETTINGS = {"quick": QUICK, "default": DEFAULT, "full": FULL}


@contextlib.contextmanager
def threads(n: int | None):
    """torch's thread count set to n (None: unchanged) for a provider that names its own."""
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


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


def env_scope() -> str:
    """Scope of pytest runs: GENFAST_BENCH_SCOPE (quick | default | full); else quick, or full
    with GENFAST_BENCH_QUICK=0. The bench files are CI smoke tests by default."""
    scope = os.environ.get("GENFAST_BENCH_SCOPE")
    if scope is None:
        return "quick" if os.environ.get("GENFAST_BENCH_QUICK", "1") != "0" else "full"
    if scope not in SCOPES:
        raise ValueError(f"GENFAST_BENCH_SCOPE must be one of {SCOPES}, got {scope!r}")
    return scope


def env_settings() -> Settings:
    """Settings for pytest runs: the scope's, torch.compile as GENFAST_BENCH_COMPILE=1|0 says."""
    s = SETTINGS[env_scope()]
    want = os.environ.get("GENFAST_BENCH_COMPILE")
    return s if want is None else replace(s, compile="all" if want != "0" else "none")


def backends_for(device: str, scope: str) -> tuple[str, ...]:
    """genfast backends an op module times. The reference (plain PyTorch, the oracle) is slow
    on the CPU and says nothing the eager baseline does not: --quick and --full only, unless
    it is all genfast has here. Triton on a CPU tensor is the interpreter, never worth timing."""
    from genfast import backends

    native = ("triton", "cuda") if device.startswith("cuda") else ("cpu",)
    if scope != "default" or not any(backends.available(b, device) for b in native):
        return (*native, "reference")
    return native


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
    if settings.compiles(case) and COMPILED in case.providers:
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
    iterations: int = 0  # calls per repeat
    quantiles_s: tuple[float, float, float] | None = None  # p20, median, p80
    peak_mem_bytes: int | None = None  # CUDA only: allocated by one call beyond what existed
    foreign_cores: float | None = None  # CPU only: cores other processes used while we timed
    flops: int | None = None  # of one eager call, where the case counts them
    case_wall_s: float = 0.0  # the whole case: inputs, builds and compiles, timing

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


Plan = dict[str, tuple[int, int]]  # provider -> (calls per repeat, repeats)
Measure = Callable[[Callable[[], object], int], list[float]]  # (fn, calls) -> s per call


def plan_repeats(per_call: dict[str, float], repeat_s: float, repeats: int, min_repeats: int,
                 budget_s: float) -> Plan:
    """Calls per repeat (a repeat lasts >= repeat_s) and repeats per provider: a slow provider
    gets fewer repeats to stay inside budget_s, never fewer than min_repeats."""
    plan = {}
    for name, t in per_call.items():
        t = max(t, 1e-9)
        iters = max(1, math.ceil(repeat_s / t))
        plan[name] = (iters, min(repeats, max(min_repeats, int(budget_s / (iters * t)))))
    return plan


def interleave(fns: dict[str, Callable[[], object]], plan: Plan,
               measure: Measure) -> dict[str, list[float]]:
    """Round r runs repeat r of every provider that still has one: providers alternate, so
    drift during the run spreads over all of them instead of biasing the last one."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(max((reps for _, reps in plan.values()), default=0)):
        for name, fn in fns.items():
            iters, reps = plan[name]
            if r < reps:
                times[name] += measure(fn, iters)
    return times


def _cpu_measure(fn: Callable[[], object], calls: int) -> list[float]:
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return [(time.perf_counter() - t0) / calls]


def time_cpu(fns: dict[str, Callable[[], object]], s: Settings) -> dict[str, tuple[list, int]]:
    """Per provider: (seconds per call of each repeat, calls per repeat)."""
    per_call = {name: _warm(fn, s.warmup_s) for name, fn in fns.items()}
    plan = plan_repeats(per_call, s.repeat_s, s.repeats, s.min_repeats, s.budget_s)
    gc_was_on = gc.isenabled()
    gc.disable()  # a collection inside a repeat is noise that belongs to no provider
    try:
        times = interleave(fns, plan, _cpu_measure)
    finally:
        if gc_was_on:
            gc.enable()
    return {name: (times[name], plan[name][0]) for name in fns}


def count_flops(fn: Callable[[], object]) -> int | None:
    """FLOPs of one call by torch's own per-op formulas (matmuls and convolutions, forward
    and every backward): the useful work, for TFLOP/s. A dispatch mode of our own, not
    FlopCounterMode, whose module hooks break torch.autograd.grad (a gradient penalty).
    None where it cannot count: it is a column of the report, never a reason to fail."""
    try:
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils.flop_counter import flop_registry
    except ImportError:
        return None

    class Counter(TorchDispatchMode):
        total = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            formula = flop_registry.get(func._overloadpacket)
            if formula is not None:
                self.total += formula(*args, **kwargs, out_val=out)
            return out

    try:
        with Counter() as counter:
            fn()
    except Exception:  # noqa: BLE001 - see the docstring
        return None
    return counter.total or None


def run_case(case: Case, s: Settings) -> list[Result]:
    """Time every provider of one case side by side; a provider that cannot run is recorded."""
    start = time.perf_counter()
    inputs = fresh_inputs(case, s)
    results, ready = {}, {}
    for name in case.providers:
        res = results[name] = Result(case, name)
        if name == COMPILED and not s.compiles(case):
            res.status = "not run"
            res.reason = ("torch.compile off (--compile turns it on)" if s.compile == "none" else
                          "the default run compiles one case per op (each compile costs "
                          "seconds on a small CPU); --full compiles every case")
            continue
        try:
            ready[name] = build(case, inputs, name)
        except Exception as e:  # noqa: BLE001 - recorded per provider, the run goes on
            res.status = "unavailable" if is_unavailable(e) else "failed"
            res.reason = _reason(e)
    flops = None
    if case.count_flops and case.eager in ready:
        flops = count_flops(ready[case.eager])
    if case.device.startswith("cuda"):
        from .gpu import peak_memory, time_cuda

        timed = time_cuda(ready, s, case.device)
        for name, fn in ready.items():
            results[name].peak_mem_bytes = peak_memory(fn, case.device)
        foreign = None
    else:
        before, t0 = _cpu_seconds(), time.perf_counter()
        timed = time_cpu(ready, s)
        foreign = foreign_cores(before, _cpu_seconds(), time.perf_counter() - t0)
    for name, (times, iters) in timed.items():
        res = results[name]
        res.times_s, res.iterations, res.quantiles_s = times, iters, _quantiles(times)
        res.foreign_cores = foreign
    wall = time.perf_counter() - start
    for res in results.values():
        res.flops, res.case_wall_s = flops, wall
    return list(results.values())
