"""Controllable generation on a trained GAN (Ctrl-GAN): move latents so that a classifier's
target attribute of the generated image rises, the generator's weights untouched.

Attributes are the 10 class logits of the embedded digits classifier (genfast.models.fid's
DigitsFeatureNet); the target is a digit class, its score the class log-probability
log p(target | G(z)). The generator runs in eval mode, so every latent is edited
independently (BatchNorm uses its running statistics, no batch coupling).

Both edits take steps that maximise the target's first-order gain against a penalty on the
first-order change of the other attributes (research/models.md 1.12): with g the gradient of
log p(target) in z and O the (9, z_dim) gradients of the other logits, the step direction is

    d = argmax_d  g.d - |d|^2 / 2 - penalty |O d|^2 / 2  =  (I + penalty O^T O)^-1 g,

which is g itself at penalty 0 and tends to g projected off the others' gradients as the
penalty grows (InterFaceGAN's conditional ``project_boundary``, Shen et al. 2020); g.d > 0
always, so the target rises for small enough steps whatever the penalty.

* ``"gradient"`` (gradient ascent on z, as DeepLearning.AI's "Controllable Generation"):
  each latent takes its own steps, g and O re-evaluated at every point, each step of length
  ``step_size`` along d. (That notebook adds -penalty * |delta others| to the objective
  instead; with steps of a fixed length that non-smooth term zigzags about delta = 0 and
  the target stops rising monotonically, which the step above avoids.)
* ``"linear"`` (one direction for every latent, InterFaceGAN-style): d from g and O averaged
  over the n latents, normalised; point k is z_0 + k * step_size * d.

A path is summarised by the rise of the target log-probability and probability from the first
point to the last, and by how far the other attributes moved: the mean |delta| of the other
nine logits between the first and the last point (mean over latents and attributes).
"""

from __future__ import annotations

import argparse
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from . import fid

METHODS = ("gradient", "linear")
N_ATTRIBUTES = 10  # digit classes of the embedded classifier
DEFAULTS = {"gradient": {"step_size": 1.0, "penalty": 1.0},
            "linear": {"step_size": 1.0, "penalty": 1.0}}
_STRIP_ROWS = 4  # latents shown per panel of the PNG strip


@dataclass
class ControlPath:
    """Points along an edit: ``latents`` (P, n, *latent), ``images`` (P, n, C, H, W) in [0, 1],
    ``logits`` (P, n, 10) of the classifier; point 0 is the unedited sample."""

    latents: Tensor
    images: Tensor
    logits: Tensor
    target: int
    method: str
    penalty: float
    step_size: float

    def target_log_prob(self) -> Tensor:
        """(P, n) log p(target | image) along the path."""
        return self.logits.log_softmax(-1)[..., self.target]

    def summary(self) -> dict[str, float]:
        """Target rise and the others' movement, first point to last (module docstring)."""
        lp = self.target_log_prob()
        others = [a for a in range(self.logits.shape[-1]) if a != self.target]
        moved = (self.logits[-1, :, others] - self.logits[0, :, others]).abs().mean()
        rising = (lp.diff(dim=0) > 0).all(0).float().mean()
        return {"target_log_prob_rise": float((lp[-1] - lp[0]).mean()),
                "target_prob_start": float(lp[0].exp().mean()),
                "target_prob_end": float(lp[-1].exp().mean()),
                "others_moved": float(moved),
                "monotone_fraction": float(rising)}


def _check_gan(model: nn.Module) -> Callable[[Tensor], Tensor]:
    """A differentiable z -> image map of a trained GAN, or a ValueError saying why not."""
    from ._gan import GAN

    if not isinstance(model, GAN):
        raise ValueError(f"control needs a GAN with a latent generator, got "
                         f"{type(model).__name__}")
    # generate() runs under no_grad (it is the sampling entry); its undecorated body is the
    # same map with autograd, which the edit needs. A conditional generator wants labels too.
    # A conditional generator (generate(z, y)) is steered by its label directly.
    body = inspect.unwrap(type(model).generate)
    params = list(inspect.signature(body).parameters)[1:]
    if len(params) != 1:
        raise ValueError(f"control needs an unconditional GAN (generate(z)); "
                         f"{type(model).__name__}.generate takes {params} (a conditional "
                         f"GAN's class is chosen directly: genfast sample MODEL --class K)")
    return lambda z: body(model, z)


