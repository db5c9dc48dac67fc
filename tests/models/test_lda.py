"""LDA: the batched E-step and the bound agree with scikit-learn's LatentDirichletAllocation on
the same topics; online VB recovers simulated topics; held-out perplexity on the review corpus
is no worse than scikit-learn's; coherence, simulation, resume, bad input and the CLI."""

import math
import warnings

import numpy as np
import pytest
import torch

from genfast.cli import main
from genfast.models import LatentDirichletAllocation, LDAConfig
from genfast.models._lda_vb import umass_npmi
from genfast.models.lda import docs_from_lists, hellinger_matched, random_topics, simulate

sk_decomposition = pytest.importorskip("sklearn.decomposition")
sparse = pytest.importorskip("scipy.sparse")


def _corpus(k=5, v=100, n=1000, length=60, seed=0):
    gen = torch.Generator().manual_seed(seed)
    topics = random_topics(k, v, 0.05, gen)
    docs, theta = simulate(n, topics, 0.2, length, gen)
    return topics, docs_from_lists(docs, v), theta


def test_transform_and_perplexity_match_sklearn_on_the_same_topics():
    _, docs, _ = _corpus(n=300)
    x = sparse.csr_matrix(docs.dense().numpy())
    ours = LatentDirichletAllocation(LDAConfig(5, dtype="float64")).fit(docs[:200], 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk = sk_decomposition.LatentDirichletAllocation(5, max_iter=1).fit(x[:200])
    # scikit-learn, given our lambda, runs its own one-document-at-a-time E-step and bound.
    sk.components_ = ours.components.numpy().copy()
    sk.exp_dirichlet_component_ = np.exp(
        torch.special.digamma(ours.components).numpy()
        - torch.special.digamma(ours.components.sum(1, keepdim=True)).numpy())
    np.testing.assert_allclose(ours.transform(x[200:]).numpy(), sk.transform(x[200:]),
                               atol=1e-9)
    assert ours.perplexity(x[200:]) == pytest.approx(sk.perplexity(x[200:]), rel=1e-9)
    assert ours.score(x[200:]) == pytest.approx(sk.score(x[200:]), rel=1e-9)


def test_online_vb_recovers_simulated_topics():
    topics, docs, _ = _corpus()
    model = LatentDirichletAllocation(LDAConfig(5)).fit(docs, 10, seed=0)
    dist = hellinger_matched(topics, model.topic_word())
    assert float(dist.max()) < 0.2, dist  # unrelated Dir(0.05) topics sit near 0.9


def test_batch_learning_recovers_simulated_topics():
    topics, docs, _ = _corpus(n=400, seed=1)
    model = LatentDirichletAllocation(LDAConfig(5, learning_method="batch")).fit(docs, 30)
    assert float(hellinger_matched(topics, model.topic_word()).max()) < 0.25


def test_review_perplexity_no_worse_than_sklearn():
    pytest.importorskip("gensim")  # the review corpus ships in gensim's wheel
    from genfast.data.reviews import reviews_split

    train, test, vocab = reviews_split()
    assert train.shape == (168, len(vocab)) and test.shape[0] == 42
    xtr, xte = sparse.csr_matrix(train.numpy()), sparse.csr_matrix(test.numpy())
    ours, theirs = [], []
    for seed in range(5):  # five seeded starts each: single fits of 168 sentences vary ~2%
        ours.append(math.log(LatentDirichletAllocation(LDAConfig(5))
                             .fit(train, 10, seed=seed).perplexity(test)))
        sk = sk_decomposition.LatentDirichletAllocation(5, learning_method="online",
                                                        max_iter=10, random_state=seed)
        theirs.append(math.log(sk.fit(xtr).perplexity(xte)))
    assert np.mean(ours) <= np.mean(theirs) + 0.01, (ours, theirs)


def test_coherence_against_a_direct_count():
    rng = np.random.default_rng(0)
    presence = torch.from_numpy((rng.random((40, 12)) < 0.4).astype(np.float64))
    top = torch.tensor([[0, 3, 5, 7], [2, 1, 11, 4]])
    umass_sum, npmi_sum, pairs = 0.0, 0.0, 0
    for row in top.tolist():
        for m in range(1, len(row)):
            for j in range(m):
                a, b = presence[:, row[m]], presence[:, row[j]]
                umass_sum += math.log(((a * b).sum() + 1) / b.sum())
                p_ab, p_a, p_b = (a * b).mean(), a.mean(), b.mean()
                npmi_sum += (-1.0 if p_ab == 0 else
                             math.log(p_ab / (p_a * p_b)) / -math.log(p_ab))
                pairs += 1
    umass, npmi = umass_npmi(presence, top)
    assert umass == pytest.approx(umass_sum / 2) and npmi == pytest.approx(npmi_sum / pairs)


def test_simulation_follows_the_generative_process():
    topics = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.25, 0.75]], dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    docs, theta = simulate(4000, topics, 0.5, 30.0, gen)
    words = torch.cat(docs)
    expected = theta.mean(0) @ topics  # E[word frequencies]
    freq = torch.bincount(words, minlength=4).double() / len(words)
    assert torch.allclose(freq, expected, atol=0.02)
    assert abs(len(words) / 4000 - 30.0) < 0.5 and theta.shape == (4000, 2)


