"""`genfast train gmm` and `genfast sample gmm`.

EM is not SGD, so the GMM has its own loop instead of the image trainer: the "steps" are EM
iterations (``--steps`` = max_iter), progress is one bar over n_init x max_iter iterations,
and the checkpoint holds the EM state after an iteration, from which ``--resume`` continues
exactly (each restart's initialisation is a function of the seed alone).

Under torchrun every rank runs the fit (data-parallel EM, genfast/models/gmm.py) and rank 0
alone writes the checkpoint, the log, the figure and the summary.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import torch

from ._distributed import is_main
from ._gmm_sim import fit_figure, simulation_figure
from ._trainer import CHECKPOINT, CHECKPOINT_FORMAT, METRICS, load_checkpoint, save_checkpoint


def _data(path: str | None) -> tuple[torch.Tensor, list[str] | None, str]:
    from genfast.data.tabular import load_iris, load_points

    if path is None:
        x, _, names, _ = load_iris()
        return x, names, "iris (150 flowers x 4 measurements, cm)"
    return load_points(path), None, path


def train(cls: type, args: Any) -> int:
    from tqdm.auto import tqdm

    from genfast.data import split

    overrides = dict(getattr(args, "config", None) or {})
    if args.steps is not None:
        overrides["max_iter"] = args.steps
    out = args.out or os.path.join("runs", args.model)
    main = is_main()
    if main:
        os.makedirs(out, exist_ok=True)
    ckpt_path, log_path = os.path.join(out, CHECKPOINT), os.path.join(out, METRICS)
    x, names, what = _data(args.data)
    resume = None
    if args.resume:
        ckpt = load_checkpoint(ckpt_path)
        if ckpt["model"] != args.model:
            raise SystemExit(f"genfast: {ckpt_path} holds a {ckpt['model']!r} model")
        overrides = {**ckpt["config"], **overrides}
        resume = ckpt.get("em_state")
    elif main and os.path.exists(log_path):
        os.remove(log_path)
    try:
        config = cls.config_cls(**{k: v for k, v in overrides.items() if k != "n_features"})
        model = cls(config).to(args.device)
    except (TypeError, ValueError) as e:
        raise SystemExit(f"genfast: {e}") from None
    train_x, test_x = split(x)
    c = model.config
    every = args.checkpoint_every or cls.train_defaults["checkpoint_every"]
    total = c.n_init * c.max_iter
    bar = tqdm(total=total, desc=args.model, disable=True if not main else
               args.no_progress or None)

    def checkpoint(st: dict[str, Any]) -> None:
        if not main:
            return
        save_checkpoint(ckpt_path, {"format": CHECKPOINT_FORMAT, "model": args.model,
                                    "step": st["restart"] * c.max_iter + st["iter"],
                                    "config": dataclasses.asdict(c), "em_state": st,
                                    "seed": args.seed})

    last: dict[str, Any] = {"st": resume}

    def callback(st: dict[str, Any]) -> None:
        last["st"] = st
        step = st["restart"] * c.max_iter + st["iter"]
        if st["params"] is None:  # a restart finished: the bar jumps past unused iterations
            bar.update(max(0, step - bar.n))
            checkpoint(st)
            return
        bar.update(max(0, step - bar.n))
        bar.set_postfix(restart=st["restart"], loglik=f"{st['lower_bound']:.4f}", refresh=False)
        if not main:
            return
        with open(log_path, "a") as f:
            f.write(json.dumps({"step": step, "restart": st["restart"], "iter": st["iter"],
                                "loglik": st["lower_bound"]}) + "\n")
        if st["iter"] % every == 0:
            checkpoint(st)

    if resume is not None:
        bar.update(resume["restart"] * c.max_iter + resume["iter"])
    try:
        model.fit(train_x.to(args.device), seed=args.seed, callback=callback, resume=resume)
    except ValueError as e:
        raise SystemExit(f"genfast: {e}") from None
    bar.close()
    if not main:  # the same fit as rank 0's: nothing left to do
        return 0
    metrics = {"train_loglik": model.score(train_x), "test_loglik": model.score(test_x),
               "bic": model.bic(train_x), "aic": model.aic(train_x), "n_iter": model.n_iter_,
               "converged": model.converged_}
    save_checkpoint(ckpt_path, {"format": CHECKPOINT_FORMAT, "model": args.model,
                                "step": total, "config": dataclasses.asdict(c),
                                "state_dict": model.state_dict(), "metrics": metrics,
                                "em_state": last["st"],
                                "seed": args.seed})
    png = os.path.join(out, "fit.png")
    title = (f"GMM K={c.n_components} {c.covariance_type} on {what}\n"
             f"held-out log-lik {metrics['test_loglik']:.3f} nats/point, "
             f"BIC {metrics['bic']:.1f}")
    fit_figure(png, model, x, title, names)
    with open(log_path, "a") as f:
        f.write(json.dumps({"step": total, "split": "final", **metrics}) + "\n")
    print(f"{args.model}: {c.n_components} components ({c.covariance_type}) on {what}: "
          f"{model.n_iter_} EM iterations, converged={model.converged_}")
    print(f"  mean log-likelihood train {metrics['train_loglik']:.4f}, held-out "
          f"{metrics['test_loglik']:.4f} nats/point; BIC {metrics['bic']:.2f}, "
          f"AIC {metrics['aic']:.2f}")
    print(f"checkpoint, metrics.jsonl and fit.png in {out}")
    return 0


def sample(cls: type, args: Any) -> int:
    gen = torch.Generator().manual_seed(args.seed)
    if args.checkpoint is None:
        out = args.out or "gmm_simulation.png"
        params = simulation_figure(out, n=args.n or 1000, generator=gen)
        print("seed 000 simulation: sepal lengths of iris setosa and versicolor, "
              f"pi={[round(v, 3) for v in params['pi']]}, "
              f"mu={[round(v, 3) for v in params['mu']]}, "
              f"sigma={[round(v, 3) for v in params['sigma']]}; parameters then drawn from "
              "their priors")
        print(f"wrote the histograms to {out}")
        return 0
    ckpt = load_checkpoint(str(args.checkpoint))
    if ckpt["model"] != args.model:
        raise SystemExit(f"genfast: {args.checkpoint} holds a {ckpt['model']!r} model, "
                         f"not {args.model!r}")
    if "state_dict" not in ckpt:
        raise SystemExit(f"genfast: {args.checkpoint} is a mid-fit checkpoint; finish it with "
                         "genfast train gmm --resume")
    model = cls(cls.config_cls(**ckpt["config"]))
    model.load_state_dict(ckpt["state_dict"])
    n = args.n or 500
    x, labels = model.sample(n, generator=gen)
    out = args.out or "gmm_samples.png"
    csv = os.path.splitext(out)[0] + ".csv"
    with open(csv, "w") as f:
        d = x.shape[1]
        f.write(",".join([f"x{i + 1}" for i in range(d)] + ["component"]) + "\n")
        for row, k in zip(x.tolist(), labels.tolist(), strict=True):
            f.write(",".join(f"{v:.6g}" for v in row) + f",{k}\n")
    c = model.config
    fit_figure(out, model, x, f"{n} samples of the fitted GMM (K={c.n_components}, "
                              f"{c.covariance_type}), coloured by most likely component")
    counts = torch.bincount(labels, minlength=c.n_components).tolist()
    print(f"wrote {n} samples to {csv} and {out}; points per component {counts}, "
          f"mean log-likelihood under the model {model.score(x):.4f}")
    return 0
