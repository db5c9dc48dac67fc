"""Representation check for a trained GAN's discriminator (Radford et al. 2016, section 5.1):
its features of the digits, a linear classifier on top, against K-means features.

* Discriminator features (as the DCGAN paper): the activations of every convolutional stage
  of the discriminator (the output of each nonlinearity whose output is an image), each
  max-pooled to a 4x4 grid and flattened, all stages concatenated (DCGAN on 16x16 digits:
  64 x 4 x 4 + 128 x 4 x 4 = 3,072 features). The discriminator runs in eval mode on the
  images it was trained on (scaled to [-1, 1]); it never saw a label.
* K-means features, the paper's baseline (Coates, Lee & Ng 2011, single layer): 6x6 patches
  of the same 16x16 images at stride 1, each brightness/contrast normalised, ZCA-whitened;
  K-means (scikit-learn, 512 centroids on 20,000 sampled training patches); the "triangle"
  code max(0, mean_k(d_k) - d_k) of the distances d_k to the centroids; sum-pooled over the
  four quadrants of the 11x11 grid of patch positions (4 x 512 = 2,048 features).
* Pixels (256) and an untrained discriminator of the same architecture (the model's own
  initialisation, seeded) as two more lines: what the features add over the raw input and
  over random convolutions.

Each set of features is standardised on the training split and a multinomial logistic
regression (scikit-learn, L2, C = 1) is fitted on the training split of the digits (1,437)
and scored on the held-out split (360): genfast.data.digits' fixed split, the one the
generative models are evaluated on. With every label, all of these reach ~97-100% on so easy
a task, so the probe is also fitted on 5 and 20 labelled digits per class (the mean over 5
random draws), where features differ (the DCGAN paper's SVHN check used 1,000 labels).
"""

from __future__ import annotations

import argparse
import copy
import inspect
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

POOL = 4
PATCH = 6
CENTROIDS = 512
KMEANS_PATCHES = 20_000
_NORM_EPS = 0.01  # brightness/contrast normalisation: blank patches stay ~0, not noise
_ZCA_EPS = 0.1
_C = 1.0
PER_CLASS = (5, 20)  # the few-label columns: labelled training digits per class
DRAWS = 5  # random labelled subsets averaged per few-label column


def _activations(net: nn.Module) -> list[nn.Module]:
    return [m for m in net.modules()
            if isinstance(m, (nn.LeakyReLU, nn.ReLU, nn.ELU, nn.GELU, nn.SiLU))]


@torch.no_grad()
def discriminator_features(model: nn.Module, x: Tensor, pool: int = POOL,
                           batch_size: int = 256) -> Tensor:
    """(N, F) float64: every image-shaped activation of ``model.discriminator`` on images x
    in [0, 1], max-pooled to pool x pool (smaller maps kept whole) and concatenated."""
    disc = getattr(model, "discriminator", None)
    if not isinstance(disc, nn.Module):
        raise ValueError(f"{type(model).__name__} has no discriminator to take features from")
    if len(inspect.signature(disc.forward).parameters) != 1:
        raise ValueError(f"the discriminator of {type(model).__name__} is conditional (it "
                         f"takes {list(inspect.signature(disc.forward).parameters)}); the "
                         "probe needs features of the image alone")
    grabbed: list[Tensor] = []

    def hook(_m: nn.Module, _i: object, out: Tensor) -> None:
        if isinstance(out, Tensor) and out.dim() == 4:
            side = (min(pool, out.shape[-2]), min(pool, out.shape[-1]))
            grabbed.append(F.adaptive_max_pool2d(out, side).flatten(1))

    handles = [m.register_forward_hook(hook) for m in _activations(disc)]
    was_training = disc.training
    disc.eval()
    device = next(disc.parameters()).device
    out = []
    try:
        for xb in x.split(batch_size):
            grabbed.clear()
            disc(xb.to(device) * 2.0 - 1.0)
            if not grabbed:
                raise ValueError(f"the discriminator of {type(model).__name__} has no "
                                 "convolutional stage (no image-shaped activation)")
            out.append(torch.cat(grabbed, 1).double().cpu())
    finally:
        for h in handles:
            h.remove()
        disc.train(was_training)
    return torch.cat(out)


