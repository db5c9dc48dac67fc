"""FD-digits: the matrix square root and the trace term against scipy, the Fréchet distance's
basic properties, and the digits feature classifier (trained once here into a temporary
cache, then loaded back from disk)."""

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from genfast.data import digits_split
from genfast.models import fid

pytestmark = pytest.mark.usefixtures("one_thread")


def _psd(d, rank=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, rank or d, generator=g, dtype=torch.float64)
    return a @ a.T / d


@pytest.mark.parametrize("d", [1, 5, 64])
def test_sqrtm_psd_matches_scipy(d):
    a = _psd(d, seed=d)
    r = fid.sqrtm_psd(a)
    ref = scipy.linalg.sqrtm(a.numpy())
    np.testing.assert_allclose(r.numpy(), np.real(ref), rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(r @ r, a, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("d,rank", [(3, None), (20, None), (64, None), (32, 10)])
def test_trace_sqrt_product_matches_scipy(d, rank):
    s1, s2 = _psd(d, rank, seed=1), _psd(d, seed=2)
    ref = np.trace(scipy.linalg.sqrtm(s1.numpy() @ s2.numpy())).real
    assert fid.trace_sqrt_product(s1, s2).item() == pytest.approx(ref, rel=1e-7, abs=1e-8)


def test_frechet_distance_closed_forms():
    d = 16
    mu, s = torch.randn(d, dtype=torch.float64), _psd(d, seed=3)
    assert fid.frechet_distance(mu, s, mu, s) == pytest.approx(0.0, abs=1e-9)
    # Same covariance: only the squared mean difference remains.
    shift = torch.full((d,), 0.5, dtype=torch.float64)
    assert fid.frechet_distance(mu, s, mu + shift, s) == pytest.approx(0.25 * d, rel=1e-9)
    # Isotropic Gaussians: FD = |mu1 - mu2|^2 + d (s1 - s2)^2 for std devs s1, s2.
    eye = torch.eye(d, dtype=torch.float64)
    assert fid.frechet_distance(mu, 4 * eye, mu, eye) == pytest.approx(d * (2 - 1) ** 2)
    # Symmetric, and the scipy formula agrees on a generic pair.
    s2 = _psd(d, seed=4)
    fd = fid.frechet_distance(mu, s, -mu, s2)
    assert fd == pytest.approx(fid.frechet_distance(-mu, s2, mu, s), rel=1e-9)
    ref = (4 * mu.square().sum() + s.trace() + s2.trace()).item() - 2 * np.trace(
        scipy.linalg.sqrtm(s.numpy() @ s2.numpy())).real
    assert fd == pytest.approx(ref, rel=1e-8)
    with pytest.raises(ValueError):
        fid.gaussian_stats(torch.randn(1, 4))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("genfast-cache"))
    net = fid.feature_net(directory=directory)
    return net, directory


def test_feature_net_is_a_good_cached_classifier(trained):
    net, directory = trained
    path = f"{directory}/fd_digits_v{fid.VERSION}_s{fid.SIZE}.pt"
    blob = torch.load(path, weights_only=True)
    assert blob["test_accuracy"] > 0.93
    fid._nets.clear()  # a new process: loads the file instead of training
    again = fid.feature_net(directory=directory)
    for a, b in zip(net.state_dict().values(), again.state_dict().values(),
                    strict=True):
        assert torch.equal(a, b)
    assert not any(p.requires_grad for p in again.parameters())


def test_fd_digits_ranks_real_against_noise(trained):
    net, _ = trained
    train, test = digits_split(16)
    assert fid.fd_digits(test, test, net) == pytest.approx(0.0, abs=1e-6)
    real = fid.fd_digits(train, test, net)
    g = torch.Generator().manual_seed(0)
    noise = fid.fd_digits(torch.rand(len(test), 1, 16, 16, generator=g), test, net)
    blurred = torch.nn.functional.avg_pool2d(train, 5, 1, 2)
    blur = fid.fd_digits(blurred, test, net)
    assert real < 10 and noise > 30 * real and real < blur < noise, (real, blur, noise)
    # Other sizes are resized to the classifier's 16x16: the 8x8 originals score like 16x16.
    train8, _ = digits_split(8)
    assert fid.fd_digits(train8, test, net) == pytest.approx(real, rel=0.05)
    assert math.isfinite(fid.fd_digits(torch.rand(50, 3, 32, 32, generator=g), test, net))
