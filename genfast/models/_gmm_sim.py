"""Seed 000's simulation: sepal lengths of two iris species as a two-component 1-D mixture,
first with fixed parameters (those of setosa and versicolor), then with the parameters
themselves drawn from priors; and the pictures of mixture fits (matplotlib, Agg).

Fixed:  pi = (1/2, 1/2) (50 flowers each), mu_k, sigma_k = each species' sample mean and sd.
Drawn:  pi ~ Dir(1, 1),  mu_k ~ N(mu_k^iris, 0.5^2),  sigma_k = sigma_k^iris * exp(N(0, 0.25^2))
        (a log-normal scale keeps sigma > 0 with its median at the species' value).
Then for each point: k ~ Cat(pi) (genfast.sample_categorical), x ~ N(mu_k, sigma_k^2).
"""

from __future__ import annotations

import math
import os

import torch
from torch import Tensor

import genfast
from genfast.data.tabular import load_iris

SPECIES = ("setosa", "versicolor")


def iris_sepal_parameters() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(pi (2,), mu (2,), sigma (2,), the 100 real sepal lengths) of setosa and versicolor."""
    x, y, _, _ = load_iris()
    lengths = [x[y == k, 0] for k in (0, 1)]
    mu = torch.stack([v.mean() for v in lengths])
    sigma = torch.stack([v.std() for v in lengths])
    n = torch.tensor([float(len(v)) for v in lengths], dtype=torch.float64)
    return n / n.sum(), mu, sigma, torch.cat(lengths)


def draw_parameters(pi: Tensor, mu: Tensor, sigma: Tensor,
                    generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """(pi, mu, sigma) from the priors in the module docstring, centred on the given values."""
    e = torch.empty(len(pi), dtype=torch.float64).exponential_(generator=generator)
    pi_d = e / e.sum()  # normalised Exp(1) draws: Dir(1, ..., 1)
    mu_d = mu + 0.5 * torch.randn(len(mu), generator=generator, dtype=torch.float64)
    sigma_d = sigma * torch.exp(0.25 * torch.randn(len(sigma), generator=generator,
                                                   dtype=torch.float64))
    return pi_d, mu_d, sigma_d


def sample_mixture_1d(n: int, pi: Tensor, mu: Tensor, sigma: Tensor,
                      generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """(x (n,), component (n,)) from sum_k pi_k N(mu_k, sigma_k^2)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    if bool((pi < 0).any()) or abs(float(pi.sum()) - 1) > 1e-6:
        raise ValueError(f"pi must be >= 0 and sum to 1, got {pi.tolist()}")
    if bool((sigma <= 0).any()):
        raise ValueError(f"sigma must be > 0, got {sigma.tolist()}")
    k = genfast.sample_categorical(pi.log().float().expand(n, -1), generator=generator)
    z = torch.randn(n, generator=generator, dtype=torch.float64)
    return mu[k] + sigma[k] * z, k


def _density(grid: Tensor, pi: Tensor, mu: Tensor, sigma: Tensor) -> Tensor:
    z = (grid[:, None] - mu) / sigma
    return (pi * torch.exp(-0.5 * z * z) / (sigma * math.sqrt(2 * math.pi))).sum(1)


def _pyplot():
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError("GMM pictures need matplotlib: pip install matplotlib") from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def simulation_figure(path: str, n: int = 1000, draws: int = 3,
                      generator: torch.Generator | None = None) -> dict[str, list[float]]:
    """Seed 000's two histograms in one PNG; returns the parameters used (for printing)."""
    plt = _pyplot()
    pi, mu, sigma, real = iris_sepal_parameters()
    x, _ = sample_mixture_1d(n, pi, mu, sigma, generator)
    grid = torch.linspace(3.5, 8.5, 400, dtype=torch.float64)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    ax.hist(x.numpy(), bins=40, density=True, alpha=0.5, label=f"{n} simulated")
    ax.hist(real.numpy(), bins=20, density=True, histtype="step", lw=1.5,
            label="iris (setosa + versicolor)")
    ax.plot(grid.numpy(), _density(grid, pi, mu, sigma).numpy(), "k", label="mixture density")
    ax.set(title="fixed parameters:\n" + ", ".join(
        f"{s} N({m:.2f}, {v:.2f}^2)"
        for s, m, v in zip(SPECIES, mu.tolist(), sigma.tolist(), strict=True)),
        xlabel="sepal length (cm)")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=8)
    out = {"pi": pi.tolist(), "mu": mu.tolist(), "sigma": sigma.tolist()}
    ax = axes[1]
    for i in range(draws):
        p_d, m_d, s_d = draw_parameters(pi, mu, sigma, generator)
        xd, _ = sample_mixture_1d(n, p_d, m_d, s_d, generator)
        ax.hist(xd.numpy(), bins=40, density=True, alpha=0.35,
                label=f"draw {i + 1}: pi=({p_d[0]:.2f}, {p_d[1]:.2f}) "
                      f"mu=({m_d[0]:.2f}, {m_d[1]:.2f})")
        out[f"draw{i + 1}"] = p_d.tolist() + m_d.tolist() + s_d.tolist()
    ax.set(title="parameters drawn: pi ~ Dir(1, 1), mu ~ N(mu_iris, 0.5^2),\n"
                 "sigma = sigma_iris exp(N(0, 0.25^2))", xlabel="sepal length (cm)")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=7)
    _save(fig, plt, path)
    return out


