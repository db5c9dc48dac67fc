"""What a benchmark run leaves behind: the machine header, Markdown tables, JSON and a PNG.

Absolute times mean nothing without the machine, versions and dtype, so every table and
file carries them (DESIGN.md section 6). The tables are GitHub Markdown: they read in a
terminal and paste into the README unchanged.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import torch

from . import gpu
from .runner import COMPILED, Result, dtype_name

RATIOS = ("vs_eager", "vs_compile", "vs_floor")  # speedup columns, baseline time / genfast time


def _run(cmd: list[str], cwd: str | None = None) -> str:
    try:
        out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def _first_line(text: str) -> str | None:
    return text.splitlines()[0] if text else None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _genfast_commit() -> str | None:
    import genfast

    where = os.path.dirname(os.path.abspath(genfast.__path__[0]))
    commit = _run(["git", "rev-parse", "--short", "HEAD"], cwd=where)
    if not commit:
        return None  # an installed wheel, or no git here
    dirty = _run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where)
    return commit + ("-dirty" if dirty else "")


def machine(device: str, load_before: float | None = None,
            ceilings: dict | None = None) -> dict:
    """Everything a reader needs to trust (or discount) the times; called after the run.
    ceilings: gpu.ceilings() of the card, measured before the run (GPU only)."""
    from importlib import metadata

    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    info = {
        "device": device,
        "device_name": f"cpu ({_cpu_model()})",
        "cpu": _cpu_model(),
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "os": platform.platform(),
        "torch": torch.__version__,
        "triton": version("triton"),
        "genfast": version("genfast"),
        "genfast_commit": _genfast_commit(),
        "cuda": torch.version.cuda,
        "time_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "load_1min_before": load_before,
        "load_1min_after": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    if device.startswith("cuda"):
        info |= {
            "device_name": torch.cuda.get_device_name(device),
            "capability": "sm_{}{}".format(*torch.cuda.get_device_capability(device)),
            "driver": _first_line(
                _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])),
        }
        info |= ceilings or {}
    try:
        from genfast import backends

        info["backends"] = backends.availability(torch.device(device).type, torch.float32)
    except Exception as e:  # noqa: BLE001 - provenance only; never fail a finished run here
        info["backends"] = f"unknown ({type(e).__name__}: {e})"
    return info


def foreign_max(rows_: list[dict]) -> float | None:
    """Most cores other processes used during any case's timing (None on GPU runs)."""
    seen = [r["foreign_cores"] for r in rows_ if r.get("foreign_cores") is not None]
    return max(seen, default=None)


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-")


def file_stem(what: str, info: dict, scope: str) -> str:
    """`what`_`where`, suffixed -quick or -default: the full grid (--full) has no suffix, as
    the committed results in bench/results/ were made with it."""
    if info["device"].startswith("cuda"):
        where = slug(info["device_name"])
    else:  # CPU results depend on the thread count as much as on the chip
        where = f"cpu-{slug(info['cpu'])}-{info['threads']}t"
    return f"{what}_{where}" + ("" if scope == "full" else f"-{scope}")


def fmt_time(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} µs"
    return f"{seconds * 1e3:.2f} ms" if seconds < 1 else f"{seconds:.2f} s"


def fmt_rate(x: float) -> str:
    """12.3 G, 456 T: FLOP/s with an SI prefix, 3 significant digits."""
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if x >= scale:
            return f"{x / scale:.3g} {prefix}"
    return f"{x:.3g}"


def _fmt_times(median: float, lo: float, hi: float) -> tuple[str, str]:
    """'111.4 µs', '109.6–113.1': the spread in the median's unit, so the column stays narrow."""
    scale, digits = (1e6, 1) if median < 1e-3 else (1e3, 2)
    return fmt_time(median), f"{lo * scale:.{digits}f}–{hi * scale:.{digits}f}"


def speedups(res: Result, by_name: dict[str, Result]) -> dict[str, float | None]:
    """baseline time / genfast time for each anchor: > 1 means genfast is faster."""
    case = res.case
    out = {}
    for key, anchor in zip(RATIOS, (case.eager, COMPILED, case.floor), strict=True):
        base = by_name.get(anchor)
        ok = res.median_s and base is not None and base.median_s
        out[key] = base.median_s / res.median_s if ok else None
    return out


