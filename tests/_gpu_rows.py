"""The table tests/test_gpu.py runs: one Row per public entry point of an op family, with the
shapes that reach every code path of its kernels (each comment says which path). A new op family
adds its rows here; test_gpu.py has no per-op code.

Import as ``from _gpu_rows import ROWS`` (pytest puts tests/ on sys.path for files in it)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import genfast
from genfast import backends
from genfast import nn as gnn
from genfast.ops import spectral_norm as S
from genfast.ops.attention_generate import GPTPack, pack_gpt
from genfast.ops.lstm_generate import LSTMPack

Step = Callable[[], tuple[tuple[Tensor, ...], tuple[Tensor, ...]]]


@dataclass(frozen=True)
class Row:
    family: str  # op family, a key of genfast.backends.registered_ops()
    name: str
    inputs: Callable[[Any, torch.device], list[Tensor]]  # float32 inputs of one shape, seeded
    # Builds whatever the call needs (modules, groups), then returns the step to run: it gives
    # (outputs, extra leaves to differentiate, e.g. a module's weight).
    prepare: Callable[[list[Tensor], str], Step]
    shapes: tuple  # together they reach every code path (see each row's comment)
    probe: Any  # a small shape for gradgradcheck, compile, host-sync and second-device checks
    big: tuple = ()  # past the grid limits: float32, contiguous
    diff: tuple[int, ...] = ()  # inputs to differentiate (none: the entry point has no grad)
    layouts: bool = False  # inputs[0] is (rows, n): also run it in every layout of _helpers
    onehot: bool = False  # output 0 is one-hot: compared by its argmax, as sampled indices
    gradgradcheck: bool = False  # a call changes no state, so float64 finite differences apply
    compile: bool = True
    inductor: bool = False
    sync_free: bool = True  # a hot path: must not synchronize with the host
    rtol: float = 1e-4  # float32 against the reference: another summation order
    atol: float = 1e-5

    @property
    def id(self) -> str:
        return f"{self.family}.{self.name}"


def randn(shape, device, seed: int, scale: float = 1.0) -> Tensor:
    """Seeded normal values made on `device` (the same on every run there)."""
    g = torch.Generator(device).manual_seed(seed)
    return torch.randn(shape, generator=g, device=device) * scale


def _fn(f: Callable[[list[Tensor], str], Tensor | tuple]) -> Callable[[list[Tensor], str], Step]:
    """prepare() of a row that is one function call."""
    def prepare(xs, backend):
        def step():
            out = f(xs, backend)
            return (out if isinstance(out, tuple) else (out,)), ()
        return step
    return prepare


# ------------------------------------------------------------------ gumbel and sample (the sampler)
# CUDA: n <= 16 sub-warp groups of 4 threads (32 rows a block; filtered sampling uses warp
# groups at least); <= 1024 warp groups; <= 16384 a 512-thread block with the row in registers
# (radix passes narrowed); above, uncached multi-pass (4 fixed radix passes). Triton: short rows
# packed ROWS to a program ((1000, 10): 128 rows, 32 filtered), the row in registers up to 8192
# columns (512 filtered, radix narrowed), chunks of 4096 (512 filtered) above.
ROW_SHAPES = ((1, 1), (3, 7), (1000, 10), (37, 1000), (257, 300), (5, 5000), (3, 20000))
# Grid-stride row loops: 70,000 rows of one 512-thread block each, and 2.2M rows of 32 a block.
ROW_BIG = ((70_000, 1_100), (2_200_000, 5))


def _logits(shape, device):
    return [randn(shape, device, shape[-1], 3.0)]


def _gumbel(hard: bool) -> Row:
    return Row("gumbel", "hard" if hard else "soft", _logits,
               _fn(lambda xs, b: genfast.gumbel_softmax(xs[0], 0.7, hard, seed=5, backend=b)),
               ROW_SHAPES, (3, 7), ROW_BIG, diff=(0,), layouts=True, onehot=hard,
               gradgradcheck=True, inductor=not hard)


def _sampler(name: str, **kw) -> Row:
    return Row("sample", name, _logits,
               _fn(lambda xs, b: genfast.sample_categorical(xs[0], seed=3, backend=b, **kw)),
               ROW_SHAPES, (5, 33), ROW_BIG if not kw else (), layouts=True,
               inductor=not kw)


# ------------------------------------------------------------------ gradient_penalty
def _penalty_inputs(shape, device):
    n, d = shape
    return [randn(shape, device, 1), randn(shape, device, 2),
            randn((d, 16), device, 3, d ** -0.5), randn((16, 1), device, 4, 0.25)]


def _penalty(xs, b):
    real, fake, w1, w2 = xs
    gen = torch.Generator(real.device).manual_seed(0)  # the same interpolation on every run
    return genfast.gradient_penalty(lambda x: F.leaky_relu(x @ w1, 0.2) @ w2, real, fake,
                                    generator=gen, backend=b).penalty


# ------------------------------------------------------------------ spectral_norm
def _weight_inputs(shape, device):
    h, n = shape[0], math.prod(shape[1:])
    return [randn(shape, device, 1), F.normalize(randn(h, device, 2), dim=0),
            F.normalize(randn(n, device, 3), dim=0)]


def _table_inputs(shapes, device):
    """Weights of the given shapes (the second column-major), then their u's, then their v's."""
    ws = [randn(s, device, i) for i, s in enumerate(shapes)]
    if len(ws) > 1 and ws[1].dim() == 2:
        ws[1] = ws[1].t().contiguous().t()
    us = [F.normalize(randn(w.shape[0], device, 50 + i), dim=0) for i, w in enumerate(ws)]
    vs = [F.normalize(randn(w[0].numel(), device, 90 + i), dim=0) for i, w in enumerate(ws)]
    return [*ws, *us, *vs]


def _power(xs, b):
    k = len(xs) // 3
    sigma = S.spectral_norm_power_iteration(xs[:k], xs[k:2 * k], xs[2 * k:], 2, backend=b)
    return (sigma, *xs[k:])


def _stacked_power(xs, b):
    """Many equal weights (B, h, w) in one call; "reference" is a batched oracle, because the
    reference backend's per-weight loop would take minutes for 70,000 weights."""
    w, u, v = xs
    if b != "reference":
        sigma = S.spectral_norm_power_iteration(list(w.unbind(0)), list(u.unbind(0)),
                                                list(v.unbind(0)), 2, backend=b)
        return sigma, u, v
    wf, uf, vf = w.float(), u.float(), v.float()
    for _ in range(2):
        uf = F.normalize(torch.bmm(wf, vf[..., None])[..., 0], dim=1, eps=1e-12)
        vf = F.normalize(torch.bmm(wf.transpose(1, 2), uf[..., None])[..., 0], dim=1, eps=1e-12)
    sigma = (uf * torch.bmm(wf, vf[..., None])[..., 0]).sum(1)
    u.copy_(uf), v.copy_(vf)
    return sigma, u, v


