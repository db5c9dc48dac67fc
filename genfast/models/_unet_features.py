"""The feature network behind the U-Net's feature (perceptual) loss, trained offline.

DeOldify's FeatureLoss compares VGG16-BN activations (before its 3rd, 4th and 5th max-pools,
weighted 20 / 70 / 10) on top of an L1 pixel loss. ImageNet weights are a download, so here a
small VGG-style net (three blocks of two conv3-BN-ReLU, max-pool between) is trained on the
shipped photos themselves, by the self-supervised rotation task of Gidaris et al. 2018 (RotNet:
predict which of 0/90/180/270 degrees a crop was turned by). Why that task: it needs no labels
(the photos have none), it cannot be solved from low-level statistics alone, so the blocks learn
edges, textures and object / scene layout as a classifier's do; and it sees RGB, where colour
is a strong cue for "which way is up" (sky above, foliage and ground below), so the features
respond to colour, which a colourisation loss must measure. It trains only on the training
region of the photos (the held-out strips stay unseen), deterministically, in seconds at one
thread; its weights are cached (genfast.models.fid.cache_dir(), file named by the recipe
version, the photo names and the seed) and stored in every unet-nogan checkpoint, so a run or a
resume never depends on the cache.

The loss: L1(pixels) + sum_i w_i L1(f_i(output), f_i(target)), f_i the activations at the end
of block i (before its pool), w = (20, 70, 10) * layer_scale.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

VERSION = 1
WIDTHS = (16, 32, 64)
_SIZE, _BATCH, _STEPS, _LR, _SEED = 48, 32, 400, 2e-3, 0


class PhotoFeatureNet(nn.Module):
    """VGG-style: 3 x [conv3-BN-ReLU x2, (pool)] then a 4-way rotation head."""

    def __init__(self, widths: Sequence[int] = WIDTHS) -> None:
        super().__init__()
        blocks, c_in = [], 3
        for c in widths:
            blocks.append(nn.Sequential(
                nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
                nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU()))
            c_in = c
        self.blocks = nn.ModuleList(blocks)
        # A 2x2 pooled grid, not a global average: which way is up is a matter of layout.
        self.head = nn.Linear(4 * c_in, 4)
        # Inputs are RGB in [0, 1]; centring them is what ImageNet normalisation does for VGG.
        self.register_buffer("mean", torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.25, 0.25, 0.25]).view(1, 3, 1, 1))

    def features(self, x: Tensor) -> list[Tensor]:
        """The activation at the end of every block (before its max-pool)."""
        h, out = (x - self.mean) / self.std, []
        for i, block in enumerate(self.blocks):
            if i:
                h = F.max_pool2d(h, 2)
            h = block(h)
            out.append(h)
        return out

    def forward(self, x: Tensor) -> Tensor:
        return self.head(F.adaptive_avg_pool2d(self.features(x)[-1], 2).flatten(1))


def rotations(x: Tensor) -> tuple[Tensor, Tensor]:
    """Each square image in its 4 rotations, and the labels 0..3."""
    xs = torch.cat([torch.rot90(x, k, (2, 3)) for k in range(4)])
    return xs, torch.arange(4).repeat_interleave(len(x))


@contextlib.contextmanager
def _isolated(seed: int) -> Iterator[None]:
    # One thread: the same reductions on every machine; forked RNG: the caller's stream (a
    # training run's) does not move; grad on: callers may hold no_grad.
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        with torch.random.fork_rng(devices=[]), torch.enable_grad():
            torch.manual_seed(seed)
            yield
    finally:
        torch.set_num_threads(threads)


def train_feature_net(crops, steps: int = _STEPS, seed: int = _SEED
                      ) -> tuple[PhotoFeatureNet, float]:
    """Train on `crops` (a genfast.data.photos.PhotoCrops) training crops; returns the net
    (eval mode, frozen) and its rotation accuracy on the held-out crops."""
    with _isolated(seed):
        net = PhotoFeatureNet()
        opt = torch.optim.Adam(net.parameters(), lr=_LR)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        net.train()
        for step in range(steps):
            x, y = rotations(crops.train_batch(_BATCH // 4, _SIZE, seed + 7919, step))
            loss = F.cross_entropy(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    net.eval().requires_grad_(False)
    with torch.no_grad():
        x, y = rotations(crops.test_crops(_SIZE))
        acc = float((net(x).argmax(1) == y).float().mean())
    return net, acc


def cached_feature_net(crops, directory: str | None = None, steps: int = _STEPS
                       ) -> tuple[PhotoFeatureNet, float]:
    """The trained net for these photos from the disk cache, else trained now and cached (an
    unwritable directory only costs the training). Returns (net, held-out accuracy)."""
    from .fid import cache_dir

    directory = directory or cache_dir()
    name = f"photo_features_v{VERSION}_{'-'.join(crops.names)}_n{steps}_s{_SEED}.pt"
    path = os.path.join(directory, name)
    net = PhotoFeatureNet()
    if os.path.isfile(path):
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            net.load_state_dict(blob["state_dict"])
            return net.eval().requires_grad_(False), float(blob["test_accuracy"])
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

    def __init__(self, net: PhotoFeatureNet, weights: Sequence[float]) -> None:
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
        fo, ft = self.net.features(output), self.net.features(target.detach())
        terms = [w * (a - b).abs().flatten(1).mean(1)
                 for w, a, b in zip(self.weights, fo, ft, strict=False)]
        d = torch.stack(terms).sum(0)
        return d.mean() if reduce else d

    def forward(self, output: Tensor, target: Tensor) -> Tensor:
        return F.l1_loss(output, target) + self.distance(output, target)