def rows(results: list[Result], info: dict) -> list[dict]:
    """One JSON-ready row per (case, provider), with every derived number."""
    by_case: dict[str, dict[str, Result]] = {}
    for r in results:
        by_case.setdefault(r.case.id, {})[r.provider] = r
    out = []
    for r in results:
        c, med = r.case, r.median_s
        dt = dtype_name(c.dtype)
        row = {
            "op": c.op, "case": c.name, "shape": list(c.shape), "dtype": dt,
            "device": c.device, "mode": c.mode, "provider": r.provider, "status": r.status,
            "reason": r.reason, "bytes": c.bytes, "flops": r.flops, "table": c.table,
            "eager": c.eager, "floor": c.floor,
            "p20_ms": r.quantiles_s[0] * 1e3 if med else None,
            "median_ms": med * 1e3 if med else None,
            "p80_ms": r.quantiles_s[2] * 1e3 if med else None,
            "times_ms": [t * 1e3 for t in r.times_s], "iterations": r.iterations,
            "peak_mem_mib": r.peak_mem_bytes / 2**20 if r.peak_mem_bytes is not None else None,
            "foreign_cores": r.foreign_cores, "case_wall_s": r.case_wall_s,
        }
        row |= gpu.achieved(c.bytes, r.flops, med, peak_tbps=info.get("peak_tbps"),
                            peak_tflops=info.get("matmul_tflops_measured", {}).get(dt))
        if r.provider.startswith("genfast"):
            row |= speedups(r, by_case[c.id])
        out.append(row)
    return out


def header(title: str, info: dict, rows_: list[dict]) -> str:
    commit = info["genfast_commit"] or "n/a"
    if info["device"].startswith("cuda"):
        mm = ", ".join(f"{k} {v:.0f}" for k, v in info.get("matmul_tflops_measured", {}).items())
        extra = (f" | {info['capability']} | CUDA {info['cuda']} | "
                 f"driver {info['driver'] or 'n/a'} | % peak BW against the "
                 f"{info.get('peak_source', 'n/a')}; copy measured here "
                 f"{info.get('copy_tbps_measured') or 0:.2f} TB/s | % peak FLOP/s against a "
                 f"matmul measured here (TFLOP/s: {mm or 'n/a'})")
    else:
        extra = f" | {info['threads']} threads | peak memory: n/a on CPU"
    warn, foreign = "", foreign_max(rows_)
    if foreign is not None and foreign > 0.2:
        warn = (f"\n**Warning: the machine was busy**: other processes used up to {foreign:.1f} "
                f"of {info['cpu_count']} cores while this ran. Times are inflated, multi-threaded "
                "baselines most, so these ratios flatter genfast.\n")
    return (f"## genfast bench: {title}\n\n"
            f"**{info['device_name']}**{extra} | torch {info['torch']} | "
            f"triton {info['triton'] or 'n/a'} | python {info['python']} | "
            f"genfast {info['genfast']} ({commit}) | {info['time_utc']}\n\n"
            "Times are per call: median (p20–p80) of repeats run in interleaved rounds. "
            "Speedup = baseline time / genfast time (> 1: genfast is faster), measured side by "
            "side in this run.\n" + warn)


def table(op: str, rows_: list[dict], gpu_run: bool) -> str:
    mine = [r for r in rows_ if r["op"] == op and r["table"]]
    flops = any(r["flops"] for r in mine)
    cols = ["shape", "dtype", "mode", "case", "provider", "median", "p20–p80", "GB/s"]
    cols += ["FLOP/s"] if flops else []
    cols += ["% peak", "peak mem"] if gpu_run else []
    cols += ["vs eager", "vs compile", "vs floor"]
    lines = [f"### {op}", "", "| " + " | ".join(cols) + " |",
             "|" + "|".join("---:" if i >= 5 else "---" for i in range(len(cols))) + "|"]
    notes: dict[str, set[str]] = {}
    for r in mine:
        cells = ["x".join(map(str, r["shape"])), r["dtype"], r["mode"], r["case"], r["provider"]]
        if r["median_ms"] is None:
            notes.setdefault(r["provider"], set()).add(f"{r['status']}: {r['reason']}")
            cells += [r["status"]] + ["—"] * (len(cols) - 6)
        else:
            cells += [*_fmt_times(r["median_ms"] / 1e3, r["p20_ms"] / 1e3, r["p80_ms"] / 1e3),
                      f"{r['gbps']:.1f}"]
            if flops:
                cells.append(fmt_rate(r["tflops"] * 1e12) if r["tflops"] else "")
            if gpu_run:
                pct = r["pct_peak_flops"] if r["flops"] else r["pct_peak_bw"]
                mem = r["peak_mem_mib"]
                cells += [f"{pct:.0f} %" if pct is not None else "n/a",
                          f"{mem:.1f} MiB" if mem is not None else "n/a"]
            cells += [f"{r[k]:.2f}x" if r.get(k) else "" for k in RATIOS]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines += [f"- {p}: {why}" for p, whys in notes.items() for why in sorted(whys)]
    if gpu_run:
        lines.append("- % peak: of the card's DRAM bandwidth (memory-bound rows), or of the "
                     "measured matmul rate (rows with FLOP/s)")
    return "\n".join(lines) + "\n"


