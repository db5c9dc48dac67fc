"""Multi-process training (genfast/models/_distributed.py) on 2 CPU processes (gloo).

Spawned workers (tests/_ddp.py) run the trainer itself: a GAN (DCGAN) and a non-GAN model
(the autoencoder) train with parameters and buffers bitwise equal across ranks (stylegan2's
consistency check), a world-2 checkpoint resumes exactly at world 2 and runs on at world 1,
2 processes of batch B/2 follow 1 process of batch B, and the gradient averaging gives DDP's
own bits on a plain model and on a GAN step with G and D wrapped in DDP. One real torchrun run
of `genfast train char-rnn` checks the CLI path: one summary, rank 0's checkpoint with every
rank's RNG state, a world-1 resume from it.
"""

import inspect
import json
import os
import signal
import subprocess
import sys

import _ddp
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from genfast.cli import main
from genfast.models import _distributed, _trainer
from genfast.models.autoencoder import Autoencoder, AutoencoderConfig
from genfast.models.dcgan import DCGAN, DCGANConfig

pytestmark = [pytest.mark.skipif(not _ddp.AVAILABLE, reason="needs torch.distributed + gloo"),
              pytest.mark.usefixtures("one_thread", "random_feature_net")]

WORLD = 2
# DDP's own buffer broadcast before every forward is off: the test makes buffers rank 0's after
# each step (as the trainer does); torch 2.7's in-forward broadcast also bumps BatchNorm buffers
# that D(real)'s graph saved, which fails the backward of D(real) + D(fake).
NO_BUFFER_SYNC = ({"forward_sync_buffers": False}
                  if "forward_sync_buffers" in inspect.signature(DDP).parameters
                  else {"broadcast_buffers": False})
TC = dict(batch_size=8, lr=1e-3, log_every=2, sample_every=2, checkpoint_every=2, n_samples=4)


def _images(n: int = 96) -> torch.Tensor:
    return torch.rand(n, 1, 16, 16, generator=torch.Generator().manual_seed(3))


def _dcgan() -> DCGAN:
    torch.manual_seed(0)
    return DCGAN(DCGANConfig(g_width=8, d_width=8, fd_samples=16))


def _ae() -> Autoencoder:
    torch.manual_seed(0)
    return Autoencoder(AutoencoderConfig(hidden=(32,), latent_dim=4, fd_samples=16,
                                         image_shape=(1, 16, 16)))


def _fit(make, name, out, steps, resume=False, batch_size=8):
    m = make()
    tc = _trainer.TrainConfig(steps=steps, **{**TC, "batch_size": batch_size})
    x = _images()
    metrics = _trainer.fit(m, name, x[:80], x[80:], tc, out, resume=resume, progress=False)
    return m, metrics


def _synced(net):
    _distributed.broadcast_module(net)
    _distributed.GradSync(net)
    return net


def _plain_sync(rank, world, wrap):
    """3 SGD steps of a plain MLP on this rank's half of fixed batches."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 1)).double()
    model = wrap(net)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        x, y = (torch.randn(8, 6, generator=g, dtype=torch.float64),
                torch.randn(8, 1, generator=g, dtype=torch.float64))
        opt.zero_grad()
        F.mse_loss(model(x[rank * 4:(rank + 1) * 4]), y[rank * 4:(rank + 1) * 4]).backward()
        opt.step()
    return net.state_dict()


def _gan_sync(rank, world, ddp):
    """3 DCGAN train steps on this rank's half, with GradSync or with G and D each in DDP."""
    m = _dcgan()
    opts = m.configure_optimizers(1e-3)
    if ddp:
        m.generator = DDP(m.generator, **NO_BUFFER_SYNC)
        m.discriminator = DDP(m.discriminator, **NO_BUFFER_SYNC)
    else:
        _distributed.broadcast_module(m)
        sync = _distributed.GradSync(m)
    torch.manual_seed(10 + rank)
    x = _images(8 * 3)
    for step in range(3):
        m.train_step(_distributed.shard(x[8 * step:8 * (step + 1)], rank, world), opts, step)
        _distributed.sync_buffers(m)  # DDP: broadcast_buffers at the next forward
    if ddp:
        m.generator, m.discriminator = m.generator.module, m.discriminator.module
    else:
        sync.close()
    return m.state_dict()


def _worker(rank, world, out):
    def save(obj, name):
        torch.save(obj, f"{out}/{name}-{rank}.pt")

    from genfast.models import fid

    with torch.random.fork_rng(devices=[]):  # as the random_feature_net fixture
        torch.manual_seed(0)
        net = fid.DigitsFeatureNet().eval().requires_grad_(False)
    fid.feature_net = lambda *a, **k: net
    save(_plain_sync(rank, world, _synced), "plain-sync")
    save(_plain_sync(rank, world, DDP), "plain-ddp")
    save(_gan_sync(rank, world, ddp=False), "gan-sync")
    save(_gan_sync(rank, world, ddp=True), "gan-ddp")
    a, metrics = _fit(_dcgan, "dcgan", f"{out}/a", 4)
    save({"state": a.state_dict(), "metrics": metrics}, "dcgan-a")
    _fit(_dcgan, "dcgan", f"{out}/b", 2)
    b, _ = _fit(_dcgan, "dcgan", f"{out}/b", 4, resume=True)
    save(b.state_dict(), "dcgan-b")
    ae, _ = _fit(_ae, "autoencoder", f"{out}/ae", 6, batch_size=16)
    save(ae.state_dict(), "ae")
    try:
        _fit(_ae, "autoencoder", f"{out}/odd", 1, batch_size=7)
    except ValueError as e:
        save(str(e), "odd")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    _ddp.spawn(_worker, WORLD, str(out))
    return out


