"""The `genfast` command: info | bench | train | sample (DESIGN.md sections 2, 6, 7)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def _info(_: argparse.Namespace) -> int:
    import genfast

    print(genfast.info())
    return 0


def _model_cls(name: str):
    from genfast import models

    try:
        return models.get(name)
    except KeyError as e:
        raise SystemExit(f"genfast: {e.args[0]}") from None


def _data(model, path: str | None):
    """(train, test) images shaped for `model`: the embedded digits, or the user's file."""
    from genfast.data import digits_split, load_images, resize, split

    c, h, _ = model.image_shape
    if path is None:
        return digits_split(size=h)
    x = load_images(path)
    if x.shape[1] != c:
        raise SystemExit(f"genfast: --data {path} has {x.shape[1]} channels, {type(model).__name__}"
                         f" expects {c}")
    return split(resize(x, h) if x.shape[-1] != h else x)


def _train(args: argparse.Namespace) -> int:
    from genfast.models import _distributed

    # Under torchrun: the process group first, this rank's device in args.device for every
    # model's trainer, and an exit that never tears the group down (_distributed.run).
    ctx = _distributed.init_from_env(args.device)
    if ctx.world == 1:
        return _train_model(args)
    args.device = str(ctx.device)
    return _distributed.run(ctx, lambda: _train_model(args))


def _train_model(args: argparse.Namespace) -> int:
    import torch

    import genfast
    from genfast.models._trainer import TrainConfig, fit

    cls = _model_cls(args.model)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if hasattr(cls, "cli_train"):  # models not trained by SGD on images (GMM EM, LDA VB)
        return cls.cli_train(args)
    try:
        model = cls(cls.config_cls(**args.config)) if args.config else cls()
    except (TypeError, ValueError) as e:
        raise SystemExit(f"genfast: --set: {e}") from None
    tc = TrainConfig.from_args(cls.train_defaults, args)
    train_x, test_x = _data(model, args.data)
    out = args.out or os.path.join("runs", args.model)
    try:
        with genfast.use_backend(args.backend):
            metrics = fit(model, args.model, train_x, test_x, tc, out, resume=args.resume,
                          device=args.device, progress=not args.no_progress)
    except ValueError as e:  # e.g. a --batch-size the processes cannot share evenly
        raise SystemExit(f"genfast: {e}") from None
    if hasattr(model, "codes"):  # latent-variable models: a map of the held-out codes
        from genfast.models._latent_map import digits_test_labels, write_latent_map

        labels = digits_test_labels() if args.data is None else None
        write_latent_map(model, test_x, os.path.join(out, "latent_map.png"), labels)
    summary = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items())
    print(f"{args.model}: {tc.steps} steps; held-out: {summary}")
    print(f"checkpoint, samples and metrics.jsonl in {out}")
    return 0


def _sample(args: argparse.Namespace) -> int:
    import torch

    from genfast.models._images import save_panels
    from genfast.models._trainer import load_model

    cls = _model_cls(args.model)
    if hasattr(cls, "cli_sample"):
        return cls.cli_sample(args)
    model, ckpt = load_model(cls, args)
    gen = torch.Generator().manual_seed(args.seed)
    kwargs = {"generator": gen}
    if args.truncation is not None:
        import inspect

        if "truncation" not in inspect.signature(model.sample).parameters:
            raise SystemExit(f"genfast: {args.model} has no latent truncation (--truncation)")
        kwargs.update(truncation=args.truncation, truncation_mode=args.truncation_mode)
    try:
        images = model.sample(args.n or 64, **kwargs)
    except ValueError as e:
        raise SystemExit(f"genfast: {e}") from None
    out = args.out or f"{args.model}_samples.png"
    title = f"{args.model} step {ckpt['step']}" + (
        f", truncation {args.truncation:g}" if args.truncation is not None else "")
    save_panels([(title, images, None)], out)
    print(f"wrote {len(images)} samples to {out}")
    return 0


