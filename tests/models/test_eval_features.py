"""`genfast eval-features`: discriminator features are the max-pooled conv-stage activations,
K-means (Coates et al.) features have the documented form, the linear probe's accuracies are
accuracies, and bad input (unknown model, a model without a discriminator, another model's
checkpoint) is a clear error. A tiny DCGAN checkpoint and few centroids keep it fast."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from genfast.cli import main
from genfast.models import _eval_features as ef
from genfast.models._trainer import CHECKPOINT_FORMAT, save_checkpoint
from genfast.models.dcgan import DCGAN

pytest.importorskip("sklearn")
pytestmark = pytest.mark.usefixtures("one_thread")
SMALL = dict(g_width=8, d_width=8, z_dim=16, fd_samples=64)


def _model(cls=DCGAN):
    torch.manual_seed(0)
    return cls(cls.config_cls(**SMALL))


def _checkpoint(path, model, name="dcgan"):
    save_checkpoint(str(path), {"format": CHECKPOINT_FORMAT, "model": name, "step": 7,
                                "config": dataclasses.asdict(model.config),
                                "state_dict": model.state_dict()})
    return path


def test_discriminator_features_are_pooled_conv_stages():
    m = _model()
    x = torch.rand(5, 1, 16, 16)
    f = ef.discriminator_features(m, x)
    # By hand: the two LeakyReLU outputs of the DCGAN discriminator (8 x 8x8, 16 x 4x4),
    # each max-pooled to 4x4.
    d = m.discriminator.eval()
    with torch.no_grad():
        h1 = d[1](d[0](x * 2 - 1))
        h2 = d[4](d[3](d[2](h1)))
    want = torch.cat([F.max_pool2d(h1, 2).flatten(1), h2.flatten(1)], 1).double()
    assert f.shape == (5, 8 * 16 + 16 * 16) and f.dtype == torch.float64
    torch.testing.assert_close(f, want)
    m.train()
    ef.discriminator_features(m, x)
    assert m.discriminator.training  # its mode is restored


class _MLPDiscriminator(DCGAN):
    def build_discriminator(self):
        return nn.Sequential(nn.Flatten(), nn.Linear(256, 8), nn.LeakyReLU(0.2),
                             nn.Linear(8, 1), nn.Flatten(0))


class _Conditional(nn.Module):
    def forward(self, x, y):
        return x.flatten(1).sum(1)


def test_discriminators_without_image_features_are_errors():
    x = torch.rand(2, 1, 16, 16)
    with pytest.raises(ValueError, match="has no convolutional stage"):
        ef.discriminator_features(_model(_MLPDiscriminator), x)
    m = _model()
    m.discriminator = _Conditional()
    with pytest.raises(ValueError, match="is conditional"):
        ef.discriminator_features(m, x)
    with pytest.raises(ValueError, match="has no discriminator"):
        ef.discriminator_features(nn.Linear(2, 2), x)


def test_kmeans_features_triangle_code_and_quadrants():
    x = torch.rand(40, 1, 16, 16)
    km = ef.KMeansFeatures(centroids=8, n_patches=500, seed=0).fit(x)
    f = km.transform(x[:6])
    assert f.shape == (6, 4 * 8) and bool((f >= 0).all())
    # Triangle code: at every patch some centroid is farther than the mean distance (code 0),
    # so a patch never activates all centroids; per image the quadrants sum 11x11 positions.
    assert float(f.sum()) > 0
    white = (ef._patches(x[:1]) - km.mean) @ km.zca
    dist = torch.cdist(white[0], km.centres)
    code = (dist.mean(1, keepdim=True) - dist).clamp_min(0)
    assert bool((code == 0).any(1).all())
    torch.testing.assert_close(f[0].view(4, 8).sum(0), code.sum(0))


def test_probe_accuracies_are_accuracies():
    r = ef.probe(_model(), centroids=8, n_patches=1000, per_class=(3,), draws=2)
    assert set(r) == {"discriminator", "kmeans", "pixels", "untrained"}
    assert r["discriminator"]["dims"] == 384 and r["kmeans"]["dims"] == 32
    for v in r.values():
        assert 0.0 <= v["accuracy"] <= 1.0 and 0.0 <= v["few"][3] <= 1.0
    # Pixels of the digits are linearly separable to well above chance (10%).
    assert r["pixels"]["accuracy"] > 0.9


def test_cli_prints_both_accuracies_and_rejects_bad_input(tmp_path, capsys, monkeypatch):
    for name, v in (("CENTROIDS", 8), ("KMEANS_PATCHES", 1000), ("PER_CLASS", (3,)),
                    ("DRAWS", 1)):
        monkeypatch.setattr(ef, name, v)
    ckpt = _checkpoint(tmp_path / "d.pt", _model())
    assert main(["eval-features", "dcgan", "--checkpoint", str(ckpt)]) == 0
    text = capsys.readouterr().out
    rows = {ln.split()[0]: ln for ln in text.splitlines() if ln.startswith("  ")}
    for key in ("discriminator", "K-means", "pixels"):
        acc = float(rows[key].split()[-4])
        assert 0.0 <= acc <= 1.0, rows[key]
    with pytest.raises(SystemExit, match="unknown model 'nope'"):
        main(["eval-features", "nope", "--checkpoint", str(ckpt)])
    with pytest.raises(SystemExit, match="'gmm' is not one"):
        main(["eval-features", "gmm", "--checkpoint", str(ckpt)])
    with pytest.raises(SystemExit, match="holds a 'dcgan' model, not a trained 'sngan'"):
        main(["eval-features", "sngan", "--checkpoint", str(ckpt)])
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit, match="not a readable genfast checkpoint"):
        main(["eval-features", "dcgan", "--checkpoint", str(tmp_path / "junk.pt")])
