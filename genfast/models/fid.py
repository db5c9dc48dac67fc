"""An offline Fréchet distance for digit images ("FD-digits"), in the manner of FID.

FID (Heusel et al. 2017) fits a Gaussian to InceptionV3 features of real and of generated
images and reports the Fréchet (2-Wasserstein) distance between the two Gaussians:

    FD = |mu_1 - mu_2|^2 + tr(S_1) + tr(S_2) - 2 tr sqrt(S_1 S_2)

Inception weights are a download, so genfast cannot use them offline (research/models.md 5.4).
Here the features come from a tiny CNN classifier trained on scikit-learn's embedded 8x8
digits (upsampled to 16x16): the 64-unit layer before its class logits. It trains
deterministically in a few seconds on the CPU (~97% held-out accuracy) and its weights are
cached on disk (``$GENFAST_CACHE_DIR``, else ``$XDG_CACHE_HOME/genfast``, else
``~/.cache/genfast``), never downloaded. Numbers are therefore *FD-digits*, comparable between
genfast runs, not with published FIDs. Finite samples bias them upward: the 1,437 training
digits against the 360 held-out ones score about 4, the floor for a generator scored against
the held-out digits; uniform noise scores about 600.

tr sqrt(S_1 S_2) is computed without a general matrix square root: with R = S_1^(1/2) (a
symmetric eigendecomposition), S_1 S_2 = R^(-1) (R S_2 R) R is similar to the symmetric PSD
matrix R S_2 R, so its square root has the same trace, the sum of sqrt(eigvalsh(R S_2 R)).
That is exact, real, and stable for singular covariances where scipy.linalg.sqrtm of the
product can return complex noise (tests/models/test_fid.py checks both against scipy).
"""

from __future__ import annotations

import contextlib
import copy
import os
import warnings
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SIZE = 16  # the classifier's input resolution; other sizes are resized to it
FEATURES = 64
# Bump when the architecture or the training recipe below changes: it names the cache file.
VERSION = 1
_SEED = 0
_EPOCHS = 12
_BATCH = 64
_LR = 3e-3

_nets: dict[str, nn.Module] = {}  # in-process cache, CPU copies keyed by cache file name


