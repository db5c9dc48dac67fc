"""`genfast bench [OP ...]`: time genfast against PyTorch eager, torch.compile and a floor.

Adding an op = writing genfast/benchmarks/<op>.py with a ``cases(device, quick, dtypes)``
function and one line in OPS. bench/bench_<op>.py runs the same cases under pytest-benchmark.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import sys
from pathlib import Path

import torch

# op stem (DESIGN.md section 1) -> module with cases(device, quick, dtypes) -> list[Case]
OPS = {
    "gumbel": "genfast.benchmarks.gumbel",
    "spectral_norm": "genfast.benchmarks.spectral_norm",
    "gradient_penalty": "genfast.benchmarks.gradient_penalty",
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
        description="Time genfast ops side by side with PyTorch eager, torch.compile and a "
                    "no-noise floor; print Markdown tables, save JSON + Markdown + PNG.")
    p.add_argument("ops", nargs="*", metavar="OP", help=f"op stems (default: all of {list(OPS)})")
    p.add_argument("--quick", action="store_true",
                   help="tiny shapes and short timing: a CI smoke run in seconds (no torch.compile "
                        "unless --compile)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto = cuda when a GPU is visible")
    p.add_argument("--dtype", type=_dtypes, default=None,
                   help="comma list, e.g. float32,bfloat16 "
                        "(default: float32 on CPU; float32,bfloat16 on GPU)")
    p.add_argument("--threads", type=int, default=2,
                   help="torch.set_num_threads for CPU runs (default 2, the CI machines)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="time torch.compile too (default: yes, except with --quick)")
    p.add_argument("-k", "--filter", default="", help="only cases whose id contains this text")
    p.add_argument("--out", type=Path, default=Path("bench/results"),
                   help="where JSON/Markdown/PNG go (default bench/results)")
    p.add_argument("--no-save", action="store_true", help="print the tables only")
    p.add_argument("--list", action="store_true", help="list the case ids and exit")
    return p


def main(argv: list[str] | None = None) -> int:
    from . import report, runner

    args = parser().parse_args(argv)
    unknown = [op for op in args.ops if op not in OPS]
    if unknown:
        print(f"genfast bench: unknown op {unknown}; known: {list(OPS)}", file=sys.stderr)
        return 2
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            print("genfast bench: --device cuda but no CUDA device is visible", file=sys.stderr)
            return 2
        device = f"cuda:{torch.cuda.current_device()}"
    torch.set_num_threads(args.threads)
    settings = runner.QUICK if args.quick else runner.Settings()
    if args.compile is not None:
        settings = dataclasses.replace(settings, compile=args.compile)

    # Sampled before any timing of ours: what else was keeping this machine busy.
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    status = 0
    for op in args.ops or list(OPS):
        cases = [c for c in load(op).cases(device=device, quick=args.quick, dtypes=args.dtype)
                 if args.filter in c.id]
        if args.list:
            print("\n".join(c.id for c in cases))
            continue
        results = []
        for i, case in enumerate(cases, 1):
            print(f"[{op} {i}/{len(cases)}] {case.id}", file=sys.stderr, flush=True)
            results += runner.run_case(case, settings)
        info = report.machine(device, load_before)
        rows = report.rows(results, info)
        text = report.markdown(op, info, rows)
        print(text)
        # A genfast provider that crashed fails the run; a baseline that cannot run here
        # (e.g. torch.compile without a compiler) is reported, not fatal.
        if any(r["status"] == "failed" and r["provider"].startswith("genfast") for r in rows):
            status = 1
        if not args.no_save and cases:
            payload = {"op": op, "machine": info, "settings": dataclasses.asdict(settings),
                       "eager": {c.op: c.eager for c in cases}, "results": rows}
            paths = report.save(args.out, report.file_stem(op, info, args.quick), payload, text)
            print("saved: " + ", ".join(map(str, paths)), file=sys.stderr)
    return status