def _attribute_grads(gen: Callable[[Tensor], Tensor], clf: nn.Module, z0: Tensor,
                     target: int) -> tuple[Tensor, Tensor, Tensor]:
    """(images, logits (n, A), gradients (n, A, D)) at latents z0: row `target` is the
    gradient of log p(target), the others those of the other logits. The latents are
    independent (eval mode), so the gradient of a sum over latents is each latent's own."""
    z = z0.detach().clone().requires_grad_(True)
    images = gen(z)
    logits = clf(images)
    a = logits.shape[-1]
    rows = []
    for i in range(a):
        score = logits.log_softmax(-1)[:, target] if i == target else logits[:, i]
        (g,) = torch.autograd.grad(score.sum(), z, retain_graph=i < a - 1)
        rows.append(g.flatten(1))
    return images.detach(), logits.detach(), torch.stack(rows, 1).double()


def penalised_direction(grads: Tensor, target: int, penalty: float) -> Tensor:
    """(m, D): argmax_d  g.d - |d|^2 / 2 - penalty |O d|^2 / 2 = (I + penalty O^T O)^-1 g,
    with g = grads[:, target] and O the other rows of grads (m, A, D): the step that best
    trades the target's first-order gain for the others' first-order change. Solved with
    Woodbury's identity, g - O^T (I / penalty + O O^T)^-1 O g: (A-1)-sized systems."""
    g = grads[:, target]
    if penalty == 0:
        return g
    o = torch.cat([grads[:, :target], grads[:, target + 1:]], 1)  # (m, A-1, D)
    k = o @ o.transpose(1, 2)
    k.diagonal(dim1=1, dim2=2).add_(1.0 / penalty)
    return g - (o.transpose(1, 2) @ torch.linalg.solve(k, (o @ g[:, :, None])))[:, :, 0]


def gradient_path(gen: Callable[[Tensor], Tensor], clf: nn.Module, z0: Tensor, target: int,
                  points: int, step_size: float, penalty: float) -> ControlPath:
    """Per-latent ascent: at each point, a step of length `step_size` along the penalised
    direction of that latent's own gradients; `points` points including z0."""
    z = z0.detach()
    lat, imgs, logs = [], [], []
    for k in range(points):
        last = k == points - 1
        if last:
            with torch.no_grad():
                images = gen(z)
                logits = clf(images)
        else:
            images, logits, grads = _attribute_grads(gen, clf, z, target)
        lat.append(z)
        imgs.append(images)
        logs.append(logits)
        if not last:
            d = penalised_direction(grads, target, penalty)
            d = d / d.norm(dim=1, keepdim=True).clamp_min(1e-30)
            z = z + step_size * d.to(z.dtype).view(z.shape)
    return ControlPath(torch.stack(lat), torch.stack(imgs), torch.stack(logs), target,
                       "gradient", penalty, step_size)


def linear_direction(gen: Callable[[Tensor], Tensor], clf: nn.Module, z0: Tensor,
                     target: int, penalty: float) -> Tensor:
    """Unit direction (module docstring) from the gradients averaged over the latents z0,
    shaped as one latent."""
    _, _, grads = _attribute_grads(gen, clf, z0, target)
    d = penalised_direction(grads.mean(0, keepdim=True), target, penalty)[0]
    return (d / d.norm().clamp_min(1e-30)).to(z0.dtype).view(z0.shape[1:])


def linear_path(gen: Callable[[Tensor], Tensor], clf: nn.Module, z0: Tensor, target: int,
                points: int, step_size: float, penalty: float) -> ControlPath:
    d = linear_direction(gen, clf, z0, target, penalty)
    lat, imgs, logs = [], [], []
    with torch.no_grad():
        for k in range(points):
            z = z0 + (k * step_size) * d
            images = gen(z)
            lat.append(z)
            imgs.append(images)
            logs.append(clf(images))
    return ControlPath(torch.stack(lat), torch.stack(imgs), torch.stack(logs), target,
                       "linear", penalty, step_size)