def test_fit_resumes_exactly():
    _, docs, _ = _corpus(n=300)
    full = LatentDirichletAllocation(LDAConfig(5, batch_size=64)).fit(docs, 4, seed=2)
    part = LatentDirichletAllocation(LDAConfig(5, batch_size=64)).fit(docs, 2, seed=2)
    state, n_batch_iter = part.state_dict(), part.n_batch_iter
    resumed = LatentDirichletAllocation(LDAConfig(5, batch_size=64))
    resumed.init_components(docs.n_features)
    resumed.load_state_dict(state)
    resumed.n_batch_iter = n_batch_iter
    resumed.fit(docs, 4, seed=2, start_pass=2)
    assert torch.equal(resumed.components, full.components)


def test_bad_configurations_name_the_argument():
    _, docs, _ = _corpus(n=20)
    with pytest.raises(ValueError, match="doc_topic_prior"):
        LDAConfig(doc_topic_prior=-0.1)
    with pytest.raises(ValueError, match="topic_word_prior"):
        LDAConfig(topic_word_prior=0.0)
    with pytest.raises(ValueError, match="learning_decay"):
        LDAConfig(learning_decay=0.3)
    with pytest.raises(ValueError, match="n_topics=50 must be <= the number of documents"):
        LatentDirichletAllocation(LDAConfig(50)).fit(docs, 1)
    with pytest.raises(ValueError, match="X must be a"):
        LatentDirichletAllocation(LDAConfig(2)).fit(np.ones(5), 1)
    with pytest.raises(ValueError, match="X must hold finite counts >= 0"):
        LatentDirichletAllocation(LDAConfig(2)).fit(-np.ones((5, 3)), 1)
    fitted = LatentDirichletAllocation(LDAConfig(2)).fit(docs, 1)
    with pytest.raises(ValueError, match="X has 7 words in its vocabulary, the model has 100"):
        fitted.perplexity(np.ones((3, 7)))
    with pytest.raises(ValueError, match="alpha"):
        simulate(3, random_topics(2, 5, 0.1), -1.0, 10.0)


def test_cli_train_resume_and_sample(tmp_path, capsys):
    pytest.importorskip("gensim")
    out = tmp_path / "lda"
    args = ["train", "lda", "--out", str(out), "--no-progress", "--set", "n_topics=4"]
    assert main(args + ["--steps", "2"]) == 0
    assert main(args + ["--steps", "3", "--resume"]) == 0
    text = capsys.readouterr().out
    assert "topic  0:" in text and "held-out perplexity" in text and "UMass" in text
    assert (out / "topics.txt").read_text().count("topic ") >= 4
    assert main(["sample", "lda", "--checkpoint", str(out / "checkpoint.pt"),
                 "--out", str(tmp_path / "d.txt"), "--n", "3"]) == 0
    assert len((tmp_path / "d.txt").read_text().splitlines()) == 4
    assert main(["sample", "lda", "--out", str(tmp_path / "sim.txt"), "--n", "5"]) == 0
    assert "generative process" in (tmp_path / "sim.txt").read_text()
