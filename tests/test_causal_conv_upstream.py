"""causal-conv1d's own test cases (Dao-AILab/causal-conv1d tests/test_causal_conv1d.py:
test_causal_conv1d and test_causal_conv1d_update) run against genfast, through an adapter from
its API to ours: its weight is (dim, width) for a depthwise conv (ours: (dim, 1, width) with
groups=dim), its states are taken as ours, and its weights are float32 while x may be half
(genfast wants one dtype: the weight is cast to x's). Their reference functions are restated
here from their documented semantics (the left-padded depthwise conv; the update's shift mode,
and its ring mode keyed by cache_seqlens), and their grid and tolerances are kept, with sizes
cut where the Triton interpreter or two CPU cores could not run them in seconds.
"""

import pytest
import torch
import torch.nn.functional as F
from _helpers import fast_backends

import genfast

BACKENDS = ["reference", *fast_backends("causal_conv")]
SEQLENS = [1, 2, 8, 16, 32, 64, 128, 129, 130, 151, 256, 372, 512, 784, 1024, 1134, 2048, 4096]
TOL = {torch.float32: (3e-4, 1e-3), torch.float16: (3e-3, 5e-3), torch.bfloat16: (1e-2, 5e-2)}


def upstream_ref(x, weight, bias, initial_states=None, return_final_states=False,
                 activation=None):
    """causal_conv1d_ref's semantics: x (B, D, L), weight (D, W), states (B, D, W-1)."""
    W = weight.shape[1]
    x = x.to(weight.dtype)
    xt = torch.cat([initial_states.to(weight.dtype), x], -1) if initial_states is not None \
        else F.pad(x, (W - 1, 0))
    out = F.conv1d(xt, weight.unsqueeze(1), bias, groups=x.shape[1])
    out = F.silu(out) if activation == "silu" else out
    if return_final_states:
        return out, xt[..., -(W - 1):]
    return out


def upstream_update_ref(x, conv_state, weight, bias, activation=None, cache_seqlens=None):
    """causal_conv1d_update_ref's semantics (mutates conv_state)."""
    B, D, L = x.shape
    W, S = weight.shape[1], conv_state.shape[-1]
    if cache_seqlens is None:
        xt = torch.cat([conv_state, x], -1).to(weight.dtype)
        conv_state.copy_(xt[..., -S:])
    else:
        n = cache_seqlens.long().unsqueeze(1)
        hist = torch.remainder(n + torch.arange(-(W - 1), 0), S).unsqueeze(1).expand(B, D, -1)
        xt = torch.cat([conv_state.gather(2, hist), x], -1).to(weight.dtype)
        slots = torch.remainder(n + torch.arange(L), S).unsqueeze(1).expand(B, D, -1)
        conv_state.scatter_(2, slots, x)
    out = F.conv1d(xt, weight.unsqueeze(1), bias, groups=D)[..., -L:]
    return F.silu(out) if activation == "silu" else out


def _itypes(backend):
    spec = genfast.backends.registered_ops()["causal_conv"]
    return [t for t in TOL if t in spec.dtypes[backend]]


def _grid(backend):
    """Their grid, thinned: every width, bias, activation and layout, a slice of seqlens (all of
    them on the compiled CPU backend) and dim 64 (4096 + 32 only for short sequences)."""
    seqlens = SEQLENS if backend == "cpu" else [1, 8, 129, 151]
    if backend == "triton":
        seqlens = [1, 8, 130]
    for i, seqlen in enumerate(seqlens):
        for width in (2, 3, 4):
            for channel_last in (False, True):
                dims = [64] + ([4096 + 32] if seqlen <= 8 and backend != "triton" else [])
                for dim in dims:
                    yield dim, seqlen, width, bool((i + width) % 2), bool(i % 2), channel_last


