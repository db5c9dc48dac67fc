"""The arithmetic of Gaussian-mixture EM in torch: one pass over the data per iteration.

Every covariance type turns both EM steps into GEMMs over row chunks. For ``full``, the
Mahalanobis distance is a quadratic form, so with the features phi(x) = (x_i x_j, i <= j)

    (x - mu)^T P (x - mu) = phi(x) . c(P) - 2 x . (P mu) + mu^T P mu,

and the M-step's scatter sum_n r_nk x_n x_n^T is R^T phi. Each chunk builds phi once and
uses it for the E-step of the current parameters and the M-step statistics of the next: two
(rows x D(D+1)/2 x K) GEMMs, where scikit-learn runs 2K thin (rows x D x D) products.
Expanding the quadratic form cancels digits when the data sit far from the origin, so all
arithmetic happens about a shift (the mixture mean) and the default dtype is float64.

Data parallel (torchrun): with a default process group of world > 1, each rank passes its
contiguous shard of the points (``shard``) and ``distributed=True``; the statistics of the pass
(log-likelihood sum, N_k, sum r x, sum r x x^T, point count) are summed across ranks in one
all_reduce, so every rank runs the same M-step on the same numbers. k-means' Lloyd steps sum
their counts and centre sums the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ._distributed import all_reduce_sum

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")
_LOG_2PI = math.log(2.0 * math.pi)
# Rows per chunk: phi of a chunk stays near 8 MB (float64), inside a large L2/L3 slice.
_PHI_BYTES = 8 << 20


@dataclass
class Params:
    """Mixture parameters, in scikit-learn's shapes per covariance type.

    precisions: full (K, D, D), tied (D, D), diag (K, D), spherical (K,).
    covariances: the same shapes; may be None when a fit starts from user precisions.
    """

    weights: Tensor
    means: Tensor
    precisions: Tensor
    covariances: Tensor | None
    log_det: Tensor  # (K,) or scalar: 0.5 * log det of each precision


@dataclass
class Stats:
    """What one data pass yields: the mean log-likelihood of the parameters it used, and the
    sufficient statistics of the next M-step (about `shift`)."""

    loglik: float
    nk: Tensor  # (K,) responsibilities summed, + 10 eps as scikit-learn
    sx: Tensor  # (K, D) sum_n r_nk (x_n - shift)
    sxx: Tensor  # full: (K, T) upper triangles; tied: (D, D); diag/spherical: (K, D)
    shift: Tensor


def _triu(d: int, device: torch.device) -> tuple[Tensor, Tensor]:
    return tuple(torch.triu_indices(d, d, device=device))  # type: ignore[return-value]


def _chunks(n: int, width: int, itemsize: int) -> int:
    return max(256, min(n, _PHI_BYTES // max(1, width * itemsize)))


def precisions_from_covariances(cov: Tensor, kind: str, d: int) -> tuple[Tensor, Tensor]:
    """(precisions, 0.5 log det precisions); ValueError if a covariance is not positive definite."""
    if kind in ("full", "tied"):
        chol, info = torch.linalg.cholesky_ex(cov)
        if bool((info != 0).any()):
            raise ValueError("covariances: a component's covariance is not positive definite "
                             "(too few points in it, or duplicated points); use fewer "
                             "n_components or a larger reg_covar")
        return torch.cholesky_inverse(chol), -chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    if bool((cov <= 0).any()):
        raise ValueError("covariances: a variance is <= 0; use a larger reg_covar")
    prec = 1.0 / cov
    return prec, 0.5 * prec.log().sum(-1) if kind == "diag" else 0.5 * d * prec.log()


def log_det_half(prec: Tensor, kind: str, d: int) -> Tensor:
    """0.5 log det of precision matrices given in `kind`'s shape."""
    if kind in ("full", "tied"):
        chol, info = torch.linalg.cholesky_ex(prec)
        if bool((info != 0).any()):
            raise ValueError("precisions_init: a precision matrix is not symmetric positive "
                             "definite")
        return chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    if bool((prec <= 0).any()):
        raise ValueError("precisions_init: precisions must be > 0")
    return 0.5 * prec.log().sum(-1) if kind == "diag" else 0.5 * d * prec.log()


