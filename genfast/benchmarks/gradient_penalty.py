"""Benchmark cases for genfast/ops/gradient_penalty.py.

critic step: one whole WGAN-GP critic step (D(real), D(fake), penalty, backward, Adam step) on a
DCGAN-like critic over 16x16 digits, which is what a user times. Providers:
  genfast:<backend>  genfast.gradient_penalty(...) for the penalty
  torch eager        the same step with the penalty written in plain torch (autograd.grad with
                     create_graph, .norm(2, dim=1)): the anchor, target genfast <= 1.05x it
  plain critic step (floor)  the step without any penalty: vs floor = floor time / genfast
                     time, so 1 / vs floor is what the penalty costs relative to a plain step
critic step every=4: four steps per call, the penalty on one of them with weight * 4 (lazy
regularization, StyleGAN2); floor = four plain steps (target genfast <= 1.25x it).
row norms: the per-sample norm kernel alone, against torch's norm and a plain sum (floor).

torch.compile is not a baseline for the critic step: aot_autograd does not support the double
backward a gradient penalty needs (pytorch #91469, PR #181606).
"""

from __future__ import annotations

import torch
from torch import nn

import genfast.ops.gradient_penalty as gp

from .runner import COMPILED, Case, Factory, Inputs, backends_for

STEP_SHAPE = (64, 1, 16, 16)  # a DCGAN batch of digits upsampled to 16x16 (genfast.data)
QUICK_STEP = (8, 1, 16, 16)
NORM_SHAPES = [(64, 4096), (256, 3 * 32 * 32)]  # 64x1x64x64 and CIFAR-sized input gradients
QUICK_NORM = (7, 1000)
GPU_NORM = (256, 3 * 256 * 256)  # 256x3x256x256 input gradients: 200 MB, bandwidth-bound
WEIGHT = 10.0
LAZY = 4
EAGER, FLOOR = "torch eager", "plain critic step (floor)"


def dcgan_critic(channels: int = 1, width: int = 64) -> nn.Module:
    """The critic genfast.models.wgan_gp trains on 16x16 digits (pytorch/examples DCGAN
    discriminator without BatchNorm, which WGAN-GP forbids): two Conv(4, 2, 1) stages with
    LeakyReLU(0.2), then Conv(4, 1, 0) to one score per image, (N,)."""
    return nn.Sequential(
        nn.Conv2d(channels, width, 4, 2, 1), nn.LeakyReLU(0.2, True),
        nn.Conv2d(width, 2 * width, 4, 2, 1), nn.LeakyReLU(0.2, True),
        nn.Conv2d(2 * width, 1, 4, 1, 0, bias=False), nn.Flatten(0),
    )


def torch_wgan_gp(critic, real, fake, generator=None, weight=WEIGHT) -> torch.Tensor:
    """WGAN-GP as it is usually written in plain PyTorch (the eager anchor)."""
    n = real.shape[0]
    eps = torch.rand(n, *([1] * (real.dim() - 1)), generator=generator, device=real.device,
                     dtype=real.dtype)
    x = (eps * real + (1 - eps) * fake).requires_grad_(True)
    s = critic(x)
    (g,) = torch.autograd.grad(s, x, torch.ones_like(s), create_graph=True)
    return weight * ((g.reshape(n, -1).norm(2, dim=1) - 1) ** 2).mean()


def _step_inputs(shape, dtype, device):
    def make() -> Inputs:
        gen = torch.Generator(device=device).manual_seed(0)
        try:
            from genfast.data.digits import load_digits

            real = load_digits(size=shape[-1])[0][: shape[0]]
        except ImportError:  # scikit-learn (models extra) missing: same shapes, random pixels
            real = torch.rand(shape, generator=gen, device=device)
        fake = torch.rand(shape, generator=gen, device=device)
        return {"real": real.to(device=device, dtype=dtype), "fake": fake.to(dtype)}

    return make


def _stepper(penalty: str, backend: str | None, lazy: int) -> Factory:
    """A provider: `lazy` critic steps per call on its own critic and Adam state, the penalty on
    the first of them (weight * lazy). penalty: genfast | torch | none."""

    def factory(inp: Inputs):
        real, fake = inp["real"], inp["fake"]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # every provider starts from the same critic
            critic = dcgan_critic(real.shape[1]).to(real.device, real.dtype)
        opt = torch.optim.Adam(critic.parameters(), lr=1e-4, betas=(0.0, 0.9))
        gen = torch.Generator(device=real.device).manual_seed(1)

        def one(step: int):
            loss = critic(fake).mean() - critic(real).mean()
            if penalty == "genfast":
                loss = loss + gp.gradient_penalty(critic, real, fake, weight=WEIGHT, every=lazy,
                                                  step=step, generator=gen,
                                                  backend=backend).penalty
            elif penalty == "torch" and step % lazy == 0:
                loss = loss + torch_wgan_gp(critic, real, fake, gen, WEIGHT * lazy)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        def run():
            for step in range(lazy):
                one(step)

        return run

    return factory


