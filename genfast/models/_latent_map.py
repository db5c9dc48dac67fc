"""Latent-space maps of the latent-variable models as PNG (PIL only, like _images.py).

Each held-out image's code (a model's ``codes(x)``: posterior mean or deterministic code) is
one dot, coloured by its digit class when labels are known. Two-dimensional codes are plotted
as they are; larger ones are projected on their first two principal components, and the title
says how much of the codes' variance the projection keeps.
"""

from __future__ import annotations

import os

import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor, nn

# matplotlib's tab10 palette: ten classes told apart at a glance.
_PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
            (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]
_SIZE = 420
_MARGIN = 24
_LEGEND_W = 60


def project_2d(z: Tensor) -> tuple[Tensor, float]:
    """(N, D) codes -> ((N, 2) points, fraction of variance kept): the codes themselves when
    D <= 2 (padded with zeros when D = 1), else their projection on the top two principal
    axes."""
    z = z.detach().double().cpu()
    if z.dim() != 2 or len(z) < 1:
        raise ValueError(f"codes must be (N >= 1, D), got shape {tuple(z.shape)}")
    if z.shape[1] <= 2:
        return torch.nn.functional.pad(z, (0, 2 - z.shape[1])), 1.0
    zc = z - z.mean(0)
    _, s, vh = torch.linalg.svd(zc, full_matrices=False)
    total = s.square().sum().item()
    kept = s[:2].square().sum().item() / total if total > 0 else 1.0
    return zc @ vh[:2].T, kept


def scatter_png(points: Tensor, labels: Tensor | None, path: str | os.PathLike[str],
                title: str) -> str:
    """A scatter plot of (N, 2) points, coloured by integer labels 0..9 (grey without)."""
    p = points.double()
    lo, hi = p.min(0).values, p.max(0).values
    span = (hi - lo).clamp_min(1e-12)
    inner = _SIZE - 2 * _MARGIN
    xy = (p - lo) / span * inner + _MARGIN
    img = Image.new("RGB", (_SIZE + _LEGEND_W, _SIZE), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    draw.rectangle([_MARGIN - 4, _MARGIN - 4, _SIZE - _MARGIN + 4, _SIZE - _MARGIN + 4],
                   outline=(0, 0, 0))
    draw.text((4, 4), title, fill=(0, 0, 0), font=font)
    for i in range(len(xy)):
        c = _PALETTE[int(labels[i]) % 10] if labels is not None else (80, 80, 80)
        x, y = float(xy[i, 0]), _SIZE - float(xy[i, 1])  # y axis up
        draw.ellipse([x - 2.5, y - 2.5, x + 2.5, y + 2.5], fill=c)
    if labels is not None:
        for k in sorted({int(v) for v in labels.tolist()}):
            y0 = _MARGIN + 16 * k
            draw.ellipse([_SIZE + 4, y0 + 2, _SIZE + 12, y0 + 10], fill=_PALETTE[k % 10])
            draw.text((_SIZE + 18, y0), str(k), fill=(0, 0, 0), font=font)
    path = os.fspath(path)
    tmp = f"{path}.tmp"
    img.save(tmp, format="PNG")
    os.replace(tmp, path)
    return path


def digits_test_labels() -> Tensor:
    """Class labels of the held-out digits, in the order genfast.data.digits_split returns."""
    from genfast.data import load_digits, split

    return split(load_digits()[1])[1]


@torch.no_grad()
def write_latent_map(model: nn.Module, x: Tensor, path: str | os.PathLike[str],
                     labels: Tensor | None = None) -> str:
    """Encode images x with ``model.codes`` (eval mode) and write their 2-D map to `path`."""
    if labels is not None and len(labels) != len(x):
        raise ValueError(f"labels: expected {len(x)} labels for {len(x)} images, "
                         f"got {len(labels)}")
    was_training = model.training
    model.eval()
    try:
        dev = next(model.parameters()).device
        z = torch.cat([model.codes(b.to(dev)) for b in x.split(512)])
    finally:
        model.train(was_training)
    pts, kept = project_2d(z)
    how = ("latent" if z.shape[1] <= 2
           else f"PCA of the {z.shape[1]}-d codes ({100 * kept:.0f}% of variance)")
    return scatter_png(pts, labels, path,
                       f"{type(model).__name__}: held-out codes, {how}")