def _weighted_log_prob(xc: Tensor, p: Params, mc: Tensor, kind: str,
                       phi: Tensor | None) -> Tensor:
    """log pi_k + log N(x | mu_k, P_k^-1) for centred rows xc (n, D), centred means mc (K, D)."""
    d = xc.shape[1]
    if kind == "full":
        iu, ju = _triu(d, xc.device)
        coef = p.precisions[:, iu, ju] * torch.where(iu == ju, 1.0, 2.0).to(xc.dtype)
        pm = torch.einsum("kij,kj->ki", p.precisions, mc)
        maha = phi @ coef.T - 2.0 * (xc @ pm.T) + (pm * mc).sum(1)
        log_det = p.log_det
    elif kind == "tied":
        pm = mc @ p.precisions
        maha = ((xc @ p.precisions) * xc).sum(1, keepdim=True) - 2.0 * (xc @ pm.T) \
            + (pm * mc).sum(1)
        log_det = p.log_det
    elif kind == "diag":
        maha = (xc * xc) @ p.precisions.T - 2.0 * (xc @ (mc * p.precisions).T) \
            + (mc * mc * p.precisions).sum(1)
        log_det = p.log_det
    else:
        maha = p.precisions * ((xc * xc).sum(1, keepdim=True) - 2.0 * (xc @ mc.T)
                               + (mc * mc).sum(1))
        log_det = p.log_det
    return -0.5 * (d * _LOG_2PI + maha) + log_det + p.weights.log()


