"""The eager fast path of every op family (genfast/ops/_eager.py): in plain eager mode the
implementation runs without the custom op's dispatch; under a dispatch or function mode (and
torch.compile / torch.func, tested with each family) the op itself runs, so modes still see it.
Both paths give the same values and the same gradients, to second order."""

import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

import genfast
from genfast.ops import _eager


class _Seen(TorchDispatchMode):
    """Records the dispatched op names (a dispatch mode: the eager fast path must yield)."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.name())
        return func(*args, **(kwargs or {}))


class _Passthrough(TorchFunctionMode):
    """A function mode that changes nothing: forces the op path, for comparison."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


def _genfast_ops_profiled(fn) -> list[str]:
    """The genfast:: ops the profiler records while fn runs (the profiler is not a mode)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return sorted({e.name for e in prof.events() if e.name.startswith("genfast::")})


def _gumbel(x):
    return genfast.gumbel_softmax(x, 0.7, seed=3)


def _gumbel_hard(x):
    return genfast.gumbel_softmax(x, 0.7, True, seed=3)


def _norms(x):
    return genfast.per_sample_grad_norm(x * 1.5)


def _sample(x):
    return genfast.sample_categorical(x.detach(), top_k=3, seed=5)


CASES = {"gumbel": _gumbel, "gumbel_hard": _gumbel_hard, "norms": _norms, "sample": _sample}
OPS = {"gumbel": "genfast::gumbel_softmax_fwd", "gumbel_hard": "genfast::gumbel_softmax_fwd",
       "norms": "genfast::gp_row_norms", "sample": "genfast::sample_categorical"}


@pytest.mark.parametrize("case", list(CASES))
def test_plain_eager_skips_the_dispatcher_and_modes_still_see_the_op(case):
    x = torch.randn(6, 5, requires_grad=True)
    fn = CASES[case]
    assert _genfast_ops_profiled(lambda: fn(x)) == []

    def with_mode():
        with _Passthrough():
            fn(x)

    assert _genfast_ops_profiled(with_mode) == [OPS[case]]  # the profiler does see ops
    with _Seen() as seen:
        fn(x)
    assert OPS[case] in seen.names


@pytest.mark.parametrize("case", ["gumbel", "gumbel_hard", "norms"])
def test_both_paths_agree_to_second_order(case):
    torch.manual_seed(0)
    fn = CASES[case]
    x = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn_like(fn(x))

    def run():
        y = fn(x)
        (g,) = torch.autograd.grad((y * w).sum(), x, create_graph=True)
        (gg,) = torch.autograd.grad(g.square().sum(), x)
        return y, g, gg

    fast = run()
    with _Passthrough():
        assert not _eager.modes_off()
        slow = run()
    for a, b in zip(fast, slow, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_both_paths_draw_the_same_sample():
    x = torch.randn(9, 40)
    fast = _sample(x)
    with _Passthrough():
        slow = _sample(x)
    assert torch.equal(fast, slow)


def test_eager_backward_graph_is_differentiable_again():
    """The eager node of gp_row_norms (the WGAN-GP step's op) under a double backward: the
    penalty's gradient with respect to the critic's weights equals the op path's."""
    torch.manual_seed(0)
    critic = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1)).double()
    real, fake = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)

    def grads():
        torch.manual_seed(1)  # the interpolation weights
        gp = genfast.gradient_penalty(critic, real, fake).penalty
        # The last bias does not move the input gradient: no gradient for it.
        return torch.autograd.grad(gp, list(critic.parameters())[:-1])

    fast = grads()
    with _Passthrough():
        slow = grads()
    for a, b in zip(fast, slow, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_subclass_and_functorch_tensors_take_the_op():
    class Sub(torch.Tensor):
        pass

    x = torch.randn(3, 4)
    assert _eager.plain_eager((x, 1.0, "cpu"))
    assert not _eager.plain_eager((x.as_subclass(Sub),))

    def inside(t):
        assert not _eager.plain_eager((t,))  # a transform is active (and t is wrapped)
        return t.sum()

    torch.func.grad(inside)(x)
