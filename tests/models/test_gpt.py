"""The character GPT: nanoGPT's names and init, a tiny config's loss falls and beats the unigram,
cached decoding equals the full forward, generation (cache == recompute inside the block, the
documented refill past it, the sampler's noise rows), windowed held-out scoring, exact resume,
the CLI (train / resume / sample with tokens/s) and bad input."""

import argparse
import functools
import math
import shutil

import pytest
import torch
import torch.nn.functional as F
from _resume import assert_resume_is_exact

import genfast
from genfast.cli import main
from genfast.data.text import CharVocab
from genfast.models import REGISTRY, _lm_train, _trainer
from genfast.models.gpt import GPT, GPTConfig, sample

TINY = dict(n_layer=2, n_head=2, n_embd=32, block_size=24, warmup_steps=5, lr_decay_steps=60)
TEXT = "the cat sat on the mat. a dog ran to the log.\n" * 40


def _data():
    vocab = CharVocab.from_text(TEXT)
    return vocab, vocab.encode(TEXT[:1600]), vocab.encode(TEXT[1600:])


def _model(seed=0, dtype=torch.float64, **kw):
    torch.manual_seed(seed)
    return GPT(GPTConfig.for_text(TEXT, **{**TINY, **kw})).to(dtype).eval()


def test_registered_names_init_and_config_errors():
    assert REGISTRY["gpt"] is GPT and GPT.description
    m = GPT(GPTConfig.for_text(TEXT, n_layer=8, n_embd=64, n_head=4, block_size=512))
    sd = m.state_dict()  # nanoGPT's keys
    for k in ("transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight",
              "transformer.h.7.attn.c_attn.weight", "transformer.h.0.mlp.c_fc.weight",
              "lm_head.weight"):
        assert "net." + k in sd, k
    assert m.net.lm_head.weight is m.net.transformer.wte.weight
    assert abs(float(m.net.transformer.wpe.weight.detach().std()) - 0.02) < 0.002
    proj = torch.cat([b.attn.c_proj.weight.flatten() for b in m.net.transformer.h])
    assert abs(float(proj.detach().std()) - 0.02 / math.sqrt(16)) < 0.0005
    with pytest.raises(ValueError, match="chars is empty"):
        GPTConfig()
    with pytest.raises(ValueError, match="divisible by n_head"):
        GPTConfig(chars="ab", n_embd=30, n_head=4)
    with pytest.raises(ValueError, match="dropout must be"):
        GPTConfig(chars="ab", dropout=1.0)
    with pytest.raises(ValueError, match="block_size must be"):
        GPTConfig(chars="ab", block_size=0)
    with pytest.raises(ValueError, match="beta2 must be"):
        GPTConfig(chars="ab", beta2=1.0)
    with pytest.raises(ValueError, match="duplicates"):
        GPTConfig(chars="aab")


def test_lr_schedule():
    m = _model()
    assert m.lr_at(0, 1.0) == pytest.approx(0.2) and m.lr_at(4, 1.0) == pytest.approx(1.0)
    assert m.lr_at(5, 1.0) == pytest.approx(1.0)
    assert m.lr_at(60, 1.0) == pytest.approx(0.1) and m.lr_at(600, 1.0) == pytest.approx(0.1)
    assert m.lr_at(32, 1.0) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 27 / 55)))


def test_tiny_model_loss_falls_and_beats_the_unigram(one_thread):
    vocab, train, test = _data()
    model = _model(dtype=torch.float32).train()
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


def test_cached_decoding_equals_the_full_forward():
    net = _model(seed=1).net
    idx = torch.randint(0, net.vocab_size, (2, 24))
    with torch.no_grad():
        full = net(idx)
        caches = net.new_caches(2)
        steps = [net(idx[:, :9], caches)] + [net(idx[:, t:t + 1], caches) for t in range(9, 24)]
        torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-11, atol=1e-12)
        with pytest.raises(ValueError, match="context of 25 tokens exceeds block_size=24"):
            net(idx[:, :1], caches)


def _window_logits(net, out, Tp, n, keep):
    """The logits each drawn token of `out` was drawn from under the documented context rule,
    by full forwards without a cache: (Tp + n, B, V), rows of the prime zero."""
    T, B = net.block_size, out.shape[0]
    X = torch.zeros(Tp + n, B, net.vocab_size, dtype=torch.float64)
    a = max(0, Tp - T)
    for end in range(Tp, Tp + n):
        if end - a > T:
            a = end - keep
        X[end] = net(out[:, a:end])[:, -1]
    return X


@pytest.mark.parametrize(("keep", "Tp"), [(None, 7), (24, 7), (5, 7), (None, 30)])
def test_generation_follows_the_sampler_and_the_context_rule(keep, Tp):
    model = _model(seed=2)
    net, B, n = model.net, 3, 45  # the context passes block_size at least twice
    prime = torch.randint(0, net.vocab_size, (B, Tp))
    out = model.generate(prime, n, seed=11, keep=keep, temperature=0.9, top_k=6)
    assert out.shape == (B, Tp + n) and torch.equal(out[:, :Tp], prime)
    X = _window_logits(net, out, Tp, n, 12 if keep is None else keep)
    drawn = genfast.sample_categorical(X.reshape(-1, net.vocab_size), 0.9, 6,
                                       seed=11).view(Tp + n, B).t()
    assert torch.equal(drawn[:, Tp:], out[:, Tp:])
    recompute = model.generate(prime, n, seed=11, use_cache=False, temperature=0.9, top_k=6)
    inside = max(1, 24 - Tp + 1)  # tokens drawn before the context first passes the block
    assert torch.equal(recompute[:, :Tp + inside], out[:, :Tp + inside])
    if keep == 24:  # refilling the whole block every step is the recompute loop
        assert torch.equal(recompute, out)