def step_case(shape, dtype, device: str, lazy: int, backends: tuple[str, ...]) -> Case:
    providers: dict[str, Factory] = {
        f"genfast:{b}": _stepper("genfast", b, lazy) for b in backends}
    providers[EAGER] = _stepper("torch", None, lazy)
    providers[FLOOR] = _stepper("none", None, lazy)
    n = torch.Size(shape).numel() * dtype.itemsize
    params = sum(p.numel() for p in dcgan_critic(shape[1]).parameters()) * dtype.itemsize
    return Case(
        op="wgan_gp_critic_step", name="every=1" if lazy == 1 else f"every={lazy} ({lazy} steps)",
        shape=shape, dtype=dtype, device=device, mode="forward+backward",
        inputs=_step_inputs(shape, dtype, device), providers=providers,
        # Per step at least: read real and fake, and the weights, their gradient and Adam's
        # two moments read and written once (a floor, far below what the convolutions move).
        bytes=lazy * (2 * n + 7 * params),
        eager=EAGER, floor=FLOOR, count_flops=True,
    )


def _norm_inputs(shape, dtype, device, grad: bool):
    def make() -> Inputs:
        gen = torch.Generator(device=device).manual_seed(0)
        g = torch.randn(shape, generator=gen, device=device).to(dtype)
        w = torch.randn(shape[0], generator=gen, device=device).to(dtype)
        return {"g": g.requires_grad_(grad), "w": w}

    return make


def _timed(f, grad: bool) -> Factory:
    if grad:
        return lambda inp: lambda: torch.autograd.grad(f(inp["g"]), inp["g"], inp["w"])
    return lambda inp: lambda: f(inp["g"])


def norm_case(shape, dtype, device: str, mode: str, backends: tuple[str, ...],
              compile_default: bool = False) -> Case:
    grad = mode == "forward+backward"

    def eager(g):
        return g.norm(2, dim=1)

    providers: dict[str, Factory] = {
        f"genfast:{b}": _timed(lambda g, b=b: gp.per_sample_grad_norm(g, backend=b), grad)
        for b in backends}
    providers[EAGER] = _timed(eager, grad)
    providers[COMPILED] = lambda inp: _timed(torch.compile(eager, dynamic=False), grad)(inp)
    providers["torch.sum (floor)"] = _timed(lambda g: g.sum(dim=1), grad)
    n = torch.Size(shape).numel() * dtype.itemsize
    return Case(
        op="per_sample_grad_norm", name="l2", shape=shape, dtype=dtype, device=device, mode=mode,
        inputs=_norm_inputs(shape, dtype, device, grad), providers=providers,
        bytes=(3 if grad else 1) * n,  # forward reads g; backward reads g, writes dg
        eager=EAGER, floor="torch.sum (floor)", compile_default=compile_default,
    )


def cases(device: str = "cpu", scope: str = "default",
          dtypes: list[torch.dtype] | None = None) -> list[Case]:
    """quick: tiny shapes. default: the every=1 critic step, the norm of 64x4096 gradients with
    its backward (the compiled case) and of 256x3072 forward; on a GPU both critic steps and
    every norm shape in both modes, the 200 MB one compiled. full: everything, the reference
    backend, all compiled."""
    cuda = device.startswith("cuda")
    backends = backends_for(device, scope)
    if dtypes is None:
        # Half precision is a GPU dtype for genfast (DESIGN.md section 4).
        dtypes = [torch.float32, torch.bfloat16] if cuda else [torch.float32]
    if scope == "quick":
        norms = [(QUICK_NORM, m) for m in ("forward", "forward+backward")]
    elif scope == "full" or cuda:
        shapes = NORM_SHAPES + ([GPU_NORM] if cuda else [])
        norms = [(s, m) for s in shapes for m in ("forward", "forward+backward")]
    else:
        norms = [(NORM_SHAPES[0], "forward+backward"), (NORM_SHAPES[1], "forward")]
    compiled = ((GPU_NORM if cuda else NORM_SHAPES[0]), "forward+backward")
    out = []
    for dtype in dtypes:
        if dtype == torch.float32:  # the critic step is a float32 training recipe
            step = QUICK_STEP if scope == "quick" else STEP_SHAPE
            # every=4 is four critic steps a call: ~40 s of a busy 2-core box, so --full only
            lazies = (1,) if scope == "default" and not cuda else (1, LAZY)
            out += [step_case(step, dtype, device, lazy, backends) for lazy in lazies]
        out += [norm_case(shape, dtype, device, mode, backends,
                          compile_default=scope == "default" and (shape, mode) == compiled)
                for shape, mode in norms]
    return out
