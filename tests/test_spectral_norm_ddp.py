"""genfast spectral norm under DistributedDataParallel: two CPU processes (gloo), the usual GAN
discriminator step D(real), D(fake), one backward, with buffers broadcast before every forward
(forward_sync_buffers, formerly broadcast_buffers). Two steps of it must
equal the same steps of torch's spectral norm in one process on the whole batch."""

import inspect

import _ddp
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.nn.utils.parametrizations import spectral_norm as torch_sn

from genfast.nn.spectral_norm import SpectralNormGroup, spectral_norm

WORLD = 2
STEPS = 2
# Buffers broadcast from rank 0 before every forward (the keyword was renamed in torch 2.13).
SYNC = ({"forward_sync_buffers": True}
        if "forward_sync_buffers" in inspect.signature(DDP).parameters
        else {"broadcast_buffers": True})
CONFIGS = {"per-layer": dict(fold=False, group=False), "group+fold": dict(fold=True, group=True)}


def _d(sn):
    torch.manual_seed(0)
    layers = [nn.Conv2d(1, 4, 3, 2, 1), nn.Conv2d(4, 8, 3, 2, 1), nn.Linear(8 * 2 * 2, 1)]
    a, b, c = (sn(m.double()) for m in layers)  # float64 from the warm-up iterations on
    return nn.Sequential(a, nn.LeakyReLU(0.2), b, nn.LeakyReLU(0.2), nn.Flatten(), c,
                         nn.Flatten(0))


def _data():
    g = torch.Generator().manual_seed(1)
    return (torch.rand(STEPS, 8, 1, 8, 8, generator=g, dtype=torch.float64),
            torch.randn(STEPS, 8, 1, 8, 8, generator=g, dtype=torch.float64))


def _train(d, shard=slice(None)):
    opt = torch.optim.SGD(d.parameters(), lr=0.05)
    real, fake = _data()
    for step in range(STEPS):
        opt.zero_grad()
        loss = (F.relu(1 - d(real[step][shard])).mean()
                + F.relu(1 + d(fake[step][shard])).mean())
        loss.backward()
        opt.step()


def _worker(rank, world, out):
    for name, cfg in CONFIGS.items():
        d = _d(lambda m, cfg=cfg: spectral_norm(m, fold=cfg["fold"]))
        if cfg["group"]:
            SpectralNormGroup(d)
        _train(DDP(d, **SYNC), slice(rank, None, world))
        torch.save(d.state_dict(), f"{out}/{name}-{rank}.pt")


@pytest.mark.skipif(not _ddp.AVAILABLE, reason="torch.distributed with gloo is not available")
def test_ddp_gan_step_matches_single_process_torch(tmp_path):
    _ddp.spawn(_worker, WORLD, str(tmp_path))
    ref = _d(torch_sn)
    _train(ref)
    expect = ref.state_dict()
    for name in CONFIGS:
        for rank in range(WORLD):
            got = torch.load(tmp_path / f"{name}-{rank}.pt")
            assert list(got) == list(expect)  # torch's keys
            for k in expect:
                torch.testing.assert_close(got[k], expect[k], rtol=1e-9, atol=1e-11,
                                           msg=f"{name}, rank {rank}: {k}")