def rate_rows(rows: list[dict], rate_of, cells, blank: int = 1) -> list[str]:
    """Markdown rows of a throughput section (generation): per case, each provider's rate
    (rate_of(row), None when it did not run), its formatted cells(row, rate) (`blank` dashes when
    it did not run) and how many times that rate genfast's best provider of the case reaches."""
    lines = []
    for case in dict.fromkeys(r["case"] for r in rows):
        rs = [r for r in rows if r["case"] == case]
        best = max((rate_of(r) or 0 for r in rs if r["provider"].startswith("genfast")),
                   default=0)
        for r in rs:
            rate = rate_of(r)
            if rate is None:
                lines.append(f"| {case} | {r['provider']} |" + " — |" * (blank + 1))
                continue
            vs = "" if r["provider"].startswith("genfast") else f"{best / rate:.1f}x"
            lines.append(f"| {case} | {r['provider']} | {cells(r, rate)} | {vs} |")
    return lines


def _is_torch(r: dict) -> bool:
    """A plain-PyTorch way to get the same result: not genfast, not the floor."""
    return not r["provider"].startswith("genfast") and r["provider"] != r["floor"]


def summary(rows_: list[dict]) -> str:
    """One line per case: genfast's best provider against eager, torch.compile and the best
    plain-PyTorch version in the run (the specialist, when it is the fastest)."""
    cases: dict[tuple, list[dict]] = {}
    for r in rows_:
        if r["table"]:
            cases.setdefault((r["op"], r["case"], tuple(r["shape"]), r["dtype"], r["mode"]),
                             []).append(r)
    lines = ["### summary: genfast's best provider per case", "",
             "| op | case | shape | dtype | mode | genfast | time | vs eager | "
             "vs torch.compile | vs best torch (which) |",
             "|---|---|---|---|---|---|---:|---:|---:|---|"]
    absent: set[str] = set()
    for (op, name, shape, dtype, mode), rs in cases.items():
        ok = [r for r in rs if r["median_ms"] is not None]
        mine = [r for r in ok if r["provider"].startswith("genfast")]
        torch_ok = [r for r in ok if _is_torch(r)]
        cells = [op, name, "x".join(map(str, shape)), dtype, mode]
        if not mine:
            why = "; ".join(sorted({f"{r['provider']}: {r['status']}" for r in rs
                                    if r["provider"].startswith("genfast")}))
            lines.append("| " + " | ".join(cells + [why or "no genfast provider"] + [""] * 4)
                         + " |")
            continue
        best = min(mine, key=lambda r: r["median_ms"])
        comp = next((r for r in rs if r["provider"] == COMPILED), None)
        if comp is None:
            vs_comp = "n/a"
        elif comp["median_ms"] is None:
            vs_comp = f"— ({comp['status']})"
            absent.add(f"{comp['status']}: {comp['reason']}")
        else:
            vs_comp = f"{best['vs_compile']:.2f}x"
        top = min(torch_ok, key=lambda r: r["median_ms"], default=None)
        vs_top = f"{top['median_ms'] / best['median_ms']:.2f}x ({top['provider']})" if top else ""
        vs_eager = f"{best['vs_eager']:.2f}x" if best.get("vs_eager") else ""
        cells += [best["provider"], fmt_time(best["median_ms"] / 1e3), vs_eager, vs_comp, vs_top]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines += [f"- torch.compile {why}" for why in sorted(absent)]
    return "\n".join(lines) + "\n"


def markdown(title: str, info: dict, rows_: list[dict], extra: list[str] = ()) -> str:
    """The header, one table per op, the op modules' own sections (`extra`), the summary."""
    ops = list(dict.fromkeys(r["op"] for r in rows_ if r["table"]))
    gpu_run = info["device"].startswith("cuda")
    parts = [header(title, info, rows_)] + [table(op, rows_, gpu_run) for op in ops]
    return "\n".join([*parts, *extra, summary(rows_)])


def save(out_dir: Path, stem: str, payload: dict, text: str) -> list[Path]:
    """JSON, Markdown and (with matplotlib) a PNG; each written whole, then renamed, so an
    interrupted run never leaves a half-written file."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.json", out_dir / f"{stem}.md", out_dir / f"{stem}.png"]
    for path, content in zip(paths, (json.dumps(payload, indent=1) + "\n", text), strict=False):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(content)
        os.replace(tmp, path)
    try:
        from .chart import chart

        tmp = paths[2].with_name(paths[2].name + ".tmp")
        chart(tmp, payload)
        os.replace(tmp, paths[2])
    except ImportError:  # matplotlib is an optional (bench) extra
        paths.pop()
    except Exception as e:  # noqa: BLE001 - a chart is not worth the JSON and Markdown
        print(f"genfast bench: no PNG ({type(e).__name__}: {e})", file=sys.stderr)
        paths.pop()
    return paths
