"""The eager fast path every op family shares: skip torch's dispatch layers when nothing needs
to see them.

A genfast op is a torch.library custom op (so torch.compile, torch.export, FakeTensor, vmap and
torch.func see one node), usually wrapped in an autograd.Function. In plain eager mode those
layers are pure overhead: a custom op's Python dispatch (~15-40 us) and Function.apply's
argument binding (~25 us for a setup_context Function) cost more than the kernel on a small
input, which made a (8, 10) gumbel_softmax ~8x slower than torch's. Plain eager means: no
torch.compile trace, no dispatch or function mode (FakeTensorMode, FlopCounterMode, ...), no
torch.func transform, and only plain tensors (no subclass, no functorch wrapper left behind by a
transform). Then the op's implementation runs directly, under a ctx-style autograd node with the
op's own setup_context and backward when a gradient is needed: the same kernels, formulas and
numbers as the op path, which every other case still takes.

A family uses it in two lines: ``fwd = eager_op(op, impl, setup_context, backward)`` beside its
custom op, and ``fast_apply(Function)`` for an autograd.Function it applies itself.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

_PLAIN = (Tensor, torch.nn.Parameter)
_wrapped = torch._C._functorch.is_functorch_wrapped_tensor


def modes_off() -> bool:
    """No compiler, dispatch or function mode and no torch.func transform is active."""
    return not (torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack()
                or torch._C._is_torch_function_mode_enabled()
                or torch._C._are_functorch_transforms_active())


def plain(tensors) -> bool:
    """Every tensor is a plain Tensor or Parameter (not a subclass or a functorch wrapper)."""
    return all(type(t) in _PLAIN and not _wrapped(t) for t in tensors)


def plain_eager(args) -> bool:
    """Plain eager mode for a call with these arguments (see the module docstring)."""
    return modes_off() and plain(a for a in args if isinstance(a, Tensor))


def _c_apply(cls: type[torch.autograd.Function]) -> Callable:
    """cls's apply without Function.apply's Python wrapper, which binds default arguments (the
    callers pass every argument) and unwraps functorch wrappers (plain_eager excluded them)."""
    try:
        return torch._C._FunctionBase.__dict__["apply"].__get__(None, cls)
    except (AttributeError, KeyError, TypeError):  # pragma: no cover - a torch without it
        return cls.apply


def fast_apply(cls: type[torch.autograd.Function]) -> Callable:
    """A function that applies `cls` (every argument passed positionally), through the C apply
    when modes_off() (torch.func transforms need Function.apply's handling, and Dynamo traces
    Function.apply, not the C apply)."""
    c_apply = _c_apply(cls)

    def apply(*args):
        if modes_off():
            return c_apply(*args)
        return cls.apply(*args)

    apply.__name__ = apply.__qualname__ = f"fast_apply({cls.__name__})"
    return apply


def eager_op(op: Callable, impl: Callable, setup_context: Callable | None = None,
             backward: Callable | None = None) -> Callable:
    """A function with `op`'s signature (all arguments positional) that runs `impl` directly in
    plain eager mode, under a ctx-style autograd node built from the op's `setup_context(ctx,
    inputs, output)` and `backward(ctx, *grads)` when a tensor argument requires grad; and
    runs `op` itself in every other case."""
    node_apply = None
    if backward is not None:
        def forward(ctx, *args):
            out = impl(*args)
            setup_context(ctx, args, out)
            return out

        name = getattr(op, "__name__", "op").rsplit(".", 1)[-1].rsplit(":", 1)[-1]
        node = type(f"{name}_eager", (torch.autograd.Function,), {
            "forward": staticmethod(forward),
            "backward": staticmethod(backward),
            "__doc__": f"{name} in plain eager mode: its implementation, its autograd formula.",
        })
        node_apply = _c_apply(node)

    def call(*args):
        if not plain_eager(args):
            return op(*args)
        if node_apply is not None and torch.is_grad_enabled() and any(
                isinstance(a, Tensor) and a.requires_grad for a in args):
            return node_apply(*args)
        return impl(*args)

    call.__name__ = call.__qualname__ = f"eager_op({getattr(op, '__name__', 'op')})"
    return call
