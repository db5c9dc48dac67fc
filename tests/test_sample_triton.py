"""The Triton Gumbel-max sampler (kernels/sample.py) against the contract of genfast/ops/sample.py:
exact indices on every path (one row a program, short rows packed with a partial last pack, long
rows in chunks), the radix-select thresholds on random logits, heavy ties, hostile rows and long
flat tails, and low precision. Runs on the CPU under the Triton interpreter.

The oracle is the reference backend (genfast.ops.sample: it sorts and walks a float32 cumsum,
where the kernel radix-selects over integer keys with fixed-point masses), and for kept sets the
contract's walk written out below."""

import os

os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton

import math

import pytest
import torch
from _helpers import hostile_rows as shared_hostile_rows
from _helpers import layouts

pytest.importorskip("triton")

from genfast import random as grandom  # noqa: E402
from genfast.kernels import sample as K  # noqa: E402
from genfast.ops.gumbel import ref_rows  # noqa: E402
from genfast.ops.sample import _ref_sample  # noqa: E402

pytestmark = pytest.mark.triton
nan_row_warnings = pytest.mark.filterwarnings(
    "ignore:invalid value encountered:RuntimeWarning", "ignore:overflow encountered:RuntimeWarning",
    "ignore:All-NaN slice:RuntimeWarning",
)

INF = math.inf
ROWS = 7  # odd: a pack of 4 rows leaves a partial last pack
SAMPLERS = {  # (inv_temperature, top_k, top_p)
    "plain": (1.0, 0, 1.0),
    "greedy": (INF, 0, 1.0),
    "top_k": (1 / 0.7, 5, 1.0),
    "top_p": (1 / 1.3, 0, 0.8),
    "top_k+top_p": (1.0, 10, 0.5),
}
# (n, block, rows_per_program): one row a program, packed, tile_config's choice, chunked (one
# row a program, or a pack of rows walked together: the interpreter runs that far faster)
PATHS = [(7, None, 1), (33, None, 4), (129, None, None), (45, 16, 1), (45, 16, 8),
         (600, None, 8)]
PATH_IDS = ["7-row", "33-packed", "129-auto", "45-chunked", "45-chunked-packed", "600-chunked"]


def seed_t(seed: int) -> torch.Tensor:
    return grandom.make_seed(torch.device("cpu"), seed=seed)


def sample(x, seed, inv_temp, top_k=0, top_p=1.0, block=None, rows_per_program=None):
    out = torch.empty(x.shape[0], dtype=torch.int64)
    return K.sample_categorical(x, seed_t(seed), inv_temp, top_k, top_p, out, block=block,
                                rows_per_program=rows_per_program)


def oracle(x, seed, inv_temp, top_k=0, top_p=1.0):
    return _ref_sample(x.float(), seed_t(seed), inv_temp, top_k, top_p)