def _save(fig, plt, path: str) -> None:
    tmp = f"{path}.tmp.png"
    fig.tight_layout()
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def fit_figure(path: str, model, x: Tensor, title: str, names: list[str] | None = None) -> None:
    """Scatter of x coloured by component, and contours of the fitted density.

    More than two features: both are shown on the data's first two principal axes, where the
    mixture's density is exact (a linear map of a Gaussian is Gaussian: W mu, W S W^T)."""
    plt = _pyplot()
    from .gmm import GaussianMixture, GMMConfig  # the 2-D projection of the fitted mixture

    x = x.to(model.means)
    d = x.shape[1]
    c = model.config
    if d == 1:
        fig, ax = plt.subplots(figsize=(6, 4))
        grid = torch.linspace(float(x.min()) - 1, float(x.max()) + 1, 400, dtype=x.dtype)
        ax.hist(x[:, 0].cpu().numpy(), bins=40, density=True, alpha=0.5, label="data")
        dens = model.score_samples(grid[:, None]).exp()
        ax.plot(grid.numpy(), dens.cpu().numpy(), "k", label="fitted density")
        ax.legend()
        ax.set(title=title)
        _save(fig, plt, path)
        return
    if d == 2:
        w = torch.eye(2, dtype=x.dtype, device=x.device)
        axes = names[:2] if names else ["x1", "x2"]
    else:
        xc = x - x.mean(0)
        w = torch.linalg.svd(xc, full_matrices=False).Vh[:2]
        axes = ["principal axis 1", "principal axis 2"]
    y = x @ w.T
    kind = c.covariance_type
    cov = model.covariances
    if kind == "full":
        full = cov
    elif kind == "tied":
        full = cov.expand(c.n_components, d, d)
    elif kind == "diag":
        full = torch.diag_embed(cov)
    else:
        full = cov[:, None, None] * torch.eye(d, dtype=x.dtype, device=x.device)
    proj = GaussianMixture(GMMConfig(c.n_components, "full", n_features=2)).to(x.device)
    proj.weights.copy_(model.weights)
    proj.means.copy_(model.means @ w.T)
    pc = w @ full @ w.T
    proj.covariances.copy_(pc)
    proj.precisions.copy_(torch.linalg.inv(pc))
    lo, hi = y.min(0).values, y.max(0).values
    pad = 0.15 * (hi - lo)
    g0 = torch.linspace(float(lo[0] - pad[0]), float(hi[0] + pad[0]), 200, dtype=x.dtype)
    g1 = torch.linspace(float(lo[1] - pad[1]), float(hi[1] + pad[1]), 200, dtype=x.dtype)
    gg = torch.stack(torch.meshgrid(g0, g1, indexing="xy"), -1).reshape(-1, 2).to(x.device)
    logp = proj.score_samples(gg).reshape(200, 200).cpu()
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    ax.contour(g0.numpy(), g1.numpy(), logp.numpy(),
               levels=torch.linspace(float(logp.max()) - 8, float(logp.max()), 9).numpy(),
               cmap="viridis", linewidths=1)
    labels = model.predict(x).cpu().numpy()
    yy = y.cpu().numpy()
    ax.scatter(yy[:, 0], yy[:, 1], c=labels, cmap="tab10", s=10, alpha=0.8)
    m = proj.means.cpu().numpy()
    ax.scatter(m[:, 0], m[:, 1], marker="x", c="k", s=60, label="component means")
    ax.set(title=title, xlabel=axes[0], ylabel=axes[1])
    ax.title.set_fontsize(9)
    ax.legend(fontsize=8)
    _save(fig, plt, path)
