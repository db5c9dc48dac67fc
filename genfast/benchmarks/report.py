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
from pathlib import Path

import torch

from .runner import COMPILED, Result, dtype_name

# Peak DRAM bandwidth in TB/s by marketing name, most specific first; matched as substrings
# of torch.cuda.get_device_name (e.g. "NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-40GB").
PEAK_TBPS = (
    (("H200",), 4.8),
    (("H100", "PCIE"), 2.0),
    (("H100",), 3.35),
    (("A100", "80GB"), 2.0),
    (("A100",), 1.55),
    (("V100",), 0.9),
)
RATIOS = ("vs_eager", "vs_compile", "vs_floor")  # speedup columns, baseline time / genfast time


def peak_tbps(gpu_name: str) -> float | None:
    name = gpu_name.upper()
    for keys, tbps in PEAK_TBPS:
        if all(k in name for k in keys):
            return tbps
    return None


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


def machine(device: str, load_before: float | None = None) -> dict:
    """Everything a reader needs to trust (or discount) the times; called after the run."""
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
        name = torch.cuda.get_device_name(device)
        info |= {
            "device_name": name,
            "capability": "sm_{}{}".format(*torch.cuda.get_device_capability(device)),
            "driver": _first_line(
                _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])),
            "peak_tbps": peak_tbps(name),
        }
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


def file_stem(op_stem: str, info: dict, quick: bool) -> str:
    if info["device"].startswith("cuda"):
        where = slug(info["device_name"])
    else:  # CPU results depend on the thread count as much as on the chip
        where = f"cpu-{slug(info['cpu'])}-{info['threads']}t"
    return f"{op_stem}_{where}" + ("-quick" if quick else "")


def _fmt_times(median: float, lo: float, hi: float) -> tuple[str, str]:
    """'111.4 µs', '109.6–113.1': the spread in the median's unit, so the column stays narrow."""
    scale, unit, digits = (1e6, "µs", 1) if median < 1e-3 else (1e3, "ms", 2)
    return f"{median * scale:.{digits}f} {unit}", f"{lo * scale:.{digits}f}–{hi * scale:.{digits}f}"


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
        gbps = c.bytes / med / 1e9 if med else None
        row = {
            "op": c.op, "case": c.name, "shape": list(c.shape), "dtype": dtype_name(c.dtype),
            "device": c.device, "mode": c.mode, "provider": r.provider, "status": r.status,
            "reason": r.reason, "bytes": c.bytes,
            "p20_ms": r.quantiles_s[0] * 1e3 if med else None,
            "median_ms": med * 1e3 if med else None,
            "p80_ms": r.quantiles_s[2] * 1e3 if med else None,
            "times_ms": [t * 1e3 for t in r.times_s], "iterations": r.iterations,
            "gbps": gbps,
            "pct_peak_bw": 100 * gbps / (info["peak_tbps"] * 1e3)
            if gbps and info.get("peak_tbps") else None,
            "peak_mem_mib": r.peak_mem_bytes / 2**20 if r.peak_mem_bytes is not None else None,
            "foreign_cores": r.foreign_cores,
        }
        if r.provider.startswith("genfast"):
            row |= speedups(r, by_case[c.id])
        out.append(row)
    return out


def header(op_stem: str, info: dict, rows_: list[dict]) -> str:
    commit = info["genfast_commit"] or "n/a"
    gpu = info["device"].startswith("cuda")
    if gpu:
        bw = f"{info['peak_tbps']} TB/s" if info["peak_tbps"] else "unknown card"
        extra = (f" | {info['capability']} | CUDA {info['cuda']} | "
                 f"driver {info['driver'] or 'n/a'} | peak BW {bw}")
    else:
        extra = f" | {info['threads']} threads | peak memory: n/a on CPU"
    warn, foreign = "", foreign_max(rows_)
    if foreign is not None and foreign > 0.2:
        warn = (f"\n**Warning: the machine was busy**: other processes used up to {foreign:.1f} "
                f"of {info['cpu_count']} cores while this ran. Times are inflated, multi-threaded "
                "baselines most, so these ratios flatter genfast.\n")
    return (f"## genfast bench: {op_stem}\n\n"
            f"**{info['device_name']}**{extra} | torch {info['torch']} | "
            f"triton {info['triton'] or 'n/a'} | python {info['python']} | "
            f"genfast {info['genfast']} ({commit}) | {info['time_utc']}\n\n"
            "Times are per call: median (p20–p80). Speedup = baseline time / genfast time "
            "(> 1: genfast is faster), measured side by side in this run.\n" + warn)


