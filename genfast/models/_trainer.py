"""The training harness every image model shares: batches, progress, checkpoints, samples, logs.

A model plugs in by being an ``nn.Module`` with

* ``config`` (a dataclass) and ``image_shape`` (C, H, W),
* ``configure_optimizers(lr) -> dict[str, Optimizer]``,
* ``train_step(x, optimizers, step) -> dict[str, float | Tensor]`` (0-dim tensors are summed
  on the device and read once per ``log_every`` steps: no host sync per step; it owns backward and
  ``optimizer.step()``, so a GAN can alternate its two optimizers),
* ``evaluate(x) -> dict[str, float]`` (held-out metrics; ``loss`` is the headline number),
* ``sample(n) -> (n, C, H, W)`` in [0, 1], and optionally ``reconstruct(x)``.

Runs are exactly resumable: the batch order is a pure function of (seed, step), the
checkpoint holds torch's RNG state, and evaluation / sample writing run under a forked RNG
so they never shift the training stream (DESIGN.md section 7).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import pickle
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from . import _distributed
from ._images import interleave_rows, save_panels

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
CHECKPOINT_FORMAT = 1
# Fixed seed for sample grids and evaluation, so grids from different steps are comparable.
_EVAL_SEED = 1234


@dataclasses.dataclass
class TrainConfig:
    steps: int = 6000
    batch_size: int = 100
    lr: float = 1e-3
    seed: int = 0
    checkpoint_every: int = 1000
    sample_every: int = 1000
    log_every: int = 100
    n_samples: int = 64

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "checkpoint_every", "sample_every", "log_every",
                     "n_samples"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < (0 if name == "steps" else 1):
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite float > 0, got {self.lr!r}")


    @classmethod
    def from_args(cls, defaults: dict[str, Any], args: Any) -> TrainConfig:
        """A model's train_defaults overridden by the CLI's --steps, --batch-size, --lr,
        --seed, --checkpoint-every and --sample-every where given."""
        given = {k: getattr(args, k, None) for k in ("steps", "batch_size", "lr", "seed",
                                                       "checkpoint_every", "sample_every")}
        merged = {**defaults, **{k: v for k, v in given.items() if v is not None}}
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in merged.items() if k in fields})


def batch_indices(n: int, batch_size: int, seed: int, step: int) -> torch.Tensor:
    """Indices of the batch for `step`: epochs of a per-epoch permutation, last partial batch
    dropped. Stateless, so a resumed run sees exactly the batches an unbroken run would."""
    b = min(batch_size, n)
    per_epoch = n // b
    epoch, i = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    return perm[i * b:(i + 1) * b]


@contextlib.contextmanager
def _isolated_rng(device: torch.device) -> Iterator[None]:
    # devices=[] keeps fork_rng from initialising CUDA on a CPU run.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(_EVAL_SEED)
        yield


def _rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def save_checkpoint(path: str, payload: dict[str, Any]) -> None:
    """Write to a temporary file, fsync, then rename: a crash mid-save leaves the old file."""
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        torch.save(payload, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: str) -> dict[str, Any]:
    """Load a genfast checkpoint (tensors, numbers, strings only: ``weights_only``)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a genfast checkpoint (format {CHECKPOINT_FORMAT})")
    return ckpt


def resumed_config(args: Any, out: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """With --resume, the checkpoint's config under `overrides` (the command line wins); the
    CLI's error when the checkpoint is missing, foreign, or of another model."""
    if not args.resume:
        return overrides
    ckpt_file = os.path.join(out, CHECKPOINT)
    try:
        saved = load_checkpoint(ckpt_file)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"genfast: --resume: {e}") from None
    if saved["model"] != args.model:
        raise SystemExit(f"genfast: {ckpt_file} holds a {saved['model']!r} model")
    return {**saved["config"], **overrides}


def load_model(cls: type, args: Any) -> tuple[nn.Module, dict[str, Any]]:
    """The model of `args.checkpoint` (the sample CLI's --checkpoint) and the checkpoint, in
    eval mode; the CLI's error when it is missing, foreign, or of another model."""
    if args.checkpoint is None:
        raise SystemExit(f"genfast: sample {args.model} needs --checkpoint (a trained run's "
                         "checkpoint.pt)")
    try:
        ckpt = load_checkpoint(str(args.checkpoint))
    except (OSError, ValueError, RuntimeError, EOFError, pickle.UnpicklingError) as e:
        raise SystemExit(f"genfast: --checkpoint {args.checkpoint}: not a readable genfast "
                         f"checkpoint ({e})") from None
    if ckpt.get("model") != args.model or "state_dict" not in ckpt:
        raise SystemExit(f"genfast: {args.checkpoint} holds a {ckpt.get('model')!r} model, "
                         f"not a trained {args.model!r}")
    model = cls(cls.config_cls(**ckpt["config"]))
    model.load_state_dict(ckpt["state_dict"])
    return model.eval(), ckpt


