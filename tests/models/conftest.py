"""Fixtures the model tests share."""

import pytest
import torch

from genfast.models import fid


@pytest.fixture(scope="module")
def one_thread():
    """The test nets are tiny: one thread is as fast, and immune to an oversubscribed box."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def random_feature_net(monkeypatch):
    """A fixed random DigitsFeatureNet in place of the trained one (whose first use trains it
    and caches it): the Fréchet distance's plumbing without seconds of training per test."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = fid.DigitsFeatureNet().eval().requires_grad_(False)
    monkeypatch.setattr(fid, "feature_net", lambda *a, **k: net)
