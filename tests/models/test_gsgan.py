"""Gumbel-Softmax GAN: the text windows and held-out figures, both losses train (MLE falls, the
discriminator / critic learns, nothing NaN), the WGAN-GP penalty's double backward through the
genfast LSTM critic equals the same model with torch.nn.LSTM, exact resume, samples, the CLI,
and bad configs."""

import copy
import math

import pytest
import torch
from _resume import _records

import genfast
from genfast.cli import main
from genfast.data.text import load_text
from genfast.models import REGISTRY, _trainer
from genfast.models import _gsgan_text as text
from genfast.models.gsgan import GSGAN, GSGANConfig
from genfast.nn import LSTM, revert_lstm
from genfast.ops.gradient_penalty import gradient_penalty

TINY = dict(seq_len=6, embed=8, g_hidden=24, d_hidden=24, z_dim=4, eval_samples=64)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def corpus():
    return text.Corpus(load_text("lee-test"), text.ALPHABET, TINY["seq_len"])


def _batches(corpus, steps, batch_size=32, seed=0):
    n = len(corpus.starts)
    return [corpus.batch(_trainer.batch_indices(n, batch_size, seed, s)) for s in range(steps)]


def _run(model, batches, lr, start=0):
    opts = model.configure_optimizers(lr)
    out = []
    for i, x in enumerate(batches):
        out.append({k: float(v) for k, v in model.train_step(x, opts, start + i).items()})
    return out


def _mean(records, key):
    return sum(r[key] for r in records) / len(records)


def test_normalize_windows_and_figures():
    assert text.normalize("Hi, 4:00pm South-West \"Test's\" (x)") == "hi, south west test's x"
    ids = text.encode("ab cd e", " abcde")
    starts = text.word_starts(ids, 3, 0)
    assert starts.tolist() == [0, 3]  # "e" starts a word but no 3-window fits
    assert text.decode(text.windows(ids, starts, 3), " abcde") == ["ab ", "cd "]
    with pytest.raises(ValueError, match="outside the alphabet"):
        text.encode("abz", " abc")
    held = text.HeldOut("the cat sat.")
    s = held.scores(["the dog sat", "cat sat. xy"])
    # 3-grams in the held-out text: "the" "he " " sa" "sat" of the first sample's 9, "cat"
    # "at " "t s" " sa" "sat" "at." of the second's 9.
    assert s["prec3"] == pytest.approx(10 / 18)
    # complete words: "the", "dog" | "cat", "sat." -> "sat"; "xy" is cut off.
    assert s["words"] == pytest.approx(3 / 4)
    grams4 = [g for w in ("the dog sat", "cat sat. xy") for g in text._ngrams(w, 4)]
    assert s["distinct4"] == len(set(grams4)) / len(grams4) == 15 / 16  # " sat" twice


def test_config_errors():
    for bad, match in [(dict(loss="wasserstein"), "loss"), (dict(discriminator="gru"),
                       "discriminator"), (dict(seq_len=3), "seq_len"), (dict(g_hidden=0),
                       "g_hidden"), (dict(alphabet="abc"), "alphabet"),
                       (dict(alphabet="aab "), "alphabet"), (dict(tau_end=2.0), "tau_end"),
                       (dict(tau_rate=-1.0), "tau_rate"), (dict(gp_weight=math.nan),
                       "gp_weight"), (dict(mle_lr=0.0), "mle_lr"), (dict(n_critic=-1),
                       "n_critic"), (dict(pretrain_steps=1.5), "pretrain_steps"),
                       (dict(betas=(0.5, 1.0)), "betas"), (dict(z_dim=True), "z_dim")]:
        with pytest.raises(ValueError, match=match):
            GSGANConfig(**bad)
    assert GSGANConfig(loss="wgan-gp").n_critic == 5 and GSGANConfig().n_critic == 1
    assert GSGANConfig(loss="wgan-gp").betas == (0.5, 0.9)
    assert GSGAN.defaults_for(GSGANConfig(loss="wgan-gp"))["lr"] == 5e-4
    assert GSGAN.defaults_for(GSGANConfig())["lr"] == GSGAN.train_defaults["lr"] == 1e-4
    assert REGISTRY["gsgan"] is GSGAN and GSGAN.description
    model = GSGAN(GSGANConfig(**TINY))
    assert isinstance(model.generator.lstm, LSTM) and isinstance(model.discriminator.lstm, LSTM)
    for bad, match in [(dict(n=0), "n must"), (dict(n=2, temperature=0.0), "temperature")]:
        with pytest.raises(ValueError, match=match):
            model.sample(**bad)


@pytest.mark.parametrize("loss,discriminator,lr,d_steps", [
    ("gan", "lstm", 1e-2, 20), ("gan", "cnn", 1e-2, 20), ("wgan-gp", "lstm", 3e-3, 30)])
