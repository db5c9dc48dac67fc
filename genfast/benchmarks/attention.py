"""Benchmark cases for the attention family (genfast/ops/attention.py, attention2d.py): the SAGAN
self-attention layer, causal attention at GPT shapes, the double backward a gradient penalty
runs through them, and (section) the peak memory of the SAGAN layer.

Providers:
  genfast:<backend>   genfast.nn.SelfAttention2d (same weights) / genfast.attention
  torch bmm+softmax   the reference layers (BigGAN-PyTorch's Attention, heykeetae's Self_Attn):
                      the HW x HW/4 map materialised with torch.bmm and F.softmax
  torch SDPA          F.scaled_dot_product_attention (on the CPU its flash kernel for causal
                      attention; for SAGAN's unequal head dims whatever SDPA picks); its double
                      backward raises, which the table records
  torch.compile       the bmm+softmax version compiled
  floor               what every implementation also does: the layer's 1x1 convs and pooling
GPT generation (gpt_generate): genfast:<backend> is genfast.attention_generate, the whole cached
loop in one native call; the same net's Python loop over the modules with the KV cache, on the
genfast core and with SDPA as the core (what a careful PyTorch user writes); and nanoGPT's loop
that recomputes the whole prefix per token.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import genfast

from .report import rate_rows
from .runner import COMPILED, Case, Factory, Inputs, backends_for, threads

MAT, SDPA, FLOOR = "torch bmm+softmax", "torch SDPA", "1x1 convs + pool only (floor)"
SAGAN = [(16, 64, 32, 32), (16, 64, 64, 64)]  # (B, C, H, W): the CPU target shapes
QUICK_SAGAN = [(2, 16, 6, 6)]
GPU_SAGAN = [(64, 64, 64, 64), (64, 256, 32, 32)]
CAUSAL = [(8, 8, 256, 64)]  # (B, Hh, T, D): the CPU target
QUICK_CAUSAL = [(2, 2, 9, 8)]
GPU_CAUSAL = [(8, 12, T, 64) for T in (256, 1024, 4096)] + [(4, 16, 2048, 128)]
PENALTY = "attention_double_backward"
GEN_OP, RECOMPUTE = "gpt_generate", "recompute the prefix (nanoGPT's loop)"
SDPA_CACHE = "torch SDPA + the same KV cache"
MODULE_LOOP = "Python loop over the modules + KV cache (genfast core)"
# (layers, heads, width, block, batch, tokens): the default GPT model's size, 512 tokens (the
# issue's target), batch 1; the GPU adds a GPT-2-small-sized net
GPT = [(4, 4, 128, 512, 1, 512)]
QUICK_GPT = [(2, 2, 16, 16, 2, 12)]
GPU_GPT = [(4, 4, 128, 512, 1, 512), (12, 12, 768, 1024, 8, 512)]


def _no_double_backward(fn):
    """A specialist whose double backward raises (SDPA's fused kernels: pytorch #116350) is
    recorded as unable to run, with torch's message, not as a failure of the benchmark."""
    from genfast.backends import BackendError

    def run():
        try:
            return fn()
        except RuntimeError as e:
            if "not implemented" not in str(e):
                raise
            raise BackendError(f"its double backward raises: {str(e).splitlines()[0]}") from e
    return run


def _randn(shape, dtype, device, seed, grad=False):
    g = torch.Generator(device=device).manual_seed(seed)
    return torch.randn(*shape, generator=g, device=device).to(dtype).requires_grad_(grad)


# ------------------------------------------------------------------ the SAGAN layer
class _Layer(torch.nn.Module):
    """BigGAN-PyTorch's Attention layer (theta / phi C -> C/8, g C -> C/2, phi and g max-pooled
    2x2, output conv C/2 -> C, x + gamma o) with a switchable attention core."""

    def __init__(self, C: int, core: str, backend: str | None = None):
        super().__init__()
        conv = (lambda i, o: torch.nn.Conv2d(i, o, 1, bias=False))
        self.theta, self.phi, self.g, self.o = conv(C, C // 8), conv(C, C // 8), \
            conv(C, C // 2), conv(C // 2, C)
        self.gamma = torch.nn.Parameter(torch.tensor(0.5))
        self.core, self.backend = core, backend

    def forward(self, x):
        B, C, H, W = x.shape
        theta, phi, g = self.theta(x), self.phi(x), self.g(x)
        if self.core == "genfast":
            o = genfast.attention2d(theta, phi, g, backend=self.backend)
        else:
            phi, g = F.max_pool2d(phi, 2), F.max_pool2d(g, 2)
            if self.core == "sdpa":
                rows = (lambda t: t.flatten(2).transpose(1, 2).unsqueeze(1))
                o = F.scaled_dot_product_attention(rows(theta), rows(phi), rows(g), scale=1.0)
                o = o.squeeze(1).transpose(1, 2).reshape(B, C // 2, H, W)
            elif self.core == "floor":
                o = theta.new_zeros(B, C // 2, H, W) + theta.sum() + g.sum() + phi.sum()
            else:
                beta = F.softmax(torch.bmm(theta.flatten(2).transpose(1, 2), phi.flatten(2)), -1)
                o = torch.bmm(g.flatten(2), beta.transpose(1, 2)).view(B, C // 2, H, W)
        return x + self.gamma * self.o(o)


def _layer(C, core, backend, dtype, device):
    """The reference layer with a core, or (core "genfast") genfast.nn.SelfAttention2d, the
    drop-in users run (one projection GEMM, the fused core, output conv and residual in one
    baddbmm), loaded with the same weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        ref = _Layer(C, core, backend).to(device=device, dtype=dtype)
    if core != "genfast":
        return ref
    from genfast.nn import SelfAttention2d

    layer = SelfAttention2d(C, spectral_norm=False, backend=backend).to(device=device,
                                                                        dtype=dtype)
    layer.load_state_dict({k: v for k, v in ref.state_dict().items()})
    return layer


def _sagan_provider(core, backend, shape, dtype, device, grad, penalty=False) -> Factory:
    def factory(inp: Inputs):
        layer = _layer(shape[1], core, backend, dtype, device)
        if core == "compile":
            layer.core = "bmm"
            layer = torch.compile(layer, dynamic=False)
        params = list(layer.parameters())
        x = inp["x"]
        if penalty:  # R1: the gradient of the layer's output w.r.t. x, penalised
            def r1():
                xr = x.detach().requires_grad_()
                (gx,) = torch.autograd.grad((layer(xr) * inp["w"]).sum(), xr, create_graph=True)
                return torch.autograd.grad(gx.square().sum(), params)
            return _no_double_backward(r1)
        if grad:
            return lambda: torch.autograd.grad((layer(x) * inp["w"]).sum(), [x, *params])

        def fwd():
            with torch.no_grad():
                return layer(x)
        return fwd
    return factory


def sagan_case(shape, dtype, device, mode, backends, compile_default=False,
               penalty=False) -> Case:
    grad = mode == "forward+backward"

    def inputs() -> Inputs:
        return {"x": _randn(shape, dtype, device, 0, grad), "w": _randn(shape, dtype, device, 1)}
    args = (shape, dtype, device, grad)
    providers: dict[str, Factory] = {f"genfast:{be}": _sagan_provider("genfast", be, *args,
                                                                      penalty=penalty)
                                     for be in backends}
    providers[MAT] = _sagan_provider("bmm", None, *args, penalty=penalty)
    providers[SDPA] = _sagan_provider("sdpa", None, *args, penalty=penalty)
    if not penalty:
        providers[COMPILED] = _sagan_provider("compile", None, *args)
        providers[FLOOR] = _sagan_provider("floor", None, *args)
    B, C, H, W = shape
    return Case(op=PENALTY if penalty else "sagan_attention",
                name=f"SAGAN C{C} {H}x{W}" + (" R1" if penalty else ""), shape=shape,
                dtype=dtype, device=device, mode=mode, inputs=inputs, providers=providers,
                bytes=0, eager=MAT, floor=MAT if penalty else FLOOR,
                compile_default=compile_default)


# ------------------------------------------------------------------ causal attention
def _causal_provider(kind, backend, shape, dtype, device, grad, penalty=False) -> Factory:
    def attend(q, k, v):
        if kind == "genfast":
            return genfast.attention(q, k, v, causal=True, backend=backend)
        if kind == "sdpa":
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        T = q.shape[2]
        s = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
        mask = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
        return torch.softmax(s.masked_fill(~mask, float("-inf")), -1) @ v

    def factory(inp: Inputs):
        fn = torch.compile(attend, dynamic=False) if kind == "compile" else attend
        q, k, v, w = inp["q"], inp["k"], inp["v"], inp["w"]
        if penalty:
            def pen():
                g = torch.autograd.grad((fn(q, k, v) * w).sum(), (q, k, v), create_graph=True)
                return torch.autograd.grad(sum(t.square().sum() for t in g), (q, k, v))
            return _no_double_backward(pen)
        if grad:
            return lambda: torch.autograd.grad(fn(q, k, v), (q, k, v), w)

        def fwd():
            with torch.no_grad():
                return fn(q, k, v)
        return fwd
    return factory


def causal_case(shape, dtype, device, mode, backends, compile_default=False,
                penalty=False) -> Case:
    grad = mode == "forward+backward"

    def inputs() -> Inputs:
        return {n: _randn(shape, dtype, device, i, grad) for i, n in enumerate("qkvw")}
    args = (shape, dtype, device, grad)
    providers: dict[str, Factory] = {f"genfast:{be}": _causal_provider("genfast", be, *args,
                                                                       penalty=penalty)
                                     for be in backends}
    providers[SDPA] = _causal_provider("sdpa", None, *args, penalty=penalty)
    providers["torch materialised"] = _causal_provider("mat", None, *args, penalty=penalty)
    if not penalty:
        providers[COMPILED] = _causal_provider("compile", None, *args)
    B, Hh, T, D = shape
    return Case(op=PENALTY if penalty else "attention",
                name=f"causal Hh{Hh} D{D}" + (" penalty" if penalty else ""), shape=shape,
                dtype=dtype, device=device, mode=mode, inputs=inputs, providers=providers,
                bytes=(8 if grad else 4) * B * Hh * T * D * dtype.itemsize,
                eager="torch materialised" if penalty else SDPA,
                floor="torch materialised" if penalty else SDPA,
                compile_default=compile_default)


# ------------------------------------------------------------------ GPT generation
def _gpt_provider(kind, backend, cfg, dtype, device) -> Factory:
    from genfast.models._gpt_net import GPTNet

    layers, heads, width, block, B, n = cfg

    def factory(inp: Inputs):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            net = GPTNet(96, block, layers, heads, width).to(device=device, dtype=dtype).eval()
        prime = torch.zeros(B, 1, dtype=torch.long, device=device)

        def run():
            with threads(1 if B == 1 and not device.startswith("cuda") else None), \
                    genfast.use_backend(backend or "auto"), _attention_core(kind):
                return net.generate(prime, n - 1, seed=0, use_cache=kind != "recompute",
                                    native=kind == "native", backend=backend)
        return run
    return factory


def _sdpa_core(q, k, v, *, causal, backend=None):
    """SDPA in CausalSelfAttention's place: one query attends every cached key; a prefill
    (N == M) is SDPA's is_causal (the two cases a 512-token run with a 512 block has)."""
    N, M = q.shape[2], k.shape[2]
    assert N == 1 or N == M, (N, M)
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal and N > 1)


def _attention_core(kind: str):
    """The best plain-PyTorch cached loop is the same model and cache with SDPA as the core:
    swap it into genfast.nn.attention for the run."""
    import contextlib
    from unittest import mock

    if kind != "sdpa-cache":
        return contextlib.nullcontext()
    return mock.patch("genfast.nn.attention.attention", _sdpa_core)


def gpt_case(cfg, dtype, device, backends) -> Case:
    providers: dict[str, Factory] = {
        f"genfast:{be}": _gpt_provider("native", be, cfg, dtype, device)
        for be in backends if be != "reference"}
    providers[MODULE_LOOP] = _gpt_provider("cache", None, cfg, dtype, device)
    providers[SDPA_CACHE] = _gpt_provider("sdpa-cache", None, cfg, dtype, device)
    providers[RECOMPUTE] = _gpt_provider("recompute", None, cfg, dtype, device)
    layers, heads, width, block, B, n = cfg
    return Case(op=GEN_OP, name=f"GPT {layers}x{width} h{heads} batch {B}", shape=cfg,
                dtype=dtype, device=device, mode="sample", inputs=dict, providers=providers,
                bytes=0, eager=RECOMPUTE, floor=RECOMPUTE, table=False)


def cases(device: str = "cpu", scope: str = "default",
          dtypes: list[torch.dtype] | None = None) -> list[Case]:
    """quick: tiny shapes. default: the issue's SAGAN layer (B=16, C=64, 32x32 and 64x64) and
    causal attention (B=8, Hh=8, T=256, D=64), forward and forward+backward, and the double
    backward of each. GPU: GPT shapes up to T=4096 and the SAGAN layer at B=64."""
    cuda = device.startswith("cuda")
    backends = backends_for(device, scope)
    if dtypes is None:
        dtypes = [torch.bfloat16, torch.float16] if cuda else [torch.float32]
    quick = scope == "quick"
    sagan = QUICK_SAGAN if quick else (GPU_SAGAN if cuda else SAGAN)
    causal = QUICK_CAUSAL if quick else (GPU_CAUSAL if cuda else CAUSAL)
    out: list[Case] = []
    for dtype in dtypes:
        for i, shape in enumerate(sagan):
            # the larger map: forward+backward only (the materialised layer takes seconds)
            for mode in ("forward", "forward+backward")[min(i, 1):]:
                out.append(sagan_case(shape, dtype, device, mode, backends,
                                      compile_default=not quick and i == 0 and mode != "forward"))
        out.append(sagan_case(sagan[0], dtype, device, "forward+backward", backends,
                              penalty=True))
        for i, shape in enumerate(causal):
            for mode in ("forward", "forward+backward"):
                out.append(causal_case(shape, dtype, device, mode, backends,
                                       compile_default=not quick and i == 0 and mode != "forward"))
        out.append(causal_case(causal[0], dtype, device, "forward+backward", backends,
                               penalty=True))
        if dtype == dtypes[0]:
            for cfg in QUICK_GPT if quick else (GPU_GPT if cuda else GPT):
                out.append(gpt_case(cfg, dtype, device, backends))
    return out


# ------------------------------------------------------------------ report sections
def _tflops(r: dict) -> float | None:
    """Causal attention's TFLOP/s by flash-attention's count: 4 B Hh T^2 D / 2 for the
    forward, 2.5x that again for the backward (which recomputes P)."""
    if r.get("median_ms") is None or not r["case"].startswith("causal"):
        return None
    B, Hh, T, D = r["shape"]
    f = 2 * B * Hh * T * T * D * (3.5 if r["mode"] == "forward+backward" else 1.0)
    return f / (r["median_ms"] / 1e3) / 1e12


def _tokens_per_s(r: dict) -> float | None:
    if r.get("median_ms") is None:
        return None
    return r["shape"][4] * (r["shape"][5] - 1) / (r["median_ms"] / 1e3)


def sections(rows: list[dict]) -> list[str]:
    """Causal attention in TFLOP/s; the SAGAN layer's peak memory (CPU: peak RSS of one
    forward+backward in a fresh process; CUDA: the runner's peak allocation)."""
    out: list[str] = []
    mine = [r for r in rows if r["op"] == "attention" and _tflops(r)]
    if mine:
        out += ["### attention (causal): TFLOP/s (flash-attention's FLOP count)", "",
                "| case | mode | provider | TFLOP/s |", "|---|---|---|---:|"]
        out += [f"| {r['case']} {'x'.join(map(str, r['shape']))} | {r['mode']} | "
                f"{r['provider']} | {_tflops(r):.3g} |" for r in mine]
        out.append("")
    gen = [r for r in rows if r["op"] == GEN_OP]
    if gen:
        out += [f"### {GEN_OP}: {gen[0]['shape'][5]} tokens per stream from a 1-token prime "
                "(batch 1 on 1 CPU thread); the KV cache vs recomputing the prefix per token", "",
                "| case | provider | tokens/s | genfast vs it |", "|---|---|---:|---:|"]
        out += rate_rows(gen, _tokens_per_s,
                         lambda r, rate: f"{rate:,.0f}" if rate >= 100 else f"{rate:.3g}")
        out.append("")
    sagan = [r for r in rows if r["op"] == "sagan_attention" and r["mode"] == "forward+backward"]
    if sagan:
        from .peak_memory import sagan_peak_mb

        out += ["### sagan_attention: peak memory of one forward+backward, MB above the inputs",
                "", "| case | provider | peak MB |", "|---|---|---:|"]
        for r in sagan:
            if r.get("median_ms") is None or r["provider"] in (COMPILED, FLOOR):
                continue
            mb = sagan_peak_mb(tuple(r["shape"]), r["provider"], r["device"], r["dtype"],
                               r.get("peak_mem_bytes"))
            out.append(f"| {r['case']} B{r['shape'][0]} | {r['provider']} | "
                       f"{'—' if mb is None else f'{mb:,.1f}'} |")
        out.append("")
    return out
