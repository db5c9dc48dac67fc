"""Gaussian mixture: EM is monotone, recovers known parameters, matches scikit-learn's
GaussianMixture step for step from the same initialisation, resumes exactly, samples through
genfast's categorical sampler, rejects bad configurations, and trains/samples from the CLI."""

import copy
import warnings

import numpy as np
import pytest
import torch

from genfast.cli import main
from genfast.data.tabular import load_iris
from genfast.models import GaussianMixture, GMMConfig
from genfast.models._gmm_sim import draw_parameters, iris_sepal_parameters, sample_mixture_1d

sklearn_mixture = pytest.importorskip("sklearn.mixture")
KINDS = ("full", "tied", "diag", "spherical")


def _iris():
    return load_iris()[0]


def _digits():
    from sklearn.datasets import load_digits

    return torch.from_numpy(load_digits().data / 16.0)


@pytest.mark.parametrize("kind", KINDS)
def test_em_never_decreases_the_log_likelihood(kind):
    bounds = []
    model = GaussianMixture(GMMConfig(4, kind, tol=0.0, max_iter=40, init_params="random"))
    model.fit(_iris(), seed=3, callback=lambda st: st["params"] is not None
              and bounds.append(st["lower_bound"]))
    steps = np.diff(bounds)
    assert len(bounds) == 40 and steps.min() > -1e-10, steps.min()


@pytest.mark.parametrize(("data", "kind", "k", "reg"),
                         [("iris", kind, 3, 1e-6) for kind in KINDS]
                         + [("digits", "full", 10, 1e-2), ("digits", "diag", 10, 1e-3)])
def test_matches_sklearn_from_the_same_initialisation(data, kind, k, reg):
    x = _iris() if data == "iris" else _digits()
    xn = x.numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning: max_iter is the point here
        start = sklearn_mixture.GaussianMixture(k, covariance_type=kind, reg_covar=reg,
                                                max_iter=1, random_state=0).fit(xn)
        init = dict(weights_init=start.weights_, means_init=start.means_,
                    precisions_init=start.precisions_)
        sk = sklearn_mixture.GaussianMixture(k, covariance_type=kind, reg_covar=reg, tol=0.0,
                                             max_iter=15, **init).fit(xn)
    ours = GaussianMixture(GMMConfig(k, kind, reg_covar=reg, tol=0.0, max_iter=15)).fit(x, **init)
    # Per sample within 1e-6 nats (the issue asks 1e-3): the same EM path, not just the optimum.
    np.testing.assert_allclose(ours.score_samples(x).numpy(), sk.score_samples(xn), rtol=0,
                               atol=1e-6)
    np.testing.assert_allclose(ours.means.numpy(), sk.means_, atol=1e-6)
    assert ours.bic(x) == pytest.approx(sk.bic(xn), rel=1e-9)
    assert ours.aic(x) == pytest.approx(sk.aic(xn), rel=1e-9)
    assert ours.lower_bound_ == pytest.approx(sk.lower_bound_, abs=1e-9)


def test_refit_recovers_known_parameters():
    truth = GaussianMixture(GMMConfig(3, "full", n_features=2))
    truth.weights.copy_(torch.tensor([0.5, 0.3, 0.2]))
    truth.means.copy_(torch.tensor([[-4.0, 0.0], [3.0, 3.0], [3.0, -4.0]]))
    cov = torch.tensor([[[1.0, 0.5], [0.5, 1.0]], [[0.5, 0.0], [0.0, 2.0]],
                        [[1.5, -0.7], [-0.7, 1.0]]], dtype=torch.float64)
    truth.covariances.copy_(cov)
    truth.precisions.copy_(torch.linalg.inv(cov))
    x, labels = truth.sample(6000, generator=torch.Generator().manual_seed(0))
    fit = GaussianMixture(GMMConfig(3, "full", n_init=2)).fit(x, seed=1)
    # Truth's order: the left component, then the upper right, then the lower right.
    left = int(fit.means[:, 0].argmin())
    rest = sorted(set(range(3)) - {left}, key=lambda i: -float(fit.means[i, 1]))
    order = torch.tensor([left, *rest])
    torch.testing.assert_close(fit.weights[order], truth.weights, atol=0.02, rtol=0)
    torch.testing.assert_close(fit.means[order], truth.means, atol=0.1, rtol=0)
    torch.testing.assert_close(fit.covariances[order], cov, atol=0.15, rtol=0)
    assert fit.converged_ and fit.score(x) > truth.score(x) - 0.01


def test_sample_draws_components_with_the_mixture_weights():
    model = GaussianMixture(GMMConfig(3, "diag", n_features=1))
    model.weights.copy_(torch.tensor([0.6, 0.3, 0.1]))
    model.means.copy_(torch.tensor([[0.0], [10.0], [20.0]]))
    model.covariances.fill_(1.0)
    model.precisions.fill_(1.0)
    x, labels = model.sample(20000, generator=torch.Generator().manual_seed(5))
    freq = torch.bincount(labels, minlength=3).double() / 20000
    # 4 sigma of a binomial proportion at n = 20000
    assert torch.allclose(freq, model.weights, atol=4 * (0.25 / 20000) ** 0.5)
    assert (x[:, 0] - model.means[labels, 0]).abs().max() < 6
    again, _ = model.sample(20000, generator=torch.Generator().manual_seed(5))
    assert torch.equal(x, again)


