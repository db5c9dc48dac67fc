"""The feature network behind the U-Net's feature (perceptual) loss, trained offline.

DeOldify's FeatureLoss compares VGG16-BN activations (before its 3rd, 4th and 5th max-pools,
weighted 20 / 70 / 10) on top of an L1 pixel loss. ImageNet weights are a download, so here a
small VGG-style net (three blocks of two conv3-BN-ReLU, max-pool between) is trained on the
shipped photos themselves, by a self-supervised task: each training crop is shown in its four
rotations, and the net names both the rotation (RotNet, Gidaris et al. 2018) and the photo the
crop was cut from (a coarse Exemplar-CNN, Dosovitskiy et al. 2014: surrogate classes from
unlabelled images), 4 x n_photos classes. Why that task: it needs no labels (the photos have
none); rotation cannot be told from low-level statistics, so the blocks learn edges, textures
and scene layout as a classifier's do; telling the photos apart rewards colour and texture
statistics, and colour is also a cue for "which way is up" (sky above, foliage below), so the
features respond to colour, which a colourisation loss must measure. Measured (400 steps,
the six photos, held-out strips): photo 0.725 (chance 0.167), rotation 0.250 (chance 0.25),
joint 0.219 (chance 0.042): in this budget the net learns to tell the photos apart (colour and
texture statistics) and not yet which way is up (rotation alone reached 0.33-0.46 in earlier
400-step runs), so its features are colour / texture features more than layout ones. It trains
only on the training region of the photos (the held-out strips stay unseen),
deterministically, at one thread (400 steps: 190 s wall on a busy 2-core box); its weights
are cached (genfast.models.fid.cache_dir(), file named by the recipe version, the photo names
and the steps) and stored in every unet-nogan checkpoint, so a run or a resume never depends
on the cache.

The loss: L1(pixels) + sum_i w_i L1(f_i(output), f_i(target)), f_i the activations at the end
of block i (before its pool), w = DeOldify's (20, 70, 10) / 100 by default.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .fid import seeded

VERSION = 2
WIDTHS = (16, 32, 64)
_SIZE, _BATCH, _STEPS, _LR, _SEED = 48, 32, 400, 2e-3, 0


class PhotoFeatures(nn.Module):
    """VGG-style: 3 blocks of [conv3-BN-ReLU x2], max-pool between; the loss's layers."""

    def __init__(self, widths: Sequence[int] = WIDTHS) -> None:
        super().__init__()
        blocks, c_in = [], 3
        for c in widths:
            blocks.append(nn.Sequential(
                nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
                nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU()))
            c_in = c
        self.blocks = nn.ModuleList(blocks)
        self.channels = c_in
        # Inputs are RGB in [0, 1]; centring them is what ImageNet normalisation does for VGG.
        self.register_buffer("mean", torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.25, 0.25, 0.25]).view(1, 3, 1, 1))

    def forward(self, x: Tensor) -> list[Tensor]:
        """The activation at the end of every block (before its max-pool)."""
        h, out = (x - self.mean) / self.std, []
        for i, block in enumerate(self.blocks):
            if i:
                h = F.max_pool2d(h, 2)
            h = block(h)
            out.append(h)
        return out


class PhotoFeatureNet(nn.Module):
    """PhotoFeatures + a head over (rotation, photo) classes: 4 * n_photos logits."""

    def __init__(self, n_photos: int, widths: Sequence[int] = WIDTHS) -> None:
        super().__init__()
        self.body = PhotoFeatures(widths)
        # A 2x2 pooled grid, not a global average: which way is up is a matter of layout.
        self.head = nn.Linear(4 * self.body.channels, 4 * n_photos)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(F.adaptive_avg_pool2d(self.body(x)[-1], 2).flatten(1))


def labels(x: Tensor, photo: Tensor, n_photos: int) -> tuple[Tensor, Tensor]:
    """Each square crop in its 4 rotations; class = rotation * n_photos + photo index."""
    xs = torch.cat([torch.rot90(x, k, (2, 3)) for k in range(4)])
    rot = torch.arange(4).repeat_interleave(len(x))
    return xs, rot * n_photos + photo.repeat(4)


