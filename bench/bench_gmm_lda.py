"""GMM EM and LDA online VB: genfast against scikit-learn, side by side, same data and start.

    python bench/bench_gmm_lda.py [--threads 2] [--quick] [--out bench/results]

GMM: 200k points x 16 dims from 32 Gaussians, 32 full-covariance components, 50 EM
iterations (tol=0) from the same initial weights / means / precisions (k-means++ seeds), so
both run the same iterations and must end at the same log-likelihood.
LDA: 20k documents of a 5k-word vocabulary simulated from 20 topics (genfast.models.lda's
generative process), online VB with scikit-learn's defaults (batch 128, decay 0.7, offset
10, priors 1/K), 2 passes each; held-out perplexity (scikit-learn's formula) on 2k more
documents. Times are wall-clock of one fit each. Writes Markdown + JSON under --out
(gmm_*, lda_*). `pytest bench` runs the same code once on tiny shapes (the smoke test).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import torch


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def bench_gmm(n: int, d: int, k: int, iters: int, seed: int = 0) -> dict:
    from sklearn.mixture import GaussianMixture as SkGMM

    from genfast.models import GaussianMixture, GMMConfig
    from genfast.models._gmm_em import kmeans_plusplus

    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 4, (k, d))
    mix = rng.normal(0, 1, (k, d, d)) / np.sqrt(d)
    lab = rng.integers(0, k, n)
    x = centres[lab] + np.einsum("nij,nj->ni", mix[lab] + np.eye(d), rng.normal(0, 1, (n, d)))
    xt = torch.from_numpy(x)
    means0 = kmeans_plusplus(xt, k, torch.Generator().manual_seed(seed)).numpy()
    prec0 = np.linalg.inv(np.cov(x.T))[None].repeat(k, 0)
    init = dict(weights_init=np.full(k, 1.0 / k), means_init=means0, precisions_init=prec0)
    sk = SkGMM(k, covariance_type="full", tol=0.0, max_iter=iters, **init)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning: a fixed iteration count
        _, t_sk = _timed(lambda: sk.fit(x))
    ours = GaussianMixture(GMMConfig(k, "full", tol=0.0, max_iter=iters))
    _, t_gf = _timed(lambda: ours.fit(xt, **init))
    ll_sk, ll_gf = float(sk.score(x)), ours.score(xt)
    return {"n": n, "d": d, "k": k, "iterations": iters, "sklearn_s": t_sk, "genfast_s": t_gf,
            "speedup": t_sk / t_gf, "sklearn_loglik": ll_sk, "genfast_loglik": ll_gf,
            "loglik_diff": ll_gf - ll_sk}


def bench_lda(n_docs: int, n_test: int, v: int, k: int, length: float, passes: int,
              seed: int = 0) -> dict:
    from scipy import sparse
    from sklearn.decomposition import LatentDirichletAllocation as SkLDA

    from genfast.models import LatentDirichletAllocation, LDAConfig
    from genfast.models.lda import docs_from_lists, random_topics, simulate

    gen = torch.Generator().manual_seed(seed)
    topics = random_topics(k, v, 0.05, gen)
    docs, _ = simulate(n_docs + n_test, topics, 1.0 / k, length, gen)
    corpus = docs_from_lists(docs, v)
    train, test = corpus[:n_docs], corpus[n_docs:]
    def csr(docs):  # straight from the padded layout: a dense 20k x 5k copy is 800 MB
        keep = docs.counts > 0
        rows = torch.arange(len(docs))[:, None].expand_as(docs.ids)[keep]
        return sparse.csr_matrix((docs.counts[keep].numpy(), (rows.numpy(),
                                                              docs.ids[keep].numpy())),
                                 shape=(len(docs), docs.n_features))

    xtr, xte = csr(train), csr(test)
    sk = SkLDA(k, learning_method="online", max_iter=passes, random_state=seed)
    _, t_sk = _timed(lambda: sk.fit(xtr))
    ours = LatentDirichletAllocation(LDAConfig(k))
    _, t_gf = _timed(lambda: ours.fit(train, passes, seed=seed))
    return {"docs": n_docs, "held_out_docs": n_test, "vocabulary": v, "topics": k,
            "mean_length": length, "tokens": float(train.n_words), "passes": passes,
            "dtype": ours.config.dtype, "sklearn_s_per_pass": t_sk / passes,
            "genfast_s_per_pass": t_gf / passes, "speedup": t_sk / t_gf,
            "sklearn_perplexity": float(sk.perplexity(xte)),
            "genfast_perplexity": ours.perplexity(test)}


def _header(threads: int) -> str:
    load = os.getloadavg()[0]
    return (f"**{_cpu_name()}** | {threads} threads (torch.set_num_threads and threadpoolctl "
            f"for numpy/scipy BLAS) | torch {torch.__version__} | numpy {np.__version__} | "
            f"scikit-learn {__import__('sklearn').__version__} | load average at start "
            f"{load:.2f} | {time.strftime('%Y-%m-%dT%H:%M:%S%z')}")


def run(threads: int, quick: bool) -> tuple[dict, dict]:
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(threads)
    with threadpool_limits(threads):
        if quick:
            gmm = bench_gmm(2000, 4, 3, 5)
            lda = bench_lda(300, 50, 200, 5, 30.0, 1)
        else:
            gmm = bench_gmm(200_000, 16, 32, 50)
            lda = bench_lda(20_000, 2_000, 5_000, 20, 100.0, 2)
    return gmm, lda


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="tiny shapes (a smoke run)")
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = p.parse_args(argv)
    start_load = os.getloadavg()[0]
    head = _header(args.threads)
    gmm, lda = run(args.threads, args.quick)
    end_load = os.getloadavg()[0]
    head += f" | load average at end {end_load:.2f}"
    # The end figure counts this run's own threads; beyond them, someone else was running.
    if start_load > 0.5 or end_load > args.threads + 0.5:
        head += ("\n\n**Warning: the machine was busy**: other processes ran beside this "
                 "benchmark. A multi-threaded torch op waits at each parallel region for a "
                 "core another process holds, so genfast's many small LDA steps stall most.")
    tag = f"cpu-amd-epyc-{args.threads}t" + ("-quick" if args.quick else "")
    os.makedirs(args.out, exist_ok=True)
    g_md = (f"## GMM EM: genfast vs scikit-learn GaussianMixture\n\n{head}\n\n"
            f"{gmm['n']:,} points x {gmm['d']} dims, {gmm['k']} full-covariance components, "
            f"{gmm['iterations']} EM iterations (tol=0) from the same initial parameters, "
            "float64 both.\n\n| | scikit-learn | genfast | ratio |\n|---|---:|---:|---:|\n"
            f"| fit time | {gmm['sklearn_s']:.2f} s | {gmm['genfast_s']:.2f} s | "
            f"**{gmm['speedup']:.2f}x** |\n| final mean log-likelihood | "
            f"{gmm['sklearn_loglik']:.6f} | {gmm['genfast_loglik']:.6f} | "
            f"diff {gmm['loglik_diff']:.2e} nats |\n")
    l_md = (f"## LDA online VB: genfast vs scikit-learn LatentDirichletAllocation\n\n{head}\n\n"
            f"{lda['docs']:,} simulated documents ({lda['tokens']:,.0f} tokens), "
            f"{lda['vocabulary']:,}-word vocabulary, {lda['topics']} topics, online VB with "
            f"scikit-learn's defaults, {lda['passes']} passes; genfast {lda['dtype']}, "
            "scikit-learn float64; held-out perplexity (scikit-learn's formula) on "
            f"{lda['held_out_docs']:,} more documents.\n\n"
            "| | scikit-learn | genfast | ratio |\n|---|---:|---:|---:|\n"
            f"| time per pass | {lda['sklearn_s_per_pass']:.2f} s | "
            f"{lda['genfast_s_per_pass']:.2f} s | **{lda['speedup']:.2f}x** |\n"
            f"| held-out perplexity | {lda['sklearn_perplexity']:.2f} | "
            f"{lda['genfast_perplexity']:.2f} | |\n")
    for name, md, data in (("gmm", g_md, gmm), ("lda", l_md, lda)):
        with open(os.path.join(args.out, f"{name}_{tag}.md"), "w") as f:
            f.write(md)
        with open(os.path.join(args.out, f"{name}_{tag}.json"), "w") as f:
            json.dump({"machine": head, **data}, f, indent=1)
        print(md)
    return 0


def test_smoke():
    """Both comparisons run end to end on tiny shapes and agree where they must."""
    gmm, lda = run(1, quick=True)
    assert abs(gmm["loglik_diff"]) < 1e-6
    assert np.isfinite(lda["genfast_perplexity"]) and lda["genfast_s_per_pass"] > 0


if __name__ == "__main__":
    raise SystemExit(main())