def _load(runs, name):
    return [torch.load(runs / f"{name}-{r}.pt", weights_only=False) for r in range(WORLD)]


def _assert_equal(a, b, what):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=f"{what}: {k}")


def _records(d):
    with open(d / "metrics.jsonl") as f:
        return [{k: v for k, v in json.loads(ln).items() if k != "elapsed_s"} for ln in f]


def test_gradient_averaging_gives_ddps_bits(runs):
    for what in ("plain", "gan"):
        sync, ddp = _load(runs, f"{what}-sync"), _load(runs, f"{what}-ddp")
        for r in range(WORLD):
            _assert_equal(sync[r], ddp[r], f"{what}, rank {r}, GradSync vs DDP")
        _assert_equal(sync[0], sync[1], f"{what}, rank 0 vs 1")
    # and the two halves did train on different data: a plain 1-process step on half differs
    one = _plain_sync(0, 1, lambda n: n)
    assert not torch.equal(one["0.weight"], _load(runs, "plain-sync")[0]["0.weight"])


def test_ranks_agree_bitwise_and_resume_is_exact(runs):
    a, b = _load(runs, "dcgan-a"), _load(runs, "dcgan-b")
    _assert_equal(a[0]["state"], a[1]["state"], "dcgan rank 0 vs 1")
    assert a[0]["metrics"] == a[1]["metrics"] and a[0]["metrics"]["fd"] > 0
    _assert_equal(a[0]["state"], b[0], "dcgan 4 steps vs 2 + resumed 2")
    assert _records(runs / "a") == _records(runs / "b")
    ckpt = _trainer.load_checkpoint(str(runs / "b" / "checkpoint.pt"))
    assert ckpt["world"] == WORLD and ckpt["step"] == 4 and len(ckpt["rng_ranks"]) == WORLD
    assert not torch.equal(ckpt["rng_ranks"][0]["cpu"], ckpt["rng_ranks"][1]["cpu"])
    ae = _load(runs, "ae")
    _assert_equal(ae[0], ae[1], "autoencoder rank 0 vs 1")
    # a world-2 checkpoint runs on in one process
    m, _ = _fit(_dcgan, "dcgan", runs / "b", 6, resume=True)
    assert _trainer.load_checkpoint(str(runs / "b" / "checkpoint.pt"))["world"] == 1
    assert not torch.equal(m.state_dict()["generator.0.weight"], b[0]["generator.0.weight"])


def test_two_processes_of_half_batch_match_one_process(runs, tmp_path):
    one, _ = _fit(_ae, "autoencoder", tmp_path, 6, batch_size=16)
    two = _load(runs, "ae")[0]
    # Parameters only: running statistics (the code mean / covariance buffers) are rank 0's
    # half-batch statistics under DDP's semantics, as BatchNorm's would be.
    for k, v in one.named_parameters():
        torch.testing.assert_close(two[k], v.detach(), rtol=1e-4, atol=1e-6, msg=k)
        assert not torch.equal(v, _ae().state_dict()[k])  # it trained


def test_indivisible_batch_is_a_clear_error(runs):
    msg = _load(runs, "odd")[0]
    assert "--batch-size" in msg and "7" in msg and "2 processes" in msg


def test_torchrun_cli_trains_once_and_resumes_in_one_process(tmp_path, capsys):
    data = tmp_path / "text.txt"
    data.write_text("\n".join(f"line {i}: the cat sat on the mat." for i in range(60)) + "\n")
    out = tmp_path / "run"
    args = ["train", "char-rnn", "--data", str(data), "--out", str(out), "--batch-size", "4",
            "--checkpoint-every", "2", "--sample-every", "2", "--no-progress", "--threads", "1"]
    sets = ["--set", "embedding_dim=8", "--set", "hidden_size=16", "--set", "seq_len=12"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # --standalone: a local rendezvous on a free port; a new session, so a timeout can end
    # torchrun's workers with it.
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone",
                             "--nproc_per_node=2", "-m", "genfast", *args, *sets, "--steps",
                             "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, stderr[-3000:]
    assert stdout.count("bits/char") == 1  # rank 1 prints nothing
    ckpt = _trainer.load_checkpoint(str(out / "checkpoint.pt"))
    assert ckpt["step"] == 2 and ckpt["world"] == 2 and len(ckpt["rng_ranks"]) == 2
    assert (out / "sample_step000002.txt").exists()
    assert main(args + ["--steps", "3", "--resume"]) == 0
    assert "3 steps" in capsys.readouterr().out
    assert _trainer.load_checkpoint(str(out / "checkpoint.pt"))["step"] == 3