def control(model: nn.Module, target: int, *, method: str = "gradient", points: int = 8,
            step_size: float | None = None, penalty: float | None = None, n: int = 64,
            seed: int = 0, classifier: nn.Module | None = None) -> ControlPath:
    """Edit n latents of a trained GAN toward attribute `target` (a digit class): `points`
    points along the edit, the first unedited. The model's weights and train/eval mode are
    left as they were; the classifier defaults to the embedded digits classifier."""
    gen = _check_gan(model)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if isinstance(target, bool) or not isinstance(target, int) \
            or not 0 <= target < N_ATTRIBUTES:
        raise ValueError(f"target must be a digit class 0-{N_ATTRIBUTES - 1}, got {target!r}")
    for name, v, low in (("points", points, 2), ("n", n, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ValueError(f"{name} must be an int >= {low}, got {v!r}")
    step_size = DEFAULTS[method]["step_size"] if step_size is None else step_size
    penalty = DEFAULTS[method]["penalty"] if penalty is None else penalty
    if not (math.isfinite(step_size) and step_size > 0):
        raise ValueError(f"step_size must be a finite number > 0, got {step_size!r}")
    if not (math.isfinite(penalty) and penalty >= 0):
        raise ValueError(f"penalty must be a finite number >= 0, got {penalty!r}")
    device = next(model.parameters()).device
    clf = classifier if classifier is not None else fid.feature_net(device=device)
    was_training, clf_training = model.training, clf.training
    model.eval()
    clf.eval()
    try:
        z0 = model.latent(n, generator=torch.Generator(device).manual_seed(seed))
        with torch.enable_grad():
            make = gradient_path if method == "gradient" else linear_path
            return make(gen, clf, z0, target, points, float(step_size), float(penalty))
    finally:
        model.train(was_training)
        clf.train(clf_training)


def _describe(p: ControlPath) -> str:
    s = p.summary()
    return (f"penalty {p.penalty:g}: p({p.target}) {s['target_prob_start']:.3f} -> "
            f"{s['target_prob_end']:.3f}, log p({p.target}) +{s['target_log_prob_rise']:.3f}, "
            f"other logits moved {s['others_moved']:.3f} (mean |delta|), "
            f"{100 * s['monotone_fraction']:.0f}% of latents rise at every point")


def strip_panels(paths: list[ControlPath], rows: int = _STRIP_ROWS
                 ) -> list[tuple[str, Tensor, int]]:
    """save_panels panels: per path, `rows` latents x its points (left: unedited)."""
    panels = []
    for p in paths:
        pts, n = p.images.shape[:2]
        r = min(rows, n)
        imgs = p.images[:, :r].transpose(0, 1).reshape(r * pts, *p.images.shape[2:])
        s = p.summary()
        panels.append((f"{p.method}, penalty {p.penalty:g}: p({p.target}) "
                       f"{s['target_prob_start']:.2f} -> {s['target_prob_end']:.2f}, others "
                       f"moved {s['others_moved']:.2f}", imgs, pts))
    return panels


def cli_control(args: argparse.Namespace) -> int:
    """`genfast control MODEL --checkpoint P --target K --steps N`: the edit with the asked
    penalty and without one, a PNG strip of both, and their figures."""
    from genfast import models

    from ._gan import GAN
    from ._images import save_panels
    from ._trainer import load_model

    try:
        cls = models.get(args.model)
    except KeyError as e:
        raise SystemExit(f"genfast: {e.args[0]}") from None
    if not (isinstance(cls, type) and issubclass(cls, GAN)):
        raise SystemExit(f"genfast: control needs a trained GAN with a latent generator; "
                         f"{args.model!r} is not one")
    try:
        target = int(str(args.target))
    except ValueError:
        target = None
    if target is None or not 0 <= target < N_ATTRIBUTES:
        raise SystemExit(f"genfast: --target must be a digit class 0-{N_ATTRIBUTES - 1}, "
                         f"got {args.target!r}")
    if args.steps is None or args.steps < 2:
        raise SystemExit(f"genfast: --steps must be >= 2 (points along the direction, the "
                         f"first unedited), got {args.steps}")
    if args.n is not None and args.n < 1:
        raise SystemExit(f"genfast: --n must be >= 1, got {args.n}")
    model, ckpt = load_model(cls, args)
    model.requires_grad_(False)  # only the latents move
    method = args.method
    penalty = DEFAULTS[method]["penalty"] if args.penalty is None else args.penalty
    kw: dict[str, Any] = dict(method=method, points=args.steps, step_size=args.step_size,
                              n=args.n or 64, seed=args.seed)
    try:
        paths = [control(model, target, penalty=0.0, **kw)]
        if penalty > 0:
            paths.append(control(model, target, penalty=penalty, **kw))
    except ValueError as e:
        raise SystemExit(f"genfast: {e}") from None
    out = args.out or f"{args.model}_control_{target}.png"
    save_panels(strip_panels(paths), out)
    p0 = paths[0]
    print(f"{args.model} step {ckpt['step']}: {method} edit toward class {target}, "
          f"{p0.images.shape[0]} points {p0.step_size:g} apart in z, {p0.images.shape[1]} "
          f"latents (seed {args.seed})")
    for p in paths:
        print("  " + _describe(p))
    print(f"wrote the strip to {out}")
    return 0


__all__ = ["ControlPath", "cli_control", "control", "gradient_path", "linear_direction",
           "linear_path", "strip_panels"]
