"""Benchmark cases for the lstm families (genfast/ops/lstm.py, lstm_generate.py): a 2-layer LSTM
forward and forward+backward, a WGAN-GP critic step through an LSTM (double backward), and
generation with the native sampling loop.

Providers (training):
  genfast:<backend>    genfast.lstm (the functional core of genfast.nn.LSTM) with that backend
  torch nn.LSTM        torch's nn.LSTM, same weights (oneDNN's fused RNN on the CPU, cuDNN on GPU)
  torch LSTMCell loop  nn.LSTMCell stepped in Python, layer by layer: what users of custom
                       cells write
  torch.compile        that cell loop with the cell compiled (Dynamo does not take nn.LSTM)
  floor                the GEMMs over all steps that any implementation does besides the
                       recurrence (input projection; with backward dx, dW_ih and dW_hh too)
Generation (mode "sample"; vocabulary 96, one-hot input; batch 1 on 1 thread (the issue's
target) and batch 32 on 2):
  genfast:<backend>    LSTMLanguageModel.generate: the whole loop in one native call
  torch nn.LSTM loop   one nn.LSTM call per token with the state carried, then the head and the
                       same sampler (the careful Python loop)
  naive                the whole prefix re-run through nn.LSTM per token: a few timed, scaled
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import genfast

from .report import rate_rows
from .runner import COMPILED, Case, Factory, Inputs, backends_for, threads

TORCH, CELL = "torch nn.LSTM", "torch LSTMCell loop"
FLOOR = "all-step GEMMs only (floor)"
TRAIN = (128, 32, 512, 512, 2)  # (T, B, n_in, H, layers): the CPU training target
QUICK_TRAIN = (6, 3, 8, 8, 2)
GPU_TRAIN = [(256, B, H, H, 1) for B in (1, 16, 64) for H in (256, 512, 1024)]
CRITIC = (32, 16, 64, 128, 1)  # a WGAN-GP LSTM critic over (T, B, n_in) relaxed one-hots
QUICK_CRITIC = (5, 2, 6, 8, 1)
CRITIC_OP = "lstm_wgan_gp_critic_step"
GEN_OP, LOOP, NAIVE = "lstm_generate", "torch nn.LSTM loop", "naive full forward"
VOCAB = 96  # char-RNN's printable-ASCII vocabulary (one-hot input, Karpathy's char-rnn)
# (layers, hidden, batch, threads): the targets at batch 1 on one thread, and batch 32
GEN = [(1, 128, 1, 1), (2, 512, 1, 1), (1, 128, 32, 2), (2, 512, 32, 2)]
QUICK_GEN = [(1, 8, 1, 1), (2, 8, 3, 1)]
GEN_STEPS, QUICK_GEN_STEPS, NAIVE_STEPS = 256, 8, 4


def _lstm(n_in: int, H: int, layers: int, dtype, device) -> torch.nn.LSTM:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return torch.nn.LSTM(n_in, H, layers).to(device=device, dtype=dtype)


def _inputs(T, B, n_in, H, dtype, device, grad):
    def make() -> Inputs:
        g = torch.Generator(device=device).manual_seed(0)
        x = torch.randn(T, B, n_in, generator=g, device=device).to(dtype)
        dy = torch.randn(T, B, H, generator=g, device=device).to(dtype)
        return {"x": x.requires_grad_(grad), "dy": dy}
    return make


def _cell_loop(lstm: torch.nn.LSTM, compiled: bool):
    """nn.LSTMCell-style stepping with lstm's weights (one cell per layer)."""
    cells = []
    for k in range(lstm.num_layers):
        cell = torch.nn.LSTMCell(lstm.input_size if k == 0 else lstm.hidden_size,
                                 lstm.hidden_size).to(lstm.weight_hh_l0)
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            setattr(cell, name, getattr(lstm, f"{name}_l{k}"))
        cells.append(torch.compile(cell, dynamic=False) if compiled else cell)

    def run(x):
        inp = x
        for cell in cells:
            h = c = None
            ys = []
            for t in range(inp.shape[0]):
                h, c = cell(inp[t], None if h is None else (h, c))
                ys.append(h)
            inp = torch.stack(ys)
        return inp
    return run


def _provider(kind: str, backend, T, B, n_in, H, layers, dtype, device, grad) -> Factory:
    def factory(inp: Inputs):
        lstm = _lstm(n_in, H, layers, dtype, device)
        weights = list(lstm._flat_weights)
        if kind == "genfast":
            def net(x):
                return genfast.lstm(x, None, weights, num_layers=layers, backend=backend)[0]
        elif kind == "torch":
            def net(x):
                return lstm(x)[0]
        else:
            net = _cell_loop(lstm, compiled=kind == "compile")
        leaves = [inp["x"], *weights]
        if grad:
            return lambda: torch.autograd.grad(net(inp["x"]), leaves, inp["dy"])

        def fwd():
            with torch.no_grad():
                return net(inp["x"])
        return fwd
    return factory


