"""genfast.nn.CausalSelfAttention against nanoGPT's module (written here from karpathy/nanoGPT
model.py's semantics: both its flash (SDPA, no mask buffer) and its materialised path (a
``bias`` tril buffer)), state_dicts both ways, KVCache decoding == the full causal forward,
dropout semantics, double backward, and bad input."""

import math

import pytest
import torch
import torch.nn.functional as F
from _helpers import fast_backends
from torch import nn

from genfast.nn import CausalSelfAttention, KVCache

# genfast.attention's reference and, where this build has it, the C++ kernel (float64 here).
BACKENDS = ["reference", *[b for b in fast_backends("attention") if b == "cpu"]]


class NanoGPTAttention(nn.Module):
    """nanoGPT's CausalSelfAttention (config fields as arguments)."""

    def __init__(self, n_embd, n_head, bias=True, dropout=0.0, block_size=64, flash=True):
        super().__init__()
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=bias)
        self.c_proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.attn_dropout = nn.Dropout(dropout)
        self.resid_dropout = nn.Dropout(dropout)
        self.n_head, self.n_embd, self.dropout, self.flash = n_head, n_embd, dropout, flash
        if not flash:
            self.register_buffer("bias", torch.tril(torch.ones(block_size, block_size))
                                 .view(1, 1, block_size, block_size))

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if self.flash:
            y = F.scaled_dot_product_attention(
                q, k, v, dropout_p=self.dropout if self.training else 0, is_causal=True)
        else:
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
            att = att.masked_fill(self.bias[:, :, :T, :T] == 0, float("-inf"))
            att = self.attn_dropout(F.softmax(att, dim=-1))
            y = att @ v
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


def _pair(C=24, H=3, bias=True, flash=False, seed=0, backend=None):
    torch.manual_seed(seed)
    ref = NanoGPTAttention(C, H, bias=bias, flash=flash).double()
    ours = CausalSelfAttention(C, H, bias=bias, backend=backend).double()
    ours.load_state_dict(ref.state_dict())
    return ref, ours


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("T", [1, 7, 13])
def test_forward_and_gradients_equal_nanogpt(bias, T, backend):
    ref, ours = _pair(bias=bias, backend=backend)
    x = torch.randn(2, T, 24, dtype=torch.float64, requires_grad=True)
    y_ref, y = ref(x), ours(x)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-12)
    g = torch.randn_like(y)
    grads_ref = torch.autograd.grad(y_ref, [x, *ref.parameters()], g)
    grads = torch.autograd.grad(y, [x, *ours.parameters()], g)
    for a, b in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_state_dict_both_ways():
    torch.manual_seed(1)
    flash, plain = NanoGPTAttention(16, 4), NanoGPTAttention(16, 4, bias=True, flash=False)
    assert "bias" in plain.state_dict() and "bias" not in flash.state_dict()
    ours = CausalSelfAttention(16, 4)
    for ref in (flash, plain):  # the mask buffer of the plain path is accepted and dropped
        ours.load_state_dict(ref.state_dict())
        for k, p in ours.state_dict().items():
            torch.testing.assert_close(p, ref.state_dict()[k], rtol=0, atol=0)
    fresh = NanoGPTAttention(16, 4)
    fresh.load_state_dict(ours.state_dict())  # strict: the same keys and shapes
    assert set(ours.state_dict()) == set(fresh.state_dict())
    missing = NanoGPTAttention(16, 4, flash=False).load_state_dict(ours.state_dict(),
                                                                   strict=False)
    assert missing.missing_keys == ["bias"] and not missing.unexpected_keys
    bad = plain.state_dict()
    bad["bias"] = torch.ones_like(bad["bias"])
    with pytest.raises(ValueError, match="causal mask buffer"):
        ours.load_state_dict(bad)
    no_bias = CausalSelfAttention(16, 4, bias=False)
    no_bias.load_state_dict(NanoGPTAttention(16, 4, bias=False).state_dict())
    assert no_bias.c_attn.bias is None


@pytest.mark.parametrize("backend", BACKENDS)
def test_cache_decoding_equals_the_full_forward(backend):
    _, ours = _pair(C=32, H=4, seed=2, backend=backend)
    x = torch.randn(3, 11, 32, dtype=torch.float64)
    with torch.no_grad():
        full = ours(x)
        cache = ours.new_cache(3, 16)
        k_ptr = cache.k.data_ptr()
        steps = [ours(x[:, t:t + 1], cache) for t in range(11)]
        torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-12, atol=1e-13)
        assert cache.length == 11 and cache.k.data_ptr() == k_ptr
        cache.reset()  # prefill in uneven chunks (several queries against a longer key set)
        chunks = [ours(x[:, a:b], cache) for a, b in ((0, 5), (5, 6), (6, 9), (9, 11))]
        torch.testing.assert_close(torch.cat(chunks, 1), full, rtol=1e-12, atol=1e-13)


