"""Benchmark cases for the causal_conv families (genfast/ops/causal_conv.py, causal_conv_layer.py,
causal_conv_generate.py): the conv alone, the depthwise (Mamba) shape, a whole WaveNet training
step, and whole-network generation.

Providers:
  genfast:<backend>   genfast.causal_conv1d / genfast.nn.WaveNet with that backend
  torch eager         the plain-PyTorch way: F.pad on the left, then F.conv1d (the WaveNet with
                      tanh, sigmoid and 1x1 F.conv1d per layer; r9y9's and ibab's layout)
  torch.compile       that plain-PyTorch code compiled
  floor               an op any implementation must also do (named per case)
Generation (mode "sample", one thread, the issue's default WaveNet):
  genfast:<backend>   WaveNet.generate: the whole loop in one native call
  torch queue loop    the same algorithm (per-layer queues, fast-wavenet) as a Python loop of
                      torch ops: the reference backend of wavenet_generate
  naive               a full plain-PyTorch forward over the receptive field per sample
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import genfast

from .report import rate_rows
from .runner import COMPILED, Case, Factory, Inputs, backends_for, threads

EAGER = "torch eager"
DENSE = (4, 32, 64, 8000)  # (B, C_in, C_out, T): a WaveNet layer's dilated conv, 0.5 s audio
QUICK_DENSE = (2, 8, 16, 257)
DEPTHWISE = (2, 768, 2048)  # Mamba-130m's conv1d: (B, d_inner, L), K = 4, silu
QUICK_DEPTHWISE = (2, 32, 129)
GPU_DEPTHWISE = (8, 4096, 16384)
STEP = (4, 8000)  # the training target: (B, T) of mu-law tokens
QUICK_STEP = (2, 300)
GEN_STEPS, QUICK_GEN_STEPS, NAIVE_STEPS = 256, 16, 8
GEN = "wavenet_generate"
# nv-wavenet's benchmark model: 20 layers (dilations 1..512 twice), R=64, 2R gate, S=A=256.
NV_WAVENET = dict(residual=64, gate=128, skip=256, head=256, layers=10, stacks=2)
QUEUE, NAIVE = "torch queue loop", "naive full forward"


def torch_causal(x, w, b, dilation=1, groups=1):
    P = (w.shape[-1] - 1) * dilation
    return F.conv1d(F.pad(x, (P, 0)), w, b, dilation=dilation, groups=groups)


# ------------------------------------------------------------------ the conv alone
def _conv_inputs(B, C_in, C_out, T, K, dilation, groups, dtype, device, grad):
    def make() -> Inputs:
        g = torch.Generator(device=device).manual_seed(0)
        x = torch.randn(B, C_in, T, generator=g, device=device).to(dtype)
        w = (torch.randn(C_out, C_in // groups, K, generator=g, device=device)
             / (C_in // groups * K) ** .5).to(dtype)
        b = torch.randn(C_out, generator=g, device=device).to(dtype)
        dy = torch.randn(B, C_out, T, generator=g, device=device).to(dtype)
        xp = F.pad(x, ((K - 1) * dilation, 0))  # the floor's input: padded before timing
        return {"x": x.requires_grad_(grad), "w": w.requires_grad_(grad), "b": b, "dy": dy,
                "xp": xp.requires_grad_(grad)}

    return make


def _timed(f, grad: bool, x: str = "x") -> Factory:
    def factory(inp: Inputs):
        if grad:
            return lambda: torch.autograd.grad(f(inp[x], inp["w"], inp["b"]),
                                               (inp[x], inp["w"]), inp["dy"])
        return lambda: f(inp[x], inp["w"], inp["b"])
    return factory


def conv_case(shape, K, dilation, groups, act, dtype, device, mode, backends,
              compile_default=False, name=None) -> Case:
    B, C_in, C_out, T = shape
    grad = mode == "forward+backward"
    post = {None: lambda y: y, "silu": F.silu}[act]

    def eager(x, w, b):
        return post(torch_causal(x, w, b, dilation, groups))

    providers: dict[str, Factory] = {
        f"genfast:{be}": _timed(lambda x, w, b, be=be: genfast.causal_conv1d(
            x, w, b, dilation=dilation, groups=groups, activation=act, backend=be), grad)
        for be in backends}
    providers[EAGER] = _timed(eager, grad)
    providers[COMPILED] = lambda inp: _timed(torch.compile(eager, dynamic=False), grad)(inp)
    floor = "F.conv1d on a pre-padded input (floor)"
    providers[floor] = _timed(lambda x, w, b: F.conv1d(x, w, b, dilation=dilation,
                                                       groups=groups), grad, x="xp")
    n = dtype.itemsize
    io = B * (C_in + C_out) * T * n + C_out * C_in // groups * K * n
    return Case(op="causal_conv1d", name=name or f"K={K} d={dilation} groups={groups}",
                shape=(B, C_in, T), dtype=dtype, device=device, mode=mode,
                inputs=_conv_inputs(B, C_in, C_out, T, K, dilation, groups, dtype, device, grad),
                providers=providers, bytes=(2 if grad else 1) * io, eager=EAGER, floor=floor,
                compile_default=compile_default, count_flops=groups == 1)


# ------------------------------------------------------------------ WaveNet training step
class TorchWaveNet(torch.nn.Module):
    """genfast.nn.WaveNet's parameters run as plain PyTorch (F.pad + F.conv1d, tanh, sigmoid,
    1x1 F.conv1d): the eager baseline, and torch.compile's input."""

    def __init__(self, model):
        super().__init__()
        self.m = model

    def forward(self, tokens):
        m = self.m
        x = m._embed_input(tokens)
        skip = 0
        for lay in m.layers:
            a = torch_causal(x, lay.conv.weight, lay.conv.bias, lay.conv.dilation[0])
            H = a.shape[1] // 2
            z = torch.tanh(a[:, :H]) * torch.sigmoid(a[:, H:])
            x = x + F.conv1d(z, lay.res.weight, lay.res.bias)
            skip = skip + F.conv1d(z, lay.skip.weight, lay.skip.bias)
        return m.head2(torch.relu(m.head1(torch.relu(skip))))


