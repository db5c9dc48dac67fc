"""`genfast bench [OP ...]`: time genfast against PyTorch eager, torch.compile and a floor.

Adding an op = writing genfast/benchmarks/<op>.py with a ``cases(device, scope, dtypes)``
function (and, optionally, ``sections(rows) -> list[str]`` of extra Markdown) and one line in
OPS. bench/bench_<op>.py runs the same cases under pytest-benchmark.

Scopes: ``--quick`` (tiny shapes, every provider, no torch.compile: the CI smoke run, seconds),
the default (each op's representative shapes, genfast's fastest backends, one torch.compile
graph per op: minutes on 2 cores) and ``--full`` (every shape, the reference backend, a
torch.compile graph per case).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import sys
import time
import traceback
from pathlib import Path

import torch

# op stem (DESIGN.md section 1) -> module with cases(device, scope, dtypes) -> list[Case]
OPS = {
    "gumbel": "genfast.benchmarks.gumbel",
    "sample": "genfast.benchmarks.sample",
    "spectral_norm": "genfast.benchmarks.spectral_norm",
    "gradient_penalty": "genfast.benchmarks.gradient_penalty",
    "causal_conv": "genfast.benchmarks.causal_conv",
    "masked_conv": "genfast.benchmarks.masked_conv",
    "lstm": "genfast.benchmarks.lstm",
    "attention": "genfast.benchmarks.attention",
}


def load(op: str):
    return importlib.import_module(OPS[op])


def _dtypes(text: str) -> list[torch.dtype]:
    names = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
             "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float64": torch.float64}
    try:
        return [names[t.strip()] for t in text.split(",")]
    except KeyError as e:
        msg = f"unknown dtype {e.args[0]!r}; use {', '.join(names)}"
        raise argparse.ArgumentTypeError(msg) from None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="genfast bench",
        description="Time genfast ops side by side with PyTorch eager, torch.compile, the best "
                    "plain-PyTorch version and a floor; print Markdown tables, save JSON + "
                    "Markdown + PNG. The default run takes a few minutes on 2 CPU cores.")
    p.add_argument("ops", nargs="*", metavar="OP", help=f"op stems (default: all of {list(OPS)})")
    scope = p.add_mutually_exclusive_group()
    scope.add_argument("--quick", action="store_true",
                       help="tiny shapes and short timing, every backend, no torch.compile "
                            "unless --compile: a CI smoke run in seconds")
    scope.add_argument("--full", action="store_true",
                       help="every shape, the reference backend too, torch.compile of every "
                            "case and longer timing (tens of minutes on 2 cores)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto = cuda when a GPU is visible")
    p.add_argument("--gpu", action="store_true",
                   help="the same as --device cuda: CUDA-event timing, GB/s or TFLOP/s and the "
                        "share of the card's peak")
    p.add_argument("--dtype", type=_dtypes, default=None,
                   help="comma list, e.g. float32,bfloat16 "
                        "(default: float32 on CPU; float32,bfloat16 on GPU)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads for CPU runs (default 2, the CI machines; 1 with "
                        "--quick, whose times mean nothing and which a busy neighbour would "
                        "stall at every 2-thread op)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile every case (--compile) or none (--no-compile); default: "
                        "one case per op, none with --quick, all with --full")
    p.add_argument("-k", "--filter", default="", help="only cases whose id contains this text")
    p.add_argument("--out", type=Path, default=Path("bench/results"),
                   help="where JSON/Markdown/PNG go (default bench/results), named "
                        "OPS_MACHINE[-quick|-default]")
    p.add_argument("--no-save", action="store_true", help="print the tables only")
    p.add_argument("--no-progress", action="store_true", help="no progress line on stderr")
    p.add_argument("--list", action="store_true", help="list the case ids and exit")
    return p


def _device(args: argparse.Namespace) -> str | None:
    device = "cuda" if args.gpu else args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            return None
        device = f"cuda:{torch.cuda.current_device()}"
    return device


def _crashed(case, exc: BaseException):
    """Results for a case whose timing itself raised: every provider failed, the run goes on."""
    from .runner import Result, _reason

    return [Result(case, name, status="failed", reason=f"case crashed: {_reason(exc)}")
            for name in case.providers]


def guarded(fn, *args):
    """fn(*args), or the traceback as text: a bug in formatting a finished measurement must
    not cost the measurement (a GPU run may happen once)."""
    try:
        return fn(*args)
    except Exception:  # noqa: BLE001 - shown in the output and the Markdown, never hidden
        text = f"(genfast bench: {getattr(fn, '__name__', fn)} failed)\n{traceback.format_exc()}"
        print(text, file=sys.stderr)
        return text


def main(argv: list[str] | None = None) -> int:
    from . import report, runner
    from .progress import Progress

    args = parser().parse_args(argv)
    unknown = [op for op in args.ops if op not in OPS]
    if unknown:
        print(f"genfast bench: unknown op {unknown}; known: {list(OPS)}", file=sys.stderr)
        return 2
    device = _device(args)
    if device is None:
        print("genfast bench: --gpu / --device cuda, but torch sees no CUDA device "
              f"(torch {torch.__version__}, built for CUDA {torch.version.cuda})", file=sys.stderr)
        return 2
    scope = "quick" if args.quick else "full" if args.full else "default"
    settings = runner.SETTINGS[scope]
    if args.compile is not None:
        settings = dataclasses.replace(settings, compile="all" if args.compile else "none")
    torch.set_num_threads(args.threads or (1 if scope == "quick" else 2))
    ops = args.ops or list(OPS)
    plan, broken = [], []
    for op in ops:
        try:  # building cases builds models: a family that cannot must not stop the others
            cases = load(op).cases(device=device, scope=scope, dtypes=args.dtype)
        except Exception:  # noqa: BLE001 - reported, and the exit status says so
            print(f"genfast bench: {op}: cannot build its cases\n{traceback.format_exc()}",
                  file=sys.stderr)
            broken.append(op)
            continue
        plan.append((op, [c for c in cases if args.filter in c.id]))
    if args.list:
        for _, cases in plan:
            for c in cases:
                compiled = settings.compiles(c) and runner.COMPILED in c.providers
                print(c.id + ("  [torch.compile]" if compiled else ""))
        return 1 if broken else 0

    # Sampled before any timing of ours: what else was keeping this machine busy.
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    ceilings = None
    if device.startswith("cuda"):
        from . import gpu

        dtypes = sorted({c.dtype for _, cases in plan for c in cases}, key=str)
        try:
            ceilings = gpu.ceilings(device, dtypes)
        except Exception as e:  # noqa: BLE001 - the run is still worth having without them
            print(f"genfast bench: could not measure the card's ceilings: {e}", file=sys.stderr)
    what = "-".join(ops) if args.ops else "all"
    title = f"{', '.join(ops)} ({scope} run)"
    stem = None
    t0 = time.perf_counter()
    progress = Progress(sum(len(c) for _, c in plan), enabled=not args.no_progress)
    rows: list[dict] = []
    extra: list[str] = []
    interrupted = False

    def save(info: dict) -> None:
        nonlocal stem
        if args.no_save or not rows:
            return
        stem = report.file_stem(what, info, scope)
        payload = {"title": title, "scope": scope, "ops": ops, "machine": info,
                   "settings": dataclasses.asdict(settings), "interrupted": interrupted,
                   "wall_s": time.perf_counter() - t0, "results": rows}
        report.save(args.out, stem, payload, guarded(report.markdown, title, info, rows, extra))

    results: list = []  # of the op family in progress
    try:
        for op, cases in plan:
            results = []
            for case in cases:
                progress.start(f"{op}: {case.id}")
                try:
                    results += runner.run_case(case, settings)
                except Exception as e:  # noqa: BLE001 - one broken case must not lose the rest
                    results += _crashed(case, e)
                progress.advance()
            info = report.machine(device, load_before, ceilings)
            op_rows = report.rows(results, info)
            rows.extend(op_rows)
            results = []
            sections = guarded(getattr(load(op), "sections", lambda _: []), op_rows)
            sections = sections if isinstance(sections, list) else [sections]
            extra.extend(sections)
            shown = dict.fromkeys(r["op"] for r in op_rows if r["table"])
            progress.write("\n".join([guarded(report.table, o, op_rows, device.startswith("cuda"))
                                      for o in shown] + sections))
            save(info)  # after every op: a run stopped later keeps what it measured
    except KeyboardInterrupt:  # Ctrl-C, or `timeout --signal=INT`: keep what finished
        interrupted = True
    progress.close()
    info = report.machine(device, load_before, ceilings)
    rows.extend(report.rows(results, info))  # the finished cases of an interrupted family
    save(info)
    print(guarded(report.header, title, info, rows) + "\n" + guarded(report.summary, rows))
    wall = time.perf_counter() - t0
    print(f"genfast bench: {len(rows)} rows in {wall:.0f} s"
          + (" (interrupted)" if interrupted else "")
          + (f"; saved {args.out / stem}.json, .md, .png" if stem else ""), file=sys.stderr)
    if interrupted:
        return 130
    # A genfast provider that crashed fails the run; a baseline that cannot run here
    # (e.g. torch.compile without a compiler) is reported, not fatal.
    failed = [r for r in rows if r["status"] == "failed" and r["provider"].startswith("genfast")]
    if broken:
        print(f"genfast bench: not run, their cases failed to build: {broken}", file=sys.stderr)
    return 1 if failed or broken else 0
