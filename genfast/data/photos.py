"""Offline photo crops for image-to-image models (colourisation of greyscale crops).

The photos ship inside wheels, nothing is downloaded:

* scikit-learn (always): ``china``, ``flower`` (sklearn/datasets/images, 427x640, CC BY 2.0,
  Flickr users danielbuechele and vultilion; see the README.txt beside them);
* scikit-image (when installed, ``pip install scikit-image``): ``astronaut`` (NASA, public
  domain), ``coffee`` (Rachel Michetti, CC0), ``chelsea`` (Stefan van der Walt, CC0),
  ``rocket`` (SpaceX, CC0).

Held-out data is a region, not a random subset: the right-most ``HOLDOUT`` fraction of every
photo's columns never appears in a training crop, so neighbouring, overlapping crops cannot
leak pixels from training into the evaluation. Training crops are square windows of random side
(``window`` range, in photo pixels) at random places of the training region, random horizontal
flips, area-resized to the stage's resolution; a crop batch is a pure function of
(seed, step), so a resumed run sees the batches an unbroken one would. Held-out crops are a
fixed grid of windows over the held-out strips.

Colour space: BT.601 luma Y = 0.299 R + 0.587 G + 0.114 B with zero-centred chroma
Cb = 0.564 (B - Y), Cr = 0.713 (R - Y) (JPEG's YCbCr without the 0.5 offset); the greyscale
input of colourisation is Y, and a model predicts (Cb, Cr).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

SKLEARN_PHOTOS = ("china", "flower")
SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
HOLDOUT = 0.2  # right-most fraction of each photo's columns, held out
TEST_WINDOW = 128  # side (photo pixels) of the held-out windows

_cache: dict[str, Tensor] = {}


def skimage_available() -> bool:
    try:
        import skimage.data  # noqa: F401
    except ImportError:
        return False
    return True


def available_photos() -> tuple[str, ...]:
    """Every photo this environment ships: sklearn's, plus scikit-image's when installed."""
    return SKLEARN_PHOTOS + (SKIMAGE_PHOTOS if skimage_available() else ())


def resolve_photos(photos: str | Sequence[str]) -> tuple[str, ...]:
    """``"auto"`` -> available_photos(), ``"sklearn"`` -> sklearn's two, else the names given
    (validated)."""
    if isinstance(photos, str):
        if photos == "auto":
            return available_photos()
        if photos == "sklearn":
            return SKLEARN_PHOTOS
        photos = (photos,)
    names = tuple(photos)
    if not names:
        raise ValueError("photos: need at least one photo name")
    known = SKLEARN_PHOTOS + SKIMAGE_PHOTOS
    for n in names:
        if n not in known:
            raise ValueError(f"photos: unknown photo {n!r}; known: {known} (or 'auto', "
                             f"'sklearn')")
    if len(set(names)) != len(names):
        raise ValueError(f"photos: duplicate names in {names}")
    return names


def load_photo(name: str) -> Tensor:
    """One photo as float32 (3, H, W) in [0, 1]."""
    if name in _cache:
        return _cache[name]
    if name in SKLEARN_PHOTOS:
        try:
            from sklearn.datasets import load_sample_image
        except ImportError as e:
            raise ImportError("the sample photos need scikit-learn: pip install "
                              "'genfast[models]'") from e
        a = load_sample_image(f"{name}.jpg")
    elif name in SKIMAGE_PHOTOS:
        if not skimage_available():
            raise ImportError(f"photo {name!r} ships with scikit-image: pip install scikit-image "
                              f"(or use photos='sklearn')")
        import skimage.data

        a = getattr(skimage.data, name)()
    else:
        raise ValueError(f"unknown photo {name!r}; known: {SKLEARN_PHOTOS + SKIMAGE_PHOTOS}")
    x = torch.from_numpy(np.ascontiguousarray(a[..., :3], dtype=np.float32) / 255.0)
    _cache[name] = x = x.permute(2, 0, 1).contiguous()
    return x


def rgb_to_ycbcr(x: Tensor) -> Tensor:
    """(..., 3, H, W) RGB -> (..., 3, H, W) (Y, Cb, Cr), chroma centred on 0."""
    r, g, b = x.unbind(-3)
    y = 0.299 * r + 0.587 * g + 0.114 * b
    return torch.stack([y, 0.564 * (b - y), 0.713 * (r - y)], -3)


def ycbcr_to_rgb(x: Tensor) -> Tensor:
    """Inverse of :func:`rgb_to_ycbcr` (no clamping: a loss sees out-of-range values)."""
    y, cb, cr = x.unbind(-3)
    r = y + cr / 0.713
    b = y + cb / 0.564
    g = (y - 0.299 * r - 0.114 * b) / 0.587
    return torch.stack([r, g, b], -3)


def grey(x: Tensor) -> Tensor:
    """(..., 3, H, W) RGB -> (..., 1, H, W) luma."""
    return rgb_to_ycbcr(x)[..., :1, :, :]


def _check_size(size: int, what: str = "size") -> None:
    if isinstance(size, bool) or not isinstance(size, int) or size < 8:
        raise ValueError(f"{what} must be an int >= 8, got {size!r}")


def _window(photo: Tensor, top: int, left: int, side: int, size: int, flip: bool) -> Tensor:
    w = photo[:, top:top + side, left:left + side][None]
    if side != size:
        w = F.interpolate(w, size=(size, size), mode="bilinear", align_corners=False,
                          antialias=side > size).clamp_(0.0, 1.0)
    return w.flip(-1) if flip else w


class PhotoCrops:
    """Training and held-out crops of the given photos (see the module docstring)."""

    def __init__(self, photos: str | Sequence[str] = "auto",
                 window: tuple[int, int] = (64, 192), holdout: float = HOLDOUT) -> None:
        self.names = resolve_photos(photos)
        if not (isinstance(window, (tuple, list)) and len(window) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) for v in window)
                and 8 <= window[0] <= window[1]):
            raise ValueError(f"window must be (min_side, max_side) ints with 8 <= min <= max, "
                             f"got {window!r}")
        if not 0.0 < holdout < 1.0:
            raise ValueError(f"holdout must be in (0, 1), got {holdout!r}")
        self.photos = [load_photo(n) for n in self.names]
        self.holdout = holdout
        self.train_width = [p.shape[-1] - round(p.shape[-1] * holdout) for p in self.photos]
        smallest = min(min(p.shape[-2], w)
                       for p, w in zip(self.photos, self.train_width, strict=True))
        if window[1] > smallest:
            raise ValueError(f"window max side {window[1]} exceeds the smallest training region "
                             f"side {smallest}")
        self.window = (int(window[0]), int(window[1]))

    def train_batch(self, n: int, size: int, seed: int, step: int) -> Tensor:
        """(n, 3, size, size) RGB training crops, a pure function of (seed, step)."""
        return self.labelled_train_batch(n, size, seed, step)[0]

    def labelled_train_batch(self, n: int, size: int, seed: int, step: int
                             ) -> tuple[Tensor, Tensor]:
        """:meth:`train_batch` and the index (into ``names``) of each crop's photo."""
        _check_size(size)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be an int >= 1, got {n!r}")
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        lo, hi = self.window
        which = torch.randint(len(self.photos), (n,), generator=g).tolist()
        sides = torch.randint(lo, hi + 1, (n,), generator=g).tolist()
        u = torch.rand(n, 2, generator=g, dtype=torch.float64).tolist()
        flips = torch.rand(n, generator=g).lt(0.5).tolist()
        out = []
        for i, side, (uy, ux), flip in zip(which, sides, u, flips, strict=False):
            p = self.photos[i]
            top = int(uy * (p.shape[-2] - side + 1))
            left = int(ux * (self.train_width[i] - side + 1))
            out.append(_window(p, top, left, side, size, flip))
        return torch.cat(out), torch.tensor(which)

    def test_crops(self, size: int, window: int = TEST_WINDOW) -> Tensor:
        """(N, 3, size, size) held-out crops: windows of side `window` tiling each photo's
        held-out strip (stride half a window, the last flush with the border)."""
        return self.labelled_test_crops(size, window)[0]

    def labelled_test_crops(self, size: int, window: int = TEST_WINDOW
                            ) -> tuple[Tensor, Tensor]:
        """:meth:`test_crops` and the index of each crop's photo."""
        _check_size(size)
        out, which = [], []
        for i, (p, tw) in enumerate(zip(self.photos, self.train_width, strict=True)):
            h, w = p.shape[-2:]
            side = min(window, h, w - tw)
            tops = _starts(h, side)
            lefts = _starts(w - tw, side)
            out += [_window(p, t, tw + lft, side, size, False) for t in tops for lft in lefts]
            which += [i] * (len(tops) * len(lefts))
        return torch.cat(out), torch.tensor(which)


def _starts(extent: int, side: int) -> list[int]:
    stride = max(1, side // 2)
    starts = list(range(0, extent - side + 1, stride))
    if starts[-1] != extent - side:
        starts.append(extent - side)
    return starts


__all__ = ["HOLDOUT", "SKIMAGE_PHOTOS", "SKLEARN_PHOTOS", "PhotoCrops", "available_photos",
           "grey", "load_photo", "resolve_photos", "rgb_to_ycbcr", "skimage_available",
           "ycbcr_to_rgb"]