def _floor(T, B, n_in, H, layers, dtype, device, grad) -> Factory:
    def factory(inp: Inputs):
        lstm = _lstm(n_in, H, layers, dtype, device)
        g = torch.Generator(device=device).manual_seed(1)
        dG = torch.randn(T * B, 4 * H, generator=g, device=device).to(dtype)
        h = torch.randn(T * B, H, generator=g, device=device).to(dtype)

        @torch.no_grad()
        def run():
            x = inp["x"].detach().reshape(T * B, n_in)
            for k in range(layers):
                w = getattr(lstm, f"weight_ih_l{k}")
                x_k = x if k == 0 else h
                torch.mm(x_k, w.t())
                if grad:
                    torch.mm(dG, w)
                    torch.mm(dG.t(), x_k)
                    torch.mm(dG.t(), h)
        return run
    return factory


def train_case(shape, dtype, device, mode, backends, compile_default=False) -> Case:
    T, B, n_in, H, layers = shape
    grad = mode == "forward+backward"
    args = (T, B, n_in, H, layers, dtype, device, grad)
    providers: dict[str, Factory] = {
        f"genfast:{be}": _provider("genfast", be, *args) for be in backends}
    providers[TORCH] = _provider("torch", None, *args)
    providers[CELL] = _provider("cell", None, *args)
    providers[COMPILED] = _provider("compile", None, *args)
    providers[FLOOR] = _floor(*args)
    n = dtype.itemsize
    io = layers * 4 * H * (n_in + H) * n + T * B * (n_in + H) * n  # weights once, x and y
    name = f"{layers}x{H} I{n_in} {'fwd+bwd' if grad else 'fwd'}"  # sections() groups by name
    return Case(op="lstm", name=name, shape=(T, B, n_in), dtype=dtype,
                device=device, mode=mode, inputs=_inputs(T, B, n_in, H, dtype, device, grad),
                providers=providers, bytes=(2 if grad else 1) * io, eager=TORCH, floor=FLOOR,
                compile_default=compile_default, count_flops=False)


# ------------------------------------------------------------------ WGAN-GP critic step
def _critic_provider(kind: str, backend, T, B, n_in, H, layers, dtype, device) -> Factory:
    def factory(inp: Inputs):
        lstm = _lstm(n_in, H, layers, dtype, device)
        head = torch.nn.Linear(H, 1).to(device=device, dtype=dtype)
        weights = list(lstm._flat_weights)
        params = [*weights, *head.parameters()]

        def critic(x):
            if kind == "genfast":
                y = genfast.lstm(x, None, weights, num_layers=layers, backend=backend)[0]
            else:
                y = lstm(x)[0]
            return head(y[-1]).squeeze(-1)

        def step():
            real, fake = inp["x"], inp["fake"]
            eps = inp["eps"]
            mix = (eps * real + (1 - eps) * fake).requires_grad_()
            (g,) = torch.autograd.grad(critic(mix).sum(), mix, create_graph=True)
            gp = (g.permute(1, 0, 2).flatten(1).norm(dim=1) - 1).square().mean()
            loss = critic(fake).mean() - critic(real).mean() + 10 * gp
            return torch.autograd.grad(loss, params)
        return step
    return factory


def _critic_inputs(T, B, n_in, dtype, device):
    def make() -> Inputs:
        g = torch.Generator(device=device).manual_seed(0)
        real = F.one_hot(torch.randint(0, n_in, (T, B), generator=g, device=device), n_in).to(dtype)
        fake = torch.softmax(torch.randn(T, B, n_in, generator=g, device=device), -1).to(dtype)
        eps = torch.rand(1, B, 1, generator=g, device=device).to(dtype)
        return {"x": real, "fake": fake, "eps": eps}
    return make


def critic_case(shape, dtype, device, backends) -> Case:
    T, B, n_in, H, layers = shape
    args = (T, B, n_in, H, layers, dtype, device)
    providers: dict[str, Factory] = {
        f"genfast:{be}": _critic_provider("genfast", be, *args) for be in backends}
    providers[TORCH] = _critic_provider("torch", None, *args)
    return Case(op=CRITIC_OP, name=f"{layers}x{H} I{n_in}", shape=(T, B, n_in), dtype=dtype,
                device=device, mode="forward+backward",
                inputs=_critic_inputs(T, B, n_in, dtype, device), providers=providers, bytes=0,
                eager=TORCH, floor=TORCH, table=False)


# ------------------------------------------------------------------ generation
def _lm(layers: int, H: int, dtype, device):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        lstm = torch.nn.LSTM(VOCAB, H, layers).to(device=device, dtype=dtype)
        head = torch.nn.Linear(H, VOCAB).to(device=device, dtype=dtype)
    return lstm, head


def _multinomial(logits: torch.Tensor, p: int) -> torch.Tensor:
    """What a careful Python loop samples with."""
    return torch.multinomial(torch.softmax(logits, -1), 1)[:, 0]


