"""PNG grids of images in [0, 1] that a person can look at (PIL only, no matplotlib)."""

from __future__ import annotations

import math
import os

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

# 8x8 digits are unreadable at native size; scale each image up to about this many pixels,
# with nearest-neighbour so the model's actual pixels stay visible.
_TARGET_PX = 48
_PAD = 2
_LABEL_H = 14


def grid(images: torch.Tensor, nrow: int | None = None, scale: int | None = None) -> Image.Image:
    """(N, C, H, W) images in [0, 1] (C = 1 or 3) -> one PIL image, ``nrow`` images per row."""
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"grid: expected (N, 1|3, H, W) images, got {tuple(images.shape)}")
    n, c, h, w = images.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    scale = scale or max(1, _TARGET_PX // max(h, w))
    rows = max(1, math.ceil(n / nrow))
    x = images.detach().float().cpu().clamp(0, 1).nan_to_num(0.0)
    x = x.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
    hh, ww = h * scale, w * scale
    # Grey padding separates neighbouring digits whose background is black.
    canvas = np.full((rows * (hh + _PAD) + _PAD, nrow * (ww + _PAD) + _PAD, c), 0.5, np.float32)
    for i in range(n):
        r, col = divmod(i, nrow)
        y0, x0 = _PAD + r * (hh + _PAD), _PAD + col * (ww + _PAD)
        canvas[y0:y0 + hh, x0:x0 + ww] = x[i].permute(1, 2, 0).numpy()
    arr = (canvas * 255.0 + 0.5).astype(np.uint8)
    return Image.fromarray(arr[..., 0] if c == 1 else arr, mode="L" if c == 1 else "RGB")


def save_panels(panels: list[tuple[str, torch.Tensor, int | None]], path: str | os.PathLike[str]
                ) -> str:
    """Stack labelled grids ``(title, images, nrow)`` vertically into one PNG at ``path``.

    Written to a temporary name and renamed, so a viewer never sees half a file.
    """
    grids = [(title, grid(imgs, nrow)) for title, imgs, nrow in panels]
    mode = "RGB" if any(g.mode == "RGB" for _, g in grids) else "L"
    width = max(g.width for _, g in grids)
    height = sum(_LABEL_H + g.height for _, g in grids)
    out = Image.new(mode, (width, height), color=255 if mode == "L" else (255, 255, 255))
    draw = ImageDraw.Draw(out)
    font = ImageFont.load_default()
    y = 0
    for title, g in grids:
        draw.text((_PAD, y + 1), title, fill=0 if mode == "L" else (0, 0, 0), font=font)
        out.paste(g.convert(mode), (0, y + _LABEL_H))
        y += _LABEL_H + g.height
    path = os.fspath(path)
    tmp = f"{path}.tmp"
    out.save(tmp, format="PNG")
    os.replace(tmp, path)
    return path


def interleave_rows(originals: torch.Tensor, recons: torch.Tensor, nrow: int) -> torch.Tensor:
    """Rows alternate originals / their reconstructions, so each pair sits one above the other."""
    n = (min(len(originals), len(recons)) // nrow) * nrow
    if n == 0:
        raise ValueError(f"interleave_rows: need at least {nrow} images per side")
    a = originals[:n].reshape(-1, nrow, *originals.shape[1:])
    b = recons[:n].reshape(-1, nrow, *recons.shape[1:])
    return torch.stack([a, b], dim=1).reshape(-1, *originals.shape[1:])