def _seeded_model(like: Tensor, build: Callable[[], nn.Module]) -> nn.Module:
    """build() on like's device and dtype, from the same draws on every run (weights, u, v)."""
    dev = like.device
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else [],
                               device_type=dev.type):
        torch.manual_seed(0)
        with torch.device(dev):
            return build().to(like.dtype)


def _sn_module(xs, b):
    x = xs[0]
    conv = _seeded_model(x, lambda: gnn.spectral_norm(nn.Conv2d(x.shape[1], 6, 3), backend=b))
    return lambda: ((conv(x),), (conv.parametrizations.weight.original,))


def _sn_group(xs, b):
    x = xs[0]
    n, c, h, w = x.shape

    def build():
        model = nn.Sequential(nn.Conv2d(c, 8, 3), nn.LeakyReLU(0.2), nn.Conv2d(8, 4, 3),
                              nn.Flatten(), nn.Linear(4 * (h - 4) * (w - 4), 1))
        for i in (0, 2, 4):
            gnn.spectral_norm(model[i], backend=b)
        return model

    model = _seeded_model(x, build)
    gnn.SpectralNormGroup(model)  # one multi-tensor update per forward, from a pre-hook
    params = tuple(model[i].parametrizations.weight.original for i in (0, 2, 4))
    return lambda: ((model(x),), params)



# ------------------------------------------------------------- causal_conv (+ layer, generation)
_ACTS = (None, "silu", "relu", "tanh")


def _carrier(*settings: int, device) -> Tensor:
    """Integer settings a step needs that no input shape implies (dilation, activation, ...),
    carried as the shape of an empty tensor: inputs are cast to every dtype, plain ints are not
    inputs. _settings() reads them back."""
    return torch.empty(*settings, 0, device=device)


def _settings(t: Tensor) -> tuple[int, ...]:
    return tuple(t.shape[:-1])


