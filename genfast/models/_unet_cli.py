"""`genfast train unet-nogan` and `genfast sample unet-nogan`.

Training runs the whole NoGAN schedule through the shared loop (_trainer.train_loop: progress,
atomic checkpoints with optimizers and RNG, exact resume, also across stage and phase
boundaries, since batches and phases are functions of the step). Held-out figures are logged at
every snapshot; the snapshots fall on the end of pretraining and of the schedule (the default
``sample_every`` divides both), whose records make the report: PSNR / SSIM / feature distance
of (a) the plain U-Net baseline, (b) the generator after pretraining, (c) after the GAN phase,
written to report.json, printed, and shown in before_after.png (greyscale input / baseline /
pretrained / after GAN / target).
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

import torch

from ..data.photos import PhotoCrops, resolve_photos
from . import _photo_cli
from ._images import save_panels
from ._trainer import (
    METRICS,
    TrainConfig,
    _evaluate,
    _isolated_rng,
    load_model,
)
from ._trainer import train_loop as _train_loop

N_SHOW = 8
PRETRAIN_OUT = "heldout_pretrain.pt"


def _rows(model: Any, x: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    from ..data.photos import grey

    rows = [("greyscale input", grey(x).expand(-1, 3, -1, -1))]
    if model.baseline is not None:
        rows.append(("plain U-Net baseline (L1)", model.colourise(x, "baseline")))
    return rows + [("NoGAN generator", model.colourise(x)), ("target", x)]


def fit(model: Any, name: str, crops: PhotoCrops, tc: TrainConfig, out: str, *,
        resume: bool = False, device: str | torch.device = "cpu",
        progress: bool | None = None) -> dict[str, float]:
    """Run the schedule to ``tc.steps``; returns the final held-out figures."""
    device = torch.device(device)
    test = crops.test_crops(model.image_shape[-1]).to(device)
    show = test[torch.linspace(0, len(test) - 1, min(N_SHOW, len(test))).round().long()]

    def batch(step: int) -> torch.Tensor:
        _, _, _, size, n = model.phase_at(step)
        return crops.train_batch(n, size, tc.seed, step).to(device)

    def evaluate() -> dict[str, float]:
        return _evaluate(model, test, device)

    def snapshot(step: int) -> dict[str, float]:
        held_out = evaluate()
        model.eval()
        with torch.no_grad(), _isolated_rng(device):
            rows = _rows(model, show)
        model.train()
        phase = model.phase_at(step - 1)[0]
        if step == model.pretrain_steps:
            torch.save(rows[-2][1].cpu(), os.path.join(out, PRETRAIN_OUT))
        save_panels([(f"{name} step {step} ({phase}): {t}", im, len(im)) for t, im in rows],
                    os.path.join(out, f"samples_step{step:06d}.png"))
        return held_out

    return _train_loop(model, name, tc, out, batch=batch, snapshot=snapshot, evaluate=evaluate,
                       resume=resume, device=device, progress=progress)


def _test_records(out: str) -> dict[int, dict[str, float]]:
    with open(os.path.join(out, METRICS)) as f:
        recs = [json.loads(ln) for ln in f if ln.strip()]
    return {r["step"]: r for r in recs if r.get("split") == "test"}


def report(model: Any, out: str, wall_s: float, n_test: int) -> dict[str, Any]:
    """(a) baseline, (b) pretrained, (c) after GAN from the log; report.json; the PNG."""
    recs = _test_records(out)
    pre, end = recs.get(model.pretrain_steps), recs.get(model.total_steps)
    if pre is None or end is None:
        raise SystemExit(f"genfast: {METRICS} lacks the held-out records of steps "
                         f"{model.pretrain_steps} and {model.total_steps}")
    keys = ("psnr", "ssim", "feat")
    rep: dict[str, Any] = {
        "greyscale input": {k: end[f"grey_{k}"] for k in keys},
        "(b) NoGAN generator after pretraining": {k: pre[k] for k in keys},
        "(c) NoGAN generator after the GAN phase": {k: end[k] for k in keys},
    }
    if model.baseline is not None:
        rep = {"(a) plain U-Net baseline (L1, same pretraining steps)":
               {k: pre[f"base_{k}"] for k in keys}, **rep}
    with open(os.path.join(out, METRICS)) as f:
        train = [json.loads(ln) for ln in f if '"train"' in ln]
    return {"figures": rep, "held_out_crops": n_test, "steps": model.total_steps,
            "training_s": train[-1]["elapsed_s"] if train else math.nan,
            "this_run_wall_s": wall_s, "photos": list(resolve_photos(model.config.photos))}


def _write_before_after(model: Any, crops: PhotoCrops, out: str, name: str) -> str:
    test = crops.test_crops(model.image_shape[-1])
    show = test[torch.linspace(0, len(test) - 1, min(N_SHOW, len(test))).round().long()]
    model.eval()
    rows = _rows(model, show)
    pre_path = os.path.join(out, PRETRAIN_OUT)
    if os.path.exists(pre_path):
        rows.insert(-2, ("NoGAN generator after pretraining",
                         torch.load(pre_path, weights_only=True)))
        rows[-2] = ("NoGAN generator after the GAN phase", rows[-2][1])
    path = os.path.join(out, "before_after.png")
    save_panels([(f"{name}: {t}", im, len(im)) for t, im in rows], path)
    return path


def train(cls: type, args: Any) -> int:
    from ._unet_features import cached_feature_net

    model, crops, out = _photo_cli.build(
        cls, args, "--set stage_steps=(...) / stage_batch=(...) / critic_steps=N / gan_steps=N "
        "/ gan_batch=N", lambda m: PhotoCrops(m.config.photos, m.config.window))
    c = model.config
    tc = _photo_cli.train_config(cls, model, args, model.pretrain_steps, c.critic_steps,
                                 c.gan_steps)
    if not args.resume:
        t0 = time.perf_counter()
        net, acc = cached_feature_net(crops)
        model.set_feature_net(net)
        n = len(crops.names)
        print(f"feature net ((rotation, photo) of crops of {', '.join(crops.names)}): held-out "
              f"accuracy {acc['joint']:.3f} (chance {1 / (4 * n):.3f}), rotation "
              f"{acc['rotation']:.3f} (chance 0.25), photo {acc['photo']:.3f} (chance "
              f"{1 / n:.3f}); {time.perf_counter() - t0:.1f} s")
    seconds = _photo_cli.run_fit(fit, model, args, crops, tc, out)
    rep = report(model, out, seconds, len(crops.test_crops(model.image_shape[-1])))
    with open(os.path.join(out, "report.json"), "w") as f:
        json.dump(rep, f, indent=1)
    png = _write_before_after(model.cpu(), crops, out, args.model)
    print(f"{args.model}: {model.total_steps} steps (pretraining {c.stage_sizes} px "
          f"{c.stage_steps} steps, critic {c.critic_steps}, GAN {c.gan_steps}); "
          f"{rep['held_out_crops']} held-out {model.image_shape[-1]}px crops of "
          f"{', '.join(rep['photos'])}; {rep['training_s']:.0f} s training")
    for k, v in rep["figures"].items():
        print(f"  {k:<55} PSNR {v['psnr']:6.2f} dB  SSIM {v['ssim']:.4f}  feature "
              f"distance {v['feat']:.4f}")
    print(f"report.json, {os.path.basename(png)}, samples_step*.png, checkpoint and "
          f"metrics.jsonl in {out}")
    return 0


def sample(cls: type, args: Any) -> int:
    from . import _unet_metrics as metrics

    model, ckpt = load_model(cls, args)
    n = args.n or N_SHOW
    if n < 1:
        raise SystemExit(f"genfast: --n must be >= 1, got {n}")
    try:
        crops = PhotoCrops(model.config.photos, model.config.window)
    except (ValueError, ImportError) as e:
        raise SystemExit(f"genfast: {e}") from None
    test = crops.test_crops(model.image_shape[-1])
    x = test[torch.linspace(0, len(test) - 1, min(n, len(test))).round().long()]
    rows = _rows(model, x)
    step = int(ckpt["step"])
    phase = model.phase_at(step - 1)[0] if step else "untrained"
    out = args.out or f"{args.model}_samples.png"
    save_panels([(f"{args.model} step {step} ({phase}): {t}", im, len(im)) for t, im in rows],
                out)
    out_img = rows[-2][1]
    print(f"wrote {len(x)} held-out crops (input / "
          + ("baseline / " if model.baseline is not None else "")
          + f"output / target) to {out}; PSNR {metrics.mean_psnr(out_img, x):.2f} dB, SSIM "
          f"{float(metrics.ssim(out_img, x).mean()):.4f} on these crops")
    return 0