def weighted_log_prob(x: Tensor, p: Params, kind: str) -> Tensor:
    """(n, K) log pi_k + log N(x_n | component k), in row chunks."""
    d = x.shape[1]
    shift = p.weights @ p.means
    mc = p.means - shift
    rows = _chunks(len(x), d * (d + 1) // 2 if kind == "full" else d, x.element_size())
    out = []
    for xb in x.split(rows):
        xc = xb - shift
        out.append(_weighted_log_prob(xc, p, mc, kind, _features(xc, kind)))
    return torch.cat(out) if out else x.new_zeros(0, len(p.weights))


def _features(xc: Tensor, kind: str) -> Tensor | None:
    if kind != "full":
        return None
    # Row i of the triangle is x_i * x[i:], written in place: a gather of the (i, j) index
    # pairs costs more than the GEMM that consumes it.
    n, d = xc.shape
    phi = xc.new_empty(n, d * (d + 1) // 2)
    at = 0
    for i in range(d):
        torch.mul(xc[:, i:i + 1], xc[:, i:], out=phi[:, at:at + d - i])
        at += d - i
    return phi


def e_and_stats(x: Tensor, p: Params, kind: str, *, stats: bool = True,
                distributed: bool = False) -> Stats:
    """One data pass: the mean log-likelihood under `p` and the next M-step's statistics.
    ``distributed``: x is this rank's shard; the result is that of all ranks' points."""
    n, d = x.shape
    k = p.weights.shape[0]
    shift = p.weights @ p.means
    mc = p.means - shift
    width = d * (d + 1) // 2 if kind == "full" else d
    rows = _chunks(n, width, x.element_size())
    total = x.new_zeros(())
    nk = x.new_zeros(k)
    sx = x.new_zeros(k, d)
    sxx = x.new_zeros((d, d) if kind == "tied" else (k, width))
    if kind == "full" and stats:
        return _e_and_stats_full(x, p, shift, mc, distributed)
    for xb in x.split(rows):
        xc = xb - shift
        phi = _features(xc, kind)
        wlp = _weighted_log_prob(xc, p, mc, kind, phi)
        norm = torch.logsumexp(wlp, dim=1, keepdim=True)
        total += norm.sum()
        if not stats:
            continue
        r = (wlp - norm).exp_()
        nk += r.sum(0)
        sx += r.T @ xc
        if kind == "full":
            sxx += r.T @ phi
        elif kind == "tied":
            sxx += xc.T @ xc
        else:
            sxx += r.T @ (xc * xc)
    return _finish(total, n, nk, sx, sxx, shift, distributed)


def _finish(total: Tensor, n: int, nk: Tensor, sx: Tensor, sxx: Tensor, shift: Tensor,
            distributed: bool) -> Stats:
    if distributed:
        count = total.new_tensor(float(n))
        total, count, nk, sx, sxx = all_reduce_sum(total, count, nk, sx, sxx)
        n = int(round(float(count)))
    # After the sum: scikit-learn's 10 eps is added once, whatever the number of ranks.
    nk += 10 * torch.finfo(nk.dtype).eps
    return Stats(float(total) / n, nk, sx, sxx, shift)


def _e_and_stats_full(x: Tensor, p: Params, shift: Tensor, mc: Tensor,
                      distributed: bool) -> Stats:
    # Full covariances, the hot path, in the transposed layout: phi^T (T, rows) is built from
    # contiguous feature rows, and both GEMMs put the long row dimension last, which runs
    # ~1.5x faster than (rows, T) @ (T, K) with K small. Chunks stay near 4 MB (in cache).
    n, d = x.shape
    k = p.weights.shape[0]
    iu, ju = _triu(d, x.device)
    coef = p.precisions[:, iu, ju] * torch.where(iu == ju, 1.0, 2.0).to(x.dtype)  # (K, T)
    pm = torch.einsum("kij,kj->ki", p.precisions, mc)
    const = (pm * mc).sum(1) + d * _LOG_2PI - 2.0 * (p.log_det + p.weights.log())
    t = d * (d + 1) // 2
    rows = max(256, min(n, (4 << 20) // (t * x.element_size())))
    total = x.new_zeros(())
    nk, sx, sxx = x.new_zeros(k), x.new_zeros(k, d), x.new_zeros(k, t)
    for xb in x.split(rows):
        xc_t = (xb - shift).T.contiguous()  # (D, c)
        # Whole contiguous rows gathered, then one multiply: 3 ops per chunk, not D (each op
        # is a parallel region, and on a shared machine every region waits for a core).
        ph = xc_t.index_select(0, iu).mul_(xc_t.index_select(0, ju))
        # -2 log(pi_k N(x | k)) = maha + const_k, maha = coef.phi - 2 pm.x
        wlp = torch.addmm(coef @ ph, pm, xc_t, alpha=-2.0).add_(const[:, None]).mul_(-0.5)
        norm = torch.logsumexp(wlp, dim=0, keepdim=True)
        total += norm.sum()
        r = wlp.sub_(norm).exp_()  # (K, c) responsibilities
        nk += r.sum(1)
        sx += r @ xc_t.T
        sxx += r @ ph.T
    return _finish(total, n, nk, sx, sxx, shift, distributed)


def m_step(s: Stats, kind: str, reg_covar: float) -> Params:
    """Parameters from the statistics of one pass (scikit-learn's M-step, weights normalised)."""
    nk, d = s.nk, s.sx.shape[1]
    mc = s.sx / nk[:, None]
    if kind == "full":
        iu, ju = _triu(d, nk.device)
        scatter = s.sxx.new_zeros(len(nk), d, d)
        scatter[:, iu, ju] = s.sxx
        scatter[:, ju, iu] = s.sxx
        cov = scatter / nk[:, None, None] - mc[:, :, None] * mc[:, None, :]
        cov.diagonal(dim1=-2, dim2=-1).add_(reg_covar)
    elif kind == "tied":
        cov = (s.sxx - (nk[:, None] * mc).T @ mc) / nk.sum()
        cov.diagonal().add_(reg_covar)
    else:
        cov = s.sxx / nk[:, None] - mc * mc + reg_covar
        if kind == "spherical":
            cov = cov.mean(1)
    prec, half = precisions_from_covariances(cov, kind, d)
    return Params(nk / nk.sum(), mc + s.shift, prec, cov, half)


def responsibilities_params(x: Tensor, resp: Tensor, kind: str, reg_covar: float,
                            shift: Tensor | None = None, distributed: bool = False) -> Params:
    """The M-step from given responsibilities (n, K): the initialisation step.
    ``distributed``: x, resp are this rank's shard and `shift` is the mean of all points."""
    shift = x.mean(0) if shift is None else shift
    xc = x - shift
    nk = resp.sum(0)
    if kind == "full":
        sxx = resp.T @ _features(xc, kind)
    elif kind == "tied":
        sxx = xc.T @ xc
    else:
        sxx = resp.T @ (xc * xc)
    s = _finish(x.new_zeros(()), len(x), nk, resp.T @ xc, sxx, shift, distributed)
    return m_step(s, kind, reg_covar)


def n_parameters(kind: str, k: int, d: int) -> int:
    cov = {"full": k * d * (d + 1) // 2, "tied": d * (d + 1) // 2, "diag": k * d,
           "spherical": k}[kind]
    return cov + k * d + k - 1


def kmeans_plusplus(x: Tensor, k: int, gen: torch.Generator) -> Tensor:
    """k-means++ seeding with greedy local trials (Arthur & Vassilvitskii; scikit-learn's
    variant): (K, D) centres chosen among the rows of x."""
    n = x.shape[0]
    trials = 2 + int(math.log(k))
    sq = (x * x).sum(1)

    def dist2(c: Tensor) -> Tensor:  # (m, n) squared distances of rows to centres c (m, D)
        return ((c * c).sum(1, keepdim=True) - 2.0 * (c @ x.T) + sq).clamp_min_(0.0)

    first = int(torch.randint(n, (1,), generator=gen, device=gen.device))
    centres = [x[first]]
    closest = dist2(x[first:first + 1])[0]
    for _ in range(1, k):
        pot = closest.sum()
        u = torch.rand(trials, generator=gen, device=gen.device, dtype=x.dtype) * pot
        cand = torch.searchsorted(closest.cumsum(0), u).clamp_(max=n - 1)
        new = torch.minimum(closest, dist2(x[cand]))
        best = int(new.sum(1).argmin())
        closest = new[best]
        centres.append(x[cand[best]])
    return torch.stack(centres)


def kmeans(x: Tensor, k: int, gen: torch.Generator, iters: int = 100,
           tol: float = 1e-4, part: slice | None = None) -> Tensor:
    """Labels (n,) of Lloyd's k-means from k-means++ seeds, stopped when the centres move
    less than tol times the data variance (scikit-learn's relative tolerance).

    ``part``: data parallel; the seeds come from all of x (identical on every rank), the
    Lloyd steps run on x[part] with counts and sums all-reduced, and the labels of x[part]
    are returned."""
    c = kmeans_plusplus(x, k, gen)
    tol = tol * float(x.var(0).mean())
    if part is not None:
        x = x[part]
    sq = (x * x).sum(1, keepdim=True)
    labels = torch.zeros(len(x), dtype=torch.long, device=x.device)
    for _ in range(iters):
        labels = ((c * c).sum(1) - 2.0 * (x @ c.T) + sq).argmin(1)
        counts = torch.bincount(labels, minlength=k).to(x.dtype)
        new = torch.zeros_like(c).index_add_(0, labels, x)
        if part is not None:
            counts, new = all_reduce_sum(counts, new)
        # An emptied cluster keeps its centre rather than becoming NaN.
        new = torch.where(counts[:, None] > 0, new / counts.clamp_min(1)[:, None], c)
        moved = float(((new - c) ** 2).sum())
        c = new
        if moved <= tol:
            break
    return labels