def _patches(x: Tensor, size: int = PATCH) -> Tensor:
    """(N, C, H, W) -> (N, P, C*size*size) patches at stride 1, each brightness/contrast
    normalised (Coates et al.)."""
    p = F.unfold(x.double(), size).transpose(1, 2)  # (N, P, C*size*size)
    p = p - p.mean(-1, keepdim=True)
    return p / (p.var(-1, keepdim=True) + _NORM_EPS).sqrt()


class KMeansFeatures:
    """Coates, Lee & Ng (2011) single-layer K-means features (module docstring)."""

    def __init__(self, centroids: int = CENTROIDS, n_patches: int = KMEANS_PATCHES,
                 seed: int = 0) -> None:
        self.centroids, self.n_patches, self.seed = centroids, n_patches, seed

    def fit(self, x: Tensor) -> KMeansFeatures:
        from sklearn.cluster import KMeans

        p = _patches(x).reshape(-1, PATCH * PATCH * x.shape[1])
        g = torch.Generator().manual_seed(self.seed)
        p = p[torch.randperm(len(p), generator=g)[: self.n_patches]]
        self.mean = p.mean(0)
        w, v = torch.linalg.eigh(torch.cov((p - self.mean).T))
        self.zca = (v / (w.clamp_min(0) + _ZCA_EPS).sqrt()) @ v.T
        white = (p - self.mean) @ self.zca
        km = KMeans(self.centroids, n_init=1, random_state=self.seed).fit(white.numpy())
        self.centres = torch.from_numpy(km.cluster_centers_).double()
        return self

    def transform(self, x: Tensor, batch_size: int = 128) -> Tensor:
        """(N, 4 * centroids): triangle codes sum-pooled over the four quadrants."""
        out = []
        c2 = (self.centres * self.centres).sum(1)
        for xb in x.split(batch_size):
            p = (_patches(xb) - self.mean) @ self.zca  # (b, P, D)
            d = ((p * p).sum(-1, keepdim=True) - 2.0 * p @ self.centres.T + c2).clamp_min(0)
            d = d.sqrt()
            f = (d.mean(-1, keepdim=True) - d).clamp_min(0)  # (b, P, K)
            side = int(round(p.shape[1] ** 0.5))
            f = f.transpose(1, 2).reshape(len(xb), -1, side, side)
            h = (side + 1) // 2
            quads = [f[..., :h, :h], f[..., :h, h:], f[..., h:, :h], f[..., h:, h:]]
            out.append(torch.cat([q.sum((-2, -1)) for q in quads], 1))
        return torch.cat(out)


