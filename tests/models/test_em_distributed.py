"""Data-parallel EM: Gaussian-mixture EM and LDA's variational Bayes in 2 gloo processes (each
rank a contiguous shard, statistics all-reduced) give one process's fit to rounding, on every
rank; through the CLI, rank 0 alone writes. One spawn runs every case (process start-up is
most of the cost)."""

import json
from types import SimpleNamespace

import _ddp
import pytest
import torch

from genfast.models import GaussianMixture, GMMConfig, LatentDirichletAllocation, LDAConfig
from genfast.models._distributed import context, shard_range
from genfast.models.lda import docs_from_lists, random_topics, simulate

WORLD = 2
GMM_CASES = {"full-kmeans": dict(covariance_type="full"),
             "diag-random": dict(covariance_type="diag", init_params="random"),
             "tied-kmeans++": dict(covariance_type="tied", init_params="k-means++", n_init=2)}
# 61 documents in batches of 20: the last batch holds one document, so rank 0's share of it
# is empty.
LDA_CASES = {"online": dict(batch_size=20), "batch": dict(learning_method="batch")}


def _points():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0, 0.0], [4.0, 1.0, -2.0], [-3.0, 3.0, 1.0]],
                           dtype=torch.float64)
    x = centres[torch.arange(301) % 3] + torch.randn(301, 3, generator=g, dtype=torch.float64)
    return x + 10.0  # away from the origin, where the shift matters


def _corpus():
    g = torch.Generator().manual_seed(1)
    docs, _ = simulate(61 + 30, random_topics(4, 40, 0.1, g), 0.3, 25.0, g)
    return docs_from_lists(docs[:61], 40), docs_from_lists(docs[61:], 40)


def _fits() -> dict[str, torch.Tensor]:
    out = {}
    x = _points()
    for name, kw in GMM_CASES.items():
        m = GaussianMixture(GMMConfig(3, tol=1e-8, max_iter=30, **kw)).fit(x, seed=4)
        out.update({f"{name}.{k}": v.clone() for k, v in m.state_dict().items()})
        out[f"{name}.bound"] = torch.tensor([m.lower_bound_, m.n_iter_], dtype=torch.float64)
    train, test = _corpus()
    for name, kw in LDA_CASES.items():
        m = LatentDirichletAllocation(LDAConfig(4, dtype="float64", **kw)).fit(train, 3, seed=5)
        out[f"lda-{name}.components"] = m.components.clone()
        out[f"lda-{name}.bound"] = torch.tensor(
            [m.perplexity(test), m.perplexity(test, topic_term=False), m.score(test)],
            dtype=torch.float64)
    return out


def _args(model: str, out: str, **kw) -> SimpleNamespace:
    base = dict(model=model, out=out, steps=None, resume=False, data=None, config={},
                checkpoint_every=None, sample_every=None, no_progress=True, device="cpu",
                seed=0)
    return SimpleNamespace(**{**base, **kw})


def _worker(rank, world, out):
    assert (context().rank, context().world) == (rank, world)
    torch.save(_fits(), f"{out}/fits-{rank}.pt")
    GaussianMixture.cli_train(_args("gmm", f"{out}/gmm-cli-{rank}", steps=15))
    LatentDirichletAllocation.cli_train(_args("lda", f"{out}/lda-cli-{rank}", steps=2,
                                              data=f"{out}/texts.txt",
                                              config={"n_topics": 3}))


def _texts(path):
    words = ["film", "plot", "actor", "music", "score", "scene", "dull", "great", "story", "cast"]
    g = torch.Generator().manual_seed(2)
    lines = [" ".join(words[i] for i in torch.randint(10, (12,), generator=g).tolist())
             for _ in range(40)]
    path.write_text("\n".join(lines) + "\n")


def test_shards_are_contiguous_and_cover_everything():
    for n in (0, 1, 5, 61):
        parts = [shard_range(n, r, 3) for r in range(3)]
        assert [i for p in parts for i in range(n)[p]] == list(range(n))
        assert max(p.stop - p.start for p in parts) - min(p.stop - p.start for p in parts) <= 1
    assert (context().rank, context().world) == (0, 1)


@pytest.mark.skipif(not _ddp.AVAILABLE, reason="torch.distributed with gloo is not available")
def test_two_processes_equal_one(tmp_path, capsys):
    _texts(tmp_path / "texts.txt")
    _ddp.spawn(_worker, WORLD, str(tmp_path))
    expect = _fits()
    got = [torch.load(tmp_path / f"fits-{r}.pt") for r in range(WORLD)]
    assert set(got[0]) == set(expect)
    for key, want in expect.items():
        # Every rank holds the same numbers (the same M-step on the same reduced statistics)...
        assert torch.equal(got[0][key], got[1][key]), key
        # ...and they are one process's, up to the order the partial sums were added in.
        torch.testing.assert_close(got[0][key], want, rtol=1e-9, atol=1e-9, msg=key)
    # Rank 0 wrote the run; rank 1 wrote nothing at all.
    for model, what in (("gmm", "fit.png"), ("lda", "topics.txt")):
        assert (tmp_path / f"{model}-cli-0" / "checkpoint.pt").is_file()
        assert (tmp_path / f"{model}-cli-0" / what).is_file()
        assert not (tmp_path / f"{model}-cli-1").exists()
    log = (tmp_path / "lda-cli-0" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(ln)["split"] for ln in log] == ["test", "test", "final"]

