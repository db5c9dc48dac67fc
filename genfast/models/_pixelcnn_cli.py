"""`genfast train pixelcnn|gated-pixelcnn` and `genfast sample ...`: quantised images with
their class labels through the shared training loop (genfast/models/_trainer.py: resumable
batches, atomic checkpoints, held-out metrics at every snapshot), PNG grids of samples."""

from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Any

import torch

from ._images import save_panels
from ._trainer import (
    _EVAL_SEED,
    TrainConfig,
    _isolated_rng,
    batch_indices,
    load_model,
    resumed_config,
    train_loop,
)


@dataclasses.dataclass
class TokenImages:
    """Quantised images (N, K, H, W) int64 and their class labels (N,) or None."""
    tokens: torch.Tensor
    labels: torch.Tensor | None

    def __len__(self) -> int:
        return len(self.tokens)

    def to(self, device: torch.device) -> TokenImages:
        lab = None if self.labels is None else self.labels.to(device)
        return TokenImages(self.tokens.to(device), lab)


def load_data(path: str | None, levels: int, size: int) -> tuple[TokenImages, TokenImages]:
    """(train, test): the embedded digits at size x size with labels, or the user's images
    (no labels; their own size) split 80 / 20 by genfast.data.split's fixed seed."""
    from ..data import load_digits, load_images, split
    from .pixelcnn import quantize

    if path is None:
        x, y = load_digits(size)
        idx_train, idx_test = split(torch.arange(len(x)))  # the same split as split(x)
        q = quantize(x, levels)
        return (TokenImages(q[idx_train], y[idx_train]), TokenImages(q[idx_test], y[idx_test]))
    try:
        x = load_images(path)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"genfast: {e}") from None
    if x.shape[1] not in (1, 3):
        raise SystemExit(f"genfast: --data {path}: expected grey or RGB images, got "
                         f"{x.shape[1]} channels")
    train, test = split(quantize(x, levels))
    return TokenImages(train, None), TokenImages(test, None)


def sample_grid(model: Any, path: str, n: int, title: str, *, cls: int | None = None,
                seed: int = _EVAL_SEED, **kwargs: Any) -> tuple[str, float]:
    """n samples as a PNG grid (one row per class for a conditional model without `cls`);
    returns (path, seconds spent generating)."""
    k = getattr(model.config, "num_classes", 0)
    nrow = math.ceil(n / k) if k and cls is None else None
    if nrow is not None:  # row r holds class r: generate class-major
        labels = torch.arange(k).repeat_interleave(nrow)[:n]
        cls_arg: Any = labels
    else:
        cls_arg = cls
    t0 = time.perf_counter()
    tokens = model.generate(n, cls=cls_arg, seed=seed, **kwargs)
    dt = time.perf_counter() - t0
    save_panels([(title, model.images(tokens).cpu(), nrow)], path)
    return path, dt


