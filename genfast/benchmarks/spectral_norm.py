"""Benchmark cases for genfast/ops/spectral_norm.py on the SN-GAN discriminators.

The models are genfast.models.sngan's discriminators on the 16x16 digits: its default (the
DCGAN discriminator, spectrally normalized: 3 layers, 134 k weights) and its paper "standard
CNN" option (6 layers, 0.7 M weights), plus that CNN at the paper's 32x32 and width 64 (8
layers, 2.9 M weights) as a bandwidth-bound contrast. Three cases, each side by side with
torch's parametrization (torch.nn.utils.parametrizations.spectral_norm) and torch.compile:

* ``spectral_norm_update``: one power-iteration step of every SN layer (u, v and sigma), what
  a training forward pays before any conv. genfast: one multi-tensor kernel call
  (SpectralNormGroup.update) or one call per layer. torch: its _power_method plus
  sigma = vdot(u, mv(W, v)) per layer. Floor: one torch._foreach_norm pass over the weights.
* ``spectral_norm_weights``: every W / sigma(W) with autograd, and their backward to the
  stored weights: the whole spectral-norm share of a discriminator step. Floor: W / 2, and back.
* ``sngan_d_step``: the discriminator step itself, D(real), D(fake), hinge loss, one backward
  (batch 64), with sigma folded into the layer outputs as a further genfast variant. Floor:
  the same network without spectral norm.
"""

from __future__ import annotations

import copy
import functools
import unittest.mock

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from .runner import COMPILED, Case, Factory, Inputs, backends_for

# name -> SNGANConfig overrides: the model's default discriminator, its paper "standard CNN"
# option, and that CNN at the paper's 32x32 and width 64.
MODELS = {
    "sngan-digits": {},
    "sngan-cnn-digits": {"discriminator": "sngan-cnn"},
    "sngan-cnn-32-w64": {"discriminator": "sngan-cnn", "image_shape": (1, 32, 32),
                         "d_width": 64},
}
QUICK_MODELS = {"sngan-cnn-tiny": {"discriminator": "sngan-cnn", "image_shape": (1, 8, 8),
                                   "d_width": 8}}
BATCH = 64


def _settings(name: str) -> dict:
    return {**MODELS, **QUICK_MODELS}[name]


@functools.cache
def _build(name: str, device: str, dtype: torch.dtype, spectral: bool = True) -> nn.Module:
    """The discriminator of genfast.models.sngan.SNGAN for `name` (genfast spectral norm on
    every layer), or the same network without spectral norm. Never remove a parametrization
    from a copy of this: torch deletes the property from the class that the copies share."""
    from ..models import sngan

    torch.manual_seed(0)
    config = sngan.SNGANConfig(**_settings(name))
    if spectral:
        return sngan.SNGAN(config).discriminator.to(device, dtype)
    with unittest.mock.patch.object(sngan, "spectral_norm", lambda m: m):
        return sngan.SNGAN(config).discriminator.to(device, dtype)


def _sn_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if parametrize.is_parametrized(m, "weight")]


def _variant(base: nn.Module, kind: str, backend: str | None = None) -> nn.Module:
    """A copy of `base` with torch's spectral norm, genfast's per layer, grouped, or folded."""
    from ..nn.spectral_norm import SpectralNormGroup, convert_spectral_norm, revert_spectral_norm

    model = copy.deepcopy(base)
    if kind == "torch":
        return revert_spectral_norm(model)
    for m in _sn_layers(model):
        m.parametrizations.weight[0].backend = backend
    if kind in ("group", "fold"):
        convert_spectral_norm(model, fold=kind == "fold")
        model.genfast_group = SpectralNormGroup(model)  # kept alive with the model
    return model


def _torch_update(layers: list[nn.Module]):
    """What torch's parametrization computes per layer before W / sigma, in training mode."""
    plist = [(m.parametrizations.weight, m.parametrizations.weight[0]) for m in layers]

    @torch.no_grad()
    def update():
        out = []
        for pl, p in plist:
            w = p._reshape_weight_to_matrix(pl.original)
            p._power_method(w, p.n_power_iterations)
            out.append(torch.vdot(p._u, torch.mv(w, p._v)))
        return out

    return update


def _per_layer_update(layers: list[nn.Module]):
    """genfast's update one kernel call per layer (what a layer does outside a group)."""
    plist = [(m.parametrizations.weight, m.parametrizations.weight[0]) for m in layers]

    def update():
        return [p._iterate(pl.original, p.n_power_iterations) for pl, p in plist]

    return update


def _inputs(size: int, device: str, dtype: torch.dtype, batch: int):
    def make() -> Inputs:
        gen = torch.Generator(device=device).manual_seed(0)
        shape = (batch, 1, size, size)
        real = torch.rand(shape, generator=gen, device=device).to(dtype) * 2 - 1
        fake = torch.randn(shape, generator=gen, device=device).to(dtype).tanh()
        return {"real": real, "fake": fake}

    return make


def _weights_step(model: nn.Module):
    """All W / sigma with autograd, then their backward: the SN share of a training step."""
    layers = _sn_layers(model)
    originals = [m.parametrizations.weight.original for m in layers]
    group = getattr(model, "genfast_group", None)
    grads = [torch.ones_like(w) for w in originals]

    def step():
        if group is not None:
            group.update()
        ws = [m.weight for m in layers]
        return torch.autograd.grad(ws, originals, grads)

    return step


def _d_step(model: nn.Module, real, fake):
    params = list(model.parameters())

    def step():
        loss = F.relu(1.0 - model(real)).mean() + F.relu(1.0 + model(fake)).mean()
        return torch.autograd.grad(loss, params)

    return step