def test_kvcache_appends_in_place_and_returns_views():
    cache = KVCache(2, 3, 8, 4, dtype=torch.float64)
    k, v = torch.randn(2, 3, 5, 4, dtype=torch.float64), torch.randn(2, 3, 5, 4,
                                                                      dtype=torch.float64)
    ka, va = cache.append(k[:, :, :3], v[:, :, :3])
    assert ka.data_ptr() == cache.k.data_ptr() and ka.shape == (2, 3, 3, 4)
    ka, va = cache.append(k[:, :, 3:], v[:, :, 3:])
    assert cache.length == 5 and ka._base is cache.k and va._base is cache.v
    torch.testing.assert_close(ka, k, rtol=0, atol=0)
    torch.testing.assert_close(va, v, rtol=0, atol=0)
    with pytest.raises(ValueError, match="cache full: 5 positions held \\+ 4 new > max_len=8"):
        cache.append(k[:, :, :4], v[:, :, :4])
    with pytest.raises(ValueError, match="k must be \\(2, 3, T, 4\\)"):
        cache.append(k[:1], v[:1])
    with pytest.raises(ValueError, match="the cache holds torch.float64"):
        cache.append(k.float(), v.float())
    with pytest.raises(ValueError, match="the same T"):
        cache.append(k[:, :, :1], v[:, :, :2])
    with pytest.raises(ValueError, match="max_len must be"):
        KVCache(1, 1, 0, 4)
    assert "length=5" in repr(cache)


def test_dropout_is_on_the_residual_only():
    torch.manual_seed(3)
    ref = NanoGPTAttention(16, 2, dropout=0.5)
    ours = CausalSelfAttention(16, 2, dropout=0.5)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 9, 16)
    ref.eval(), ours.eval()
    y_eval = ours(x)
    torch.testing.assert_close(y_eval, ref(x))
    ours.train()
    torch.manual_seed(4)
    y = ours(x)
    torch.manual_seed(4)
    torch.testing.assert_close(y, F.dropout(y_eval, 0.5, training=True))
    assert isinstance(ours.attn_dropout, nn.Identity)


@pytest.mark.parametrize("backend", BACKENDS)
def test_double_backward_equals_the_materialised_reference(backend):
    ref, ours = _pair(C=16, H=2, seed=5, backend=backend)
    x = torch.randn(2, 6, 16, dtype=torch.float64, requires_grad=True)
    outs = []
    for m in (ref, ours):
        params = [x, *m.parameters()]
        y = m(x)
        gx, *gp = torch.autograd.grad((y * y.tanh()).sum(), params, create_graph=True)
        penalty = gx.pow(2).sum() + sum(g.pow(2).sum() for g in gp)  # an R1-style term
        outs.append(torch.autograd.grad(penalty, params))
    for a, b in zip(*outs, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-11)


def test_errors():
    with pytest.raises(ValueError, match="divisible by n_head"):
        CausalSelfAttention(10, 3)
    with pytest.raises(ValueError, match="dropout must be"):
        CausalSelfAttention(8, 2, dropout=1.0)
    with pytest.raises(ValueError, match="n_head must be"):
        CausalSelfAttention(8, 0)
    with pytest.raises(TypeError, match="bias must be a bool"):
        CausalSelfAttention(8, 2, bias=1)
    m = CausalSelfAttention(8, 2, block_size=6)
    with pytest.raises(ValueError, match="x must be \\(batch, time, 8\\)"):
        m(torch.randn(2, 5, 7))
    with pytest.raises(ValueError, match="context of 7 positions \\(0 cached \\+ 7 new\\) "
                                         "exceeds block_size=6"):
        m(torch.randn(1, 7, 8))
    cache = m.new_cache(1)
    assert cache.max_len == 6
    with pytest.raises(RuntimeError, match="inference only"):
        m(torch.randn(1, 2, 8), cache)
    with torch.no_grad():
        m(torch.randn(1, 4, 8), cache)
        with pytest.raises(ValueError, match="context of 7 positions \\(4 cached \\+ 3 new\\)"):
            m(torch.randn(1, 3, 8), cache)
    with pytest.raises(TypeError, match="cache must be a KVCache"):
        m(torch.randn(1, 2, 8), cache=object())
    with pytest.raises(ValueError, match="backend"):
        CausalSelfAttention(8, 2, backend="gpu")
    with pytest.raises(ValueError, match="max_len is required"):
        CausalSelfAttention(8, 2).new_cache(1)
