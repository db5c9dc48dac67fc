"""`genfast train lda` and `genfast sample lda`.

Online VB is not SGD on images, so LDA has its own loop: ``--steps`` counts passes over the
corpus; a checkpoint after every ``--checkpoint-every`` passes holds lambda and the update
count, and ``--resume`` continues exactly (each batch's random start is a function of
(seed, pass, batch)). Held-out perplexity is logged every ``--sample-every`` passes.

Under torchrun every rank runs the fit and the perplexities (data-parallel, genfast/models/
lda.py: both all-reduce, so every rank must call them) and rank 0 alone writes files and
prints.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any

import torch

from ._distributed import is_main
from ._trainer import CHECKPOINT, CHECKPOINT_FORMAT, METRICS, load_checkpoint, save_checkpoint

# The generative simulation without a checkpoint: K topics over a small made-up vocabulary.
SIM_TOPICS, SIM_WORDS, SIM_ETA, SIM_ALPHA = 4, 40, 0.1, 0.5


def _corpus(path: str | None) -> tuple[torch.Tensor, torch.Tensor, list[str], str]:
    from genfast.data import reviews

    if path is None:
        train, test, vocab = reviews.reviews_split()
        return train, test, vocab, "movie reviews (gensim's Pang & Lee sentences + 10 IMDB)"
    if not os.path.isfile(path):
        raise SystemExit(f"genfast: --data: no such file: {path}")
    with open(path, encoding="utf-8", errors="replace") as f:
        texts = [ln.strip() for ln in f if ln.strip()]
    if len(texts) < 2:
        raise SystemExit(f"genfast: --data {path}: need at least 2 documents (one per line)")
    perm = torch.randperm(len(texts), generator=torch.Generator().manual_seed(reviews.SPLIT_SEED))
    n_test = max(1, round(0.2 * len(texts)))
    train, vocab = reviews.bag_of_words([texts[i] for i in perm[n_test:].tolist()])
    test, _ = reviews.bag_of_words([texts[i] for i in perm[:n_test].tolist()], vocab)
    return train, test, vocab, path


def topics_text(model, vocab: list[str], n: int = 10) -> list[str]:
    return [f"topic {k:2d}: " + " ".join(vocab[i] for i in row)
            for k, row in enumerate(model.top_words(n).tolist())]


def train(cls: type, args: Any) -> int:
    from tqdm.auto import tqdm

    overrides = dict(getattr(args, "config", None) or {})
    passes = args.steps if args.steps is not None else cls.train_defaults["steps"]
    every = args.checkpoint_every or cls.train_defaults["checkpoint_every"]
    eval_every = args.sample_every or 1
    out = args.out or os.path.join("runs", args.model)
    main = is_main()
    if main:
        os.makedirs(out, exist_ok=True)
    ckpt_path, log_path = os.path.join(out, CHECKPOINT), os.path.join(out, METRICS)
    train_x, test_x, vocab, what = _corpus(args.data)
    start, elapsed, ckpt = 0, 0.0, None
    if args.resume:
        ckpt = load_checkpoint(ckpt_path)
        if ckpt["model"] != args.model:
            raise SystemExit(f"genfast: {ckpt_path} holds a {ckpt['model']!r} model")
        overrides = {**ckpt["config"], **overrides}
        start, elapsed = int(ckpt["step"]), float(ckpt["elapsed_s"])
    elif main and os.path.exists(log_path):
        os.remove(log_path)
    try:
        model = cls(cls.config_cls(**overrides))
    except (TypeError, ValueError) as e:
        raise SystemExit(f"genfast: {e}") from None
    if ckpt is not None:
        model.init_components(len(vocab), device=args.device)
        model.load_state_dict(ckpt["state_dict"])
        model.n_batch_iter = int(ckpt["n_batch_iter"])
    else:  # allocated here so that fit runs on args.device
        model.init_components(len(vocab), args.seed, device=args.device)
    c = model.config
    bar = tqdm(total=passes, initial=start, desc=args.model,
               disable=True if not main else args.no_progress or None)
    t0 = time.perf_counter() - elapsed

    def save(done: int) -> None:
        if not main:
            return
        save_checkpoint(ckpt_path, {
            "format": CHECKPOINT_FORMAT, "model": args.model, "step": done,
            "elapsed_s": time.perf_counter() - t0, "config": dataclasses.asdict(c),
            "state_dict": model.state_dict(), "n_batch_iter": model.n_batch_iter,
            "vocabulary": vocab, "seed": args.seed})

    def after_pass(done: int) -> None:
        bar.update(1)
        if done % eval_every == 0 or done == passes:
            ppl = model.perplexity(test_x)
            if main:
                with open(log_path, "a") as f:
                    f.write(json.dumps({"step": done, "split": "test", "perplexity": ppl,
                                        "elapsed_s": time.perf_counter() - t0}) + "\n")
            bar.set_postfix(perplexity=f"{ppl:.5g}", refresh=False)
        if done % every == 0 or done == passes:
            save(done)

    try:
        model.fit(train_x, passes, seed=args.seed, start_pass=start, callback=after_pass)
    except ValueError as e:
        raise SystemExit(f"genfast: {e}") from None
    bar.close()
    if start >= passes:
        save(start)
    ppl, ppl_docs = model.perplexity(test_x), model.perplexity(test_x, topic_term=False)
    if not main:
        return 0
    coh = model.coherence(train_x)
    lines = topics_text(model, vocab)
    with open(os.path.join(out, "topics.txt"), "w") as f:
        f.write(f"# LDA, {c.n_topics} topics, {passes} passes on {what}\n")
        f.write(f"# held-out perplexity {ppl:.2f} (scikit-learn's formula), {ppl_docs:.2f} "
                f"(document terms only); coherence (top 10 words, training documents): "
                f"UMass {coh['umass']:.3f}, NPMI {coh['npmi']:.4f}\n")
        f.write("\n".join(lines) + "\n")
    with open(log_path, "a") as f:
        f.write(json.dumps({"step": passes, "split": "final", "perplexity": ppl,
                            "perplexity_documents": ppl_docs, **coh}) + "\n")
    print(f"{args.model}: {c.n_topics} topics, {passes} passes on {what} "
          f"({len(train_x)} documents, {len(vocab)} words)")
    print("\n".join(lines))
    print(f"held-out perplexity {ppl:.2f} (scikit-learn's formula; {ppl_docs:.2f} from the "
          f"document terms alone); coherence UMass {coh['umass']:.3f}, NPMI {coh['npmi']:.4f}")
    print(f"checkpoint, metrics.jsonl and topics.txt in {out}")
    return 0


def sample(cls: type, args: Any) -> int:
    from .lda import random_topics, simulate

    gen = torch.Generator().manual_seed(args.seed)
    n = args.n or 10
    out = args.out or "lda_documents.txt"
    if args.checkpoint is None:
        vocab = [f"w{i:02d}" for i in range(SIM_WORDS)]
        topics = random_topics(SIM_TOPICS, SIM_WORDS, SIM_ETA, gen)
        docs, theta = simulate(n, topics, SIM_ALPHA, 15.0, gen)
        head = [f"# LDA generative process: {SIM_TOPICS} topics beta_k ~ Dir({SIM_ETA}) over "
                f"{SIM_WORDS} words, theta_d ~ Dir({SIM_ALPHA}), N_d ~ Poisson(15)"]
        for k, row in enumerate(topics):
            top = row.topk(5)
            pairs = zip(top.indices.tolist(), top.values.tolist(), strict=True)
            head.append(f"# topic {k} top words: "
                        + " ".join(f"{vocab[i]}:{p:.2f}" for i, p in pairs))
    else:
        ckpt = load_checkpoint(str(args.checkpoint))
        if ckpt["model"] != args.model:
            raise SystemExit(f"genfast: {args.checkpoint} holds a {ckpt['model']!r} model")
        model = cls(cls.config_cls(**ckpt["config"]))
        model.init_components(len(ckpt["vocabulary"]))
        model.load_state_dict(ckpt["state_dict"])
        vocab = ckpt["vocabulary"]
        docs, theta = simulate(n, model.topic_word(), model.config.alpha, 15.0, gen)
        head = [f"# documents drawn from the fitted topics of {args.checkpoint} "
                f"(step {ckpt['step']}), theta_d ~ Dir({model.config.alpha:g})"]
    lines = [f"[topics {' '.join(f'{p:.2f}' for p in th.tolist())}] "
             + " ".join(vocab[i] for i in d.tolist()) for d, th in zip(docs, theta, strict=True)]
    with open(out, "w") as f:
        f.write("\n".join(head + lines) + "\n")
    print("\n".join(head + lines[:5]))
    print(f"wrote {n} documents to {out}")
    return 0
