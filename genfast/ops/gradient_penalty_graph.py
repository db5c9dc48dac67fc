"""The critic side of gradient_penalty: its inputs and scores checked, the point the critic is
differentiated at, the input gradient (loss-scaled for a torch.amp.GradScaler), the pruning of
the gradient graph's identically zero second-derivative paths, and whether and how a non-finite
gradient is reported.

Split from genfast/ops/gradient_penalty.py (the kernels, the ops and the public API): none of
this touches a kernel."""

from __future__ import annotations

import torch
from torch import Tensor

from . import _checks


def check_batch(name: str, x: object) -> Tensor:
    """x must be a floating tensor (N, ...) with N >= 1."""
    _checks.tensor(name, x, min_dim=1)
    if x.shape[0] == 0:
        raise ValueError(f"{name} must have a batch dimension with at least one sample, "
                         f"got shape {tuple(x.shape)}")
    return x


def scores(name: str, s: object, n: int) -> Tensor:
    """s must be the critic's (n,) or (n, 1) scores."""
    if not isinstance(s, Tensor):
        raise TypeError(f"{name} must return a tensor, got {type(s).__name__}")
    if tuple(s.shape) not in ((n,), (n, 1)):
        raise ValueError(f"{name} must have shape ({n},) or ({n}, 1) for {n} samples, "
                         f"got {tuple(s.shape)}")
    return s


def inputs(kind: str, real: Tensor | None, fake: Tensor | None) -> Tensor:
    """Validate real / fake for `kind`; returns the tensor whose shape is the batch's."""
    need = {"wgan-gp": ("real", "fake"), "r1": ("real",), "r2": ("fake",)}[kind]
    given = {"real": real, "fake": fake}
    for name in need:
        if given[name] is None:
            raise ValueError(f"{name} is required for kind={kind!r}")
    for name, x in given.items():
        if x is not None:
            check_batch(name, x)
    if real is not None and fake is not None:
        if real.shape != fake.shape:
            raise ValueError(f"real and fake must have the same shape, got real "
                             f"{tuple(real.shape)} and fake {tuple(fake.shape)}")
        if real.dtype != fake.dtype or real.device != fake.device:
            raise ValueError(f"real and fake must share dtype and device, got real "
                             f"{real.dtype} on {real.device}, fake {fake.dtype} on {fake.device}")
    return given[need[0]]


def finite_check(check_finite: bool | None, device: torch.device) -> bool:
    """Whether gradient_penalty reads the penalty back to check it: `check_finite`, or for None
    True on the CPU only. Elsewhere the read is a host sync per step (a stall of the launch
    queue), and the asynchronous alternative, a device-side assert (torch._assert_async), leaves
    the CUDA context unusable when it fires (its docstring: not for regular error checking)."""
    if check_finite is None:
        return device.type == "cpu"
    return _checks.boolean("check_finite", check_finite)


def enabled_scaler(scaler: object) -> torch.amp.GradScaler | None:
    if scaler is None:
        return None
    if not isinstance(scaler, torch.amp.GradScaler):
        raise TypeError(f"scaler must be a torch.amp.GradScaler, got {type(scaler).__name__}")
    return scaler if scaler.is_enabled() else None  # disabled: scale() is the identity


def point(kind: str, real: Tensor | None, fake: Tensor | None,
          generator: torch.Generator | None) -> Tensor:
    """The detached leaf the critic is differentiated at."""
    if kind == "r1":
        return real.detach().requires_grad_()
    if kind == "r2":
        return fake.detach().requires_grad_()
    n = real.shape[0]
    eps = torch.rand(n, generator=generator, device=real.device, dtype=real.dtype)
    eps = eps.view(n, *([1] * (real.dim() - 1)))
    return torch.lerp(fake.detach(), real.detach(), eps).requires_grad_()


def input_grad(s: Tensor, x: Tensor, create_graph: bool) -> Tensor:
    """d sum(s) / d x, out of place (no .grad is touched: one all-reduce under DDP)."""
    why = ("the critic's output does not depend on its input (a critic that detaches or "
           "ignores x, or runs under torch.no_grad?); the penalty needs d critic(x) / dx")
    if not s.requires_grad:
        raise ValueError(why)
    (g,) = torch.autograd.grad(s, x, torch.ones_like(s), create_graph=create_graph,
                               allow_unused=True)
    if g is None:
        raise ValueError(why)
    return g


def scaled_root(scaler: torch.amp.GradScaler, s: Tensor) -> tuple[Tensor, Tensor]:
    """(root, factor): autograd.grad of root gives every per-sample input gradient times factor.

    root = scaler.scale(mean(s)) in float32 or wider, rather than the scaled scores themselves:
    the scale is tuned for a loss that is a batch mean (the critic's own loss is one), and a
    gradient of scale x 1 on every score overflows float16 scores at the default scale 2^16
    (float16 max 65504), so each first step would be skipped. factor = scale / N, computed as the
    mean's backward computes it (same dtype, same rounding), read without a host sync
    (GradScaler.get_scale() would call .item())."""
    wide = s.to(torch.promote_types(s.dtype, torch.float32))
    root = scaler.scale(wide.mean())
    factor = scaler.scale(torch.ones((), dtype=wide.dtype, device=s.device)) / s.numel()
    return root, factor


# Double-backward nodes of piecewise-linear activations (LeakyReLU, ReLU, Hardtanh / ReLU6).
# Their derivative with respect to the forward activation (next edge 1) is identically zero, but
# torch materialises it as a zeros tensor and pushes it through the critic's whole forward graph:
# weight and input gradients of every layer below, all of zeros, about a third of a penalty's
# cost on a ReLU-family critic. Handing back None (autograd's "zero") ends that walk; exact.
_ZERO_SECOND = frozenset({"LeakyReluBackwardBackward0", "ThresholdBackwardBackward0",
                          "HardtanhBackwardBackward0"})


def _drop_zero_edge(grad_inputs, grad_outputs):
    return (grad_inputs[0], None, *grad_inputs[2:])


def _nodes(root, stop: frozenset | set = frozenset()) -> set:
    seen, stack = set(), [root]
    while stack:
        node = stack.pop()
        if node is None or node in seen or node in stop:
            continue
        seen.add(node)
        stack.extend(f for f, _ in node.next_functions)
    return seen


def prune_zero_paths(s: Tensor, g: Tensor) -> None:
    """Hook the zero edges of g's graph (built by create_graph), never the critic's forward
    (every node reachable from s, the scores g was taken of)."""
    if g.grad_fn is None:
        return
    for node in _nodes(g.grad_fn, stop=_nodes(s.grad_fn)):
        if type(node).__name__ in _ZERO_SECOND and len(node.next_functions) == 2:
            node.register_hook(_drop_zero_edge)


def raise_not_finite(norms: Tensor, x: Tensor) -> None:
    """Raise FloatingPointError saying which samples have a non-finite gradient and why."""
    bad = ~torch.isfinite(norms)
    idx = bad.nonzero().flatten()[:8].tolist()
    if not idx:  # every norm is finite: the square overflowed
        raise FloatingPointError(
            f"gradient_penalty: the penalty overflowed (largest gradient norm "
            f"{norms.max().item():.3g}); the critic is diverging")
    where = ("the critic's input has non-finite values (from real / fake)"
             if not bool(torch.isfinite(x).all()) else
             "the critic's output or its gradient overflowed or is NaN")
    raise FloatingPointError(
        f"gradient_penalty: the critic's input gradient is not finite for samples {idx} (norms "
        f"{norms.detach()[idx].tolist()}): {where}. Pass check_finite=False to get a "
        "non-finite penalty instead")
