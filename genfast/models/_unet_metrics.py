"""Full-reference image metrics: PSNR and SSIM (Wang et al. 2004), in float64.

SSIM follows the paper's reference settings, which are also scikit-image's
``structural_similarity(..., gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
data_range=1)``: an 11x11 Gaussian window (sigma 1.5, truncated at 3.5 sigma, normalised),
K1 = 0.01, K2 = 0.03, local means / variances / covariance as window-weighted moments, the
SSIM map averaged over the positions where the window lies inside the image (skimage filters
with reflection and then crops those borders, which gives the same numbers), channels averaged.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

K1, K2 = 0.01, 0.03
WIN_SIGMA = 1.5
WIN_SIZE = 11


def _pair(x: Tensor, y: Tensor, what: str) -> tuple[Tensor, Tensor]:
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise TypeError(f"{what}: expected tensors, got {type(x).__name__}, {type(y).__name__}")
    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(f"{what}: expected two (N, C, H, W) tensors of one shape, got "
                         f"{tuple(x.shape)} and {tuple(y.shape)}")
    return x.double(), y.double()


def psnr(x: Tensor, y: Tensor, data_range: float = 1.0) -> Tensor:
    """Per-image PSNR in dB, (N,): 10 log10(range^2 / MSE); +inf for identical images."""
    x, y = _pair(x, y, "psnr")
    if not data_range > 0:
        raise ValueError(f"psnr: data_range must be > 0, got {data_range}")
    mse = (x - y).square().flatten(1).mean(1)
    return 10.0 * torch.log10(data_range ** 2 / mse)


def gaussian_window(size: int = WIN_SIZE, sigma: float = WIN_SIGMA) -> Tensor:
    """(size, size) normalised Gaussian, float64."""
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-r.square() / (2 * sigma * sigma))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(x: Tensor, y: Tensor, data_range: float = 1.0, win_size: int = WIN_SIZE,
         sigma: float = WIN_SIGMA) -> Tensor:
    """Per-image mean SSIM, (N,), over channels and valid window positions."""
    x, y = _pair(x, y, "ssim")
    if not data_range > 0:
        raise ValueError(f"ssim: data_range must be > 0, got {data_range}")
    if win_size < 1 or win_size % 2 == 0:
        raise ValueError(f"ssim: win_size must be an odd int >= 1, got {win_size}")
    if min(x.shape[-2:]) < win_size:
        raise ValueError(f"ssim: images of {tuple(x.shape[-2:])} are smaller than the "
                         f"{win_size}x{win_size} window")
    c = x.shape[1]
    g = gaussian_window(win_size, sigma)[win_size // 2].to(x.device)
    g = g / g.sum()  # the 2-D window is the outer product of this 1-D one
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    out = []
    # One image at a time, the window applied as two 1-D passes: float64 convolution unfolds
    # its input (a 2-D 11x11 pass over 40 RGB 64x64 images took 1.7 GB).
    for xi, yi in zip(x, y, strict=True):
        stack = torch.stack([xi, yi, xi * xi, yi * yi, xi * yi]).reshape(5 * c, 1, *x.shape[-2:])
        stack = F.conv2d(F.conv2d(stack, g.view(1, 1, 1, -1)), g.view(1, 1, -1, 1))
        mx, my, mxx, myy, mxy = stack.reshape(5, c, -1).unbind(0)
        vx, vy, cxy = mxx - mx * mx, myy - my * my, mxy - mx * my
        s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
        out.append(s.mean())
    return torch.stack(out)


def mean_psnr(x: Tensor, y: Tensor) -> float:
    """The dataset figure: the mean of per-image PSNRs (inf when an image is reproduced
    exactly)."""
    v = psnr(x, y)
    return float(v.mean()) if torch.isfinite(v).all() else math.inf


__all__ = ["gaussian_window", "mean_psnr", "psnr", "ssim"]