def table(op: str, rows_: list[dict], gpu: bool) -> str:
    cols = ["shape", "dtype", "mode", "case", "provider", "median", "p20–p80", "GB/s"]
    cols += ["% peak BW", "peak mem"] if gpu else []
    cols += ["vs eager", "vs compile", "vs floor"]
    lines = [f"### {op}", "", "| " + " | ".join(cols) + " |",
             "|" + "|".join("---:" if i >= 5 else "---" for i in range(len(cols))) + "|"]
    notes: dict[str, set[str]] = {}
    for r in rows_:
        if r["op"] != op:
            continue
        cells = ["x".join(map(str, r["shape"])), r["dtype"], r["mode"], r["case"], r["provider"]]
        if r["median_ms"] is None:
            notes.setdefault(r["provider"], set()).add(f"{r['status']}: {r['reason']}")
            cells += [r["status"]] + ["—"] * (len(cols) - 6)
        else:
            cells += [*_fmt_times(r["median_ms"] / 1e3, r["p20_ms"] / 1e3, r["p80_ms"] / 1e3),
                      f"{r['gbps']:.1f}"]
            if gpu:
                pct = r["pct_peak_bw"]
                cells += [f"{pct:.0f} %" if pct is not None else "n/a",
                          f"{r['peak_mem_mib']:.1f} MiB"]
            cells += [f"{r[k]:.2f}x" if r.get(k) else "" for k in RATIOS]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines += [f"- {p}: {why}" for p, whys in notes.items() for why in sorted(whys)]
    return "\n".join(lines) + "\n"


def markdown(op_stem: str, info: dict, rows_: list[dict]) -> str:
    ops = list(dict.fromkeys(r["op"] for r in rows_))
    gpu = info["device"].startswith("cuda")
    return header(op_stem, info, rows_) + "\n" + "\n".join(table(op, rows_, gpu) for op in ops)


def save(out_dir: Path, stem: str, payload: dict, text: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.json", out_dir / f"{stem}.md", out_dir / f"{stem}.png"]
    paths[0].write_text(json.dumps(payload, indent=1) + "\n")
    paths[1].write_text(text)
    try:
        chart(paths[2], payload)
    except ImportError:  # matplotlib is an optional (bench) extra
        paths.pop()
    return paths


def chart(path: Path, payload: dict) -> None:
    """Speedup over PyTorch eager per case, one panel per op, log scale (1 = eager)."""
    import matplotlib

    matplotlib.use("Agg")  # no display on CI or a GPU box
    import matplotlib.pyplot as plt

    rows_ = [r for r in payload["results"] if r["median_ms"] is not None]
    ops = list(dict.fromkeys(r["op"] for r in rows_))
    fig, axes = plt.subplots(len(ops), 1, figsize=(11, 3.6 * len(ops)), squeeze=False)
    for ax, op in zip(axes[:, 0], ops, strict=True):
        mine = [r for r in rows_ if r["op"] == op]
        key = lambda r: ("x".join(map(str, r["shape"])), r["dtype"], r["mode"], r["case"])
        cases = list(dict.fromkeys(key(r) for r in mine))
        providers = list(dict.fromkeys(r["provider"] for r in mine))
        eager = {key(r): r["median_ms"] for r in mine if r["provider"] == payload["eager"][op]}
        width = 0.8 / len(providers)
        for i, p in enumerate(providers):
            pts = [(cases.index(key(r)), eager[key(r)] / r["median_ms"])
                   for r in mine if r["provider"] == p and key(r) in eager]
            ax.bar([x + i * width for x, _ in pts], [y for _, y in pts], width, label=p)
        ax.set_xticks([x + 0.4 - width / 2 for x in range(len(cases))])
        ax.set_xticklabels(["\n".join(c) for c in cases], fontsize=7)
        ax.set_yscale("log")
        ax.axhline(1.0, color="black", lw=0.8)
        ax.set_ylabel(f"speedup vs {payload['eager'][op]}")
        ax.set_title(op)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    info = payload["machine"]
    extra = "" if info["device"].startswith("cuda") else f", {info['threads']} threads"
    fig.suptitle(f"genfast {payload['op']} on {info['device_name']}{extra}, torch {info['torch']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