def _conv_inputs(shape, device):
    B, cin, cout, T, K, d, groups, act, with_h = shape
    fan = cin // groups * K
    return [randn((B, cin, T), device, 1), randn((cout, cin // groups, K), device, 2, fan ** -0.5),
            randn(cout, device, 3, 0.1), randn((B, cin, (K - 1) * d), device, 4),
            _carrier(d, act, with_h, device=device)]


def _conv(xs, b):
    x, w, bias, h, cfg = xs
    d, act, with_h = _settings(cfg)
    return genfast.causal_conv1d(x, w, bias, dilation=d, groups=x.shape[1] // w.shape[1],
                                 activation=_ACTS[act], initial_state=h if with_h else None,
                                 backend=b)


def _update_inputs(shape, device):
    B, cin, cout, L, S, K, d, groups, act, ring = shape
    fan = cin // groups * K
    return [randn((B, cin, L), device, 1), randn((B, cin, S), device, 2),
            randn((cout, cin // groups, K), device, 3, fan ** -0.5), randn(cout, device, 4, 0.1),
            _carrier(d, act, ring, device=device)]


def _update(xs, b):
    x, state, w, bias, cfg = xs
    d, act, ring = _settings(cfg)
    # Ring mode: streams at different positions, some past one wrap of the ring.
    seq = torch.arange(x.shape[0], device=x.device) * 5 + 3 if ring else None
    y = genfast.causal_conv1d_update(x, state, w, bias, dilation=d,
                                     groups=x.shape[1] // w.shape[1], activation=_ACTS[act],
                                     cache_seqlens=seq, backend=b)
    return y, state


def _layer_inputs(shape, device):
    B, R, G, S, T, K, d, cond, with_h, with_skip = shape
    H = G // 2
    return [randn((B, R, T), device, 1), randn((G, R, K), device, 2, (R * K) ** -0.5),
            randn((R, H), device, 3, H ** -0.5), randn((S, H), device, 4, H ** -0.5),
            randn(G, device, 5, 0.1), randn(R, device, 6, 0.1), randn(S, device, 7, 0.1),
            randn((B, G, (0, 1, T)[cond]), device, 8, 0.5), randn((B, S, T), device, 9),
            randn((B, R, (K - 1) * d), device, 10), _carrier(d, cond, with_h, with_skip,
                                                             device=device)]


def _layer(xs, b):
    x, w_dil, w_res, w_skip, b_dil, b_res, b_skip, cond, skip, h, cfg = xs
    d, c, with_h, with_skip = _settings(cfg)
    return genfast.wavenet_layer(x, w_dil, w_res, w_skip, b_dil, b_res, b_skip, dilation=d,
                                 cond=cond if c else None, skip=skip if with_skip else None,
                                 initial_state=h if with_h else None, backend=b)


def _generate_inputs(shape, device):
    A, R, G, S, E, K, L, B, n, kind, cond, top_k, p100 = shape
    H = G // 2
    ts = [randn((A, R) if kind == 0 else (2, R), device, 1)]
    for i in range(L):
        s = 10 * (i + 1)
        ts += [randn((G, R, K), device, s, (R * K) ** -0.5), randn(G, device, s + 1, 0.1),
               randn((R, H), device, s + 2, H ** -0.5), randn(R, device, s + 3, 0.1),
               randn((S, H), device, s + 4, H ** -0.5), randn(S, device, s + 5, 0.1)]
    ts += [randn((E, S), device, 2, S ** -0.5), randn(E, device, 3, 0.1),
           randn((A, E), device, 4, 3 * E ** -0.5), randn(A, device, 5, 0.1),
           randn((B, L, G), device, 6, 0.3)]
    return ts + [_carrier(n, B, kind, cond, top_k, p100, device=device)]


def _generator(model_dtype: bool) -> Callable[[list[Tensor], str], Step]:
    """Generation by the packed model in float64 where the backend takes it (the reference's
    logits then agree to ~1e-13, so every index must match: one differing draw would change the
    rest of its stream), else in float32; model_dtype: in float32 always."""
    def prepare(xs, b):
        *ws, gcond, cfg = xs
        n, B, kind, cond, top_k, p100 = _settings(cfg)
        takes64 = torch.float64 in backends.registered_ops()["causal_conv_generate"].dtypes[b]
        dt = torch.float64 if takes64 and not model_dtype else torch.float32
        ws = [w.to(dt) for w in ws]
        L = (len(ws) - 5) // 6
        layers = [dict(zip(("w_dil", "b_dil", "w_res", "b_res", "w_skip", "b_skip"),
                           ws[1 + 6 * i:7 + 6 * i], strict=True), dilation=2 ** (i % 3))
                  for i in range(L)]
        first = ws[0]
        pack = genfast.pack_wavenet(input_weight=first if kind == 0 else first[0],
                                    input_bias=None if kind == 0 else first[1],
                                    input_kind=("embedding", "scalar")[kind], layers=layers,
                                    head=tuple(ws[-4:]))
        gc = gcond.to(dt) if cond else None

        def step():
            tokens, state = genfast.wavenet_generate(
                pack, n, batch=B, gcond=gc, temperature=0.8, top_k=top_k or None,
                top_p=p100 / 100 if p100 < 100 else None, seed=11, backend=b)
            return (tokens, state.rings, state.pos), ()
        return step
    return prepare

# ------------------------------------------------------------- lstm (the layer; generation below)
def _lstm_inputs(shape, device):
    T, B, n_in, H, P, reverse, with_lengths = shape
    Pe, s = P or H, H ** -0.5
    return [randn((T, B, n_in), device, 1), randn((4 * H, n_in), device, 2, s),
            randn((4 * H, Pe), device, 3, s), randn(4 * H, device, 4, s),
            randn(4 * H, device, 5, s), randn((max(P, 1), H), device, 6, s),
            randn((B, Pe), device, 7), randn((B, H), device, 8),
            _carrier(int(P > 0), reverse, with_lengths, device=device)]


def _lstm(xs, b):
    x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, cfg = xs
    proj, reverse, with_lengths = _settings(cfg)
    T, B = x.shape[:2]
    # lengths T, T-3, T-6, ... wrapping through 0: full, short, empty and (reverse)
    # late-starting sequences
    lengths = (T - (torch.arange(B, device=x.device) * 3) % (T + 1)) if with_lengths else None
    return genfast.lstm_layer(x, w_ih, w_hh, b_ih, b_hh, w_hr if proj else None, h0, c0,
                              lengths=lengths, reverse=bool(reverse), backend=b)


# ------------------------------------------------------------- attention
def _attention_inputs(shape, device):
    B, Hh, N, M, Dk, Dv, causal, ph, pw, *cached = shape
    Sk = ph * pw if ph else M
    return [randn((B, Hh, N, Dk), device, 1), randn((B, Hh, Sk, Dk), device, 2),
            randn((B, Hh, Sk, Dv), device, 3),
            _carrier(causal, ph, pw, *(cached or [0]), device=device)]


def _attention(xs, b):
    q, k, v, cfg = xs
    causal, ph, pw, cached = _settings(cfg)
    if cached:  # k, v as the first M rows of a longer KV-cache buffer: strided views
        kc, vc = (t.new_zeros(t.shape[0], t.shape[1], t.shape[2] + 37, t.shape[3]) for t in (k, v))
        kc[:, :, :k.shape[2]], vc[:, :, :v.shape[2]] = k, v
        k, v = kc[:, :, :k.shape[2]], vc[:, :, :v.shape[2]]
    return genfast.attention(q, k, v, causal=bool(causal), pool=(ph, pw) if ph else None,
                             scale=1.0 if ph else None, backend=b)


def _attention_penalty(xs, b):
    """The gradient of an R1-style penalty through attention (the kernels' double backward),
    in each dtype the row runs: what a SAGAN / GPT critic under a gradient penalty computes."""
    q, k, v, cfg = xs
    causal, ph, pw, _ = _settings(cfg)
    with torch.enable_grad():
        q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
        o = genfast.attention(q, k, v, causal=bool(causal), pool=(ph, pw) if ph else None,
                              scale=1.0 if ph else None, backend=b)
        g = torch.autograd.grad((o.float() ** 2).sum(), (q, k, v), create_graph=True)
        return torch.autograd.grad(sum((t.float() ** 2).sum() for t in g), (q, k, v))


# ------------------------------------------------------------- lstm_generate
def _lstm_gen_inputs(shape, device):
    V, H, L, B, Tp, n, top_k, p100 = shape
    ts = [randn((V, 4 * H), device, 1), randn((4 * H, H), device, 2, H ** -0.5)]
    for i in range(1, L):
        s = 10 * i
        ts += [randn((4 * H, H), device, s, H ** -0.5), randn((4 * H, H), device, s + 1, H ** -0.5),
               randn(4 * H, device, s + 2, 0.1)]
    ts += [randn((V, H), device, 3, 3 * H ** -0.5), randn(V, device, 4, 0.1),
           randn((L, B, H), device, 5, 0.5), randn((L, B, H), device, 6, 0.5)]
    return ts + [_carrier(B, Tp, n, top_k, p100, device=device)]


def _lstm_generator(model_dtype: bool) -> Callable[[list[Tensor], str], Step]:
    """As _generator: the packed model in float64 where the backend takes it (every index must
    then match the reference's), else in float32; model_dtype: in float32 always. top_p * 100 = 0
    is greedy."""
    def prepare(xs, b):
        *ws, h0, c0, cfg = xs
        B, Tp, n, top_k, p100 = _settings(cfg)
        takes64 = torch.float64 in backends.registered_ops()["lstm_generate"].dtypes[b]
        dt = torch.float64 if takes64 and not model_dtype else torch.float32
        V, H, L = ws[0].shape[0], ws[1].shape[1], (len(ws) - 4) // 3 + 1
        pack = LSTMPack(torch.cat([w.reshape(-1) for w in ws]).to(dt),
                        torch.tensor([L, V, H]), L, V, H)
        g = torch.Generator(h0.device).manual_seed(12)
        prime = torch.randint(0, V, (B, Tp), generator=g, device=h0.device)
        state = (h0.to(dt), c0.to(dt))

        def step():
            tokens, (h, c) = genfast.lstm_generate(
                pack, prime, n, state=state, temperature=0.8 if p100 else 0.0,
                top_k=top_k or None, top_p=p100 / 100 if 0 < p100 < 100 else None, seed=11,
                offset=3, backend=b)
            return (tokens, h, c), ()
        return step
    return prepare


# ------------------------------------------------------------- attention_generate
def _gpt_gen_inputs(shape, device):
    from genfast.models._gpt_net import GPTNet

    L, V, C, Hh, T, B, Tp, n, keep, top_k, p100 = shape
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        net = GPTNet(V, T, L, Hh, C, bias=True).eval()
        with torch.no_grad():
            net.lm_head.weight.mul_(4.0)  # draws far from uniform
            for name, p in net.named_parameters():
                if name.endswith("bias"):
                    p.normal_(0.0, 0.1)
    return [pack_gpt(net).weights.to(device), _carrier(*shape, device=device)]


def _gpt_generator(model_dtype: bool,
                   max_triton_vocab: int | None = None) -> Callable[[list[Tensor], str], Step]:
    """As _generator: the packed GPT in float64 where the backend takes it (every index must then
    match the reference's), else float32; model_dtype: the inputs' dtype (fp16 / bf16 rows)."""
    def prepare(xs, b):
        weights, cfg = xs
        L, V, C, Hh, T, B, Tp, n, keep, top_k, p100 = _settings(cfg)
        if b == "triton" and max_triton_vocab is not None and V > max_triton_vocab:
            import pytest

            pytest.skip(f"the Triton kernel takes V <= {max_triton_vocab} (documented limit)")
        takes64 = torch.float64 in backends.registered_ops()["attention_generate"].dtypes[b]
        dt = weights.dtype if model_dtype else (torch.float64 if takes64 else torch.float32)
        pack = GPTPack(weights.to(dt), torch.tensor([L, V, C, Hh, T]), L, V, C, Hh, T)
        g = torch.Generator(weights.device).manual_seed(12)
        prime = torch.randint(0, V, (B, Tp), generator=g, device=weights.device)

        def step():
            tokens = genfast.attention_generate(
                pack, prime, n, temperature=0.8 if p100 else 0.0, top_k=top_k or None,
                top_p=p100 / 100 if 0 < p100 < 100 else None, seed=11, keep=keep, backend=b)
            return (tokens,), ()
        return step
    return prepare


# ROWS entries:


# ------------------------------------------------------------- masked_conv (+ layer, generation)
def _masked_inputs(shape, device):
    B, cin, cout, H, W, k, mask_b, G, stride = shape
    return [randn((B, cin, H, W), device, 1), randn((cout, cin, k, k), device, 2,
                                                    (cin * k * k) ** -0.5),
            randn(cout, device, 3, 0.1), _carrier(mask_b, G, stride, device=device)]


def _masked(xs, b):
    x, w, bias, cfg = xs
    mask_b, G, stride = _settings(cfg)
    return genfast.masked_conv2d(x, w, bias, mask_type="AB"[mask_b], stride=stride,
                                 color_groups=G, backend=b)


def _gated_inputs(shape, device):
    B, C, H, W, k, mask_b, cond = shape
    c = k // 2
    return [randn((B, C, H, W), device, 1), randn((B, C, H, W), device, 2),
            randn((2 * C, C, c + 1, k), device, 3, (C * (c + 1) * k) ** -0.5),
            randn(2 * C, device, 4, 0.1), randn((2 * C, C, 1, c + 1), device, 5,
                                                (C * (c + 1)) ** -0.5),
            randn(2 * C, device, 6, 0.1), randn((2 * C, 2 * C, 1, 1), device, 7, (2 * C) ** -0.5),
            randn(2 * C, device, 8, 0.1), randn((C, C, 1, 1), device, 9, C ** -0.5),
            randn(C, device, 10, 0.1), randn((B, 2 * C), device, 11, 0.5),
            _carrier(mask_b, cond, device=device)]


def _gated(xs, b):
    *ws, cond, cfg = xs
    mask_b, with_cond = _settings(cfg)
    return genfast.gated_pixelcnn_layer(*ws, cond if with_cond else None,
                                        mask_type="AB"[mask_b], backend=b)


def _pixelcnn_inputs(shape, device):
    A, C, E, k, L, B, H, W, cond, top_k, p100, *start = shape  # start: completion, default 0
    c = k // 2
    ts = [randn((A, C), device, 1)]
    for i in range(L):
        s = 10 * (i + 1)
        ts += [randn((2 * C, C, c + 1, k), device, s, (C * (c + 1) * k) ** -0.5),
               randn(2 * C, device, s + 1, 0.1),
               randn((2 * C, C, 1, c + 1), device, s + 2, (C * (c + 1)) ** -0.5),
               randn(2 * C, device, s + 3, 0.1), randn((2 * C, 2 * C, 1, 1), device, s + 4,
                                                       (2 * C) ** -0.5),
               randn(2 * C, device, s + 5, 0.1), randn((C, C, 1, 1), device, s + 6, C ** -0.5),
               randn(C, device, s + 7, 0.1)]
    ts += [randn((E, C, 1, 1), device, 2, C ** -0.5), randn(E, device, 3, 0.1),
           randn((A, E, 1, 1), device, 4, 3 * E ** -0.5), randn(A, device, 5, 0.1),
           randn((B, L, 2 * C), device, 6, 0.3)]
    return ts + [_carrier(B, H, W, cond, top_k, p100, *(start or [0]), device=device)]


def _pixelcnn_generator(model_dtype: bool) -> Callable[[list[Tensor], str], Step]:
    """As _generator: float64 where the backend takes it (every index must then match the
    reference's), else float32; model_dtype: float32 always."""
    keys = ("v_weight", "v_bias", "h_weight", "h_bias", "link_weight", "link_bias",
            "res_weight", "res_bias")

    def prepare(xs, b):
        *ws, cond_bias, cfg = xs
        B, H, W, cond, top_k, p100, start = _settings(cfg)
        takes64 = torch.float64 in backends.registered_ops()["masked_conv_generate"].dtypes[b]
        dt = torch.float64 if takes64 and not model_dtype else torch.float32
        ws = [w.to(dt) for w in ws]
        L = (len(ws) - 5) // 8
        layers = [dict(zip(keys, ws[1 + 8 * i:9 + 8 * i], strict=True)) for i in range(L)]
        pack = genfast.pack_pixelcnn(embedding=ws[0], layers=layers, out1_weight=ws[-4],
                                     out1_bias=ws[-3], out2_weight=ws[-2], out2_bias=ws[-1])
        cb = cond_bias.to(dt) if cond else None
        g = torch.Generator(cond_bias.device).manual_seed(12)
        given = torch.randint(0, ws[0].shape[0], (B, H, W), generator=g,
                              device=cond_bias.device) if start else None

        def step():
            tokens = genfast.pixelcnn_generate(
                pack, B, height=H, width=W, tokens=given, start=start, cond_bias=cb,
                temperature=0.8,
                top_k=top_k or None, top_p=p100 / 100 if p100 < 100 else None, seed=11,
                backend=b)
            return (tokens,), ()
        return step
    return prepare


ROWS: list[Row] = [
    _gumbel(False),
    _gumbel(True),
    _sampler("plain"),
    _sampler("top_k", top_k=5),
    _sampler("top_p", top_p=0.7),
    _sampler("top_k_top_p", top_k=50, top_p=0.9),
    _sampler("greedy", temperature=0.0),
    # CUDA norms: d <= 16 groups of 4 threads, <= 64 of 16, <= 1024 a warp, above a block;
    # Triton: one column tile up to its width, chunks above. Big: 2.2M rows at 32 a block, and
    # a backward whose 19M quads need more than 65,535 blocks of the scaling kernel.
    Row("gradient_penalty", "per_sample_grad_norm", lambda s, d: [randn(s, d, 7)],
        _fn(lambda xs, b: genfast.per_sample_grad_norm(xs[0], backend=b)),
        ((1, 1), (3, 7), (33, 64), (37, 1000), (5, 5000), (3, 20000)), (5, 33),
        ((2_200_000, 5), (70_000, 1_100)), diff=(0,), layouts=True, gradgradcheck=True,
        inductor=True),
    # torch.autograd.grad inside: compiled as part of a training step, not on its own.
    Row("gradient_penalty", "gradient_penalty", _penalty_inputs, _fn(_penalty),
        ((1, 3), (16, 37), (64, 1000)), (8, 12), diff=(2, 3), compile=False),
    # CUDA: u, v cached in shared memory. Weights of >= 2^19 elements or u+v > 8192 entries (the
    # (512, 8192), (4, 70_000) and (70_000, 3) sets) are routed by the op to torch.mv; the kernel's
    # uncached path is reached only by calling genfast._cuda directly.
    # Triton: tiles up to 128 columns, shape-independent code.
    Row("spectral_norm", "power_iteration", _table_inputs, _fn(_power),
        (((1, 1), (7, 3), (33, 129), (5, 2, 3, 3), (129, 33)), ((64, 4608), (512, 8192)),
         ((4, 70_000),), ((70_000, 3),)),
        ((7, 3), (12, 5))),
    # One block per weight, grid-stride past 65,535 weights.
    Row("spectral_norm", "many_weights", lambda s, d: [randn(s, d, 1),
                                                      F.normalize(randn(s[:2], d, 2), dim=1),
                                                      F.normalize(randn((s[0], s[2]), d, 3),
                                                                  dim=1)],
        _fn(_stacked_power), ((1000, 3, 5),), (4, 3, 5), ((70_000, 3, 5),)),
    Row("spectral_norm", "normalize", _weight_inputs,
        _fn(lambda xs, b: (S.spectral_normalize(xs[0], xs[1], xs[2], 2, backend=b), *xs[1:])),
        ((3, 7), (64, 3, 4, 4), (512, 8192)), (5, 7), diff=(0,), inductor=True),
    Row("spectral_norm", "normalize_eval", _weight_inputs,
        _fn(lambda xs, b: S.spectral_normalize(xs[0], xs[1], xs[2], update=False, backend=b)),
        ((3, 7), (64, 3, 4, 4)), (5, 7), diff=(0,), gradgradcheck=True),
    Row("spectral_norm", "module", lambda s, d: [randn(s, d, 4)], _sn_module,
        ((2, 3, 8, 8), (4, 64, 9, 9)), (2, 3, 6, 6), diff=(0,)),
    Row("spectral_norm", "group_update", lambda s, d: [randn(s, d, 5)], _sn_group,
        ((2, 3, 12, 12), (8, 5, 9, 7)), (2, 3, 12, 12), diff=(0,)),
    # Shapes (B, C_in, C_out, T, K, dilation, groups, activation, initial_state). CUDA: one
    # thread per output (fwd, bwd_input), one block per weight (bwd_weight); Triton: tl.dot
    # tiles (groups >= 16 channels) or the small-group kernel. A d=512 halo longer than T (from
    # h, then zeros) and shorter than T; grouped; K=1 (no history).
    Row("causal_conv", "dense", _conv_inputs, _fn(_conv),
        ((2, 8, 16, 33, 3, 1, 1, 0, 0), (3, 16, 32, 129, 2, 512, 1, 1, 1),
         (2, 32, 64, 1000, 2, 512, 1, 0, 1), (2, 16, 8, 65, 3, 7, 4, 2, 1),
         (1, 4, 4, 7, 1, 1, 1, 3, 0)),
        (2, 4, 6, 9, 3, 2, 2, 1, 1), diff=(0, 1, 2, 3), gradgradcheck=True, inductor=True),
    # CUDA depthwise path (K <= 4): 128 16-byte vectors a chunk, dilation 1 (taps in registers)
    # and > 1 (halo from global), rows whose length breaks the vector alignment (T odd), a chunk
    # tail, zero and stored history; K=5 takes the generic kernel. Big: 70,400 (b, c, chunk)
    # blocks, past the 65,535-block grid.
    Row("causal_conv", "depthwise", _conv_inputs, _fn(_conv),
        ((2, 64, 64, 2048, 4, 1, 64, 1, 1), (2, 64, 64, 1001, 4, 3, 64, 1, 0),
         (3, 48, 48, 7, 4, 1, 48, 0, 1), (2, 32, 32, 300, 2, 1, 32, 1, 1),
         (1, 32, 32, 129, 5, 1, 32, 1, 1), (2, 16, 16, 77, 5, 4, 16, 1, 0)),
        (2, 4, 4, 11, 4, 2, 4, 1, 1), ((64, 1100, 1100, 300, 4, 1, 1100, 1, 1),),
        diff=(0, 1, 2, 3)),
    # Shapes (B, C_in, C_out, L, S, K, dilation, groups, activation, ring). Ring mode with
    # L > S (only the last S steps stay) and wrapped positions; shift mode (chunked in-place
    # shift); depthwise (128 channels a block) and dense (one group a block).
    Row("causal_conv", "update", _update_inputs, _fn(_update),
        ((2, 64, 64, 1, 3, 4, 1, 64, 1, 1), (3, 64, 64, 5, 6, 4, 2, 64, 1, 0),
         (2, 300, 300, 9, 4, 3, 2, 300, 0, 1), (2, 8, 16, 3, 5, 2, 4, 1, 2, 0),
         (2, 8, 16, 2, 9, 3, 4, 2, 0, 1)),
        (2, 4, 4, 3, 4, 3, 2, 4, 1, 1)),
    # Shapes (B, R, G, S, T, K, dilation, cond (0 none, 1 global, 2 local), initial_state, skip).
    # CUDA: (b, 32-time tile) blocks with the gate tile in shared memory; the backward writes da
    # and reduces dw_res / dw_skip one block per weight.
    Row("causal_conv_layer", "wavenet_layer", _layer_inputs, _fn(_layer),
        ((2, 32, 64, 256, 100, 2, 4, 2, 1, 1), (2, 64, 128, 256, 77, 2, 16, 1, 0, 0),
         (1, 32, 64, 256, 33, 3, 512, 0, 1, 1)),
        (2, 4, 6, 5, 9, 2, 3, 2, 1, 1), diff=tuple(range(10)), gradgradcheck=True),
    # Shapes (A, R, G, S, E, K, L, B, n, input kind, gcond, top_k, top_p * 100; 100 = off):
    # embedding and scalar inputs, K=2 and 3 (dilations 1, 2, 4, ...: the rings wrap), global
    # conditioning, top_k, top_p. CUDA: one CTA per stream; the draw is compared by index.
    Row("causal_conv_generate", "generate", _generate_inputs, _generator(False),
        ((256, 32, 64, 128, 64, 2, 6, 2, 150, 0, 1, 0, 100),
         (256, 16, 32, 64, 32, 3, 4, 3, 80, 1, 0, 20, 100),
         (301, 16, 32, 64, 48, 2, 3, 2, 60, 0, 1, 0, 90)),
        (16, 4, 6, 5, 7, 2, 2, 2, 12, 0, 1, 5, 90), compile=False),
    # The float32 kernel (the float64 row covers the math exactly): a near-tie that another
    # summation order breaks the other way could change the rest of one stream.
    Row("causal_conv_generate", "generate_fp32", _generate_inputs, _generator(True),
        ((256, 32, 64, 128, 64, 2, 6, 2, 100, 0, 1, 0, 100),),
        (16, 4, 6, 5, 7, 2, 2, 2, 12, 0, 1, 5, 90), compile=False),
    # Shapes (T, B, I, H, P (proj_size, 0 = none), reverse, lengths): CUDA's persistent kernel
    # at small batches (B 1..16, H 256/512), its GEMM + fused-cell path at B 64 and with
    # H 1024, projection (a second grid phase per step), reverse with lengths (sequences that
    # start late), odd sizes. Triton: the fused small-H recurrence (H <= 256, no projection)
    # and the GEMM path otherwise. Lengths are validated on the host (one sync), so the probe
    # has none.
    Row("lstm", "lstm_layer", _lstm_inputs, _fn(_lstm),
        ((64, 1, 128, 256, 0, 0, 0), (64, 16, 512, 512, 0, 0, 0), (32, 64, 256, 1024, 0, 1, 0),
         (33, 5, 17, 129, 64, 0, 1), (17, 7, 9, 33, 0, 1, 1), (9, 3, 5, 7, 3, 1, 1),
         # persistent: a partial last CTA (H 1001 on 132 SMs) and the backward's batch chunks
         (16, 8, 32, 1001, 0, 0, 1), (8, 16, 64, 1024, 0, 1, 1),
         # GEMM path (B > 32): the cells' element path with projection, reverse and lengths,
         # and their vector path with inactive rows
         (12, 40, 9, 35, 17, 1, 1), (6, 48, 8, 64, 0, 0, 1)),
        (5, 3, 4, 6, 0, 1, 0), diff=tuple(range(8)), gradgradcheck=True, rtol=2e-4,
        atol=2e-5),
    # Shapes (B, C_in, C_out, H, W, k, mask B, colour groups, stride): the 7x7 mask B
    # at 64 channels, odd sizes, mask A with RGB groups on a 3-channel input, stride 2, 1x1.
    Row("masked_conv", "masked_conv2d", _masked_inputs, _fn(_masked),
        ((4, 64, 64, 28, 28, 7, 1, 1, 1), (2, 3, 48, 13, 9, 7, 0, 3, 1),
         (3, 16, 24, 33, 17, 5, 1, 3, 2), (2, 8, 8, 5, 7, 3, 0, 1, 1),
         (2, 32, 16, 9, 11, 1, 1, 1, 1),
         (2, 70, 130, 9, 9, 3, 1, 3, 1)),  # several 64-row tiles both ways, uneven RGB groups
        (2, 3, 6, 5, 7, 3, 0, 3, 1),
        # 71,680 pixel tiles (> 65,535: grid-stride), 1024 bwd_weight chunks
        big=((70, 1, 2, 256, 256, 3, 1, 1, 1),),
        diff=(0, 1, 2), gradgradcheck=True, inductor=True),
    # Shapes (B, C, H, W, k, mask B, cond): the 64-channel 7x7 layer on 28x28, mask A
    # (first layer: last row / column unread, no residual), odd sizes, k=3 and 5. CUDA gate
    # backward: a warp a row up to 1024 pixels, a block a row above (40x40).
    Row("masked_conv_layer", "gated_pixelcnn_layer", _gated_inputs, _fn(_gated),
        ((4, 64, 28, 28, 7, 1, 1), (2, 64, 28, 28, 7, 0, 0), (3, 16, 13, 9, 3, 1, 1),
         (2, 8, 5, 17, 5, 0, 1), (2, 8, 40, 40, 7, 1, 1), (1, 70, 9, 11, 3, 1, 0)),
        (2, 4, 5, 6, 3, 1, 1), diff=tuple(range(11)), gradgradcheck=True),
    # Shapes (A, C, E, k, L, B, H, W, cond, top_k, top_p * 100; 100 = off): the issue's
    # 10-layer 64-channel net on 28x28 (batch 1 and 16), odd sizes, top_k, top_p, no cond.
    # CUDA: one CTA per image; Triton: one program per image. The draw is compared by index.
    # An optional 12th entry is `start` (completion): 31 = three rows and four pixels given;
    # given rows run only their vertical stacks, the row of start its horizontal ones.
    Row("masked_conv_generate", "generate", _pixelcnn_inputs, _pixelcnn_generator(False),
        ((256, 64, 256, 7, 10, 4, 28, 28, 1, 0, 100), (256, 64, 256, 7, 10, 1, 28, 28, 1, 0, 100),
         (16, 16, 32, 3, 3, 3, 7, 9, 0, 5, 100), (16, 8, 24, 5, 2, 2, 9, 5, 1, 0, 90),
         (16, 16, 32, 5, 3, 3, 7, 9, 1, 3, 100, 31)),
        (4, 4, 6, 3, 2, 2, 4, 5, 1, 2, 90, 7), compile=False),
    Row("masked_conv_generate", "generate_fp32", _pixelcnn_inputs, _pixelcnn_generator(True),
        ((256, 64, 256, 7, 10, 4, 28, 28, 1, 0, 100),),
        (4, 4, 6, 3, 2, 2, 4, 5, 1, 2, 90), compile=False),
    # Shapes (B, Hh, N, M, Dk, Dv, causal, pool_h, pool_w; 0 = no pooling): GPT shapes (causal,
    # D 64 / 128, T up to 2048: the on-band / off-band split, many key blocks), SAGAN's (one
    # head, Dk 8-32 != Dv, keys pooled on load from 64x64 and odd 33x17 grids), N != M both
    # ways (rows with no key), odd sizes past every tile edge, decode (N 1-4 against long
    # caches: the split-K path and its combine; a 10th entry 1 reads k / v as a longer cache
    # buffer's prefix views) and head dims 1 / 40 / 256 (padded tiles).
    Row("attention", "attention", _attention_inputs, _fn(_attention),
        ((4, 8, 256, 256, 64, 64, 1, 0, 0), (2, 4, 2048, 2048, 128, 128, 1, 0, 0),
         (8, 1, 4096, 4096, 8, 32, 0, 64, 64), (3, 1, 561, 561, 16, 64, 0, 33, 17),
         (2, 3, 77, 131, 40, 24, 1, 0, 0), (2, 2, 131, 77, 32, 32, 1, 0, 0),
         (3, 5, 1, 1000, 64, 64, 1, 0, 0, 1), (2, 2, 4, 4099, 128, 128, 1, 0, 0),
         (1, 2, 33, 65, 1, 3, 0, 0, 0), (1, 1, 70, 70, 256, 256, 1, 0, 0)),
        (2, 2, 7, 9, 8, 4, 1, 0, 0),
        # 73,728 query blocks of 16 rows: past CUDA's 65,535-CTA grid, its grid-stride loop
        big=((1024, 8, 144, 144, 16, 16, 0, 0, 0),),
        diff=(0, 1, 2), gradgradcheck=True, rtol=2e-4, atol=2e-5),
    # The double backward in fp16 / bf16 / fp32 at shapes past several tiles: causal GPT heads
    # (64, 128), N != M, SAGAN's pooled one-head layout, a 256-wide head (the widest tiles).
    Row("attention", "double_backward", _attention_inputs, _fn(_attention_penalty),
        ((2, 4, 300, 300, 64, 64, 1, 0, 0), (1, 2, 257, 129, 128, 128, 1, 0, 0),
         (2, 1, 1024, 1024, 16, 64, 0, 32, 32), (1, 1, 70, 90, 256, 256, 0, 0, 0)),
        (2, 2, 7, 9, 8, 4, 1, 0, 0), compile=False, rtol=1e-3, atol=1e-4),
    # Shapes (V, H, L, B, prime length, n, top_k, top_p * 100; 100 = off, 0 = greedy). CUDA (one
    # cooperative kernel, hidden units over up to one CTA per SM, U >= 2 units a CTA): 2 x 512
    # at batch 1 with every CTA's weight rows in shared memory (float64: 200 KB a CTA on 132
    # SMs); batch 32 in groups of streams (float64: 2 a pass, the cache beside them; the float32
    # row: 8 a pass); 2 x 1024 float64 (786 KB a CTA: rows from L2, 2 streams a pass); odd sizes
    # (H 33: 17 CTAs, the last with one unit; V 37: some CTAs without head rows; 3 layers; 8
    # streams a pass with 5 live); greedy one-layer tiny; batch 70 (CUDA: 9 groups, the last of
    # 6; Triton: 16 streams a program, tl.dot GEMVs) with top_p. Triton otherwise one program per
    # stream. The draws are compared by index; the state (h, c) at the float tolerance.
    Row("lstm_generate", "generate", _lstm_gen_inputs, _lstm_generator(False),
        ((96, 512, 2, 1, 8, 200, 0, 100), (96, 512, 2, 32, 4, 64, 40, 90),
         (256, 1024, 2, 3, 2, 40, 0, 100), (37, 33, 3, 5, 4, 30, 5, 100),
         (5, 7, 1, 2, 3, 20, 0, 0), (40, 64, 2, 70, 2, 10, 0, 80)),
        (7, 6, 2, 2, 2, 5, 3, 90), compile=False),
    # The float32 kernel (the float64 row covers the math exactly): a near-tie that another
    # summation order breaks the other way could change the rest of one stream.
    Row("lstm_generate", "generate_fp32", _lstm_gen_inputs, _lstm_generator(True),
        ((96, 512, 2, 32, 4, 64, 40, 90),), (7, 6, 2, 2, 2, 5, 3, 90), compile=False),
    # Shapes (L, V, C, Hh, T, B, prime length, n, keep, top_k, top_p * 100; 100 = off, 0 =
    # greedy): the benchmark's char GPT (4 x 128, 4 heads, block 512) for 600 tokens (one refill
    # at 512); batch 8 with top_k and top_p; a GPT-2-small-wide net (768, 12 heads, head dim 64)
    # at batch 2; odd sizes (C 36 in 3 heads of 12, V 37, block 9 with keep 1: a refill every 8
    # tokens, a prime longer than the block); greedy one layer. Draws compared by index.
    Row("attention_generate", "generate", _gpt_gen_inputs, _gpt_generator(False),
        ((4, 96, 128, 4, 512, 1, 1, 600, 256, 0, 100), (4, 96, 128, 4, 512, 8, 4, 100, 256, 40, 90),
         (2, 256, 768, 12, 256, 2, 2, 64, 128, 0, 100), (3, 37, 36, 3, 9, 5, 12, 30, 1, 5, 100),
         (1, 11, 16, 2, 16, 3, 1, 20, 8, 0, 0)),
        (2, 13, 12, 2, 8, 2, 2, 9, 3, 3, 90), compile=False),
    # GPT-2's vocabulary: CUDA draws from a logits row in global memory (past shared memory);
    # Triton keeps the row in registers and refuses V > 1024 (this row skips it).
    Row("attention_generate", "generate_large_vocab", _gpt_gen_inputs,
        _gpt_generator(False, max_triton_vocab=1024),
        ((1, 50257, 64, 2, 64, 2, 3, 40, 32, 0, 100),), (1, 50257, 16, 2, 8, 1, 1, 4, 2, 0, 100),
        compile=False),
    # The fp16 / bf16 / fp32 model dtypes (weights widened on load, math in float32): a near-tie
    # another summation order breaks the other way could change the rest of one stream.
    Row("attention_generate", "generate_model_dtype", _gpt_gen_inputs, _gpt_generator(True),
        ((4, 96, 128, 4, 512, 4, 4, 64, 256, 40, 90),), (2, 13, 12, 2, 8, 2, 2, 9, 3, 3, 90),
        compile=False),
]
