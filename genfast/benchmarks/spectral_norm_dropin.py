"""Benchmark cases of the spectral-norm drop-in path: each layer recomputing W / sigma(W) when
its ``.weight`` is read, as a user's forward does after swapping torch's
``parametrizations.spectral_norm`` for ``genfast.nn.spectral_norm``.

The model is the DCGAN-sized critic of SN-GAN's "standard CNN" at 32x32, width 64:
Conv 1->64->64->128->128->256->256->512 (3x3 stride 1 and 4x4 stride 2 in turn) to a 512x4x4
map, then Linear 8192->1; 8 spectral norms over 2.9 M weights, in training mode (one power
iteration per read). Cases:

* ``spectral_norm_dropin`` / ``critic .weight x8``: every layer's ``.weight`` read once,
  autograd on, no convolution: the spectral-norm share of a forward. genfast drop-in (one
  kernel call per layer), genfast's SpectralNormGroup (one call for all layers, then the
  reads), torch's parametrization, torch.compile of it; floor: W / 2 of every weight.
* ``spectral_norm_dropin`` / ``critic forward``: the critic's forward on a batch of 16, the
  same providers; floor: the critic without spectral norm. What a user sees end to end.
* ``spectral_norm_dropin_layer``: one layer's ``.weight`` in training mode (power iteration,
  sigma, W / sigma) and in eval mode (sigma from the stored vectors, W / sigma), genfast vs
  torch. The difference is the power iteration; sections() prints where the time goes.
"""

from __future__ import annotations

import torch
from torch import nn

from .runner import COMPILED, Case, Factory, Inputs

CRITIC = "sngan-cnn-32-w64"
QUICK_CRITIC = "sngan-cnn-tiny"
BATCH = 16
LAYER_OP = "spectral_norm_dropin_layer"
EAGER = "torch eager"


def _models():
    from . import spectral_norm as sn  # the models and variants the other SN cases use

    return sn


def _reads(model: nn.Module, group: bool):
    """Read every spectral-normalized ``.weight`` (after one group call, for the group)."""
    sn = _models()
    layers = sn._sn_layers(model)
    update = model.genfast_group.update if group else None

    def run():
        if update is not None:
            update()
        return [m.weight for m in layers]

    return run


def _providers(name: str, backends: tuple[str, ...], build) -> dict[str, Factory]:
    """genfast drop-in and group per backend, torch eager and compiled: build(model, inp)."""
    sn = _models()
    base = sn._build(*name)

    def on(kind, backend, fn):
        return lambda inp: fn(sn._variant(base, kind, backend), inp)

    providers: dict[str, Factory] = {}
    for b in backends:
        providers[f"genfast:{b} drop-in"] = on("per-layer", b, build)
        providers[f"genfast:{b} group"] = on("group", b, build)
    providers[EAGER] = on("torch", None, build)
    providers[COMPILED] = on("torch", None,
                             lambda m, inp: torch.compile(build(m, inp), dynamic=False))
    return providers


def weights_case(model: str, device: str, dtype: torch.dtype, backends: tuple[str, ...],
                 compile_default: bool = False) -> Case:
    sn = _models()
    key = (model, device, dtype)
    providers = _providers(key, backends,
                           lambda m, inp: _reads(m, hasattr(m, "genfast_group")))

    def floor(inp):
        ws = [m.parametrizations.weight.original for m in sn._sn_layers(sn._build(*key))]
        return lambda: [w / 2.0 for w in ws]

    providers["W / 2 (floor)"] = floor
    layers = sn._sn_layers(sn._build(*key))
    n = sum(m.parametrizations.weight.original.numel() for m in layers)
    return Case(op="spectral_norm_dropin", name=f"{model} .weight x{len(layers)}",
                shape=(len(layers), n), dtype=dtype, device=device, mode="forward",
                inputs=dict, providers=providers,
                # power iteration reads W twice (W v, W^T u); W / sigma reads and writes it
                bytes=4 * n * dtype.itemsize, eager=EAGER, floor="W / 2 (floor)",
                compile_default=compile_default)


def forward_case(model: str, device: str, dtype: torch.dtype, backends: tuple[str, ...],
                 batch: int) -> Case:
    sn = _models()
    key = (model, device, dtype)
    size = sn._settings(model).get("image_shape", (1, 16, 16))[-1]
    shape = (batch, 1, size, size)

    def inputs() -> Inputs:
        gen = torch.Generator(device=device).manual_seed(0)
        return {"x": torch.rand(shape, generator=gen, device=device).to(dtype) * 2 - 1}

    def forward(m, inp):
        return lambda: m(inp["x"])  # the group's hook runs its one call before the layers

    providers = _providers(key, backends, forward)
    providers["no spectral norm (floor)"] = lambda inp: forward(
        sn._build(model, device, dtype, spectral=False), inp)
    n = sum(m.parametrizations.weight.original.numel() for m in sn._sn_layers(sn._build(*key)))
    return Case(op="spectral_norm_dropin", name=f"{model} forward", shape=shape, dtype=dtype,
                device=device, mode="forward", inputs=inputs, providers=providers,
                bytes=4 * n * dtype.itemsize + torch.Size(shape).numel() * dtype.itemsize,
                eager=EAGER, floor="no spectral norm (floor)", count_flops=True)