def _case(op: str, name: str, device: str, dtype: torch.dtype, mode: str, batch: int,
          backends: tuple[str, ...], compile_default: bool = False, lean: bool = False) -> Case:
    base = _build(name, device, dtype)  # small; providers copy it when they are built
    n_layers = len(_sn_layers(base))
    wbytes = sum(m.parametrizations.weight.original.numel() for m in _sn_layers(base)) * \
        dtype.itemsize
    size = _settings(name).get("image_shape", (1, 16, 16))[-1]
    providers: dict[str, Factory] = {}

    def on(kind, backend, build):
        return lambda inp: build(_variant(base, kind, backend), inp)

    if op == "spectral_norm_update":
        for b in backends:
            providers[f"genfast:{b} multi-tensor"] = on(
                "group", b, lambda m, inp: m.genfast_group.update)
            providers[f"genfast:{b} per-layer"] = on(
                "per-layer", b, lambda m, inp: _per_layer_update(_sn_layers(m)))
        providers["torch eager"] = on("torch", None, lambda m, inp: _torch_update(_sn_layers(m)))
        providers[COMPILED] = on(
            "torch", None,
            lambda m, inp: torch.compile(_torch_update(_sn_layers(m)), dynamic=False))
        providers["torch._foreach_norm (floor)"] = on(
            "torch", None, lambda m, inp: lambda: torch._foreach_norm(
                [x.parametrizations.weight.original.detach() for x in _sn_layers(m)]))
        nbytes, floor = 2 * wbytes, "torch._foreach_norm (floor)"
    elif op == "spectral_norm_weights":
        for b in backends:
            providers[f"genfast:{b} multi-tensor"] = on(
                "group", b, lambda m, inp: _weights_step(m))
            providers[f"genfast:{b} per-layer"] = on(
                "per-layer", b, lambda m, inp: _weights_step(m))
        providers["torch eager"] = on("torch", None, lambda m, inp: _weights_step(m))
        providers[COMPILED] = on(
            "torch", None, lambda m, inp: torch.compile(_weights_step(m), dynamic=False))

        def floor_step(m, inp):
            ws = [x.parametrizations.weight.original for x in _sn_layers(m)]
            return lambda: torch.autograd.grad([w / 2.0 for w in ws], ws,
                                               [torch.ones_like(w) for w in ws])

        providers["W / 2 (floor)"] = on("torch", None, floor_step)
        # Power iteration (2 passes), W / sigma (read + write) and its backward (read + write).
        nbytes, floor = 6 * wbytes, "W / 2 (floor)"
    else:
        def d_step(m, inp):
            return _d_step(m, inp["real"], inp["fake"])

        for b in backends:
            providers[f"genfast:{b} multi-tensor"] = on("group", b, d_step)
            providers[f"genfast:{b} multi-tensor fold"] = on("fold", b, d_step)
            if not lean:  # the convolutions dominate: per-layer adds little but seconds
                providers[f"genfast:{b} per-layer"] = on("per-layer", b, d_step)
        providers["torch eager"] = on("torch", None, d_step)
        providers[COMPILED] = on(
            "torch", None, lambda m, inp: torch.compile(_d_step(m, inp["real"], inp["fake"]),
                                                        dynamic=False))
        providers["no spectral norm (floor)"] = lambda inp: d_step(
            _build(name, device, dtype, spectral=False), inp)
        nbytes, floor = 6 * wbytes, "no spectral norm (floor)"
    shape = (batch, 1, size, size) if op == "sngan_d_step" else (n_layers, wbytes // dtype.itemsize)
    return Case(op=op, name=name, shape=shape, dtype=dtype, device=device, mode=mode,
                inputs=_inputs(size, device, dtype, batch), providers=providers,
                bytes=nbytes, eager="torch eager", floor=floor, compile_default=compile_default,
                count_flops=op == "sngan_d_step")


def cases(device: str = "cpu", scope: str = "default",
          dtypes: list[torch.dtype] | None = None) -> list[Case]:
    """quick: a tiny model. default: the update on the digits model (compiled) and on the
    8-layer critic, that critic's weights with backward, the digits D step, and the drop-in
    cases (spectral_norm_dropin.py); on a GPU every model in both dtypes, the critic's update
    compiled. full: every model and case, the reference backend, all compiled."""
    from . import spectral_norm_dropin

    cuda = device.startswith("cuda")
    backends = backends_for(device, scope)
    if dtypes is None:
        dtypes = [torch.float32, torch.bfloat16] if cuda else [torch.float32]
    batch = 4 if scope == "quick" else BATCH
    if scope == "quick":
        plan = {name: ("update", "weights", "d_step") for name in QUICK_MODELS}
    elif scope == "full" or cuda:
        plan = {name: ("update", "weights") + (() if name.endswith("w64") else ("d_step",))
                for name in MODELS}  # the w64 D step is its convs, not its spectral norm
    else:
        plan = {"sngan-digits": ("update", "d_step"), "sngan-cnn-32-w64": ("update", "weights")}
    compiled = ("sngan-cnn-32-w64" if cuda else "sngan-digits", "update")
    ops = {"update": ("spectral_norm_update", "forward"),
           "weights": ("spectral_norm_weights", "forward+backward"),
           "d_step": ("sngan_d_step", "forward+backward")}
    out = []
    for dtype in dtypes:
        for name, kinds in plan.items():
            out += [_case(ops[k][0], name, device, dtype, ops[k][1], batch, backends,
                          compile_default=scope == "default" and (name, k) == compiled,
                          lean=scope == "default" and not cuda)
                    for k in kinds]
    out += spectral_norm_dropin.cases(device, scope, dtypes, backends)
    return out


def sections(rows: list[dict]) -> list[str]:
    from . import spectral_norm_dropin

    return spectral_norm_dropin.sections(rows)