def walk_kept(s: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """The contract's kept set K, row by row: top_k by sorting, top_p by walking descending s."""
    keep = torch.ones_like(s, dtype=torch.bool)
    if 0 < top_k < s.shape[1]:
        keep = s >= s.topk(top_k, dim=1).values[:, -1:]
    if top_p < 1:
        p = torch.softmax(torch.where(keep, s, -INF), dim=1)
        for r in range(s.shape[0]):
            order = torch.argsort(s[r], descending=True, stable=True)
            order = order[keep[r, order]]
            reached = torch.nonzero(torch.cumsum(p[r, order], 0) >= top_p)
            if len(reached):
                keep[r] &= s[r] >= s[r, order[reached[0, 0]]]
    return keep


# ----------------------------------------------------------------------------- exact indices


@pytest.mark.parametrize("n,block,rp", PATHS, ids=PATH_IDS)
@pytest.mark.parametrize("name", list(SAMPLERS))
def test_indices_match_the_oracle_on_every_path(n, block, rp, name):
    inv_temp, top_k, top_p = SAMPLERS[name]
    x = torch.randn(ROWS, n, generator=torch.Generator().manual_seed(7 * n)) * 2
    padded = dict(layouts(x))["row stride > n"]  # the kernel reads the view in place
    idx = sample(padded, 0xDEADBEEFCAFEBABE, inv_temp, top_k, top_p, block, rp)
    assert torch.equal(idx, oracle(x, 0xDEADBEEFCAFEBABE, inv_temp, top_k, top_p))


def test_every_layout_the_launcher_takes():
    x = torch.randn(5, 19, generator=torch.Generator().manual_seed(19)) * 2
    for name, view in layouts(x):
        if name == "column stride != 1":  # the op copies such views; the launcher refuses them
            with pytest.raises(ValueError, match="column stride 1"):
                sample(view, 4, 1.0, 3, 0.8)
            continue
        assert torch.equal(sample(view, 4, 1.0, 3, 0.8), oracle(view.contiguous(), 4, 1.0, 3, 0.8))


@pytest.mark.parametrize("rp,block", [(1, None), (4, None), (8, 16)], ids=["row", "packed",
                                                                          "chunked"])
@pytest.mark.parametrize("top_k,top_p", [(3, 1.0), (0, 0.6), (12, 0.9), (1, 1.0), (0, 0.01)])
def test_heavy_ties_are_kept_exactly(rp, block, top_k, top_p):
    # Logits from five values: every threshold falls inside a tie group, which the contract keeps
    # whole. Any member dropped or added changes some row's index against the oracle.
    gen = torch.Generator().manual_seed(top_k * 10 + int(top_p * 100))
    x = torch.randint(0, 5, (ROWS, 40), generator=gen).float() * 0.5
    idx = sample(x, 3, 1.0, top_k, top_p, block, rp)
    assert torch.equal(idx, oracle(x, 3, 1.0, top_k, top_p))
    xp, mp = ref_rows(x)
    kept = walk_kept(xp - mp, top_k, top_p)
    assert kept[torch.arange(ROWS), idx].all()


KEPT_LOGITS = {0: 3.0, 1: 2.0, 2: -1.0, 3: 2.0, 6: 0.5, 7: 1.0, 8: -2.0, 9: 0.0, 10: 1.5, 17: 2.0}
KEPT_CASES = {  # (top_k, top_p, K) at inv_temperature 0.5
    "top_k-ties": (3, 1.0, {0, 1, 3, 17}),  # the 3rd largest s is held by three columns: all kept
    "top_p-ties": (0, 0.45, {0, 1, 3, 17}),  # the walk reaches 0.45 at the 2nd of three tied s
    "both": (2, 0.3, {0}),  # top_p over the renormalised top_k set: p(col 0) 0.35 there, 0.23 all
    "top_k=1": (1, 1.0, {0}),
}


@pytest.mark.parametrize("name,block,rp", [(c, None, None) for c in KEPT_CASES]
                         + [("top_p-ties", None, 1), ("top_p-ties", 16, 16), ("both", 16, 16)],
                         ids=list(KEPT_CASES) + ["top_p-ties-row", "top_p-ties-chunked",
                                                 "both-chunked"])
def test_kept_sets_keep_ties(name, block, rp):
    top_k, top_p, kept = KEPT_CASES[name]
    logits = torch.full((20,), -INF)
    logits[list(KEPT_LOGITS)] = torch.tensor(list(KEPT_LOGITS.values()))
    x = logits.expand(16, -1).contiguous()  # one row per draw: rows get independent noise
    s = ref_rows(x[:1])[0] * 0.5
    assert set(torch.nonzero(walk_kept(s, top_k, top_p)[0]).flatten().tolist()) == kept
    idx = sample(x, 1, 0.5, top_k, top_p, block, rp)  # seed 1 draws each of {0, 1, 3, 17}
    assert torch.equal(idx, oracle(x, 1, 0.5, top_k, top_p))
    assert set(idx.tolist()) == kept  # never outside K, and every member of K gets drawn


# ----------------------------------------------------------------------------- hostile rows


def hostile_rows(n: int) -> torch.Tensor:
    x = shared_hostile_rows(n, rows=7)
    x[6, 1:] = -30.0  # a long flat tail of tiny masses: the top_p walk ends inside it
    x[6, 0] = 0.0
    return x


@nan_row_warnings
@pytest.mark.parametrize("name,block,rp", [(s, None, 1) for s in SAMPLERS]
                         + [("top_k+top_p", None, 8), ("plain", 16, 8), ("top_k+top_p", 16, 8),
                            ("greedy", 16, 8)],
                         ids=[f"{s}-row" for s in SAMPLERS] + ["top_k+top_p-packed",
                                                               "plain-chunked",
                                                               "top_k+top_p-chunked",
                                                               "greedy-chunked"])
def test_hostile_rows(name, block, rp):
    inv_temp, top_k, top_p = SAMPLERS[name]
    n = 33
    x = hostile_rows(n)
    idx = sample(x, 17, inv_temp, top_k, top_p, block, rp)
    ref = oracle(x, 17, inv_temp, top_k, top_p)
    ok = [0, 1, 2, 3, 5, 6]  # row 4 holds a NaN: any index in range
    assert torch.equal(idx[ok], ref[ok])
    assert 0 <= idx[4] < n
    assert idx[1] in (n // 2, n - 1)  # only the +inf entries carry mass
    assert idx[2] % 2 == 1  # never a -inf column


@pytest.mark.parametrize("top_p", [0.9999, 0.99999999])
def test_top_p_ending_in_a_flat_tail(top_p):
    # Column 0 holds 1 / (1 + 599 e^-12) of the mass; the walk needs part of the tail, where all
    # 599 values tie, so K is either {0} or the whole row, decided by tiny fixed-point masses.
    x = torch.full((ROWS, 600), -12.0)
    x[:, 0] = 0.0
    for block, rp in ((None, None), (256, 8)):
        assert torch.equal(sample(x, 5, 1.0, 0, top_p, block, rp), oracle(x, 5, 1.0, 0, top_p))


# ----------------------------------------------------------------------------- arithmetic


def test_fixed_point_masses_cannot_overflow():
    for n in (1, 2, 3, 1000, 2**20 + 1, 2**31 - 1):
        scale = K.mass_scale(n)
        assert n * scale <= 2**62 < 2 * n * scale  # the finest scale whose sums fit int64
        assert math.log2(scale).is_integer()  # w * scale is exact in float32


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("block,rp", [(None, 4), (16, 8)], ids=["packed", "chunked"])
def test_low_precision(dtype, block, rp):
    x = (torch.randn(ROWS, 33, generator=torch.Generator().manual_seed(12)) * 2).to(dtype)
    for inv_temp, top_k, top_p in SAMPLERS.values():
        assert torch.equal(sample(x, 3, inv_temp, top_k, top_p, block, rp),
                           oracle(x, 3, inv_temp, top_k, top_p))


def test_bad_arguments_raise_clear_errors():
    x = torch.randn(2, 8)
    out = torch.empty(2, dtype=torch.int64)
    with pytest.raises(ValueError, match="out must be torch.int64"):
        K.sample_categorical(x, seed_t(1), 1.0, 0, 1.0, torch.empty(2, dtype=torch.int32))
    with pytest.raises(ValueError, match="top_k must be an int >= 0"):
        K.sample_categorical(x, seed_t(1), 1.0, -1, 1.0, out)
    with pytest.raises(ValueError, match="top_p must be > 0"):
        K.sample_categorical(x, seed_t(1), 1.0, 0, 0.0, out)
    with pytest.raises(ValueError, match="inv_temperature must be > 0"):
        K.sample_categorical(x, seed_t(1), 0.0, 0, 1.0, out)
    with pytest.raises(ValueError, match="at least one column"):
        K.sample_categorical(x[:, :0], seed_t(1), 1.0, 0, 1.0, out)