class DigitsFeatureNet(nn.Module):
    """conv3(16) - pool - conv3(32) - pool - linear(64) [features] - relu - linear(10)."""

    def __init__(self, size: int = SIZE) -> None:
        super().__init__()
        self.size = size
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(32 * (size // 4) ** 2, FEATURES),
        )
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(FEATURES, 10))

    def prepare(self, x: Tensor) -> Tensor:
        """(N, C, H, W) images in [0, 1] -> (N, 1, size, size): RGB averaged to grey, smaller
        images upsampled bilinearly (as genfast.data.resize does), larger ones area-averaged."""
        if x.dim() != 4:
            raise ValueError(f"expected (N, C, H, W) images, got shape {tuple(x.shape)}")
        x = x.float()
        if x.shape[1] != 1:
            x = x.mean(1, keepdim=True)
        h, w = x.shape[-2:]
        if (h, w) != (self.size, self.size):
            big = h > self.size or w > self.size
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear",
                              align_corners=False, antialias=big)
        return x

    def features(self, x: Tensor) -> Tensor:
        return self.body(self.prepare(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def cache_dir() -> str:
    d = os.environ.get("GENFAST_CACHE_DIR")
    if d:
        return d
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "genfast")


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Train a small feature net reproducibly: one thread, the caller's RNG stream left where
    it was (forked), autograd on."""
    # Callers may hold no_grad (a model's evaluate does); training needs autograd. One thread:
    # as fast for so small a net, the same floating-point reductions on every machine, and
    # no 20x stall when a shared box is oversubscribed.
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        with torch.random.fork_rng(devices=[]), torch.enable_grad():
            torch.manual_seed(seed)
            yield
    finally:
        torch.set_num_threads(threads)


def train_feature_net(size: int = SIZE) -> tuple[DigitsFeatureNet, float]:
    """Train the classifier on the fixed training split of the digits; returns it (eval mode)
    and its accuracy on the held-out split. Seeded and isolated from the global RNG stream."""
    from genfast.data.digits import load_digits, split

    x, y = load_digits(size)
    # Same permutation as genfast.data.digits_split, so the held-out digits the generative
    # models are scored on are held out here too.
    (x_tr, x_te), (y_tr, y_te) = split(x), split(y)
    with seeded(_SEED):
        net = DigitsFeatureNet(size)
        opt = torch.optim.Adam(net.parameters(), lr=_LR)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(
            opt, _EPOCHS * (len(x_tr) // _BATCH))
        net.train()
        for _ in range(_EPOCHS):
            perm = torch.randperm(len(x_tr))
            for i in range(len(x_tr) // _BATCH):
                idx = perm[i * _BATCH:(i + 1) * _BATCH]
                loss = F.cross_entropy(net(x_tr[idx]), y_tr[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
    net.eval()
    with torch.no_grad():
        acc = (net(x_te).argmax(1) == y_te).float().mean().item()
    return net, acc


def feature_net(size: int = SIZE, device: str | torch.device | None = None,
                directory: str | None = None) -> DigitsFeatureNet:
    """The trained feature classifier (eval mode, no grad needed), from memory, the disk cache,
    or trained now (seconds) and cached. An unwritable cache directory only costs a retrain."""
    directory = directory or cache_dir()
    name = f"fd_digits_v{VERSION}_s{size}.pt"
    path = os.path.join(directory, name)
    key = path
    net = _nets.get(key)
    if net is None:
        net = DigitsFeatureNet(size)
        loaded = False
        if os.path.isfile(path):
            try:
                blob = torch.load(path, map_location="cpu", weights_only=True)
                net.load_state_dict(blob["state_dict"])
                loaded = True
            except Exception as e:  # corrupt or foreign file: retrain and overwrite
                warnings.warn(f"ignoring unreadable FD-digits cache {path}: {e}", stacklevel=2)
        if not loaded:
            net, acc = train_feature_net(size)
            try:
                os.makedirs(directory, exist_ok=True)
                tmp = f"{path}.{os.getpid()}.tmp"
                torch.save({"version": VERSION, "size": size, "test_accuracy": acc,
                            "state_dict": net.state_dict()}, tmp)
                os.replace(tmp, path)
            except OSError as e:
                warnings.warn(f"could not cache FD-digits weights in {directory}: {e}",
                              stacklevel=2)
        net.eval().requires_grad_(False)
        _nets[key] = net
    if device is not None and torch.device(device) != torch.device("cpu"):
        net = copy.deepcopy(net).to(device)
    return net


@torch.no_grad()
def image_features(images: Tensor, net: DigitsFeatureNet | None = None,
                   batch_size: int = 500) -> Tensor:
    """(N, C, H, W) images in [0, 1] -> (N, 64) float64 features."""
    net = net or feature_net(device=images.device)
    was_training = net.training
    net.eval()
    try:
        out = [net.features(b).double() for b in images.split(batch_size)]
    finally:
        net.train(was_training)
    return torch.cat(out).cpu()


@torch.no_grad()
def classify(images: Tensor, net: DigitsFeatureNet | None = None,
             batch_size: int = 500) -> Tensor:
    """(N, C, H, W) images in [0, 1] -> (N, 10) digit-class probabilities (float32, CPU) by
    the same embedded classifier: the judge of class accuracy and mode coverage."""
    net = net or feature_net(device=images.device)
    was_training = net.training
    net.eval()
    try:
        out = [net(b).float().softmax(1) for b in images.split(batch_size)]
    finally:
        net.train(was_training)
    return torch.cat(out).cpu()


def gaussian_stats(features: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and (unbiased, N-1) covariance of (N, D) features, in float64."""
    f = features.double()
    if f.dim() != 2 or f.shape[0] < 2:
        raise ValueError(f"need (N >= 2, D) features, got shape {tuple(f.shape)}")
    return f.mean(0), torch.cov(f.T).reshape(f.shape[1], f.shape[1])


def sqrtm_psd(a: Tensor) -> Tensor:
    """Principal square root of a symmetric positive semi-definite matrix (eigh; negative
    round-off eigenvalues clamped to 0). Equals scipy.linalg.sqrtm(a) on such matrices."""
    a = a.double()
    a = (a + a.T) / 2
    w, v = torch.linalg.eigh(a)
    return (v * w.clamp_min(0).sqrt()) @ v.T


def trace_sqrt_product(s1: Tensor, s2: Tensor) -> Tensor:
    """tr sqrtm(s1 @ s2) for symmetric PSD s1, s2, as tr sqrtm(R s2 R) with R = sqrtm(s1)."""
    r = sqrtm_psd(s1)
    m = r @ s2.double() @ r
    return torch.linalg.eigvalsh((m + m.T) / 2).clamp_min(0).sqrt().sum()


def frechet_distance(mu1: Tensor, sigma1: Tensor, mu2: Tensor, sigma2: Tensor) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2)."""
    mu1, mu2, sigma1, sigma2 = (t.double() for t in (mu1, mu2, sigma1, sigma2))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError("frechet_distance: the two Gaussians have different dimensions")
    d = (mu1 - mu2).square().sum() + sigma1.trace() + sigma2.trace()
    d = d - 2 * trace_sqrt_product(sigma1, sigma2)
    return max(float(d), 0.0)


def fd_digits(images_a: Tensor, images_b: Tensor, net: DigitsFeatureNet | None = None) -> float:
    """FD-digits between two sets of (N, C, H, W) images in [0, 1] (e.g. samples vs held-out
    digits). Lower is closer; 0 for identical sets."""
    net = net or feature_net(device=images_a.device)
    return frechet_distance(*gaussian_stats(image_features(images_a, net)),
                            *gaussian_stats(image_features(images_b, net)))


__all__ = ["DigitsFeatureNet", "classify", "fd_digits", "feature_net", "frechet_distance",
           "gaussian_stats", "image_features", "sqrtm_psd", "trace_sqrt_product",
           "train_feature_net"]