def test_losses_move_as_they_should(corpus, loss, discriminator, lr, d_steps):
    """MLE pretraining lowers the NLL; then with the generator held (n_critic past the run) the
    discriminator learns to tell real from relaxed fakes; then with the discriminator held
    (learning rate 0) the generator learns to fool it. Nothing is NaN."""
    torch.manual_seed(0)
    pre, g_steps = 10, 12
    model = GSGAN(GSGANConfig(**TINY, loss=loss, discriminator=discriminator,
                              pretrain_steps=pre, n_critic=10**6))
    opts = model.configure_optimizers(lr)
    recs = []
    for step, x in enumerate(_batches(corpus, pre + d_steps + g_steps)):
        if step == pre + d_steps:
            model.config.n_critic = 1
            for group in opts["d"].param_groups:
                group["lr"] = 0.0
        recs.append({k: float(v) for k, v in model.train_step(x, opts, step).items()})
    mle, d_phase, g_phase = recs[:pre], recs[pre:pre + d_steps], recs[pre + d_steps:]
    assert all(math.isfinite(v) for r in recs for v in r.values())
    assert _mean(mle[-3:], "mle") < _mean(mle[:3], "mle") - 0.25
    assert all(r["d_loss"] == r["g_loss"] == 0.0 and r["tau"] == 1.0 for r in mle)
    assert d_phase[-1]["tau"] < d_phase[0]["tau"] == 1.0  # annealing
    if loss == "gan":  # balanced at log 4 first
        assert abs(d_phase[0]["d_loss"] - math.log(4)) < 0.05
        assert _mean(d_phase[-3:], "d_loss") < math.log(4) - 0.2
    else:
        # The critic's E[D(fake)] - E[D(real)] goes negative; its input gradients start tiny
        # (penalty ~ weight) and the penalty drives their norm to 1.
        assert _mean(d_phase[-3:], "d_loss") < -0.03 < d_phase[0]["d_loss"]
        assert d_phase[0]["gp"] > 5 and _mean(d_phase[-3:], "gp") < 0.1
        assert abs(_mean(d_phase[-3:], "grad_norm") - 1) < 0.1
    assert _mean(g_phase[-3:], "g_loss") < _mean(g_phase[:3], "g_loss") - 0.05
    assert _mean(g_phase[-3:], "d_loss") > _mean(g_phase[:3], "d_loss")
    for p in model.parameters():
        assert torch.isfinite(p).all()


@pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN")
def test_penalty_and_step_through_genfast_lstm_equal_torch_lstm(corpus):
    """The WGAN-GP critic step differentiates the critic's input gradient: the double backward
    of genfast.nn.LSTM. Same weights with torch.nn.LSTM (CPU, differentiable twice) give the
    same penalty, the same penalty gradients, and the same training step."""
    torch.manual_seed(0)
    ours = GSGAN(GSGANConfig(**TINY, loss="wgan-gp", pretrain_steps=0, n_critic=1))
    ref = revert_lstm(copy.deepcopy(ours))
    assert type(ref.discriminator.lstm) is torch.nn.LSTM and type(ours.discriminator.lstm) is LSTM
    x = _batches(corpus, 1)[0]
    real = torch.nn.functional.one_hot(x, len(text.ALPHABET)).float()
    fake = ours.generator.run(len(x), ours.latent(len(x)), TINY["seq_len"]).detach()
    grads = []
    for m in (ours, ref):
        with torch.backends.mkldnn.flags(enabled=False):
            gp = gradient_penalty(m.discriminator, real, fake, weight=10.0,
                                  generator=torch.Generator().manual_seed(1))
            params = list(m.discriminator.lstm.parameters())
            grads.append((gp.penalty, torch.autograd.grad(gp.penalty, params)))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-5, atol=1e-6)
    for a, b in zip(grads[0][1], grads[1][1], strict=True):
        assert float(a.abs().max()) > 0  # the penalty's gradient reaches every LSTM weight
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    results = []
    for m in (ours, ref):
        torch.manual_seed(2)
        with torch.backends.mkldnn.flags(enabled=False):
            results.append(_run(m, [x], lr=1e-3)[0])
    assert results[0] == pytest.approx(results[1], rel=1e-4, abs=1e-6)
    for (k, a), b in zip(ours.state_dict().items(), ref.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=k)


def test_generator_outputs_relaxed_or_straight_through_one_hots():
    torch.manual_seed(0)
    for hard in (False, True):
        model = GSGAN(GSGANConfig(**TINY, hard=hard))
        model.generator.gumbel.tau = 0.5
        y = model.generator.run(3, model.latent(3), TINY["seq_len"])
        assert y.shape == (3, TINY["seq_len"], len(text.ALPHABET))
        torch.testing.assert_close(y.sum(-1), torch.ones(3, TINY["seq_len"]))
        assert bool(((y == 0) | (y == 1)).all()) == hard
        # Gradients reach the generator through every fed-back step (straight-through too).
        (y[:, -1] * torch.randn_like(y[:, -1])).sum().backward()
        assert float(model.generator.lstm.weight_hh_l0.grad.abs().max()) > 0
        assert float(model.generator.embed.weight.grad[: len(text.ALPHABET)].abs().max()) > 0


