"""Latent Dirichlet Allocation: the generative process (seeds 000/001) and online variational
Bayes (Hoffman, Blei & Bach 2010) in torch, batched over documents.

Generative process, K topics over V words:
    beta_k ~ Dir(eta)            topic-word distributions
    theta_d ~ Dir(alpha)         topic proportions of document d, N_d ~ Poisson(mean length)
    z ~ Cat(theta_d), w ~ Cat(beta_z) for each of its N_d words

Fitting follows scikit-learn's ``LatentDirichletAllocation`` (learning_method='online' or
'batch', the same defaults, priors 1/K, learning-rate rho_t = (offset + t)^-decay, the same
per-document convergence rule and the same variational bound for ``perplexity``), with the
per-document loop replaced by batched tensor products (genfast/models/_lda_vb.py).

Under torchrun (a default process group of world > 1) fitting and the bound run data-parallel:
every rank holds the corpus, takes its contiguous share of each batch (the whole corpus in
batch learning), runs the E-step on it from the same random starts, and the topic-word
statistics (and, for ``score`` / ``perplexity``, the document terms of the bound) are
all-reduced, so every rank makes the same update: one process's fit, to rounding.

`genfast train lda` fits the embedded movie-review sentences (genfast.data.reviews) and writes
the top words of each topic, held-out perplexity and coherence; `genfast sample lda` writes
documents drawn from the generative process or from a fitted checkpoint (_lda_cli.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

import genfast

from . import _lda_vb as vb
from ._distributed import all_reduce_sum, context, shard_range
from ._lda_vb import Docs, as_docs


@dataclass
class LDAConfig:
    n_topics: int = 10
    doc_topic_prior: float | None = None  # alpha; None means 1 / n_topics
    topic_word_prior: float | None = None  # eta; None means 1 / n_topics
    learning_method: str = "online"  # or "batch": every pass uses the whole corpus
    learning_decay: float = 0.7  # kappa in (0.5, 1]: rho_t = (offset + t)^-kappa
    learning_offset: float = 10.0  # tau_0 > 0
    batch_size: int = 128
    max_doc_update_iter: int = 100
    mean_change_tol: float = 1e-3
    n_features: int | None = None  # vocabulary size, set by the first fit
    # float32 is ~1.3x faster on the CPU; held-out perplexity matches float64 to ~1e-4
    # (the bound itself is always summed in float64).
    dtype: str = "float32"

    def __post_init__(self) -> None:
        for name in ("n_topics", "batch_size", "max_doc_update_iter"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        for name in ("doc_topic_prior", "topic_word_prior"):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be None or a finite number > 0, got {v!r}")
        if self.learning_method not in ("online", "batch"):
            raise ValueError(f"learning_method must be 'online' or 'batch', "
                             f"got {self.learning_method!r}")
        if not 0.5 < self.learning_decay <= 1.0:
            raise ValueError(f"learning_decay must be in (0.5, 1], got {self.learning_decay!r}")
        if not self.learning_offset > 0:
            raise ValueError(f"learning_offset must be > 0, got {self.learning_offset!r}")
        if not self.mean_change_tol >= 0:
            raise ValueError(f"mean_change_tol must be >= 0, got {self.mean_change_tol!r}")
        if self.n_features is not None and (not isinstance(self.n_features, int)
                                            or self.n_features < 1):
            raise ValueError(f"n_features must be None or an int >= 1, got {self.n_features!r}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {self.dtype!r}")

    @property
    def alpha(self) -> float:
        return 1.0 / self.n_topics if self.doc_topic_prior is None else self.doc_topic_prior

    @property
    def eta(self) -> float:
        return 1.0 / self.n_topics if self.topic_word_prior is None else self.topic_word_prior


def _gamma(shape: tuple[int, ...], seed: int | tuple[int, ...], device: torch.device,
           dtype: torch.dtype) -> Tensor:
    # Gamma(100, 0.01) starting values as scikit-learn; numpy's generator because torch's gamma
    # sampler takes no torch.Generator, and a seeded draw keeps a resumed fit exact.
    a = np.random.default_rng(seed if isinstance(seed, int) else list(seed)).gamma(
        100.0, 0.01, shape)
    return torch.from_numpy(a).to(device, dtype)


class LatentDirichletAllocation(nn.Module):
    """LDA with a variational topic-word posterior Dir(lambda): buffer ``components`` (K, V)
    is lambda (scikit-learn's ``components_``)."""

    config_cls: ClassVar[type] = LDAConfig
    description: ClassVar[str] = "latent Dirichlet allocation by online variational Bayes"
    train_defaults: ClassVar[dict[str, Any]] = {"steps": 20, "checkpoint_every": 1}

    def __init__(self, config: LDAConfig | None = None) -> None:
        super().__init__()
        self.config = config or LDAConfig()
        self.n_batch_iter = 1
        if self.config.n_features is not None:
            self._allocate(self.config.n_features, torch.device("cpu"))

    @property
    def dtype(self) -> torch.dtype:
        return getattr(torch, self.config.dtype)

    def _allocate(self, v: int, device: torch.device) -> None:
        self.register_buffer("components", torch.zeros(self.config.n_topics, v,
                                                       dtype=self.dtype, device=device))

    def _docs(self, x: object, name: str = "X") -> Docs:
        docs = as_docs(x, name)
        v = self.config.n_features
        if v is not None and docs.n_features != v:
            raise ValueError(f"{name} has {docs.n_features} words in its vocabulary, the model "
                             f"has {v}")
        dev = self.components.device if hasattr(self, "components") else torch.device("cpu")
        return docs.to(dev, self.dtype)

    def _exp_elog_beta_t(self) -> Tensor:
        return vb.dirichlet_expectation(self.components).exp_().T.contiguous()

    # ---------------------------------------------------------------- fitting
    def init_components(self, n_features: int, seed: int = 0,
                        device: str | torch.device = "cpu") -> None:
        c = self.config
        if c.n_features is None:
            c.n_features = n_features
        self._allocate(n_features, torch.device(device))
        self.components.copy_(_gamma((c.n_topics, n_features), seed, self.components.device,
                                     self.dtype))
        self.n_batch_iter = 1

    def fit(self, x: object, passes: int = 10, *, seed: int = 0, start_pass: int = 0,
            callback: Callable[[int], None] | None = None) -> LatentDirichletAllocation:
        """`passes` passes over x (documents x words counts, dense or scipy sparse, or Docs);
        batches in corpus order, as scikit-learn. Pass p's random starts depend only on
        (seed, p, batch), so a fit resumed with ``start_pass`` (after loading a checkpoint)
        continues exactly. callback(pass) runs after each pass."""
        if isinstance(passes, bool) or not isinstance(passes, int) or passes < 0:
            raise ValueError(f"passes must be an int >= 0, got {passes!r}")
        c = self.config
        docs = as_docs(x)
        if c.n_topics > len(docs):
            raise ValueError(f"n_topics={c.n_topics} must be <= the number of documents "
                             f"n_documents={len(docs)}")
        if start_pass == 0:
            self.init_components(docs.n_features, seed, docs.ids.device
                                 if not hasattr(self, "components") else self.components.device)
        docs = self._docs(docs)
        for p in range(start_pass, passes):
            if c.learning_method == "batch":
                self._em_step(docs, len(docs), batch_update=True, seed=(seed, p, 0))
            else:
                for b, s in enumerate(range(0, len(docs), c.batch_size)):
                    self._em_step(docs[s:s + c.batch_size], len(docs), batch_update=False,
                                  seed=(seed, p, b))
            if callback is not None:
                callback(p + 1)
        return self

    def partial_fit(self, x: object, total_samples: int = 1_000_000, seed: int = 0
                    ) -> LatentDirichletAllocation:
        """One online update from a mini-batch (scikit-learn's partial_fit)."""
        docs = as_docs(x)
        if not hasattr(self, "components"):
            self.init_components(docs.n_features, seed)
        docs = self._docs(docs)
        for b, s in enumerate(range(0, len(docs), self.config.batch_size)):
            self._em_step(docs[s:s + self.config.batch_size], total_samples, batch_update=False,
                          seed=(seed, self.n_batch_iter, b))
        return self

    @torch.no_grad()
    def _em_step(self, docs: Docs, total: int, batch_update: bool,
                 seed: tuple[int, int, int]) -> None:
        c = self.config
        k = c.n_topics
        eb = self._exp_elog_beta_t()
        gamma0 = _gamma((len(docs), k), seed, eb.device, self.dtype)
        ctx = context()
        rank, world = ctx.rank, ctx.world
        local = docs
        if world > 1:  # every rank drew the whole batch's starts: take its share of both
            part = shard_range(len(docs), rank, world)
            local, gamma0 = docs[part], gamma0[part]
        _, st = vb.e_step(local, eb, c.alpha, gamma0, c.max_doc_update_iter, c.mean_change_tol,
                          sstats=True)
        if world > 1:
            (st,) = all_reduce_sum(st)
        sstats = st.T * eb.T
        if batch_update:
            self.components.copy_(c.eta + sstats)
        else:
            rho = (c.learning_offset + self.n_batch_iter) ** -c.learning_decay
            self.components.mul_(1 - rho).add_(rho * (c.eta + total / len(docs) * sstats))
        self.n_batch_iter += 1

    # ---------------------------------------------------------------- inference
    def _check_fitted(self) -> None:
        if not hasattr(self, "components"):
            raise RuntimeError("LatentDirichletAllocation: not fitted yet (call fit first)")

    @torch.no_grad()
    def unnormalized_transform(self, x: object) -> Tensor:
        """Variational Dirichlet parameters gamma (N, K) of each document's topics."""
        self._check_fitted()
        docs = self._docs(x)
        eb, c = self._exp_elog_beta_t(), self.config
        out = []
        for s in range(0, len(docs), 4096):
            d = docs[s:s + 4096]
            g0 = torch.ones(len(d), c.n_topics, dtype=self.dtype, device=eb.device)
            out.append(vb.e_step(d, eb, c.alpha, g0, c.max_doc_update_iter,
                                 c.mean_change_tol, sstats=False)[0])
        # No documents: a data-parallel rank whose share of a small set is empty.
        return torch.cat(out) if out else eb.new_zeros(0, c.n_topics)

    def transform(self, x: object) -> Tensor:
        """Topic proportions (N, K) of each document (rows sum to 1)."""
        g = self.unnormalized_transform(x)
        return g / g.sum(1, keepdim=True)

    def _bound(self, docs: Docs, topic_term: bool) -> float:
        c = self.config
        ctx = context()
        rank, world = ctx.rank, ctx.world
        if world == 1:
            gamma = self.unnormalized_transform(docs)
            return vb.approx_bound(docs, gamma, self.components, c.alpha, c.eta,
                                   topic_term=topic_term)
        local = docs[shard_range(len(docs), rank, world)]
        part = vb.approx_bound(local, self.unnormalized_transform(local), self.components,
                               c.alpha, c.eta, topic_term=False)
        (total,) = all_reduce_sum(torch.tensor(part, dtype=torch.float64,
                                               device=self.components.device))
        return float(total) + (vb.topic_bound(self.components, c.eta) if topic_term else 0.0)

    def score(self, x: object) -> float:
        """Approximate log-likelihood (variational bound) of x, as scikit-learn's score."""
        return self._bound(self._docs(x), topic_term=True)

    def perplexity(self, x: object, topic_term: bool = True) -> float:
        """exp(-bound / number of words): scikit-learn's perplexity (natural base).

        scikit-learn's bound includes E[log p(beta | eta) - log q(beta | lambda)], a term of
        the whole model (K x V entries) that does not shrink with the held-out set: on a small
        one it dominates. ``topic_term=False`` leaves it out: the per-word bound of the
        documents alone, comparable across corpora and vocabulary sizes."""
        docs = self._docs(x)
        return math.exp(-self._bound(docs, topic_term) / docs.n_words)

    def topic_word(self) -> Tensor:
        """(K, V) topic-word distributions: lambda normalised per topic."""
        self._check_fitted()
        return self.components / self.components.sum(1, keepdim=True)

    def top_words(self, n: int = 10) -> Tensor:
        """(K, n) word ids of each topic, most probable first."""
        return self.components.topk(min(n, self.components.shape[1]), dim=1).indices

    def coherence(self, x: object, n: int = 10) -> dict[str, float]:
        """UMass and NPMI coherence of the top-n words of each topic, on documents x."""
        docs = self._docs(x)
        presence = (docs.dense() > 0).to(self.dtype)
        umass, npmi = vb.umass_npmi(presence, self.top_words(n))
        return {"umass": umass, "npmi": npmi}

    @torch.no_grad()
    def sample_documents(self, n: int, mean_length: float = 50.0,
                         generator: torch.Generator | None = None) -> list[Tensor]:
        """n documents (word-id tensors) drawn from the fitted topics, theta_d ~ Dir(alpha)."""
        return simulate(n, self.topic_word(), self.config.alpha, mean_length, generator)[0]

    @classmethod
    def cli_train(cls, args: Any) -> int:
        from ._lda_cli import train

        return train(cls, args)

    @classmethod
    def cli_sample(cls, args: Any) -> int:
        from ._lda_cli import sample

        return sample(cls, args)


def simulate(n_docs: int, topics: Tensor, alpha: float, mean_length: float,
             generator: torch.Generator | None = None) -> tuple[list[Tensor], Tensor]:
    """Documents from LDA's generative process with given topics (K, V) (rows sum to 1).

    Returns (documents as word-id tensors, theta (n_docs, K)). The topic of each word is drawn
    with genfast.sample_categorical (Gumbel-max over K). Words are drawn by inverse CDF per
    topic instead: Gumbel-max over V would materialise a (words, V) logit row per token.
    """
    if isinstance(n_docs, bool) or not isinstance(n_docs, int) or n_docs < 1:
        raise ValueError(f"n_docs must be an int >= 1, got {n_docs!r}")
    if not (alpha > 0 and math.isfinite(alpha)):
        raise ValueError(f"alpha must be a finite number > 0, got {alpha!r}")
    if not mean_length > 0:
        raise ValueError(f"mean_length must be > 0, got {mean_length!r}")
    if topics.dim() != 2 or bool((topics < 0).any()):
        raise ValueError(f"topics must be a (K, V) matrix of probabilities, got shape "
                         f"{tuple(topics.shape)}")
    k, v = topics.shape
    topics = topics.double()
    theta = _dirichlet(torch.full((n_docs, k), float(alpha), dtype=torch.float64), generator)
    lengths = torch.poisson(torch.full((n_docs,), float(mean_length), dtype=torch.float64),
                            generator=generator).long().clamp_min_(1)
    doc_of = torch.repeat_interleave(torch.arange(n_docs), lengths)
    z = genfast.sample_categorical(theta.log()[doc_of].float(), generator=generator)
    u = torch.rand(len(z), generator=generator, dtype=torch.float64)
    cdf = topics.cumsum(1)
    cdf = cdf / cdf[:, -1:]
    words = torch.empty_like(z)
    for t in range(k):
        sel = (z == t).nonzero()[:, 0]
        words[sel] = torch.searchsorted(cdf[t], u[sel]).clamp_(max=v - 1)
    return list(words.split(lengths.tolist())), theta


def _dirichlet(conc: Tensor, generator: torch.Generator | None) -> Tensor:
    # Gamma draws with a seeded numpy generator (torch's gamma takes no generator), normalised.
    seed = int(torch.randint(2**62, (1,), generator=generator))
    g = np.random.default_rng(seed).gamma(conc.numpy())
    g = torch.from_numpy(g).clamp_min_(1e-300)
    return g / g.sum(-1, keepdim=True)


def random_topics(n_topics: int, n_words: int, eta: float,
                  generator: torch.Generator | None = None) -> Tensor:
    """(K, V) topics beta_k ~ Dir(eta)."""
    if not (eta > 0 and math.isfinite(eta)):
        raise ValueError(f"eta must be a finite number > 0, got {eta!r}")
    return _dirichlet(torch.full((n_topics, n_words), float(eta), dtype=torch.float64), generator)


def docs_from_lists(docs: list[Tensor], n_features: int) -> Docs:
    """Bag-of-words Docs from word-id lists (as ``simulate`` returns)."""
    lengths = torch.tensor([len(d) for d in docs])
    keys = torch.repeat_interleave(torch.arange(len(docs)), lengths) * n_features + torch.cat(docs)
    keys, counts = torch.unique(keys, return_counts=True)  # sorted: by document, then word
    rows = (keys // n_features).numpy()
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=len(docs)))])
    return vb.padded(indptr, (keys % n_features).numpy(), counts.double().numpy(), len(docs),
                     n_features)


def hellinger_matched(true: Tensor, est: Tensor) -> Tensor:
    """Hellinger distances between each true topic and its estimated match, (K,): topics
    matched one-to-one by the assignment that minimises the total distance (scipy)."""
    from scipy.optimize import linear_sum_assignment

    a, b = true.double().sqrt(), est.double().sqrt()
    dist = torch.cdist(a, b) / math.sqrt(2.0)
    rows, cols = linear_sum_assignment(dist.numpy())
    return dist[rows, cols]