def test_fit_resumes_exactly_from_an_iteration_state():
    cfg = dict(n_components=3, covariance_type="full", n_init=2, tol=1e-8, max_iter=30)
    full = GaussianMixture(GMMConfig(**cfg)).fit(_iris(), seed=4)
    saved = {}

    def crash(st):
        if st["restart"] == 1 and st["iter"] == 5:
            saved.update(copy.deepcopy(st))
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        GaussianMixture(GMMConfig(**cfg)).fit(_iris(), seed=4, callback=crash)
    resumed = GaussianMixture(GMMConfig(**cfg)).fit(_iris(), seed=4, resume=saved)
    assert torch.equal(resumed.means, full.means) and resumed.n_iter_ == full.n_iter_
    assert resumed.lower_bound_ == full.lower_bound_


def test_bad_configurations_name_the_argument():
    x = _iris()
    with pytest.raises(ValueError, match="n_components=200 must be <= the number of points"):
        GaussianMixture(GMMConfig(200)).fit(x)
    with pytest.raises(ValueError, match="reg_covar"):
        GMMConfig(reg_covar=-1.0)
    with pytest.raises(ValueError, match="covariance_type"):
        GMMConfig(covariance_type="banded")
    with pytest.raises(ValueError, match="n_components"):
        GMMConfig(n_components=0)
    with pytest.raises(ValueError, match="x must have shape"):
        GaussianMixture().fit(x[:, 0])
    with pytest.raises(ValueError, match=r"means_init must have shape \(3, 4\)"):
        GaussianMixture().fit(x, means_init=np.zeros((3, 2)))
    with pytest.raises(ValueError, match="weights_init must be >= 0 and sum to 1"):
        GaussianMixture().fit(x, weights_init=np.array([0.5, 0.5, 0.5]))
    with pytest.raises(ValueError, match="precisions_init"):
        GaussianMixture().fit(x, precisions_init=-np.eye(4)[None].repeat(3, 0))
    with pytest.raises(ValueError, match="x holds NaN"):
        GaussianMixture().fit(torch.full((10, 2), float("nan")))
    fitted = GaussianMixture(GMMConfig(2)).fit(x)
    with pytest.raises(ValueError, match="x has 3 features, the model has 4"):
        fitted.score(x[:, :3])


def test_seed_000_simulation():
    pi, mu, sigma, real = iris_sepal_parameters()
    assert real.shape == (100,) and torch.allclose(pi, torch.tensor([0.5, 0.5], dtype=pi.dtype))
    assert mu.tolist() == pytest.approx([5.006, 5.936], abs=1e-9)
    gen = torch.Generator().manual_seed(0)
    x, k = sample_mixture_1d(40000, pi, mu, sigma, gen)
    for c in (0, 1):
        assert float(x[k == c].mean()) == pytest.approx(float(mu[c]), abs=0.02)
        assert float(x[k == c].std()) == pytest.approx(float(sigma[c]), rel=0.03)
    p_d, m_d, s_d = draw_parameters(pi, mu, sigma, gen)
    assert float(p_d.sum()) == pytest.approx(1.0) and bool((s_d > 0).all())
    with pytest.raises(ValueError, match="sigma must be > 0"):
        sample_mixture_1d(10, pi, mu, -sigma)


def test_cli_train_resume_and_sample(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "gmm"
    args = ["train", "gmm", "--out", str(out), "--no-progress", "--set", "covariance_type=diag",
            "--set", "n_init=2"]
    assert main(args + ["--steps", "30"]) == 0
    text = capsys.readouterr().out
    assert "held-out" in text and "BIC" in text and (out / "fit.png").stat().st_size > 1000
    assert main(args + ["--steps", "30", "--resume"]) == 0  # a finished run resumes as a no-op
    assert main(["sample", "gmm", "--checkpoint", str(out / "checkpoint.pt"),
                 "--out", str(tmp_path / "s.png"), "--n", "200"]) == 0
    rows = (tmp_path / "s.csv").read_text().splitlines()
    assert len(rows) == 201 and rows[0] == "x1,x2,x3,x4,component"
    assert main(["sample", "gmm", "--out", str(tmp_path / "sim.png")]) == 0
    assert "seed 000 simulation" in capsys.readouterr().out
    assert (tmp_path / "sim.png").stat().st_size > 1000
    with pytest.raises(SystemExit, match="covariance_type"):
        main(["train", "gmm", "--out", str(out), "--set", "covariance_type=banded"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_fit_matches_cpu():
    x = _iris()
    cpu = GaussianMixture(GMMConfig(3, tol=0.0, max_iter=20)).fit(x, seed=0)
    gpu = GaussianMixture(GMMConfig(3, tol=0.0, max_iter=20)).to("cuda")
    gpu.fit(x.cuda(), seed=0)
    assert gpu.score(x.cuda()) == pytest.approx(cpu.score(x), abs=1e-3)