def test_resume_is_exact_across_the_pretraining_boundary(corpus, tmp_path):
    def make():
        return GSGAN(GSGANConfig(**TINY, loss="wgan-gp", pretrain_steps=2, n_critic=2))

    tc = dict(batch_size=16, checkpoint_every=3, sample_every=3, log_every=1)
    torch.manual_seed(0)
    a = make()
    text.fit(a, "gsgan", corpus, _trainer.TrainConfig(steps=6, **tc), tmp_path / "a",
             progress=False)
    torch.manual_seed(0)
    b = make()
    text.fit(b, "gsgan", corpus, _trainer.TrainConfig(steps=3, **tc), tmp_path / "b",
             progress=False)
    b = make()
    text.fit(b, "gsgan", corpus, _trainer.TrainConfig(steps=6, **tc), tmp_path / "b",
             resume=True, progress=False)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(va, vb, rtol=0, atol=0, msg=k)
    assert _records(tmp_path / "a") == _records(tmp_path / "b")
    lines = (tmp_path / "a" / "samples_step000006.txt").read_text().splitlines()
    assert lines[0].startswith("# gsgan step 6: held-out prec3=")
    assert len(lines) == 1 + text.SNAPSHOT_SAMPLES
    assert all(len(ln) == TINY["seq_len"] + 2 and set(ln[1:-1]) <= set(text.ALPHABET)
               for ln in lines[1:])


def test_samples_are_strings_of_the_alphabet_and_seeded(corpus):
    torch.manual_seed(0)
    model = GSGAN(GSGANConfig(**TINY)).eval()
    s = model.sample(5, generator=torch.Generator().manual_seed(3))
    assert len(s) == 5 and all(len(x) == TINY["seq_len"] for x in s)
    assert s == model.sample(5, generator=torch.Generator().manual_seed(3))
    assert s != model.sample(5, generator=torch.Generator().manual_seed(4))
    # Near-zero temperature: every draw is the argmax path, so all streams agree given z.
    cold = GSGAN(GSGANConfig(**{**TINY, "z_dim": 0})).eval()
    assert len(set(cold.sample(4, temperature=1e-6))) == 1
    scores = model.evaluate(corpus.heldout)
    assert set(scores) == {"prec3", "prec4", "distinct4", "words"}
    assert all(0.0 <= v <= 1.0 for v in scores.values())


def test_cli_trains_resumes_and_samples(tmp_path, capsys):
    corpus_file = tmp_path / "corpus.txt"
    corpus_file.write_text(load_text("lee-test"))
    run = tmp_path / "run"
    common = ["train", "gsgan", "--data", str(corpus_file), "--out", str(run), "--threads", "1",
              "--no-progress", "--batch-size", "8", "--sample-every", "3",
              "--checkpoint-every", "3", "--set", "pretrain_steps=2"]
    common += [f"--set={k}={v}" for k, v in TINY.items()]
    assert main(common + ["--steps", "3", "--set", "loss=wgan-gp"]) == 0
    out = capsys.readouterr().out
    assert "gsgan (wgan-gp, lstm discriminator): 3 steps (2 MLE pretraining)" in out
    assert "untrained generator: prec3" in out and "training text itself: prec3" in out
    assert main(common + ["--steps", "5", "--resume"]) == 0
    out = capsys.readouterr().out
    assert "(wgan-gp, lstm" in out  # the checkpoint's config came back
    assert _trainer.load_checkpoint(str(run / "checkpoint.pt"))["step"] == 5
    dest = tmp_path / "s.txt"
    assert main(["sample", "gsgan", "--checkpoint", str(run / "checkpoint.pt"), "--n", "7",
                 "--out", str(dest), "--temperature", "0.8"]) == 0
    lines = dest.read_text().splitlines()
    assert len(lines) == 7 and all(len(ln) == TINY["seq_len"] for ln in lines)
    assert "characters/s" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="needs --checkpoint"):
        main(["sample", "gsgan"])
    with pytest.raises(SystemExit, match="--set: loss must be one of"):
        main(["train", "gsgan", "--set", "loss=hinge", "--out", str(tmp_path / "x")])


def test_backends_agree_on_a_training_step(corpus):
    """The model's numbers do not depend on which genfast backend runs its ops on the CPU."""
    x = _batches(corpus, 1)[0]
    results = []
    for backend in ("reference", "auto"):
        torch.manual_seed(0)
        model = GSGAN(GSGANConfig(**TINY, loss="wgan-gp", pretrain_steps=0, n_critic=1))
        torch.manual_seed(1)
        with genfast.use_backend(backend):
            results.append(_run(model, [x], lr=1e-3)[0])
    assert results[0] == pytest.approx(results[1], rel=1e-4, abs=1e-6)