def train_feature_net(crops, steps: int = _STEPS, seed: int = _SEED
                      ) -> tuple[PhotoFeatures, dict[str, float]]:
    """Train on `crops` (a genfast.data.photos.PhotoCrops) training crops; returns the
    feature body (eval mode, frozen) and its held-out accuracies: ``joint`` (rotation and
    photo right), ``rotation``, ``photo``."""
    n = len(crops.names)
    with seeded(seed):
        net = PhotoFeatureNet(n)
        opt = torch.optim.Adam(net.parameters(), lr=_LR)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        net.train()
        for step in range(steps):
            x, y = labels(*crops.labelled_train_batch(_BATCH // 4, _SIZE, seed + 7919, step), n)
            loss = F.cross_entropy(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    net.eval().requires_grad_(False)
    with torch.no_grad():
        x, y = labels(*crops.labelled_test_crops(_SIZE), n)
        p = net(x).argmax(1)
    acc = {"joint": float((p == y).float().mean()),
           "rotation": float((p // n == y // n).float().mean()),
           "photo": float((p % n == y % n).float().mean())}
    return net.body, acc


def cached_feature_net(crops, directory: str | None = None, steps: int = _STEPS
                       ) -> tuple[PhotoFeatures, dict[str, float]]:
    """The trained feature body for these photos from the disk cache, else trained now and
    cached (an unwritable directory only costs the training). Returns (net, held-out
    accuracies)."""
    from .fid import cache_dir

    directory = directory or cache_dir()
    name = f"photo_features_v{VERSION}_{'-'.join(crops.names)}_n{steps}_s{_SEED}.pt"
    path = os.path.join(directory, name)
    net = PhotoFeatures()
    if os.path.isfile(path):
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            net.load_state_dict(blob["state_dict"])
            acc = {k: float(v) for k, v in blob["test_accuracy"].items()}
            return net.eval().requires_grad_(False), acc
        except Exception as e:  # corrupt or foreign file: retrain and overwrite
            warnings.warn(f"ignoring unreadable feature-net cache {path}: {e}", stacklevel=2)
    net, acc = train_feature_net(crops, steps)
    try:
        os.makedirs(directory, exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        torch.save({"version": VERSION, "photos": list(crops.names), "test_accuracy": acc,
                    "state_dict": net.state_dict()}, tmp)
        os.replace(tmp, path)
    except OSError as e:
        warnings.warn(f"could not cache the feature net in {directory}: {e}", stacklevel=2)
    return net, acc


class FeatureLoss(nn.Module):
    """L1 pixels + weighted L1 of the feature net's block activations (DeOldify's FeatureLoss).
    The net is frozen (no parameters to optimise) and kept in eval mode: BatchNorm uses its
    trained statistics whatever mode the owner is in."""

    def __init__(self, net: PhotoFeatures, weights: Sequence[float]) -> None:
        super().__init__()
        if len(weights) != len(net.blocks):
            raise ValueError(f"feature weights: need {len(net.blocks)} values (one per block), "
                             f"got {len(weights)}")
        self.net = net.eval().requires_grad_(False)
        self.weights = tuple(float(w) for w in weights)

    def train(self, mode: bool = True) -> FeatureLoss:
        super().train(mode)
        self.net.eval()
        return self

    def distance(self, output: Tensor, target: Tensor, reduce: bool = True) -> Tensor:
        """The feature part: sum_i w_i L1(f_i(output), f_i(target)); per image if not reduce."""
        fo, ft = self.net(output), self.net(target.detach())
        terms = [w * (a - b).abs().flatten(1).mean(1)
                 for w, a, b in zip(self.weights, fo, ft, strict=False)]
        d = torch.stack(terms).sum(0)
        return d.mean() if reduce else d

    def forward(self, output: Tensor, target: Tensor) -> Tensor:
        return F.l1_loss(output, target) + self.distance(output, target)