def _layer_label(i: int, layer: nn.Module) -> str:
    if isinstance(layer, nn.Conv2d):
        k = "x".join(map(str, layer.kernel_size))
        return f"L{i} conv{k}s{layer.stride[0]}"
    return f"L{i} {type(layer).__name__.removeprefix('Parametrized').lower()}"


def layer_cases(model: str, device: str, dtype: torch.dtype,
                backends: tuple[str, ...]) -> list[Case]:
    sn = _models()
    key = (model, device, dtype)
    base = sn._build(*key)
    out = []
    for i, layer in enumerate(sn._sn_layers(base)):
        w = layer.parametrizations.weight.original
        for mode in ("train", "eval"):
            def one(kind, backend, i=i, mode=mode):
                def factory(inp):
                    m = sn._sn_layers(sn._variant(base, kind, backend))[i]
                    m.train(mode == "train")  # the rest of the copied model is dropped
                    return lambda: m.weight

                return factory

            providers = {f"genfast:{b}": one("per-layer", b) for b in backends}
            providers[EAGER] = one("torch", None)
            out.append(Case(op=LAYER_OP, name=_layer_label(i, layer), shape=tuple(w.shape),
                            dtype=dtype, device=device, mode=mode, inputs=dict,
                            providers=providers, bytes=(4 if mode == "train" else 3)
                            * w.numel() * dtype.itemsize, eager=EAGER, floor="", table=False))
    return out


def cases(device: str, scope: str, dtypes: list[torch.dtype],
          backends: tuple[str, ...]) -> list[Case]:
    model = QUICK_CRITIC if scope == "quick" else CRITIC
    batch = 2 if scope == "quick" else BATCH
    out = []
    for dtype in dtypes:
        out.append(weights_case(model, device, dtype, backends,
                                compile_default=scope == "default"))
        out.append(forward_case(model, device, dtype, backends, batch))
        if dtype == dtypes[0] or scope == "full":  # where the time goes: one dtype says it
            out += layer_cases(model, device, dtype, backends)
    return out


def _ms(row: dict | None) -> str:
    return f"{row['median_ms'] * 1e3:.0f}" if row and row["median_ms"] is not None else "—"


def sections(rows: list[dict]) -> list[str]:
    """Per layer of the critic: each provider's .weight time in training mode, and how it
    splits into the power iteration (train − eval) and sigma + W / sigma (eval)."""
    mine = [r for r in rows if r["op"] == LAYER_OP]
    if not mine:
        return []
    at = {(r["case"], r["dtype"], r["mode"], r["provider"]): r for r in mine}
    providers = list(dict.fromkeys(r["provider"] for r in mine))
    out = []
    for dtype in dict.fromkeys(r["dtype"] for r in mine):
        layers = list(dict.fromkeys((r["case"], tuple(r["shape"])) for r in mine
                                    if r["dtype"] == dtype))
        cols = ["layer", "weight"]
        for p in providers:
            cols += [f"{p} train", "power iter", "σ + W/σ"]
        cols += [f"{p} vs torch (train)" for p in providers if p != EAGER]
        lines = [f"### {LAYER_OP}: where a training-mode `.weight` read spends its time "
                 f"({dtype}, µs)", "",
                 "| " + " | ".join(cols) + " |", "|---|---|" + "---:|" * (len(cols) - 2)]
        total = {p: [0.0, 0.0] for p in providers}
        for name, shape in layers:
            cells = [name, "x".join(map(str, shape))]
            train = {p: at.get((name, dtype, "train", p)) for p in providers}
            for p in providers:
                ev = at.get((name, dtype, "eval", p))
                t, e = (r["median_ms"] if r else None for r in (train[p], ev))
                pi = f"{(t - e) * 1e3:.0f}" if t is not None and e is not None else "—"
                cells += [_ms(train[p]), pi, _ms(ev)]
                if t is not None and e is not None:
                    total[p][0] += t
                    total[p][1] += e
            base = train.get(EAGER)
            for p in providers:
                if p != EAGER:
                    ok = base and train[p] and base["median_ms"] and train[p]["median_ms"]
                    cells.append(f"{base['median_ms'] / train[p]['median_ms']:.2f}x" if ok
                                 else "")
            lines.append("| " + " | ".join(cells) + " |")
        cells = ["all", ""]
        for p in providers:
            t, e = total[p]
            cells += [f"{t * 1e3:.0f}", f"{(t - e) * 1e3:.0f}", f"{e * 1e3:.0f}"]
        cells += [f"{total[EAGER][0] / total[p][0]:.2f}x" if total[p][0] else ""
                  for p in providers if p != EAGER]
        lines += ["| " + " | ".join(cells) + " |", "",
                  "- power iter = train − eval: the power-iteration step (W v, W^T u, two "
                  "normalizations); σ + W/σ = eval mode: sigma from the stored vectors and the "
                  "materialized W / sigma, with autograd on. Medians of separate runs, so "
                  "a difference can be off by their noise. Each layer is read over and over, "
                  "its weight warm in cache; the `.weight x8` row streams all of them."]
        out.append("\n".join(lines) + "\n")
    return out