def _config_item(text: str) -> tuple[str, object]:
    """KEY=VALUE -> (key, value): Python literals (3, 0.5, None, True), else the string."""
    import ast

    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="genfast", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions, build metadata, backends per op and why not")
    sub.add_parser("bench", help="benchmarks: every op against PyTorch eager, torch.compile and "
                                 "the best plain-PyTorch version, a few minutes on 2 cores "
                                 "(--quick, --full, --gpu; genfast bench --help)", add_help=False)

    t = sub.add_parser("train", help="train a model on the embedded digits (or --data)")
    t.add_argument("model", help="registered model name (e.g. gumbel-vae, dcgan, sngan, wgan-gp)")
    t.add_argument("--steps", type=int)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--lr", type=float)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--checkpoint-every", type=int)
    t.add_argument("--sample-every", type=int)
    t.add_argument("--out", help="run directory (default runs/MODEL)")
    t.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    t.add_argument("--data", help="a .npy/.npz of images (N, [C,] H, W) instead of the digits "
                   "(wavenet: FILE.wav[,FILE2.wav...], one speaker per file)")
    t.add_argument("--backend", default="auto",
                   choices=("auto", "reference", "cpu", "triton", "cuda"))
    t.add_argument("--device", default="cpu")
    t.add_argument("--levels", type=int, help="pixelcnn, gated-pixelcnn: values per channel "
                   "(2: binarised; default 16)")
    t.add_argument("--loss", choices=("gan", "wgan-gp"),
                   help="gsgan: adversarial loss (default gan; wgan-gp: LSTM critic whose "
                        "gradient penalty runs genfast.nn.LSTM's double backward)")
    t.add_argument("--threads", type=int,
                   help="torch CPU threads (small models train fastest with 1 on a busy box)")
    t.add_argument("--no-progress", action="store_true")
    t.add_argument("--set", dest="config", action="append", type=_config_item, metavar="KEY=VALUE",
                   help="a model config field, e.g. --set n_components=4 --set "
                        "covariance_type=diag (repeatable)")

    s = sub.add_parser("sample", help="write samples of a trained model as a PNG grid")
    s.add_argument("model")
    s.add_argument("--checkpoint", type=Path, help="a trained run's checkpoint.pt (gmm and lda "
                   "without one: their generative simulation)")
    s.add_argument("--n", type=int, help="how many samples (default 64 images; model-specific)")
    s.add_argument("--out", help="PNG path (default MODEL_samples.png)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--truncation", type=float, metavar="PSI",
                   help="truncation trick for GANs: latents limited to |z| <= PSI")
    s.add_argument("--truncation-mode", choices=("resample", "interpolate"), default="resample",
                   help="resample components with |z| > PSI (BigGAN), or scale z by PSI")
    s.add_argument("--seconds", type=float, help="wavenet: seconds of audio to generate "
                   "(default 2)")
    s.add_argument("--temperature", type=float, help="wavenet, pixelcnn, gated-pixelcnn, char-rnn, "
                   "music-lstm, gsgan: sampling temperature (0: greedy)")
    s.add_argument("--top-k", type=int, help="wavenet, pixelcnn, gated-pixelcnn, char-rnn, "
                   "music-lstm: sample among the k most likely values")
    s.add_argument("--top-p", type=float, help="wavenet, pixelcnn, gated-pixelcnn, char-rnn, "
                   "music-lstm: nucleus (top-p) sampling mass")
    s.add_argument("--class", dest="cls", type=int, metavar="K",
                   help="gated-pixelcnn, cgan: draw every image of class K (default: one row "
                        "per class)")
    s.add_argument("--speaker", type=int,
                   help="wavenet: global-conditioning id (one per --data file)")
    s.add_argument("--prime", help="char-rnn: text the sample continues (default a newline); "
                   "music-lstm: how many notes of the held-out tune to start from (default 8)")
    s.add_argument("--length", type=int, help="char-rnn: characters to generate (default 500); "
                   "music-lstm: notes to generate at most (default 64)")
    s.add_argument("--tune", type=int, help="music-lstm: index of the held-out tune to continue "
                   "(default 0)")

    c = sub.add_parser("control", help="controllable GAN: find a latent direction that raises a "
                       "classifier's target attribute of a trained GAN's samples (G untouched)")
    c.add_argument("model", help="a trained GAN's registry name (gan, dcgan, wgan-gp, ...)")
    c.add_argument("--checkpoint", type=Path, required=True)
    c.add_argument("--target", required=True, help="the attribute to raise (digits: a class, "
                   "0-9)")
    c.add_argument("--steps", type=int, default=8, help="points along the direction")
    c.add_argument("--step-size", type=float, help="latent distance between points")
    c.add_argument("--method", choices=("gradient", "linear"), default="gradient",
                   help="gradient ascent on z with the disentangling penalty, or one linear "
                        "direction")
    c.add_argument("--penalty", type=float, help="weight of the penalty on the other attributes")
    c.add_argument("--n", type=int, help="latents the direction is measured on")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--out", help="PNG strip path (default MODEL_control_TARGET.png)")

    e = sub.add_parser("eval-features", help="linear probe: a linear classifier on a trained "
                       "GAN discriminator's features of the digits vs on K-means features")
    e.add_argument("model", help="dcgan (or another GAN with a convolutional discriminator)")
    e.add_argument("--checkpoint", type=Path, required=True)
    e.add_argument("--seed", type=int, default=0)
    return p


def _control(args: argparse.Namespace) -> int:
    from genfast.models._control import cli_control

    return cli_control(args)


def _eval_features(args: argparse.Namespace) -> int:
    from genfast.models._eval_features import cli_eval_features

    return cli_eval_features(args)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "bench":
        from genfast.benchmarks import main as bench_main

        return bench_main(argv[1:])
    args = parser().parse_args(argv)
    if args.command == "train":
        args.config = dict(args.config or [])
    checkpoint = getattr(args, "checkpoint", None)
    if checkpoint is not None and not checkpoint.exists():
        raise SystemExit(f"genfast: --checkpoint {checkpoint} does not exist")
    return {"info": _info, "train": _train, "sample": _sample, "control": _control,
            "eval-features": _eval_features}[args.command](args)


if __name__ == "__main__":
    raise SystemExit(main())
