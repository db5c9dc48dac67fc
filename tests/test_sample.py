"""sample op family (genfast.sample_categorical) through the public API: every backend against the
reference index for index, kept sets with ties, sampler statistics (chi-square against the exact
distribution), torch.library / torch.compile / torch.func integration, seeds, hostile and bad
input, and torch.export of a model using both Gumbel ops. The Triton launcher (radix select,
packed and chunked rows) is test_sample_triton.py."""

import math

import pytest
import torch
from _helpers import fast_backends, layouts
from scipy import stats
from torch.utils._python_dispatch import TorchDispatchMode

import genfast
from genfast import backends, random
from genfast.ops import sample as S

FAST = fast_backends("sample")
ALL = ["reference", *FAST]
CPU_ONLY = [b for b in ALL if b != "triton"]  # statistics need many rows: not the interpreter
SHAPES = [(1, 1), (3, 7), (5, 33), (2, 129), (3, 1000)]
FILTERS = [{}, {"top_k": 3}, {"top_p": 0.6}, {"top_k": 5, "top_p": 0.8}, {"temperature": 0.0},
           {"temperature": 2.5}]


def _logits(shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * 3).to(dtype)


def test_registered_as_its_own_op():
    assert "sample" in backends.registered_ops()
    assert S.SPEC.name == "sample"
    assert "sample" in genfast.info()


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("filt", FILTERS, ids=lambda f: "-".join(f"{k}={v}" for k, v in f.items())
                         or "plain")
def test_indices_match_reference_exactly(backend, shape, filt):
    x = _logits(shape, seed=7)
    ref = genfast.sample_categorical(x, seed=99, backend="reference", **filt)
    got = genfast.sample_categorical(x, seed=99, backend=backend, **filt)
    assert got.dtype == torch.int64 and got.shape == shape[:1]
    assert torch.equal(got, ref)


@pytest.mark.parametrize("backend", ALL)
def test_every_memory_layout_and_leading_dims(backend):
    x = _logits((6, 25))
    for name, view in layouts(x):
        want = genfast.sample_categorical(view.contiguous(), top_k=7, seed=8, backend="reference")
        got = genfast.sample_categorical(view, top_k=7, seed=8, backend=backend)
        assert torch.equal(got, want), name
    x3 = _logits((2, 3, 11))
    assert torch.equal(genfast.sample_categorical(x3, top_p=0.7, seed=1, backend=backend),
                       genfast.sample_categorical(x3.reshape(6, 11), top_p=0.7, seed=1,
                                                  backend="reference").reshape(2, 3))


# Ten finite logits, three of them tied at 2.0 (one in the second half of the row); the -inf
# columns carry no mass. At temperature 2 the kept sets are those of the contract's walk.
TIED = {0: 3.0, 1: 2.0, 2: -1.0, 3: 2.0, 6: 0.5, 7: 1.0, 8: -2.0, 9: 0.0, 10: 1.5, 17: 2.0}
KEPT = {  # (top_k, top_p, K)
    "top_k-ties": (3, None, {0, 1, 3, 17}),  # the 3rd largest is held by three columns: all kept
    "top_p-ties": (None, 0.45, {0, 1, 3, 17}),  # the walk reaches 0.45 inside the tie
    "both": (2, 0.3, {0}),  # top_p over the renormalised top_k set
    "top_k=1": (1, None, {0}),
}


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("case", list(KEPT))
def test_kept_sets_keep_ties(backend, case):
    top_k, top_p, kept = KEPT[case]
    logits = torch.full((20,), -math.inf)
    logits[list(TIED)] = torch.tensor(list(TIED.values()))
    x = logits.expand(64, -1)  # one row per draw: rows get independent noise
    idx = genfast.sample_categorical(x, 2.0, top_k, top_p, seed=1, backend=backend)
    assert set(idx.tolist()) == kept  # never outside K, and every member of K gets drawn


# ------------------------------------------------------------------ statistics
def _chisq_pvalue(counts: torch.Tensor, probs: torch.Tensor) -> float:
    keep = probs > 0
    assert counts[~keep].sum() == 0, "sampled a class of probability zero"
    n = counts.sum().item()
    return stats.chisquare(counts[keep].double().numpy(), (probs[keep] * n).double().numpy()).pvalue


@pytest.mark.parametrize("backend", CPU_ONLY)
@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, None, None), (0.6, None, None),
                                                     (1.0, 3, None), (1.0, None, 0.7),
                                                     (1.4, 4, 0.8)])
def test_frequencies_chi_square(backend, temperature, top_k, top_p):
    logits = torch.tensor([0.2, 0.8, 0.1, -1.0, 1.5, 0.0])
    draws = 20000
    idx = genfast.sample_categorical(logits.expand(draws, -1), temperature, top_k, top_p,
                                     seed=2024, backend=backend)
    p = torch.softmax(logits.double() / temperature, -1)
    if top_k is not None:
        p = torch.where(logits >= logits.topk(top_k).values[-1], p, 0)
        p = p / p.sum()
    if top_p is not None:
        sp, order = p.sort(descending=True)
        cut = int((sp.cumsum(0) < top_p).sum()) + 1
        p = torch.zeros_like(p).scatter(0, order[:cut], sp[:cut])
        p = p / p.sum()
    assert _chisq_pvalue(torch.bincount(idx, minlength=6), p) > 1e-4


def test_hard_gumbel_softmax_and_sampler_draw_the_same_class():
    # Both are argmax(x' - m' + g) at temperature 1 with the same seed: one index per row.
    x = _logits((50, 13))
    y = genfast.gumbel_softmax(x, 0.5, True, seed=77, backend="reference")
    assert torch.equal(y.argmax(-1), genfast.sample_categorical(x, seed=77, backend="reference"))


