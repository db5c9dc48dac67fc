"""The arithmetic of LDA's variational Bayes in torch, batched over documents.

Documents are bags of words in a padded layout, ``ids`` and ``counts`` of shape (B, L): row b
lists the L_b distinct words of document b (padding: id 0, count 0, which contributes nothing).
The per-document E-step of Hoffman, Blei & Bach (2010), which scikit-learn runs one document
at a time, runs here on the whole batch: with beta_b = exp(E[log beta])[:, ids_b] gathered
once as (B, L, K),

    phi_norm = beta_b exp(E[log theta_b]) + eps,   gamma_b = alpha + exp(E[log theta_b]) *
               (beta_b^T (counts_b / phi_norm))

are two batched matrix products per iteration. A document stops updating when its mean
change of gamma falls below ``mean_change_tol`` (scikit-learn's per-document rule), so the
batch gives the same gammas as the one-at-a-time loop; the batch stops when all have.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

EPS = float(np.finfo(np.float64).eps)  # scikit-learn's floor on phi_norm


@dataclass
class Docs:
    """A corpus in the padded bag-of-words layout; see the module docstring."""

    ids: Tensor  # (N, L) int64
    counts: Tensor  # (N, L) float
    n_features: int

    def __len__(self) -> int:
        return self.ids.shape[0]

    def __getitem__(self, sl: slice | Tensor) -> Docs:
        return Docs(self.ids[sl], self.counts[sl], self.n_features)

    def to(self, device: torch.device | str, dtype: torch.dtype) -> Docs:
        return Docs(self.ids.to(device), self.counts.to(device, dtype), self.n_features)

    @property
    def n_words(self) -> float:
        return float(self.counts.sum())

    def dense(self) -> Tensor:
        """(N, V) counts."""
        out = self.counts.new_zeros(len(self), self.n_features)
        return out.scatter_add_(1, self.ids, self.counts)


def as_docs(x: object, name: str = "X") -> Docs:
    """Docs from a (N, V) count matrix: dense tensor / array, or a scipy sparse matrix."""
    if isinstance(x, Docs):
        return x
    if hasattr(x, "tocsr"):  # scipy.sparse: the layout scikit-learn's LDA takes
        csr = x.tocsr()
        indptr, idx, val = csr.indptr, csr.indices, csr.data
        n, v = csr.shape
    else:
        a = x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)
        if a.ndim != 2:
            raise ValueError(f"{name} must be a (n_documents, n_words) count matrix, "
                             f"got shape {a.shape}")
        n, v = a.shape
        rows, idx = np.nonzero(a)
        val = a[rows, idx]
        indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n))])
    return padded(indptr, idx, val, n, v, name)


def padded(indptr: np.ndarray, idx: np.ndarray, val: np.ndarray, n: int, v: int,
           name: str = "X") -> Docs:
    """Docs from CSR arrays (row pointers, word ids, counts) of an (n, v) count matrix."""
    if n == 0 or v == 0:
        raise ValueError(f"{name} must have at least one document and one word, got ({n}, {v})")
    val = np.asarray(val, dtype=np.float64)
    if not np.all(np.isfinite(val)) or (val < 0).any():
        raise ValueError(f"{name} must hold finite counts >= 0")
    lengths = np.diff(indptr)
    width = max(1, int(lengths.max()))
    ids = np.zeros((n, width), np.int64)
    counts = np.zeros((n, width), np.float64)
    pos = np.arange(len(idx)) - np.repeat(indptr[:-1], lengths)
    row = np.repeat(np.arange(n), lengths)
    ids[row, pos], counts[row, pos] = idx, val
    return Docs(torch.from_numpy(ids), torch.from_numpy(counts), int(v))


def dirichlet_expectation(a: Tensor) -> Tensor:
    """E[log x] for x ~ Dir(a), along the last dim."""
    return torch.digamma(a) - torch.digamma(a.sum(-1, keepdim=True))


def e_step(docs: Docs, exp_elog_beta_t: Tensor, alpha: float, gamma: Tensor, max_iter: int,
           tol: float, sstats: bool) -> tuple[Tensor, Tensor | None]:
    """(gamma (B, K), sufficient statistics (V, K) or None) for one batch.

    exp_elog_beta_t: exp(E[log beta]) transposed, (V, K). gamma: the initial (B, K).
    The statistics are sum_d exp(E[log theta_d]) (counts_d / phi_norm_d), scattered by word,
    not yet multiplied by exp(E[log beta]) (the caller does that once per batch).
    """
    beta = exp_elog_beta_t[docs.ids]  # (B, L, K)
    exp_theta = dirichlet_expectation(gamma).exp_()
    # The working set shrinks to the unconverged documents whenever half have converged, so
    # the batch costs about what its documents' own iteration counts cost, not B times the
    # slowest. Both layouts of beta are kept: bmm is 4x faster with the reduced dim innermost.
    rows = torch.arange(len(gamma), device=gamma.device)
    w_beta, w_beta_t, w_cnts = beta, beta.transpose(1, 2).contiguous(), docs.counts
    w_gamma, w_theta = gamma, exp_theta
    gamma, exp_theta = gamma.clone(), exp_theta.clone()
    active = torch.ones(len(rows), dtype=torch.bool, device=gamma.device)
    alpha_t = torch.tensor(alpha, dtype=gamma.dtype, device=gamma.device)
    for _ in range(max_iter):
        norm = torch.bmm(w_theta[:, None, :], w_beta_t)[:, 0, :].add_(EPS)
        new = torch.bmm(torch.div(w_cnts, norm, out=norm)[:, None, :], w_beta)[:, 0, :]
        new = torch.addcmul(alpha_t, w_theta, new)
        change = (new - w_gamma).abs_().mean(1)
        keep = active[:, None]
        w_gamma = torch.where(keep, new, w_gamma)
        w_theta = torch.where(keep, dirichlet_expectation(new).exp_(), w_theta)
        active = active & (change >= tol)
        n_active = int(active.sum())
        if n_active == 0:
            break
        if n_active <= len(active) // 2:
            gamma[rows], exp_theta[rows] = w_gamma, w_theta
            sel = active.nonzero()[:, 0]
            rows, active = rows[sel], active[sel]
            w_beta, w_beta_t, w_cnts = w_beta[sel], w_beta_t[sel], w_cnts[sel]
            w_gamma, w_theta = w_gamma[sel], w_theta[sel]
    gamma[rows], exp_theta[rows] = w_gamma, w_theta
    cnts = docs.counts
    if not sstats:
        return gamma, None
    norm = (beta * exp_theta[:, None, :]).sum(2) + EPS
    contrib = (cnts / norm)[:, :, None] * exp_theta[:, None, :]
    out = exp_elog_beta_t.new_zeros(exp_elog_beta_t.shape)
    out.index_add_(0, docs.ids.flatten(), contrib.reshape(-1, contrib.shape[-1]))
    return gamma, out


def _dirichlet_loglik(prior: float, distr: Tensor, elog: Tensor, size: int) -> Tensor:
    # E[log p(x | prior)] - E[log q(x | distr)] for Dirichlet rows (scikit-learn's
    # _loglikelihood), summed.
    prior_t = torch.as_tensor(prior, dtype=distr.dtype, device=distr.device)
    score = ((prior - distr) * elog).sum()
    score = score + (torch.lgamma(distr) - torch.lgamma(prior_t)).sum()
    return score + (torch.lgamma(prior_t * size) - torch.lgamma(distr.sum(1))).sum()


def approx_bound(docs: Docs, gamma: Tensor, lam: Tensor, alpha: float, eta: float,
                 doc_ratio: float = 1.0, chunk: int = 1024, topic_term: bool = True) -> float:
    """The variational lower bound on log p(docs) that scikit-learn's ``score`` reports:
    the document terms (scaled by doc_ratio) plus the topic-word prior term. Accumulated in
    float64 whatever the model's dtype: the bound is a sum of ~10^5+ terms."""
    gamma, lam = gamma.double(), lam.double()
    elog_theta = dirichlet_expectation(gamma)
    elog_beta_t = dirichlet_expectation(lam).T.contiguous()
    score = lam.new_zeros(())
    for s in range(0, len(docs), chunk):
        d = docs[s:s + chunk]
        temp = elog_theta[s:s + chunk, None, :] + elog_beta_t[d.ids]  # (b, L, K)
        score += (d.counts.double() * torch.logsumexp(temp, dim=2)).sum()
    score += _dirichlet_loglik(alpha, gamma, elog_theta, gamma.shape[1])
    score = score * doc_ratio
    return float(score) + (topic_bound(lam, eta) if topic_term else 0.0)


