"""Gaussian mixture model: EM fitting in torch (CPU or GPU) and sampling (seed 000).

    p(x) = sum_k pi_k N(x | mu_k, Sigma_k),   Sigma_k: full | tied | diag | spherical

Fitting follows scikit-learn's ``GaussianMixture`` step for step (same initialisations, the
same M-step with ``reg_covar`` on the diagonal, the same stopping rule on the change of the mean
log-likelihood, the best of ``n_init`` restarts), so from the same initial parameters both
give the same fit; the arithmetic is reorganised into GEMMs (genfast/models/_gmm_em.py).
Sampling draws the component with genfast's Gumbel-max sampler (genfast.sample_categorical).

`genfast train gmm` fits the embedded iris measurements (or --data), `genfast sample gmm`
runs the seed 000 simulation (iris sepal lengths) or samples a fitted checkpoint
(genfast/models/_gmm_cli.py).

Under torchrun (a default process group of world > 1) ``fit`` runs data-parallel: every rank
passes all the points, takes its contiguous shard, and the E-step statistics and k-means'
Lloyd sums are all-reduced (_gmm_em), so every rank holds the same fit, equal to one
process's to rounding. The k-means++ seeds and ``init_params="random"``'s responsibilities are
drawn for all points on every rank (same seed, same draws), then sharded.
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

from . import _gmm_em as em
from ._distributed import context, shard_range

INIT_PARAMS = ("kmeans", "k-means++", "random")


@dataclass
class GMMConfig:
    n_components: int = 3
    covariance_type: str = "full"
    tol: float = 1e-3  # stop when the mean log-likelihood changes by less (nats per point)
    reg_covar: float = 1e-6  # added to every variance: keeps covariances invertible
    max_iter: int = 100
    n_init: int = 1  # restarts; the one with the best final log-likelihood is kept
    init_params: str = "kmeans"  # kmeans | k-means++ (seeding only) | random responsibilities
    n_features: int | None = None  # set by the first fit
    dtype: str = "float64"  # float32 halves the time on a GPU; see _gmm_em on cancellation

    def __post_init__(self) -> None:
        for name, low in (("n_components", 1), ("max_iter", 1), ("n_init", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"{name} must be an int >= {low}, got {v!r}")
        if self.n_features is not None and (not isinstance(self.n_features, int)
                                            or self.n_features < 1):
            raise ValueError(f"n_features must be None or an int >= 1, got {self.n_features!r}")
        if self.covariance_type not in em.COVARIANCE_TYPES:
            raise ValueError(f"covariance_type must be one of {em.COVARIANCE_TYPES}, "
                             f"got {self.covariance_type!r}")
        if self.init_params not in INIT_PARAMS:
            raise ValueError(f"init_params must be one of {INIT_PARAMS}, got {self.init_params!r}")
        for name in ("tol", "reg_covar"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {self.dtype!r}")


def _cov_shape(kind: str, k: int, d: int) -> tuple[int, ...]:
    return {"full": (k, d, d), "tied": (d, d), "diag": (k, d), "spherical": (k,)}[kind]


class GaussianMixture(nn.Module):
    """A K-component Gaussian mixture; parameters are buffers (``weights``, ``means``,
    ``covariances``, ``precisions`` in scikit-learn's shapes), so ``state_dict`` holds a fit."""

    config_cls: ClassVar[type] = GMMConfig
    description: ClassVar[str] = "Gaussian mixture fitted by EM (full/tied/diag/spherical)"
    train_defaults: ClassVar[dict[str, Any]] = {"checkpoint_every": 10}

    def __init__(self, config: GMMConfig | None = None) -> None:
        super().__init__()
        self.config = config or GMMConfig()
        self.n_iter_, self.converged_, self.lower_bound_ = 0, False, -math.inf
        if self.config.n_features is not None:
            self._allocate(self.config.n_features)

    @property
    def dtype(self) -> torch.dtype:
        return getattr(torch, self.config.dtype)

    def _allocate(self, d: int, device: torch.device | None = None) -> None:
        c, kw = self.config, {"dtype": self.dtype, "device": device}
        k, shape = c.n_components, _cov_shape(c.covariance_type, c.n_components, d)
        self.register_buffer("weights", torch.full((k,), 1.0 / k, **kw))
        self.register_buffer("means", torch.zeros(k, d, **kw))
        self.register_buffer("covariances", torch.zeros(shape, **kw))
        self.register_buffer("precisions", torch.zeros(shape, **kw))

    # ---------------------------------------------------------------- validation
    def _points(self, x: Tensor | np.ndarray, name: str = "x") -> Tensor:
        if isinstance(x, np.ndarray):
            x = torch.from_numpy(x)
        if not isinstance(x, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(x).__name__}")
        if x.dim() != 2 or x.shape[0] == 0 or x.shape[1] == 0:
            raise ValueError(f"{name} must have shape (n_samples, n_features), "
                             f"got {tuple(x.shape)}")
        d = self.config.n_features
        if d is not None and x.shape[1] != d:
            raise ValueError(f"{name} has {x.shape[1]} features, the model has {d}")
        dev = self.means.device if hasattr(self, "means") else x.device
        x = x.to(device=dev, dtype=self.dtype)
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"{name} holds NaN or infinite values")
        return x

    def _init_arg(self, name: str, v: Any, shape: tuple[int, ...], x: Tensor) -> Tensor | None:
        if v is None:
            return None
        t = torch.as_tensor(np.asarray(v) if not isinstance(v, Tensor) else v)
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
        t = t.to(device=x.device, dtype=x.dtype)
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name} holds NaN or infinite values")
        return t

    # ---------------------------------------------------------------- parameters
    def _params(self) -> em.Params:
        if self.n_iter_ == 0 and not hasattr(self, "means"):
            raise RuntimeError("GaussianMixture: not fitted yet (call fit first)")
        c, d = self.config, self.means.shape[1]
        half = em.log_det_half(self.precisions, c.covariance_type, d)
        return em.Params(self.weights, self.means, self.precisions, self.covariances, half)

    def _store(self, p: em.Params) -> None:
        self.weights.copy_(p.weights)
        self.means.copy_(p.means)
        self.precisions.copy_(p.precisions)
        kind = self.config.covariance_type
        cov = p.covariances
        if cov is None:  # started from user precisions and never reached an M-step
            cov = torch.linalg.inv(p.precisions) if kind in ("full", "tied") else 1 / p.precisions
        self.covariances.copy_(cov)

    def _initial(self, x: Tensor, gen: torch.Generator, weights_init: Tensor | None,
                 means_init: Tensor | None, precisions_init: Tensor | None,
                 part: slice | None = None) -> em.Params:
        """``part``: this rank's shard of x when data-parallel (module docstring)."""
        c, (n, d) = self.config, x.shape
        k, kind = c.n_components, c.covariance_type
        xs = x if part is None else x[part]
        if c.init_params == "random":
            resp = torch.rand(n, k, generator=gen, device=x.device, dtype=x.dtype)
            resp = resp if part is None else resp[part]
            resp /= resp.sum(1, keepdim=True)
        else:
            if c.init_params == "kmeans":
                labels = em.kmeans(x, k, gen, part=part)
            else:
                centres = em.kmeans_plusplus(x, k, gen)
                labels = ((centres * centres).sum(1) - 2 * xs @ centres.T).argmin(1)
            resp = torch.nn.functional.one_hot(labels, k).to(x.dtype)
        p = em.responsibilities_params(xs, resp, kind, c.reg_covar, x.mean(0),
                                       distributed=part is not None)
        if weights_init is not None:
            p.weights = weights_init
        if means_init is not None:
            p.means = means_init
        if precisions_init is not None:
            p.precisions, p.covariances = precisions_init, None
            p.log_det = em.log_det_half(precisions_init, kind, d)
        return p

    # ---------------------------------------------------------------- fitting
    def fit(self, x: Tensor | np.ndarray, *, weights_init: Any = None, means_init: Any = None,
            precisions_init: Any = None, seed: int = 0,
            callback: Callable[[dict[str, Any]], None] | None = None,
            resume: dict[str, Any] | None = None) -> GaussianMixture:
        """EM on x (n_samples, n_features); returns self.

        *_init: optional initial parameters in scikit-learn's shapes (they replace the
        initialisation's values, as in sklearn). Restart i draws from seed (seed, i), so a
        fit is a function of (x, config, seed). `callback(state)` runs after each iteration
        and after each restart with a state dict that `resume=` continues from exactly.
        """
        c = self.config
        x = self._points(x)
        n, d = x.shape
        if c.n_components > n:
            raise ValueError(f"n_components={c.n_components} must be <= the number of points "
                             f"n_samples={n}")
        ctx = context()
        rank, world = ctx.rank, ctx.world
        if world > n:
            raise ValueError(f"data-parallel EM needs at least one point per process: "
                             f"n_samples={n} < world size {world}")
        part = shard_range(n, rank, world) if world > 1 else None
        xs = x if part is None else x[part]
        if c.n_features is None:
            c.n_features = d
        if not hasattr(self, "means") or self.means.shape[1] != d:
            self._allocate(d, x.device)
        k, kind = c.n_components, c.covariance_type
        inits = (self._init_arg("weights_init", weights_init, (k,), x),
                 self._init_arg("means_init", means_init, (k, d), x),
                 self._init_arg("precisions_init", precisions_init, _cov_shape(kind, k, d), x))
        w = inits[0]
        if w is not None and (bool((w < 0).any()) or abs(float(w.sum()) - 1.0) > 1e-6):
            raise ValueError(f"weights_init must be >= 0 and sum to 1, got sum {float(w.sum())}")
        st = dict(resume) if resume is not None else {"restart": 0, "iter": 0, "params": None,
                                                      "lower_bound": -math.inf, "best": None,
                                                      "done": False}
        while st["restart"] < c.n_init:
            if st["params"] is None:
                gen = torch.Generator(x.device).manual_seed(seed * 1_000_003 + st["restart"])
                st["params"] = _to_dict(self._initial(x, gen, *inits, part=part))
            p = _from_dict(st["params"])
            while not st["done"]:
                prev = st["lower_bound"]
                s = em.e_and_stats(xs, p, kind, distributed=part is not None)
                p = em.m_step(s, kind, c.reg_covar)
                st.update(iter=st["iter"] + 1, lower_bound=s.loglik, params=_to_dict(p))
                st["done"] = abs(s.loglik - prev) < c.tol or st["iter"] >= c.max_iter
                st["converged"] = abs(s.loglik - prev) < c.tol
                if callback is not None:
                    callback(st)
            best = st["best"]
            if best is None or st["lower_bound"] > best["lower_bound"]:
                st["best"] = {k2: st[k2] for k2 in ("params", "lower_bound", "iter", "converged")}
            st.update(restart=st["restart"] + 1, iter=0, params=None, lower_bound=-math.inf,
                      done=False)
            if callback is not None:
                callback(st)
        best = st["best"]
        self._store(_from_dict(best["params"]))
        self.n_iter_, self.converged_ = best["iter"], best["converged"]
        self.lower_bound_ = best["lower_bound"]
        return self

    # ---------------------------------------------------------------- inference
    @torch.no_grad()
    def score_samples(self, x: Tensor | np.ndarray) -> Tensor:
        """log p(x_n) per sample, (n,)."""
        x = self._points(x)
        return torch.logsumexp(em.weighted_log_prob(x, self._params(),
                                                    self.config.covariance_type), dim=1)

    def score(self, x: Tensor | np.ndarray) -> float:
        """Mean log-likelihood per sample (nats)."""
        return float(self.score_samples(x).mean())

    @torch.no_grad()
    def predict_proba(self, x: Tensor | np.ndarray) -> Tensor:
        wlp = em.weighted_log_prob(self._points(x), self._params(), self.config.covariance_type)
        return torch.softmax(wlp, dim=1)

    def predict(self, x: Tensor | np.ndarray) -> Tensor:
        return self.predict_proba(x).argmax(1)

    def bic(self, x: Tensor | np.ndarray) -> float:
        """Bayesian information criterion on x (lower is better)."""
        n = len(x)
        k = em.n_parameters(self.config.covariance_type, self.config.n_components,
                            self.means.shape[1])
        return -2.0 * self.score(x) * n + k * math.log(n)

    def aic(self, x: Tensor | np.ndarray) -> float:
        """Akaike information criterion on x (lower is better)."""
        k = em.n_parameters(self.config.covariance_type, self.config.n_components,
                            self.means.shape[1])
        return -2.0 * self.score(x) * len(x) + 2 * k

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """(x (n, D), component labels (n,)): k ~ Cat(pi) by Gumbel-max, then x ~ N(mu_k, S_k)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be an int >= 1, got {n!r}")
        self._params()
        logits = self.weights.log().expand(n, -1)
        labels = genfast.sample_categorical(logits.float(), generator=generator)
        d, kind = self.means.shape[1], self.config.covariance_type
        z = torch.randn(n, d, generator=generator, dtype=self.dtype,
                        device=self.means.device)
        cov = self.covariances
        if kind == "full":
            noise = (torch.linalg.cholesky(cov)[labels] @ z[:, :, None])[:, :, 0]
        elif kind == "tied":
            noise = z @ torch.linalg.cholesky(cov).T
        elif kind == "diag":
            noise = z * cov[labels].sqrt()
        else:
            noise = z * cov[labels].sqrt()[:, None]
        return self.means[labels] + noise, labels

    @classmethod
    def cli_train(cls, args: Any) -> int:
        from ._gmm_cli import train

        return train(cls, args)

    @classmethod
    def cli_sample(cls, args: Any) -> int:
        from ._gmm_cli import sample

        return sample(cls, args)


def _to_dict(p: em.Params) -> dict[str, Tensor]:
    out = {"weights": p.weights, "means": p.means, "precisions": p.precisions,
           "log_det": p.log_det}
    if p.covariances is not None:
        out["covariances"] = p.covariances
    return out


def _from_dict(d: dict[str, Tensor]) -> em.Params:
    return em.Params(d["weights"], d["means"], d["precisions"], d.get("covariances"),
                     d["log_det"])