def fit(model: Any, name: str, train: TokenImages, test: TokenImages, tc: TrainConfig,
        out_dir: str | os.PathLike[str], *, resume: bool = False,
        device: str | torch.device = "cpu", progress: bool | None = None) -> dict[str, float]:
    """Train to ``tc.steps`` total steps (the shared loop); returns the held-out metrics."""
    device, out_dir = torch.device(device), os.fspath(out_dir)
    train, test = train.to(device), test.to(device)
    use_labels = bool(getattr(model.config, "num_classes", 0))

    def batch(step: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        idx = batch_indices(len(train), tc.batch_size, tc.seed, step).to(device)
        lab = train.labels[idx] if use_labels and train.labels is not None else None
        return train.tokens[idx], lab

    def evaluate() -> dict[str, float]:
        model.eval()
        try:
            with torch.no_grad(), _isolated_rng(device):
                return model.evaluate(test.tokens, test.labels if use_labels else None)
        finally:
            model.train()

    def snapshot(step: int) -> dict[str, float]:
        held_out = evaluate()
        model.eval()
        try:
            with _isolated_rng(device):
                sample_grid(model, os.path.join(out_dir, f"samples_step{step:06d}.png"),
                            tc.n_samples, f"{name} step {step}: held-out "
                            f"{held_out['bits_per_dim']:.3f} bits/dim")
        finally:
            model.train()
        return held_out

    return train_loop(model, name, tc, out_dir, batch=batch, snapshot=snapshot,
                      evaluate=evaluate, resume=resume, device=device, progress=progress)


def train(cls: type, args: Any) -> int:
    import genfast

    overrides = dict(getattr(args, "config", None) or {})
    if getattr(args, "levels", None) is not None:
        overrides["levels"] = args.levels
    out = args.out or os.path.join("runs", args.model)
    overrides = resumed_config(args, out, overrides)
    fields = {f.name: f.default for f in dataclasses.fields(cls.config_cls)}
    levels = overrides.get("levels", fields["levels"])
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 2:
        raise SystemExit(f"genfast: --levels must be an int >= 2, got {levels!r}")
    train_set, test_set = load_data(args.data, levels, overrides.get("height",
                                                                    fields["height"]))
    _, K, H, W = train_set.tokens.shape
    if args.data is not None:
        if K != 1 and "num_classes" in fields:
            raise SystemExit(f"genfast: --data {args.data} holds colour images ({K} channels);"
                             f" gated-pixelcnn models grey images only: train `pixelcnn`, "
                             f"which masks R -> G -> B within a pixel")
        overrides.update(colors=K, height=H, width=W)
        if "num_classes" in fields:
            overrides.setdefault("num_classes", 0)  # the user's images carry no labels
    try:
        config = cls.config_cls(**overrides)
        model = cls(config)
    except (TypeError, ValueError) as e:
        raise SystemExit(f"genfast: --set: {e}") from None
    if (config.colors, config.height, config.width) != (K, H, W):
        raise SystemExit(f"genfast: the data are {K}x{H}x{W} images, the config says "
                         f"{config.colors}x{config.height}x{config.width}")
    try:
        tc = TrainConfig.from_args(cls.train_defaults, args)
        t0 = time.perf_counter()
        with genfast.use_backend(args.backend):
            metrics = fit(model, args.model, train_set, test_set, tc, out, resume=args.resume,
                          device=args.device, progress=not args.no_progress)
    except ValueError as e:
        raise SystemExit(f"genfast: {e}") from None
    wall = time.perf_counter() - t0
    what = "the embedded digits" if args.data is None else args.data
    print(f"{args.model}: {tc.steps} steps on {what} ({len(train_set)} train / "
          f"{len(test_set)} held-out {K}x{H}x{W} images, {config.levels} levels), "
          f"{wall:.1f} s this run")
    print(f"  held-out NLL {metrics['bits_per_dim']:.3f} bits/dim (uniform "
          f"{math.log2(config.levels):.3f})")
    print(f"checkpoint, metrics.jsonl and samples_step*.png in {out}")
    return 0


def sample(cls: type, args: Any) -> int:
    import genfast

    model, ckpt = load_model(cls, args)
    k = getattr(args, "cls", None)
    classes = getattr(model.config, "num_classes", 0)
    n = args.n or (8 * classes if classes and k is None else 64)  # a full row per class
    if n < 1:
        raise SystemExit(f"genfast: --n must be >= 1, got {n}")
    if k is not None and classes and not 0 <= k < classes:
        raise SystemExit(f"genfast: --class must be in [0, {classes}), got {k}")
    temperature = getattr(args, "temperature", None)
    kwargs = {"temperature": 1.0 if temperature is None else temperature,
              "top_k": getattr(args, "top_k", None), "top_p": getattr(args, "top_p", None)}
    out = args.out or f"{args.model}_samples.png"
    c = model.config
    title = (f"{args.model} step {ckpt['step']}, seed {args.seed}"
             + ("" if k is None else f", class {k}"))
    try:
        model.generate(1, cls=k, seed=args.seed, **kwargs)  # warm-up (packing, first calls)
        _, dt = sample_grid(model, out, n, title, cls=k, seed=args.seed, **kwargs)
    except (ValueError, TypeError, genfast.BackendError) as e:
        raise SystemExit(f"genfast: {e}") from None
    print(f"wrote {n} samples ({c.colors}x{c.height}x{c.width}, {c.levels} levels) to {out}")
    print(f"generation: {n / dt:,.1f} images/s ({dt:.3f} s for {n})")
    return 0
