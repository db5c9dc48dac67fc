"""No host sync on the hot path: with check_finite off (the default off the CPU) a WGAN-GP step
reads nothing back from its tensors. Proven here on the CPU by recording the ops that read a
tensor's values into Python (what torch.cuda.set_sync_debug_mode("error") rejects on a GPU; the
GPU test is test_gradient_penalty_gpu.py), and by running the step on meta tensors, which have
no values to read."""

import math

import pytest
import torch
from _helpers import fast_backends
from test_gradient_penalty import _data, conv_critic, mlp_critic
from torch.utils._python_dispatch import TorchDispatchMode

from genfast.ops import gradient_penalty_graph as graph
from genfast.ops.gradient_penalty import gradient_penalty

ALL = ["reference", *fast_backends("gradient_penalty")]
# aten ops whose result is a Python value read from the data (item, bool, tolist, nonzero's
# size): on a GPU each is a device-to-host copy and a stream sync.
HOST_READS = {"_local_scalar_dense", "is_nonzero", "nonzero", "item", "equal", "allclose",
              "tolist"}


class HostReads(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.name().split("::")[-1].split(".")[0] in HOST_READS:
            self.seen.append(func.name())
        return func(*args, **(kwargs or {}))


def test_finite_check_default_follows_the_device():
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert graph.finite_check(None, cpu) is True
    assert graph.finite_check(None, cuda) is False
    assert graph.finite_check(None, torch.device("meta")) is False
    for dev in (cpu, cuda):
        assert graph.finite_check(True, dev) is True and graph.finite_check(False, dev) is False
    with pytest.raises(TypeError, match="check_finite"):
        graph.finite_check(1, cpu)


def _step(critic, real, fake, **kw):
    loss = critic(fake).mean() - critic(real).mean()
    gp = gradient_penalty(critic, real, fake, **kw)
    (loss + gp.penalty).backward()
    return gp


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("extra", [{}, {"drift": 1e-3}, {"kind": "r1"},
                                   {"scaler": "cpu"}, {"every": 2, "step": 4}])
def test_training_step_reads_nothing_back_without_the_check(backend, extra):
    critic = conv_critic()
    real, fake = _data((4, 1, 7, 7))
    if "scaler" in extra:
        extra = {"scaler": torch.amp.GradScaler(extra["scaler"])}
    with HostReads() as reads:
        gp = _step(critic, real, fake, check_finite=False, backend=backend, **extra)
    assert reads.seen == []
    assert gp.penalty.isfinite()
    # The recorder sees the check's read when it is on (CPU default): the test can fail.
    with HostReads() as reads:
        _step(critic, real, fake, backend=backend, **extra)
    assert "aten::_local_scalar_dense" in reads.seen


def test_default_on_a_device_without_values_makes_no_read():
    """Meta tensors stand for tensors off the CPU: check_finite=None is off there, and the
    whole step (penalty, drift, scaler, backward) runs; any read of a value would raise."""
    critic = conv_critic().to("meta")
    real, fake = (t.to("meta") for t in _data((4, 1, 7, 7)))
    gp = _step(critic, real, fake, backend="reference", drift=1e-3,
               scaler=torch.amp.GradScaler("cpu"))
    assert gp.penalty.device.type == "meta"
    assert all(p.grad is not None for p in (critic[0].weight, critic[5].weight))
    with pytest.raises((RuntimeError, NotImplementedError)):
        gradient_penalty(critic, real, fake, backend="reference", check_finite=True)


def test_non_finite_gradients_raise_or_give_a_non_finite_penalty():
    critic = mlp_critic()  # Softplus: a NaN input reaches the input gradient
    real, fake = _data((4, 6))
    bad = real.clone()
    bad[2, 1] = math.nan
    with pytest.raises(FloatingPointError, match=r"samples \[2\].*input has non-finite"):
        gradient_penalty(critic, bad, fake)  # CPU default: checked
    r = gradient_penalty(critic, bad, fake, check_finite=False)
    assert math.isnan(r.penalty.item()) and math.isnan(r.grad_norm[2].item())

    def overflowing(x):
        return critic(x).squeeze(1) * torch.tensor([1.0, 1.0, 1e38, 1.0])

    with pytest.raises(FloatingPointError, match="overflow"):
        gradient_penalty(overflowing, real, fake)
    assert gradient_penalty(overflowing, real, fake, check_finite=False).penalty.isinf()
    inf_scores = torch.tensor([1.0, math.inf, 0.0, 0.0])
    with pytest.raises(FloatingPointError, match="drift"):
        gradient_penalty(critic, real, fake, drift=1.0, real_scores=inf_scores)
    r = gradient_penalty(critic, real, fake, drift=1.0, real_scores=inf_scores,
                         check_finite=False)
    assert r.drift.isinf()
