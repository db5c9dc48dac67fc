"""The PNG of a run: speedup over PyTorch eager per case, one panel per op, log scale."""

from __future__ import annotations

from pathlib import Path


def chart(path: Path, payload: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on CI or a GPU box
    import matplotlib.pyplot as plt

    rows_ = [r for r in payload["results"] if r["median_ms"] is not None and r["table"]]
    ops = list(dict.fromkeys(r["op"] for r in rows_))
    if not ops:
        return
    fig, axes = plt.subplots(len(ops), 1, figsize=(11, 3.6 * len(ops)), squeeze=False)
    for ax, op in zip(axes[:, 0], ops, strict=True):
        mine = [r for r in rows_ if r["op"] == op]

        def key(r):
            return ("x".join(map(str, r["shape"])), r["dtype"], r["mode"], r["case"])

        cases = list(dict.fromkeys(key(r) for r in mine))
        providers = list(dict.fromkeys(r["provider"] for r in mine))
        eager = {key(r): r["median_ms"] for r in mine if r["provider"] == r["eager"]}
        width = 0.8 / len(providers)
        for i, p in enumerate(providers):
            pts = [(cases.index(key(r)), eager[key(r)] / r["median_ms"])
                   for r in mine if r["provider"] == p and key(r) in eager]
            ax.bar([x + i * width for x, _ in pts], [y for _, y in pts], width, label=p)
        ax.set_xticks([x + 0.4 - width / 2 for x in range(len(cases))])
        ax.set_xticklabels(["\n".join(c) for c in cases], fontsize=7)
        ax.set_yscale("log")
        ax.axhline(1.0, color="black", lw=0.8)
        ax.set_ylabel(f"speedup vs {mine[0]['eager']}")
        ax.set_title(op)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    info = payload["machine"]
    extra = "" if info["device"].startswith("cuda") else f", {info['threads']} threads"
    fig.suptitle(f"genfast {payload['title']} on {info['device_name']}{extra}, "
                 f"torch {info['torch']}")
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / fig.get_figheight()))  # room for the suptitle
    fig.savefig(path, dpi=120, format="png")
    plt.close(fig)
