"""What the photo models' CLIs share (unet-nogan, srgan: genfast/models/_unet_cli.py,
_srgan_cli.py): a run built from --set / --resume on the shipped photos, the schedule-driven
train config, and the fit call. Both models fix their steps and batch sizes in their config
(the schedule), train only on the photos that ship in scikit-learn / scikit-image, and read their
report from the snapshots at the phase boundaries."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from typing import Any

from ..data.photos import PhotoCrops, resolve_photos
from ._trainer import TrainConfig, resumed_config


def build(cls: type, args: Any, schedule_fields: str,
          crops_of: Callable[[Any], PhotoCrops]) -> tuple[Any, PhotoCrops, str]:
    """(model, its crops, the run directory) from the command line; schedule_fields names the
    --set fields that replace --steps / --batch-size in the error that refuses them."""
    if getattr(args, "steps", None) is not None or getattr(args, "batch_size", None) is not None:
        raise SystemExit(f"genfast: {args.model}'s schedule sets its steps and batch size: use "
                         f"{schedule_fields} instead of --steps / --batch-size")
    if getattr(args, "data", None) is not None:
        raise SystemExit(f"genfast: {args.model} trains on the shipped photos (--set "
                         "photos=[...] picks them); --data is not supported")
    out = args.out or os.path.join("runs", args.model)
    overrides = resumed_config(args, out, dict(getattr(args, "config", None) or {}))
    try:
        # The run records the photo names, so a resume or a sample sees the same photos.
        overrides["photos"] = list(resolve_photos(overrides.get("photos", "auto")))
        model = cls(cls.config_cls(**overrides))
        crops = crops_of(model)
    except (TypeError, ValueError, ImportError) as e:
        raise SystemExit(f"genfast: --set: {e}") from None
    return model, crops, out


def train_config(cls: type, model: Any, args: Any, *phase_steps: int) -> TrainConfig:
    """The schedule's TrainConfig: snapshots and checkpoints every gcd of the phases' lengths
    by default; --sample-every must divide the end of pretraining and of the schedule."""
    every = math.gcd(*phase_steps)
    defaults = {**cls.train_defaults, "steps": model.total_steps, "sample_every": every,
                "checkpoint_every": every}
    tc = TrainConfig.from_args(defaults, args)
    if model.pretrain_steps % tc.sample_every or model.total_steps % tc.sample_every:
        raise SystemExit(f"genfast: --sample-every {tc.sample_every} must divide the end of "
                         f"pretraining ({model.pretrain_steps}) and of the schedule "
                         f"({model.total_steps}): the report reads those snapshots")
    return tc


def run_fit(fit: Callable[..., Any], model: Any, args: Any, crops: PhotoCrops, tc: TrainConfig,
            out: str) -> float:
    """fit(...) under --backend with the CLI's error for a bad run; returns the seconds."""
    import genfast

    t0 = time.perf_counter()
    try:
        with genfast.use_backend(args.backend):
            fit(model, args.model, crops, tc, out, resume=args.resume, device=args.device,
                progress=not args.no_progress)
    except ValueError as e:
        raise SystemExit(f"genfast: {e}") from None
    return time.perf_counter() - t0
