"""`genfast train srgan` and `genfast sample srgan`.

Training runs both phases through the shared loop (_trainer.train_loop: progress, atomic
checkpoints with optimizers and RNG, exact resume, also across the phase boundary, since the
batches and the phase are functions of the step). Held-out figures are logged at every
snapshot; snapshots fall on the end of pretraining and of the schedule (the default
``sample_every`` divides both), whose records make the report: PSNR / SSIM of bicubic
up-sampling, of SRResNet (the generator after pretraining) and of SRGAN (after the GAN phase),
written to report.json, printed, and shown in comparison.png (low-res input, nearest-up-sampled
for display / bicubic / SRResNet / SRGAN / original).
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

import torch
import torch.nn.functional as F

from ..data.photos import PhotoCrops, resolve_photos
from . import _photo_cli
from ._images import save_panels
from ._srgan_net import nearest_upsample
from ._trainer import (
    METRICS,
    TrainConfig,
    _evaluate,
    _isolated_rng,
    load_model,
)
from ._trainer import train_loop as _train_loop

N_SHOW = 6
DISPLAY_ZOOM = 2
PRETRAIN_OUT = "heldout_srresnet.pt"
KEYS = ("psnr", "ssim", "psnr_y", "ssim_y", "psnr_pooled")


def crops_for(model: Any) -> PhotoCrops:
    """Native-resolution crops: a window of exactly hr_size photo pixels, never resampled, so
    the LR input is a true bicubic down-sampling of photo pixels."""
    s = model.config.hr_size
    return PhotoCrops(model.config.photos, (s, s))


def held_out(model: Any, crops: PhotoCrops) -> list[torch.Tensor]:
    """The test images: every photo's whole held-out strip (its right-most columns, never in a
    training crop), (1, 3, H, W) each, H and W cut down to multiples of the scale. Whole
    images, as SR test sets are: a mean over small crops is dominated by the flat ones (a
    flat crop's PSNR is near infinite, and exactly so where bicubic reproduces it)."""
    s = model.config.scale
    out = []
    for p, tw in zip(crops.photos, crops.train_width, strict=True):
        strip = p[:, :, tw:]
        h, w = strip.shape[-2:]
        out.append(strip[None, :, :h - h % s, :w - w % s].contiguous())
    return out


def display_crops(model: Any, crops: PhotoCrops, n: int) -> torch.Tensor:
    """`n` held-out hr_size crops for the figure, evenly spread over the most detailed quarter
    (by pixel standard deviation): flat crops show nothing of super-resolution."""
    side = model.config.hr_size
    test = crops.test_crops(side, window=side)
    order = test.flatten(1).std(1).argsort(descending=True)
    pool = test[order[:max(n, len(test) // 4)].sort().values]
    return pool[torch.linspace(0, len(pool) - 1, min(n, len(pool))).round().long()]


def _rows(model: Any, hr: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    lr, s = model.low_res(hr), model.config.scale
    rows = [(f"low-res input ({lr.shape[-1]} px, nearest x{s})", nearest_upsample(lr, s)),
            ("bicubic", model.upscale(lr, "bicubic")),
            ("generator", model.upscale(lr).clamp_(0.0, 1.0)),
            (f"original ({hr.shape[-1]} px)", hr)]
    # Shown at twice the size (nearest), so the panels are large enough to judge detail.
    return [(t, F.interpolate(im, scale_factor=DISPLAY_ZOOM, mode="nearest")) for t, im in rows]


def fit(model: Any, name: str, crops: PhotoCrops, tc: TrainConfig, out: str, *,
        resume: bool = False, device: str | torch.device = "cpu",
        progress: bool | None = None, test: list[torch.Tensor] | None = None
        ) -> dict[str, float]:
    """Run the schedule to ``tc.steps``; returns the final held-out figures (on `test`, HR
    image batches, default the held-out strips)."""
    device = torch.device(device)
    test = [t.to(device) for t in (held_out(model, crops) if test is None else test)]
    show = display_crops(model, crops, N_SHOW).to(device)
    c = model.config

    def batch(step: int) -> torch.Tensor:
        return crops.train_batch(c.batch, c.hr_size, tc.seed, step).to(device)

    def evaluate() -> dict[str, float]:
        return _evaluate(model, test, device)

    def snapshot(step: int) -> dict[str, float]:
        figures = evaluate()
        model.eval()
        with torch.no_grad(), _isolated_rng(device):
            rows = _rows(model, show)
        model.train()
        phase = model.phase_at(step - 1)
        if step == model.pretrain_steps:
            torch.save(rows[2][1].cpu(), os.path.join(out, PRETRAIN_OUT))
        save_panels([(f"{name} step {step} ({phase}): {t}", im, len(im)) for t, im in rows],
                    os.path.join(out, f"samples_step{step:06d}.png"))
        return figures

    return _train_loop(model, name, tc, out, batch=batch, snapshot=snapshot, evaluate=evaluate,
                       resume=resume, device=device, progress=progress)


def report(model: Any, out: str, wall_s: float, n_test: int) -> dict[str, Any]:
    """Bicubic, SRResNet (end of pretraining) and SRGAN (end) from the log."""
    with open(os.path.join(out, METRICS)) as f:
        recs = [json.loads(ln) for ln in f if ln.strip()]
    test = {r["step"]: r for r in recs if r.get("split") == "test"}
    pre, end = test.get(model.pretrain_steps), test.get(model.total_steps)
    if pre is None or end is None:
        raise SystemExit(f"genfast: {METRICS} lacks the held-out records of steps "
                         f"{model.pretrain_steps} and {model.total_steps}")
    figures = {"bicubic": {k: end[f"bicubic_{k}"] for k in KEYS},
               "SRResNet (after MSE pretraining)": {k: pre[k] for k in KEYS}}
    if model.config.gan_steps:
        figures["SRGAN (after the GAN phase)"] = {k: end[k] for k in KEYS}
    train = [r for r in recs if r.get("split") == "train"]
    c = model.config
    return {"figures": figures, "headline": "psnr_pooled", "held_out_images": n_test,
            "hr_size": c.hr_size, "scale": c.scale, "steps": model.total_steps,
            "training_s": train[-1]["elapsed_s"] if train else math.nan,
            "this_run_wall_s": wall_s, "photos": list(resolve_photos(c.photos))}


def write_comparison(model: Any, hr: torch.Tensor, path: str, title: str,
                     srresnet: torch.Tensor | None = None) -> str:
    model.eval()
    rows = _rows(model, hr)
    if srresnet is not None:
        rows[2] = ("SRGAN (after the GAN phase)", rows[2][1])
        rows.insert(2, ("SRResNet (after MSE pretraining)", srresnet))
    return save_panels([(f"{title}: {t}", im, len(im)) for t, im in rows], path)


def train(cls: type, args: Any) -> int:
    from ._unet_features import cached_feature_net

    model, crops, out = _photo_cli.build(cls, args, "--set pretrain_steps=N / gan_steps=N / "
                                         "batch=N", crops_for)
    c = model.config
    tc = _photo_cli.train_config(cls, model, args, c.pretrain_steps, c.gan_steps)
    if not args.resume:
        t0 = time.perf_counter()
        # The feature net is trained on the photos' crops as unet-nogan's (same cache entry).
        net, acc = cached_feature_net(PhotoCrops(c.photos))
        model.set_feature_net(net)
        print(f"content-loss feature net (trained offline on {', '.join(crops.names)}): "
              f"held-out photo accuracy {acc['photo']:.3f} (chance {1 / len(crops.names):.3f}); "
              f"{time.perf_counter() - t0:.1f} s")
    seconds = _photo_cli.run_fit(fit, model, args, crops, tc, out)
    rep = report(model, out, seconds, len(crops.names))
    with open(os.path.join(out, "report.json"), "w") as f:
        json.dump(rep, f, indent=1)
    pre_path = os.path.join(out, PRETRAIN_OUT)
    pre = torch.load(pre_path, weights_only=True) if os.path.exists(pre_path) else None
    png = write_comparison(model.cpu(), display_crops(model, crops, N_SHOW),
                           os.path.join(out, "comparison.png"), args.model, pre)
    print(f"{args.model}: x{c.scale}, {c.pretrain_steps} SRResNet (MSE) + {c.gan_steps} GAN "
          f"steps of {c.batch} {c.hr_size}px crops; held out: the right-most strips of "
          f"{', '.join(rep['photos'])}; {rep['training_s']:.0f} s training")
    _print_figures(rep["figures"])
    print(f"report.json, {os.path.basename(png)}, samples_step*.png, checkpoint and "
          f"metrics.jsonl in {out}")
    return 0


def _print_figures(figures: dict[str, dict[str, float]]) -> None:
    for k, v in figures.items():
        print(f"  {k:<34} PSNR {v['psnr_pooled']:6.2f} dB  SSIM {v['ssim']:.4f}   (per-image "
              f"mean PSNR {v['psnr']:6.2f} dB; Y, shaved: PSNR {v['psnr_y']:6.2f} dB  SSIM "
              f"{v['ssim_y']:.4f})")


def sample(cls: type, args: Any) -> int:
    model, ckpt = load_model(cls, args)
    n = N_SHOW if args.n is None else args.n
    if n < 1:
        raise SystemExit(f"genfast: --n must be >= 1, got {n}")
    try:
        crops = crops_for(model)
    except (ValueError, ImportError) as e:
        raise SystemExit(f"genfast: {e}") from None
    step = int(ckpt["step"])
    phase = model.phase_at(step - 1) if step else "untrained"
    out = args.out or f"{args.model}_samples.png"
    show = display_crops(model, crops, n)
    write_comparison(model, show, out, f"{args.model} step {step} ({phase})")
    res = model.evaluate(held_out(model, crops))
    figures = {"bicubic": {k: res[f"bicubic_{k}"] for k in KEYS},
               f"generator (step {step}, {phase})": {k: res[k] for k in KEYS}}
    print(f"wrote {len(show)} held-out crops (low-res / bicubic / generator / original) to "
          f"{out}; on the held-out strips of {', '.join(crops.names)}:")
    _print_figures(figures)
    return 0