@pytest.mark.parametrize("backend", BACKENDS)
def test_causal_conv1d(backend):
    for itype in _itypes(backend):
        rtol, atol = TOL[itype]
        rtolw, atolw = 1e-3, 1e-3
        for dim, seqlen, width, has_bias, silu, channel_last in _grid(backend):
            torch.manual_seed(0)
            batch = 2
            if not channel_last:  # a channel slice of a wider tensor, as theirs
                x = torch.randn(batch, dim + 80, seqlen, dtype=itype)[:, 16:16 + dim]
            else:
                x = torch.randn(batch, seqlen, dim + 80,
                                dtype=itype)[:, :, 16:16 + dim].transpose(1, 2)
            x.requires_grad_()
            weight = torch.randn(dim, width, requires_grad=True)
            bias = torch.randn(dim, requires_grad=True) if has_bias else None
            states = None
            if channel_last:  # theirs: states and final states only in the channel-last layout
                states = torch.randn(batch, width - 1, dim, dtype=itype).transpose(1, 2)
                states.requires_grad_()
            act = "silu" if silu else None
            out, final = genfast.causal_conv1d(
                x, weight.to(itype).unsqueeze(1), None if bias is None else bias.to(itype),
                groups=dim, activation=act, initial_state=states, return_final_state=True,
                backend=backend)
            refs = [t.detach().clone().requires_grad_() if t is not None else None
                    for t in (x, weight, bias, states)]
            out_ref, final_ref = upstream_ref(*refs, return_final_states=True, activation=act)
            assert torch.allclose(final.float(), final_ref, rtol=rtol, atol=atol)
            assert torch.allclose(out.float(), out_ref, rtol=rtol, atol=atol)
            out = out.float() + torch.sigmoid(final.float()).sum(-1, keepdim=True)
            out_ref = out_ref + torch.sigmoid(final_ref).sum(-1, keepdim=True)
            g = torch.randn_like(out)
            out.backward(g)
            out_ref.backward(g)
            where = f"dim={dim} seqlen={seqlen} width={width} {itype}"
            assert torch.allclose(x.grad, refs[0].grad.to(itype), rtol=rtol, atol=atol), where
            # genfast's output, hence the gradient reaching the conv, is in x's dtype (theirs is
            # float32 where the weight is): each of the batch * seqlen terms of a weight's
            # gradient carries a rounding of x's dtype, which adds up as a random walk.
            atolw_x = atolw + 2 * torch.finfo(itype).eps * (batch * seqlen) ** 0.5
            assert torch.allclose(weight.grad, refs[1].grad, rtol=max(rtolw, rtol),
                                  atol=atolw_x), where
            if has_bias:
                assert torch.allclose(bias.grad, refs[2].grad, rtol=max(rtolw, rtol),
                                      atol=atolw_x), where
            if states is not None:
                assert torch.allclose(states.grad, refs[3].grad.to(itype), rtol=rtol,
                                      atol=atol), where


@pytest.mark.parametrize("backend", BACKENDS)
def test_causal_conv1d_update(backend):
    """Their update test: batch 64, state lengths in [width-1, width+10], cache_seqlens up to
    1024 (ring mode) or none (shift mode); the state must equal theirs exactly. The Triton
    interpreter gets batch 8 and dims 64, 80."""
    dims = [64, 80] if backend == "triton" else [2048, 2048 + 16]
    batch = 8 if backend == "triton" else 64  # theirs: 64 (the interpreter runs each program)
    for itype in _itypes(backend):
        rtol, atol = TOL[itype]
        for dim in dims:
            for width in (2, 3, 4):
                for seqlen in (1, 4, 5):
                    for ring in (False, True):
                        torch.manual_seed(seqlen * 10 + width)
                        x = torch.randn(batch, seqlen, dim, dtype=itype).transpose(-1, -2)
                        state_len = int(torch.randint(width - 1, width + 10, (1,)))
                        state = torch.randn(batch, state_len, dim, dtype=itype)
                        state = state.transpose(-1, -2).contiguous()
                        weight = torch.randn(dim, width)
                        bias = torch.randn(dim) if seqlen != 4 else None
                        act = "silu" if width != 3 else None
                        seq = torch.randint(0, 1024, (batch,), dtype=torch.int32) if ring \
                            else None
                        state_ref = state.clone()
                        out = genfast.causal_conv1d_update(
                            x, state, weight.to(itype).unsqueeze(1),
                            None if bias is None else bias.to(itype), groups=dim,
                            activation=act, cache_seqlens=seq, backend=backend)
                        out_ref = upstream_update_ref(x, state_ref, weight, bias, act, seq)
                        assert torch.equal(state, state_ref)
                        assert torch.allclose(out.float(), out_ref, rtol=rtol, atol=atol)