def linear_probe(train_f: Tensor, train_y: Tensor, test_f: Tensor, test_y: Tensor,
                 seed: int = 0) -> float:
    """Held-out accuracy of a logistic regression fitted on standardised training features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(train_f.numpy())
    clf = LogisticRegression(C=_C, max_iter=3000, random_state=seed)
    clf.fit(scaler.transform(train_f.numpy()), train_y.numpy())
    pred = clf.predict(scaler.transform(test_f.numpy()))
    return float(np.mean(pred == test_y.numpy()))


def per_class_subset(y: Tensor, per_class: int, generator: torch.Generator) -> Tensor:
    """Indices of `per_class` random examples of every class (all of a smaller class)."""
    idx = [(y == k).nonzero()[:, 0] for k in y.unique().tolist()]
    return torch.cat([i[torch.randperm(len(i), generator=generator)[:per_class]] for i in idx])


def probe(model: nn.Module, *, seed: int = 0, centroids: int = CENTROIDS,
          n_patches: int = KMEANS_PATCHES, per_class: tuple[int, ...] = PER_CLASS,
          draws: int = DRAWS, untrained: bool = True) -> dict[str, dict[str, Any]]:
    """Linear-probe accuracies on the digits' held-out split, per feature set
    (``discriminator``, ``kmeans``, ``pixels``[, ``untrained``]): ``{"accuracy": with every
    training label, "few": {k: mean accuracy over `draws` subsets of k labels per class},
    "dims", "seconds"}``."""
    from genfast.data.digits import load_digits, split

    size = model.image_shape[1]
    x, y = load_digits(size)
    if model.image_shape[0] != 1:
        x = x.expand(-1, model.image_shape[0], -1, -1)
    (x_tr, x_te), (y_tr, y_te) = split(x), split(y)
    gen = torch.Generator().manual_seed(seed)
    subsets = {k: [per_class_subset(y_tr, k, gen) for _ in range(draws)] for k in per_class}
    results: dict[str, dict[str, Any]] = {}

    def run(name: str, features: Callable[[Tensor], Tensor], t0: float) -> None:
        tr, te = features(x_tr), features(x_te)
        few = {k: float(np.mean([linear_probe(tr[i], y_tr[i], te, y_te, seed) for i in sub]))
               for k, sub in subsets.items()}
        results[name] = {"accuracy": linear_probe(tr, y_tr, te, y_te, seed), "few": few,
                         "dims": tr.shape[1], "seconds": time.perf_counter() - t0}

    t0 = time.perf_counter()
    run("discriminator", lambda v: discriminator_features(model, v), t0)
    t0 = time.perf_counter()
    km = KMeansFeatures(centroids, n_patches, seed).fit(x_tr)
    run("kmeans", km.transform, t0)
    t0 = time.perf_counter()
    run("pixels", lambda v: v.flatten(1).double(), t0)
    if untrained:
        t0 = time.perf_counter()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            fresh = type(model)(copy.deepcopy(model.config))
        run("untrained", lambda v: discriminator_features(fresh, v), t0)
    return results


def cli_eval_features(args: argparse.Namespace) -> int:
    """`genfast eval-features MODEL --checkpoint P`: print the linear-probe accuracies."""
    from genfast import models

    from ._gan import GAN
    from ._trainer import load_model

    try:
        cls = models.get(args.model)
    except KeyError as e:
        raise SystemExit(f"genfast: {e.args[0]}") from None
    if not (isinstance(cls, type) and issubclass(cls, GAN)):
        raise SystemExit(f"genfast: eval-features needs a trained GAN with a convolutional "
                         f"discriminator; {args.model!r} is not one")
    model, ckpt = load_model(cls, args)
    try:
        r = probe(model, seed=args.seed, centroids=CENTROIDS, n_patches=KMEANS_PATCHES,
                  per_class=PER_CLASS, draws=DRAWS)
    except ValueError as e:
        raise SystemExit(f"genfast: {e}") from None
    labels = {"discriminator": "discriminator (every conv stage max-pooled to 4x4)",
              "kmeans": f"K-means ({CENTROIDS} centroids, {PATCH}x{PATCH} whitened patches)",
              "pixels": "pixels",
              "untrained": "untrained discriminator (same architecture)"}
    few = " ".join(f"{f'{k}/class':>8}" for k in PER_CLASS)
    print(f"{args.model} step {ckpt['step']}: linear probe on the digits' held-out split "
          f"(360): logistic regression on standardised features, trained on all 1437 "
          f"training digits and on k labelled digits per class (mean of {DRAWS} draws)")
    print(f"  {'features':<58} {'dims':>5} {'all':>7} {few}")
    for name, v in r.items():
        cols = " ".join(f"{v['few'][k]:8.4f}" for k in PER_CLASS)
        print(f"  {labels[name]:<58} {int(v['dims']):5d} {v['accuracy']:7.4f} {cols}"
              f"   ({v['seconds']:.1f} s)")
    return 0


__all__ = ["KMeansFeatures", "cli_eval_features", "discriminator_features", "linear_probe",
           "probe"]
