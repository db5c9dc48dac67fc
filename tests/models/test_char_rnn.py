"""char-RNN: a tiny config's loss falls and beats the unigram baseline, chunked held-out scoring
is exact, exact resume through the shared check, the CLI trains / resumes / samples (text and
chars/s), and bad input is refused."""

import argparse
import functools

import pytest
import torch
from _resume import assert_resume_is_exact

from genfast.cli import main
from genfast.data.text import CharVocab
from genfast.models import REGISTRY, _lm_train, _trainer
from genfast.models.char_rnn import CharRNN, CharRNNConfig, sample

TINY = dict(embedding_dim=8, hidden_size=24, num_layers=1, seq_len=24)
# A text with structure a small LSTM learns in a few dozen steps: words in a fixed order.
TEXT = "the cat sat on the mat. a dog ran to the log.\n" * 40


def _data():
    vocab = CharVocab.from_text(TEXT)
    return vocab, vocab.encode(TEXT[:1600]), vocab.encode(TEXT[1600:])


def test_registered_and_config_errors():
    assert REGISTRY["char-rnn"] is CharRNN and CharRNN.description
    with pytest.raises(ValueError, match="chars is empty"):
        CharRNNConfig()
    with pytest.raises(ValueError, match="hidden_size"):
        CharRNNConfig(chars="ab", hidden_size=0)
    with pytest.raises(ValueError, match="dropout"):
        CharRNNConfig(chars="ab", dropout=1.0)
    with pytest.raises(ValueError, match="duplicates"):
        CharRNNConfig(chars="aab")


def test_tiny_model_loss_falls_and_beats_the_unigram(one_thread):
    torch.manual_seed(0)
    vocab, train, test = _data()
    model = CharRNN(CharRNNConfig.for_text(TEXT, **TINY))
    opt = model.configure_optimizers(1e-2)
    before = model.evaluate(test)["bits_per_char"]
    losses = []
    for step in range(40):
        idx = _trainer.batch_indices(len(train) - 24, 8, 0, step)
        losses.append(float(model.train_step(_lm_train.windows(train, 24, idx), opt,
                                             step)["bits"]))
    after = model.evaluate(test)["bits_per_char"]
    unigram = _lm_train.unigram_bits(train, test, len(vocab))
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 1.0, losses
    assert after < before - 1.0 and after < unigram - 0.5, (before, after, unigram)


def test_chunked_scoring_is_exact(one_thread):
    torch.manual_seed(1)
    model = CharRNN(CharRNNConfig(chars="abcdef", eval_chunk=7, **TINY)).double()
    s = torch.randint(0, 7, (50,))
    chunked = model.token_nll(s)
    model.config.eval_chunk = 1000
    whole = model.token_nll(s)
    assert chunked.shape == (49,)
    torch.testing.assert_close(chunked, whole, rtol=1e-12, atol=1e-12)


def test_resume_is_exact(one_thread, tmp_path, monkeypatch):
    _, train, test = _data()
    written = []

    def snapshot(out_dir, step, held_out):
        written.append(step)

    monkeypatch.setattr(_trainer, "fit", functools.partial(_lm_train.fit, snapshot=snapshot))
    tc = {"batch_size": 4, "checkpoint_every": 3, "sample_every": 3, "log_every": 1}

    def make():
        torch.manual_seed(0)
        return CharRNN(CharRNNConfig.for_text(TEXT, **TINY))

    assert_resume_is_exact(make, "char-rnn", train, test, tc, tmp_path)
    assert written == [3, 6, 3, 6]


def test_generate_and_complete(one_thread):
    torch.manual_seed(0)
    model = CharRNN(CharRNNConfig.for_text(TEXT, **TINY)).eval()
    a = model.complete("the ", 20, seed=3)
    assert a.startswith("the ") and len(a) == 24 and set(a) <= set(model.vocab.chars)
    assert model.complete("the ", 20, seed=3) == a
    greedy = model.complete("the ", 20, temperature=0.0)
    assert greedy == model.complete("the ", 20, temperature=0.0, seed=9)
    with pytest.raises(ValueError, match="outside the model's vocabulary: \\['Q'\\]"):
        model.complete("Q", 5)
    with pytest.raises(ValueError, match="non-empty"):
        model.complete("", 5)
    with pytest.raises(ValueError, match="n must be"):
        model.generate(torch.zeros(1, 1, dtype=torch.int64), -1)


def test_cli_train_resume_and_sample(one_thread, tmp_path, capsys):
    data = tmp_path / "text.txt"
    data.write_text("\n".join(f"line {i}: " + TEXT[:45] for i in range(40)) + "\n")
    out = tmp_path / "run"
    args = ["train", "char-rnn", "--data", str(data), "--out", str(out), "--checkpoint-every",
            "2", "--sample-every", "4", "--batch-size", "4", "--no-progress"]
    sets = [x for k, v in {**TINY, "seq_len": 16}.items() for x in ("--set", f"{k}={v}")]
    assert main(args + sets + ["--steps", "4"]) == 0
    text = capsys.readouterr().out
    assert "bits/char" in text and "uniform" in text and "unigram" in text
    assert "2 documents never trained on" in text
    assert main(args + ["--steps", "6", "--resume"]) == 0
    assert "6 steps" in capsys.readouterr().out
    ckpt = _trainer.load_checkpoint(str(out / "checkpoint.pt"))
    assert ckpt["step"] == 6 and ckpt["config"]["hidden_size"] == 24
    assert (out / "sample_step000004.txt").read_text().startswith("# char-rnn step 4")
    ns = argparse.Namespace(model="char-rnn", checkpoint=out / "checkpoint.pt", prime="line ",
                            length=30, n=None, temperature=0.5, top_k=5, top_p=None, seed=2,
                            out=str(tmp_path / "s.txt"))
    assert sample(CharRNN, ns) == 0
    printed = capsys.readouterr().out
    assert "chars/s" in printed and "30 characters" in printed
    written = (tmp_path / "s.txt").read_text()
    assert written.startswith("line ") and len(written) == 35 and written in printed
    ns.prime = "~"
    with pytest.raises(SystemExit, match="--prime: .*outside"):
        sample(CharRNN, ns)
    ns.checkpoint = None
    with pytest.raises(SystemExit, match="needs --checkpoint"):
        sample(CharRNN, ns)


def test_cli_rejects_a_missing_file_and_a_bad_config(tmp_path):
    with pytest.raises(SystemExit, match="must be one of"):
        main(["train", "char-rnn", "--data", str(tmp_path / "none.txt"), "--no-progress"])
    data = tmp_path / "t.txt"
    data.write_text(TEXT)
    with pytest.raises(SystemExit, match="seq_len"):
        main(["train", "char-rnn", "--data", str(data), "--set", "seq_len=0", "--no-progress",
              "--out", str(tmp_path / "r")])