def default_wavenet(dtype=torch.float32, device="cpu", backend=None, **kw):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return genfast.nn.WaveNet(backend=backend, **kw).to(device=device, dtype=dtype)


def _tokens(B, T, device):
    def make() -> Inputs:
        g = torch.Generator(device=device).manual_seed(0)
        t = torch.randint(0, 256, (B, T + 1), generator=g, device=device)
        return {"inp": t[:, :-1], "target": t[:, 1:]}
    return make


def _stepper(kind: str, backend: str | None, dtype, device) -> Factory:
    def factory(inp: Inputs):
        model = default_wavenet(dtype, device, backend)
        net = model if kind == "genfast" else TorchWaveNet(model)
        if kind == "compile":
            net = torch.compile(net, dynamic=False)

        def run():
            loss = F.cross_entropy(net(inp["inp"]), inp["target"])
            # The last layer's residual projection feeds nothing: eager leaves it out of the graph.
            return torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
        return run
    return factory


def step_case(shape, dtype, device, backends, compile_default=False) -> Case:
    providers: dict[str, Factory] = {
        f"genfast:{be}": _stepper("genfast", be, dtype, device) for be in backends}
    providers[EAGER] = _stepper("eager", None, dtype, device)
    providers[COMPILED] = _stepper("compile", None, dtype, device)
    floor = "forward only, eager (floor)"

    def fwd_only(inp):
        net = TorchWaveNet(default_wavenet(dtype, device))
        return lambda: net(inp["inp"])

    providers[floor] = fwd_only
    B, T = shape
    return Case(op="wavenet_train_step", name="2x10 layers R32 G64 S128", shape=shape,
                dtype=dtype, device=device, mode="forward+backward",
                inputs=_tokens(B, T, device), providers=providers,
                bytes=B * T * (32 + 64 + 128) * 20 * dtype.itemsize, eager=EAGER, floor=floor,
                compile_default=compile_default, count_flops=True)