def _write_samples(model: nn.Module, fixed: torch.Tensor, path: str, n: int) -> None:
    nrow = max(1, int(math.sqrt(n)))
    panels = [(f"samples ({type(model).__name__})", model.sample(n), nrow)]
    if hasattr(model, "reconstruct") and len(fixed) >= nrow:
        pairs = interleave_rows(fixed, model.reconstruct(fixed), nrow)
        panels.append(("held-out digits (odd rows) / reconstructions (even rows)", pairs, nrow))
    save_panels(panels, path)


def _evaluate(model: nn.Module, x: torch.Tensor, device: torch.device) -> dict[str, float]:
    model.eval()
    try:
        with torch.no_grad(), _isolated_rng(device):
            return model.evaluate(x)
    finally:
        model.train()


def _log(path: str, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def _truncate_log(path: str, step: int) -> None:
    """On resume, drop records a crashed run wrote after its last checkpoint."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        keep = [ln for ln in f if ln.strip() and json.loads(ln).get("step", 0) <= step]
    with open(path, "w") as f:
        f.writelines(keep)


def fit(model: nn.Module, name: str, train_x: torch.Tensor, test_x: torch.Tensor,
        tc: TrainConfig, out_dir: str, *, resume: bool = False,
        device: str | torch.device = "cpu", progress: bool | None = None) -> dict[str, float]:
    """Train `model` (registry name `name`) to ``tc.steps`` total steps; returns the held-out
    metrics at the end. ``progress=None`` shows a bar only on a terminal."""
    device = torch.device(device)
    train_x, test_x = train_x.to(device), test_x.to(device)
    fixed = test_x[: min(len(test_x), 32)]

    def batch(step: int) -> torch.Tensor:
        return train_x[batch_indices(len(train_x), tc.batch_size, tc.seed, step).to(device)]

    def snapshot(step: int) -> dict[str, float]:
        with torch.no_grad(), _isolated_rng(device):
            model.eval()
            _write_samples(model, fixed, os.path.join(out_dir, f"samples_step{step:06d}.png"),
                           tc.n_samples)
            model.train()
        return _evaluate(model, test_x, device)

    return train_loop(model, name, tc, out_dir, batch=batch, snapshot=snapshot,
                      evaluate=lambda: _evaluate(model, test_x, device), resume=resume,
                      device=device, progress=progress)


def train_loop(model: nn.Module, name: str, tc: TrainConfig, out_dir: str | os.PathLike[str], *,
               batch: Callable[[int], Any], snapshot: Callable[[int], dict[str, float]],
               evaluate: Callable[[], dict[str, float]], resume: bool = False,
               device: str | torch.device = "cpu",
               progress: bool | None = None) -> dict[str, float]:
    """The loop every trained model shares: ``model.train_step(batch(step), optimizers, step)``
    for steps [start, tc.steps), metrics summed on the device and logged every
    ``tc.log_every``, ``snapshot(step)`` (writes its artefacts, returns held-out metrics, which
    are logged) every ``tc.sample_every``, atomic checkpoints (model, optimizers, RNG) every
    ``tc.checkpoint_every``; a resume truncates the log to the checkpoint and continues
    exactly. Returns ``evaluate()`` at the end. Under torchrun each rank trains on its share
    of every batch with gradients averaged, and rank 0 alone snapshots, logs and checkpoints
    (genfast/models/_distributed.py)."""
    from tqdm.auto import tqdm  # optional dependency ([models] extra), so imported late

    device, out_dir = torch.device(device), os.fspath(out_dir)
    ctx = _distributed.context(device)  # world 1 unless torchrun started us (_distributed.py)
    os.makedirs(out_dir, exist_ok=True)
    ckpt_path, log_path = os.path.join(out_dir, CHECKPOINT), os.path.join(out_dir, METRICS)
    model.to(device)
    optimizers = model.configure_optimizers(tc.lr)
    start, elapsed = 0, 0.0
    if resume:
        ckpt = load_checkpoint(ckpt_path)
        if ckpt["model"] != name:
            raise ValueError(f"{ckpt_path} holds a {ckpt['model']!r} model, not {name!r}")
        model.load_state_dict(ckpt["state_dict"])
        for key, opt in optimizers.items():
            opt.load_state_dict(ckpt["optimizers"][key])
        start, elapsed = int(ckpt["step"]), float(ckpt["elapsed_s"])
        saved_world = int(ckpt.get("world", 1))
        if saved_world != ctx.world:  # another world size: fresh per-rank streams
            torch.manual_seed(_distributed.rank_seed(tc.seed, ctx.rank, start))
        else:
            _set_rng_state(ckpt["rng_ranks"][ctx.rank] if ctx.world > 1 else ckpt["rng"],
                           device)
        if ctx.is_main:
            _truncate_log(log_path, start)
    else:
        if ctx.world > 1:  # same init on every rank (the caller's seed), then own noise
            torch.manual_seed(_distributed.rank_seed(tc.seed, ctx.rank))
        if ctx.is_main and os.path.exists(log_path):
            os.remove(log_path)
    sync = None
    if ctx.world > 1:
        _distributed.broadcast_module(model)
        sync = _distributed.GradSync(model)

    def checkpoint(step: int) -> None:
        rng = _rng_state(device)
        ranks = _distributed.all_gather_object(rng) if ctx.world > 1 else None
        if not ctx.is_main:
            return
        save_checkpoint(ckpt_path, {
            "format": CHECKPOINT_FORMAT, "model": name, "step": step, "elapsed_s": elapsed,
            "config": dataclasses.asdict(model.config), "train": dataclasses.asdict(tc),
            "state_dict": model.state_dict(),
            "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
            "rng": rng, "world": ctx.world,
            **({"rng_ranks": ranks} if ranks is not None else {}),
        })

    @contextlib.contextmanager
    def unsynced() -> Iterator[None]:
        # Snapshots and evaluation run on rank 0 alone: a backward in them must not all-reduce.
        if sync is not None:
            sync.enabled = False
        try:
            yield
        finally:
            if sync is not None:
                sync.enabled = True

    model.train()
    sums: dict[str, Any] = {}
    count = 0
    t0 = time.perf_counter() - elapsed
    show = ctx.is_main and (progress is None or progress)
    bar = tqdm(range(start, tc.steps), initial=start, total=tc.steps, desc=name,
               disable=None if show and progress is None else not show, dynamic_ncols=True)
    for step in bar:
        metrics = model.train_step(_distributed.shard(batch(step), ctx.rank, ctx.world),
                                   optimizers, step)
        if sync is not None:
            sync.check()
            _distributed.sync_buffers(model)
        for k, v in metrics.items():  # tensors add up on the device: read once per log
            sums[k] = sums.get(k, 0.0) + (v.detach() if isinstance(v, torch.Tensor) else v)
        count += 1
        done = step + 1
        if done % tc.log_every == 0 or done == tc.steps:
            if ctx.world > 1:
                sums = _distributed.mean_metrics(sums, device)
            means = {k: float(v) / count for k, v in sums.items()}
            elapsed = time.perf_counter() - t0
            if ctx.is_main:
                _log(log_path, {"step": done, "split": "train", **means, "elapsed_s": elapsed})
            bar.set_postfix({k: f"{v:.4g}" for k, v in means.items()}, refresh=False)
            sums, count = {}, 0
        if ctx.is_main and (done % tc.sample_every == 0 or done == tc.steps):
            with unsynced():
                held_out = snapshot(done)
            _log(log_path, {"step": done, "split": "test", **held_out})
            if progress is not False:  # e.g. a GAN's FD-digits at every snapshot
                tqdm.write(f"{name} step {done}: held-out "
                           + ", ".join(f"{k}={v:.4g}" for k, v in held_out.items()))
        if done % tc.checkpoint_every == 0 or done == tc.steps:
            elapsed = time.perf_counter() - t0
            checkpoint(done)
    bar.close()
    missing = start >= tc.steps and not os.path.exists(ckpt_path)
    if ctx.world > 1:  # rank 0's file system decides: a checkpoint is a collective
        missing = _distributed.broadcast_object(missing, device)
    if missing:
        checkpoint(start)
    if ctx.world == 1:
        return evaluate()
    sync.close()  # the final evaluation runs on rank 0 alone; the others get its figures
    final = _distributed.broadcast_object(evaluate() if ctx.is_main else None, device)
    _distributed.end_rank(ctx)
    return final