def topic_bound(lam: Tensor, eta: float) -> float:
    """The bound's topic-word term E[log p(beta | eta)] - E[log q(beta | lambda)]."""
    lam = lam.double()
    return float(_dirichlet_loglik(eta, lam, dirichlet_expectation(lam), lam.shape[1]))


def umass_npmi(doc_presence: Tensor, top: Tensor) -> tuple[float, float]:
    """Mean UMass (Mimno et al. 2011) and NPMI (Bouma 2009) coherence of topics.

    doc_presence: (N, V) 0/1 float, word w in document n. top: (K, M) word ids per topic,
    most probable first. UMass: sum over pairs l < m of log((D(w_m, w_l) + 1) / D(w_l)),
    averaged over topics; NPMI averaged over pairs and topics, -1 for pairs never together.
    """
    n = doc_presence.shape[0]
    sub = doc_presence[:, top.flatten()].reshape(n, *top.shape).transpose(0, 1)  # (K, N, M)
    co = torch.bmm(sub.transpose(1, 2), sub)  # (K, M, M) co-document counts
    df = co.diagonal(dim1=1, dim2=2)  # (K, M)
    m = top.shape[1]
    lower = torch.tril(torch.ones(m, m, dtype=torch.bool, device=top.device), -1)  # m > l
    umass = torch.log((co + 1) / df[:, None, :].clamp_min(1))[:, lower].sum(1).mean()
    p_ij, p_i = co / n, df / n
    pmi = torch.log(p_ij / (p_i[:, :, None] * p_i[:, None, :]))
    npmi = torch.where(p_ij > 0, pmi / -torch.log(p_ij), torch.full_like(p_ij, -1.0))
    npmi = torch.where(p_ij >= 1, torch.ones_like(p_ij), npmi)  # both words in every doc
    return float(umass), float(npmi[:, lower].mean())