def saved_bytes(fn) -> int:
    """Bytes of the tensors autograd saves for backward during fn() (distinct storages)."""
    seen: dict[int, int] = {}

    def pack(t):
        if t.device.type != "meta":
            s = t.untyped_storage()
            seen[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


# ------------------------------------------------------------------ generation
def _gen_provider(kind: str, backend: str | None, n: int, batch: int, threads_: int | None,
                  dtype, device, config: dict | None = None) -> Factory:
    def factory(inp: Inputs):
        model = default_wavenet(dtype, device, **(config or {}))
        if kind == "naive":
            net, rf = TorchWaveNet(model), model.receptive_field

            @torch.no_grad()
            def run():
                toks = torch.full((batch, rf), model.classes // 2, device=device)
                g = torch.Generator(device=device).manual_seed(0)
                for _ in range(n):
                    logits = net(toks[:, -rf:])[..., -1]
                    u = torch.rand(logits.shape, generator=g, device=device)
                    nxt = (logits - torch.log(-torch.log(u))).argmax(-1, keepdim=True)
                    toks = torch.cat([toks[:, 1:], nxt], 1)
                return toks
        else:
            def run():
                return model.generate(n, batch=batch, seed=0, backend=backend)

        def timed():
            with threads(threads_):
                return run()
        return timed
    return factory


def gen_case(n, batch, threads_, dtype, device, backends, naive=True,
             config: dict | None = None, label: str = "") -> Case:
    args = (batch, threads_, dtype, device, config)
    providers: dict[str, Factory] = {
        f"genfast:{be}": _gen_provider("genfast", be, n, *args)
        for be in backends if be != "reference"}
    providers[QUEUE] = _gen_provider("queue", "reference", n, *args)
    if naive:
        providers[NAIVE] = _gen_provider("naive", None, NAIVE_STEPS, *args)
    return Case(op=GEN, name=f"{label}batch={batch} threads={threads_ or 'all'} n={n}",
                shape=(batch, n), dtype=dtype, device=device, mode="sample",
                inputs=dict, providers=providers, bytes=0, eager=QUEUE, floor=QUEUE,
                table=False)


def cases(device: str = "cpu", scope: str = "default",
          dtypes: list[torch.dtype] | None = None) -> list[Case]:
    """quick: tiny shapes. default: the dense conv (d=1, 512) forward+backward, depthwise,
    the WaveNet training step (compiled) and generation at batch 1 (one thread) and 16.
    full: every mode and the reference backend."""
    cuda = device.startswith("cuda")
    backends = backends_for(device, scope)
    if dtypes is None:
        dtypes = [torch.float32, torch.bfloat16] if cuda else [torch.float32]
    quick = scope == "quick"
    out: list[Case] = []
    for dtype in dtypes:
        modes = ("forward", "forward+backward")
        dense = QUICK_DENSE if quick else DENSE
        for d in ((1, 5) if quick else (1, 512)):
            for mode in modes if (scope != "default" or d == 1 or cuda) else modes[1:]:
                out.append(conv_case(dense, 2, d, 1, None, dtype, device, mode, backends))
        dw = QUICK_DEPTHWISE if quick else (GPU_DEPTHWISE if cuda else DEPTHWISE)
        for mode in modes:
            out.append(conv_case((dw[0], dw[1], dw[1], dw[2]), 4, 1, dw[1], "silu", dtype,
                                 device, mode, backends, name="depthwise K=4 silu"))
        if dtype == torch.float32 or cuda:
            out.append(step_case(QUICK_STEP if quick else STEP, dtype, device, backends,
                                 compile_default=not quick))
        if dtype == torch.float32:
            n = QUICK_GEN_STEPS if quick else GEN_STEPS
            out.append(gen_case(n, 1, None if cuda else 1, dtype, device, backends))
            out.append(gen_case(n, 16 if not cuda else 64, None if cuda else 1, dtype, device,
                                backends, naive=False))
            if not cuda and not quick:
                out.append(gen_case(n, 16, 2, dtype, device, backends, naive=False))
            if cuda:  # nv-wavenet's published configuration, batch 1 and 64
                for batch in (1, 64):
                    out.append(gen_case(n, batch, None, dtype, device, backends, naive=False,
                                        config=NV_WAVENET, label="nv-wavenet R64 S256 "))
    return out


def _per_sample_rate(r: dict) -> float | None:
    if r.get("median_ms") is None:
        return None
    batch, n = r["shape"]
    n = NAIVE_STEPS if r["provider"] == NAIVE else n
    return batch * n / (r["median_ms"] / 1e3)


def memory_section(rows: list[dict]) -> list[str]:
    """Activation bytes autograd saves for one training forward, genfast vs the eager model
    (counted by saved_tensors_hooks: deterministic, unlike RSS)."""
    steps = [r for r in rows if r["op"] == "wavenet_train_step" and r["device"] == "cpu"]
    if not steps:
        return []
    B, T = steps[0]["shape"]
    toks = _tokens(B, T, "cpu")()
    lines = [f"### wavenet_train_step: activation memory saved for backward (B={B}, T={T})", "",
             "| provider | saved MiB | vs eager |", "|---|---:|---:|"]
    eager = saved_bytes(lambda: TorchWaveNet(default_wavenet())(toks["inp"]).sum())
    for be in dict.fromkeys(r["provider"] for r in steps):
        if not be.startswith("genfast:"):
            continue
        got = saved_bytes(lambda be=be: default_wavenet(backend=be[8:])(toks["inp"]).sum())
        lines.append(f"| {be} | {got / 2**20:.1f} | {got / eager:.2f}x |")
    lines.append(f"| {EAGER} | {eager / 2**20:.1f} | 1.00x |")
    return [*lines, ""]


def sections(rows: list[dict]) -> list[str]:
    """Generation in samples/s and real-time factor at 16 kHz, and the ratios the issue names;
    the training step's saved activation memory."""
    mine = [r for r in rows if r["op"] == GEN]
    if not mine:
        return memory_section(rows)
    lines = ["### wavenet_generate: samples/s (all streams), real-time factor at 16 kHz", "",
             "| case | provider | samples/s | RTF (per stream) | genfast vs it |",
             "|---|---|---:|---:|---:|"]
    lines += rate_rows(mine, _per_sample_rate,
                       lambda r, rate: f"{rate:,.0f} | {16000 * r['shape'][0] / rate:.3g}", 2)
    return [*lines, "", *memory_section(rows)]