# ------------------------------------------------------------------ integration
@pytest.mark.parametrize("backend", CPU_ONLY)
def test_opcheck_compile_and_vmap(backend):
    x = _logits((3, 9))
    seed = random.make_seed(x.device, seed=5)
    torch.library.opcheck(S.sample_categorical_op, (x, seed, 1.0, 3, 0.9, backend))
    torch._dynamo.reset()

    @torch.compile(fullgraph=True, backend="aot_eager")
    def step(t):
        return genfast.sample_categorical(t, temperature=0.8, top_k=4, seed=18, backend=backend)

    assert torch.equal(step(x), genfast.sample_categorical(x, temperature=0.8, top_k=4, seed=18,
                                                           backend=backend))
    xs = _logits((4, 3, 9))
    per_slice = torch.stack([genfast.sample_categorical(xs[i], top_p=0.8, seed=2, backend=backend)
                             for i in range(4)])
    got = torch.func.vmap(lambda t: genfast.sample_categorical(t, top_p=0.8, seed=2,
                                                               backend=backend))(xs)
    assert torch.equal(got, per_slice)


def test_torch_export_of_a_small_model():
    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(6, 10)

        def forward(self, h):
            logits = self.proj(h)
            return (genfast.gumbel_softmax(logits, 0.5, True, seed=3),
                    genfast.sample_categorical(logits, top_p=0.9, seed=4))

    torch.manual_seed(0)
    model, h = Model(), torch.randn(5, 6)
    ep = torch.export.export(model, (h,))
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert {"genfast.gumbel_softmax_fwd.default", "genfast.sample_categorical.default"} <= targets
    for got, want in zip(ep.module()(h), model(h), strict=True):
        assert torch.equal(got, want)


class _Ops(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def test_int_seed_is_a_device_fill_not_a_host_copy():
    # torch.tensor([s], device=cuda) stages s on the host and copies it synchronously; a fill
    # kernel does not. On the meta device the dispatched ops show which one ran.
    with _Ops() as rec:
        seed = random.make_seed(torch.device("meta"), seed=2**64 - 3)
    assert rec.ops == ["aten.full.default"] and seed.dtype == torch.int64
    assert random.make_seed(torch.device("cpu"), seed=2**64 - 3).item() == -3


def test_seeds_generators_and_manual_seed():
    x = _logits((8, 20))
    assert torch.equal(genfast.sample_categorical(x, seed=1), genfast.sample_categorical(x, seed=1))
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(genfast.sample_categorical(x, generator=g1),
                       genfast.sample_categorical(x, generator=g2))
    torch.manual_seed(3)
    s1 = genfast.sample_categorical(x)
    torch.manual_seed(3)
    assert torch.equal(s1, genfast.sample_categorical(x))


# ------------------------------------------------------------------ hostile and bad input
@pytest.mark.parametrize("backend", ALL)
def test_hostile_rows(backend):
    inf = math.inf
    x = torch.tensor([[-inf, -inf, -inf, -inf],
                      [1.0, inf, -2.0, inf],
                      [3e38, -3e38, 1e38, 0.0],
                      [0.0, -inf, 5.0, -inf]])
    for filt in ({}, {"top_k": 2}, {"top_p": 0.5}):
        s = genfast.sample_categorical(x, seed=9, backend=backend, **filt)
        assert s[1] in (1, 3) and s[3] in (0, 2)
        assert torch.equal(s, genfast.sample_categorical(x, seed=9, backend="reference", **filt))
    s_greedy = genfast.sample_categorical(x, temperature=0, backend=backend)
    assert s_greedy.tolist() == [0, 1, 0, 2]
    nan_rows = torch.full((3, 5), math.nan)
    nan_rows[1, :2] = 1.0
    for filt in ({}, {"top_k": 2}, {"top_p": 0.5}, {"temperature": 0}):
        idx = genfast.sample_categorical(nan_rows, seed=1, backend=backend, **filt)
        assert ((idx >= 0) & (idx < 5)).all()


def test_empty_inputs():
    assert genfast.sample_categorical(torch.empty(0, 5), seed=1).shape == (0,)
    assert genfast.sample_categorical(torch.empty(2, 0, 5), seed=1).shape == (2, 0)


@pytest.mark.parametrize("call,err,match", [
    (lambda x: genfast.sample_categorical(x, top_k=0), ValueError, "top_k"),
    (lambda x: genfast.sample_categorical(x, top_k=2.5), TypeError, "top_k"),
    (lambda x: genfast.sample_categorical(x, top_k=True), TypeError, "top_k"),
    (lambda x: genfast.sample_categorical(x, top_p=0.0), ValueError, "top_p"),
    (lambda x: genfast.sample_categorical(x, top_p=1.5), ValueError, "top_p"),
    (lambda x: genfast.sample_categorical(x, top_p=math.nan), ValueError, "top_p"),
    (lambda x: genfast.sample_categorical(x, temperature=-0.1), ValueError, "temperature"),
    (lambda x: genfast.sample_categorical(x, temperature=math.inf), ValueError, "temperature"),
    (lambda x: genfast.sample_categorical(x[:, :0]), ValueError, "empty"),
    (lambda x: genfast.sample_categorical(x.long()), TypeError, "logits"),
    (lambda x: genfast.sample_categorical(x[0, 0]), ValueError, "logits"),
    (lambda x: genfast.sample_categorical(x, seed=1, generator=torch.Generator()), ValueError,
     "seed"),
    (lambda x: genfast.sample_categorical(x, backend="cuda"), genfast.BackendError, "cuda"),
])
def test_bad_input_gets_a_clear_error(call, err, match):
    with pytest.raises(err, match=match):
        call(torch.randn(3, 4))