def test_generate_and_complete(one_thread):
    model = _model(dtype=torch.float32)
    a = model.complete("the ", 30, seed=3)
    assert a.startswith("the ") and len(a) == 34 and set(a) <= set(model.vocab.chars)
    assert model.complete("the ", 30, seed=3) == a
    assert model.complete("the ", 30, temperature=0.0) == model.complete("the ", 30,
                                                                           temperature=0.0,
                                                                           seed=9)
    assert model.complete("t", 0) == "t"
    with pytest.raises(ValueError, match="outside the model's vocabulary: \\['Q'\\]"):
        model.complete("Q", 5)
    with pytest.raises(ValueError, match="non-empty"):
        model.complete("", 5)
    with pytest.raises(ValueError, match="n must be"):
        model.generate(torch.zeros(1, 1, dtype=torch.int64), -1)
    with pytest.raises(ValueError, match="keep must be"):
        model.generate(torch.zeros(1, 1, dtype=torch.int64), 2, keep=25)
    with pytest.raises(ValueError, match="prime must hold tokens in \\[0, "):
        model.generate(torch.full((1, 2), 99), 2)
    with pytest.raises(ValueError, match="prime must be \\(batch, time\\)"):
        model.generate(torch.zeros(3, dtype=torch.int64), 2)


def test_windowed_scoring():
    model = _model(seed=4)
    net, T = model.net, 24
    s = torch.randint(0, net.vocab_size, (80,))
    got = model.token_nll(s)
    assert got.shape == (79,)
    with torch.no_grad():  # target j is scored with the context of its window (stride 12)
        ref = torch.empty(79, dtype=torch.float64)
        for j in range(1, 80):
            e = j if j <= T else min(79, T + 12 * math.ceil((j - T) / 12))
            a = max(0, e - T)
            ref[j - 1] = F.cross_entropy(net(s[None, a:j])[0, -1], s[j])
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(net.token_nll(s, 12, batch_size=1), got, rtol=0, atol=0)
    short = s[:10]
    with torch.no_grad():
        whole = F.cross_entropy(net(short[None, :-1])[0], short[1:], reduction="none")
    torch.testing.assert_close(model.token_nll(short), whole, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="stream must be 1-D"):
        model.token_nll(s[:1])


def test_resume_is_exact(one_thread, tmp_path, monkeypatch):
    _, train, test = _data()
    written = []

    def snapshot(out_dir, step, held_out):
        written.append(step)

    monkeypatch.setattr(_trainer, "fit", functools.partial(_lm_train.fit, snapshot=snapshot))
    tc = {"batch_size": 4, "checkpoint_every": 3, "sample_every": 3, "log_every": 1}
    assert_resume_is_exact(lambda: _model(dtype=torch.float32).train(), "gpt", train, test, tc,
                           tmp_path)
    assert written == [3, 6, 3, 6]


def test_cli_train_resume_and_sample(one_thread, tmp_path, capsys, monkeypatch):
    data = tmp_path / "text.txt"
    data.write_text("\n".join(f"line {i}: " + TEXT[:45] for i in range(40)) + "\n")
    out = tmp_path / "run"
    args = ["train", "gpt", "--data", str(data), "--out", str(out), "--checkpoint-every",
            "2", "--sample-every", "4", "--batch-size", "4", "--no-progress"]
    sets = [x for k, v in {**TINY, "block_size": 16}.items() for x in ("--set", f"{k}={v}")]
    assert main(args + sets + ["--steps", "4"]) == 0
    text = capsys.readouterr().out
    assert "bits/char" in text and "uniform" in text and "unigram" in text
    assert "2 documents never trained on" in text and "context 16" in text
    assert main(args + ["--steps", "6", "--resume"]) == 0
    assert "6 steps" in capsys.readouterr().out
    ckpt = _trainer.load_checkpoint(str(out / "checkpoint.pt"))
    assert ckpt["step"] == 6 and ckpt["config"]["block_size"] == 16
    assert (out / "sample_step000004.txt").read_text().startswith("# gpt step 4")
    ns = argparse.Namespace(model="gpt", checkpoint=out / "checkpoint.pt", prime="line ",
                            length=30, n=None, temperature=0.5, top_k=5, top_p=0.9, seed=2,
                            out=str(tmp_path / "s.txt"))
    assert sample(GPT, ns) == 0
    printed = capsys.readouterr().out
    assert "tokens/s (KV cache" in printed and "30 characters" in printed
    written = (tmp_path / "s.txt").read_text()
    assert written.startswith("line ") and len(written) == 35 and written in printed
    ns.prime = "~"
    with pytest.raises(SystemExit, match="--prime: .*outside"):
        sample(GPT, ns)
    ns.checkpoint, ns.prime, ns.out = None, "line ", None
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match="needs --checkpoint"):
        sample(GPT, ns)
    (tmp_path / "runs" / "gpt").mkdir(parents=True)  # `genfast train gpt`'s default run
    shutil.copy(out / "checkpoint.pt", tmp_path / "runs" / "gpt" / "checkpoint.pt")
    assert sample(GPT, ns) == 0 and "gpt step 6: 30 characters" in capsys.readouterr().out


def test_cli_rejects_a_bad_config(tmp_path):
    data = tmp_path / "t.txt"
    data.write_text(TEXT)
    with pytest.raises(SystemExit, match="n_head"):
        main(["train", "gpt", "--data", str(data), "--set", "n_head=3", "--no-progress",
              "--out", str(tmp_path / "r")])
