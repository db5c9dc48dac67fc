"""Offline image data: scikit-learn's 8x8 digits, and a user's own .npy/.npz images.

Everything returns float32 tensors of shape (N, C, H, W) with values in [0, 1], the form every
genfast image model consumes. Nothing here downloads: the digits ship inside the
scikit-learn wheel (sklearn/datasets/data/digits.csv.gz; UCI optdigits, CC BY 4.0).
"""

from __future__ import annotations

import os
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

# The held-out split is fixed by this seed so that negative-ELBO numbers from different runs,
# machines and --seed values are measured on the same images.
SPLIT_SEED = 20240617


def load_digits(size: int = 8, mode: Literal["upsample", "pad"] = "upsample") -> tuple[
    torch.Tensor, torch.Tensor
]:
    """All 1,797 sklearn digits as ``(images (N, 1, size, size) float32 in [0, 1], labels (N,))``.

    ``size=16`` (or any size >= 8) resizes with :func:`resize` (``mode`` = upsample or pad).
    """
    try:
        from sklearn.datasets import load_digits as _sk_load_digits
    except ImportError as e:  # models extra not installed
        raise ImportError(
            "the digits dataset needs scikit-learn: pip install 'genfast[models]'"
        ) from e
    d = _sk_load_digits()
    # Pixel values are counts 0..16 of set pixels in a 4x4 block of the original 32x32 scan.
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0).unsqueeze(1)
    y = torch.from_numpy(d.target.astype(np.int64))
    return resize(x, size, mode), y


def resize(x: torch.Tensor, size: int,
           mode: Literal["upsample", "pad"] = "upsample") -> torch.Tensor:
    """Square images (N, C, h, w) -> (N, C, size, size).

    ``upsample``: bilinear, so 8x8 digits become smooth 16x16 digits (what a conv net with two
    stride-2 stages wants). ``pad``: zero border around the centred image (the digits'
    background is 0), which keeps pixel values exact.
    """
    h, w = x.shape[-2:]
    if (h, w) == (size, size):
        return x
    if mode == "upsample":
        y = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        return y.clamp_(0.0, 1.0)
    if mode == "pad":
        if size < h or size < w:
            raise ValueError(f"resize: pad needs size >= image size, got {size} < {(h, w)}")
        top, left = (size - h) // 2, (size - w) // 2
        return F.pad(x, (left, size - w - left, top, size - h - top))
    raise ValueError(f"resize: mode must be 'upsample' or 'pad', got {mode!r}")


def split(x: torch.Tensor, test_fraction: float = 0.2, seed: int = SPLIT_SEED) -> tuple[
    torch.Tensor, torch.Tensor
]:
    """A fixed random (train, test) split along dim 0."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"split: test_fraction must be in (0, 1), got {test_fraction}")
    n = x.shape[0]
    n_test = max(1, round(n * test_fraction))
    if n - n_test < 1:
        raise ValueError(f"split: need at least 2 examples, got {n}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return x[perm[n_test:]], x[perm[:n_test]]


def digits_split(size: int = 8, mode: Literal["upsample", "pad"] = "upsample") -> tuple[
    torch.Tensor, torch.Tensor
]:
    """(train, test) digit images: 1,438 / 359, the same split on every machine."""
    return split(load_digits(size, mode)[0])


def load_images(path: str | os.PathLike[str], key: str | None = None) -> torch.Tensor:
    """A user's images from .npy or .npz as float32 (N, C, H, W) in [0, 1].

    Accepted layouts: (N, H, W) grey; (N, C, H, W); (N, H, W, C) when the last dim is 1, 3 or
    4 and dim 1 is not. uint8 data is divided by 255; float data must already lie in [0, 1]
    (a silent rescale would hide a wrong file). In an .npz, ``key`` picks the array, else
    ``images``, ``x`` or the only array.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"--data: no such file: {path}")
    if path.endswith(".npz"):
        with np.load(path, allow_pickle=False) as z:
            names = list(z.files)
            pick = key or next((k for k in ("images", "x") if k in names), None)
            if pick is None and len(names) == 1:
                pick = names[0]
            if pick not in names:
                raise ValueError(f"--data {path}: cannot tell which array holds the images; "
                                 f"arrays: {names} (name one 'images')")
            a = z[pick]
    elif path.endswith(".npy"):
        a = np.load(path, allow_pickle=False)
    else:
        raise ValueError(f"--data: expected a .npy or .npz file, got {path}")
    return _to_images(a, path)


def _to_images(a: np.ndarray, where: str) -> torch.Tensor:
    if a.ndim == 3:
        a = a[:, None]
    elif a.ndim == 4:
        if a.shape[-1] in (1, 3, 4) and a.shape[1] not in (1, 3, 4):
            a = a.transpose(0, 3, 1, 2)
    else:
        raise ValueError(f"{where}: images must have shape (N, H, W), (N, C, H, W) or "
                         f"(N, H, W, C); got {a.shape}")
    if a.shape[0] < 2:
        raise ValueError(f"{where}: need at least 2 images for a train/test split, "
                         f"got {a.shape[0]}")
    if a.dtype == np.uint8:
        x = torch.from_numpy(a.astype(np.float32) / 255.0)
    elif np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer):
        x = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
        lo, hi = (float(x.min()), float(x.max())) if x.numel() else (0.0, 0.0)
        if not (np.isfinite(lo) and np.isfinite(hi) and lo >= 0.0 and hi <= 1.0):
            raise ValueError(f"{where}: pixel values must lie in [0, 1] (or be uint8 0..255); "
                             f"got min {lo}, max {hi}")
    else:
        raise ValueError(f"{where}: unsupported dtype {a.dtype}")
    return x.contiguous()