def _gen_provider(kind: str, backend, layers, H, B, threads_, n, dtype, device) -> Factory:
    from genfast.ops.lstm_generate import module_generate, naive_generate

    def factory(inp: Inputs):
        lstm, head = _lm(layers, H, dtype, device)
        prime = torch.zeros(B, 1, dtype=torch.long, device=device)
        if kind == "genfast":
            pack = genfast.pack_lstm(None, lstm, head)

            def run():
                return genfast.lstm_generate(pack, prime, n, seed=0, backend=backend)
        elif kind == "loop":
            def run():
                return module_generate(None, lstm, head, prime, n, _multinomial)
        else:  # NAIVE_STEPS tokens after a prefix of n / 2: the mean cost of one of n steps
            mid = torch.zeros(B, n // 2, dtype=torch.long, device=device)

            def run():
                return naive_generate(None, lstm, head, mid, NAIVE_STEPS, _multinomial)

        def timed():
            with threads(threads_), torch.no_grad():
                return run()
        return timed
    return factory


def gen_case(cfg, n, dtype, device, backends) -> Case:
    layers, H, B, threads_ = cfg
    args = (layers, H, B, threads_, n, dtype, device)
    providers: dict[str, Factory] = {
        f"genfast:{be}": _gen_provider("genfast", be, *args)
        for be in backends if be != "reference"}
    providers[LOOP] = _gen_provider("loop", None, *args)
    providers[NAIVE] = _gen_provider("naive", None, *args)
    return Case(op=GEN_OP, name=f"{layers}x{H} V{VOCAB} batch {B} threads={threads_ or 'all'}",
                shape=(layers, H, B, n), dtype=dtype, device=device, mode="sample",
                inputs=dict, providers=providers, bytes=0, eager=LOOP, floor=LOOP, table=False)


def _steps_per_s(r: dict) -> float | None:
    if r.get("median_ms") is None:
        return None
    n = NAIVE_STEPS if r["provider"] == NAIVE else r["shape"][3]
    return n / (r["median_ms"] / 1e3)


def cases(device: str = "cpu", scope: str = "default",
          dtypes: list[torch.dtype] | None = None) -> list[Case]:
    """quick: tiny shapes. default: the issue's 2x512 (B=32, T=128) forward and
    forward+backward (the cell loop compiled once), the WGAN-GP critic step, generation.
    GPU: the issue's grid B in {1, 16, 64}, H in {256, 512, 1024}, T = 256, fp16/bf16."""
    cuda = device.startswith("cuda")
    backends = backends_for(device, scope)
    if dtypes is None:
        dtypes = [torch.bfloat16, torch.float16] if cuda else [torch.float32]
    quick = scope == "quick"
    out: list[Case] = []
    for dtype in dtypes:
        shapes = [QUICK_TRAIN] if quick else (GPU_TRAIN if cuda else [TRAIN])
        for shape in shapes:
            out.append(train_case(shape, dtype, device, "forward", backends))
            out.append(train_case(shape, dtype, device, "forward+backward", backends,
                                  compile_default=not quick and shape == shapes[0]))
        out.append(critic_case(QUICK_CRITIC if quick else CRITIC, dtype, device, backends))
        if dtype == (torch.bfloat16 if cuda else torch.float32):
            for cfg in QUICK_GEN if quick else GEN:
                cfg = (*cfg[:3], None) if cuda else cfg
                out.append(gen_case(cfg, QUICK_GEN_STEPS if quick else GEN_STEPS, dtype, device,
                                    backends))
    return out


def _per_s(r: dict) -> float | None:
    return None if r.get("median_ms") is None else 1e3 / r["median_ms"]


def sections(rows: list[dict]) -> list[str]:
    """Each case as calls/s with genfast's best against every provider (the issue's ratios:
    vs nn.LSTM, vs the LSTMCell loop, the critic's double backward vs nn.LSTM's)."""
    out: list[str] = []
    for op, title in (("lstm", "lstm: calls/s, genfast vs each provider"),
                      (CRITIC_OP, f"{CRITIC_OP}: steps/s (penalty through the LSTM: double "
                                  "backward)")):
        mine = [r for r in rows if r["op"] == op]
        if not mine:
            continue
        out += [f"### {title}", "", "| case | provider | per s | genfast vs it |",
                "|---|---|---:|---:|"]
        out += rate_rows(mine, _per_s, lambda r, rate: f"{rate:,.3g}")
        out.append("")
    mine = [r for r in rows if r["op"] == GEN_OP]
    if mine:
        out += [f"### {GEN_OP}: steps/s per stream (naive: {NAIVE_STEPS} steps timed after a "
                "prefix of half the length)", "",
                "| case | provider | steps/s | tokens/s | genfast vs it |",
                "|---|---|---:|---:|---:|"]
        out += rate_rows(mine, _steps_per_s,
                         lambda r, rate: f"{rate:,.4g} | {rate * r['shape'][2]:,.4g}", blank=2)
        out.append("")
    return out
