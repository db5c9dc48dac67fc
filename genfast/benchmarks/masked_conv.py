"""Benchmark cases for the masked_conv families (genfast/ops/masked_conv.py, masked_conv_layer.py,
masked_conv_generate.py): the 7x7 mask-B convolution alone, a gated PixelCNN training step, and
cached generation.

Providers:
  genfast:<backend>    genfast.masked_conv2d / genfast.nn.PixelCNN with that backend
                       (genfast:reference is the cropped-kernel decomposition on torch's convs)
  torch eager          the plain-PyTorch way every public PixelCNN uses: F.conv2d(x, W * mask),
                       the mask product inside the step (for the model: the same network with
                       n x n vertical and 1 x n horizontal masked kernels)
  torch eager cropped  the best plain-PyTorch model: vqvae-pytorch's cropped (c+1) x n and
                       1 x (c+1) kernels with padding and a crop (no masked taps, some padding
                       rows computed and dropped)
  torch.compile        the eager code compiled
Generation (mode "sample", 2 threads, the issue's 10-layer 64-channel gated PixelCNN):
  genfast:<backend>    PixelCNN.generate: the whole loop in one native call
  torch cached loop    the same algorithm (fast-pixel-cnn's per-layer caches) as a Python loop
                       of torch ops: the reference backend of pixelcnn_generate
  naive                a full forward per pixel: a few timed, then scaled to H * W pixels
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import genfast
from genfast.ops.masked_conv import region_mask

from .report import rate_rows
from .runner import COMPILED, Case, Factory, Inputs, backends_for, threads

EAGER, CROPPED = "torch eager", "torch eager cropped"
CONV = (32, 64, 64, 28, 28, 7)  # (B, C_in, C_out, H, W, k): the target shape
QUICK_CONV = (2, 8, 8, 9, 11, 5)
GPU_CONV = (64, 128, 128, 32, 32, 7)
MODEL = dict(levels=256, channels=64, layers=10, kernel_size=7)
QUICK_MODEL = dict(levels=16, channels=8, layers=2, kernel_size=3)
STEP, QUICK_STEP = (16, 28, 28), (2, 7, 7)
GEN, QUICK_GEN = (16, 28, 28), (2, 5, 5)
NAIVE_PIXELS = 3
GEN_OP = "pixelcnn_generate"
CACHED, NAIVE = "torch cached loop", "naive full forward"


def _mask(w: torch.Tensor, mask_type: str = "B") -> torch.Tensor:
    Cout, Cin, kh, kw = w.shape
    return region_mask(Cout, Cin, kh, kw, kh // 2, kw // 2, 1 if mask_type == "A" else 2, 1,
                       w.dtype, w.device)


# ------------------------------------------------------------------ the conv alone
def _conv_inputs(B, Cin, Cout, H, W, k, dtype, device, grad):
    def make() -> Inputs:
        g = torch.Generator(device=device).manual_seed(0)
        x = torch.randn(B, Cin, H, W, generator=g, device=device).to(dtype)
        w = (torch.randn(Cout, Cin, k, k, generator=g, device=device) / (Cin * k * k) ** .5)
        b = torch.randn(Cout, generator=g, device=device).to(dtype)
        dy = torch.randn(B, Cout, H, W, generator=g, device=device).to(dtype)
        mask = _mask(w.to(dtype))
        return {"x": x.requires_grad_(grad), "w": w.to(dtype).requires_grad_(grad), "b": b,
                "dy": dy, "mask": mask}
    return make


def _timed(f, grad: bool) -> Factory:
    def factory(inp: Inputs):
        if grad:
            return lambda: torch.autograd.grad(f(inp["x"], inp["w"], inp["b"], inp["mask"]),
                                               (inp["x"], inp["w"]), inp["dy"])
        return lambda: f(inp["x"], inp["w"], inp["b"], inp["mask"])
    return factory


def conv_case(shape, dtype, device, mode, backends, compile_default=False) -> Case:
    B, Cin, Cout, H, W, k = shape
    grad = mode == "forward+backward"

    def eager(x, w, b, mask):
        return F.conv2d(x, w * mask, b, padding=k // 2)

    providers: dict[str, Factory] = {
        f"genfast:{be}": _timed(lambda x, w, b, m, be=be: genfast.masked_conv2d(
            x, w, b, mask_type="B", backend=be), grad) for be in backends}
    providers[EAGER] = _timed(eager, grad)
    providers[COMPILED] = lambda inp: _timed(torch.compile(eager, dynamic=False), grad)(inp)
    floor = "F.conv2d unmasked (floor of the eager way)"
    providers[floor] = _timed(lambda x, w, b, m: F.conv2d(x, w, b, padding=k // 2), grad)
    n = dtype.itemsize
    io = B * (Cin + Cout) * H * W * n + Cout * Cin * k * k * n
    return Case(op="masked_conv2d", name=f"{k}x{k} mask B", shape=(B, Cin, H, W), dtype=dtype,
                device=device, mode=mode,
                inputs=_conv_inputs(B, Cin, Cout, H, W, k, dtype, device, grad),
                providers=providers, bytes=(2 if grad else 1) * io, eager=EAGER, floor=floor,
                compile_default=compile_default, count_flops=True)


# ------------------------------------------------------------------ gated PixelCNN training step
class TorchPixelCNN(torch.nn.Module):
    """genfast.nn.PixelCNN's network in plain PyTorch, weights copied from one. masked=True: the
    common way, n x n vertical and 1 x n horizontal kernels multiplied by their masks each step;
    masked=False: vqvae-pytorch's cropped kernels, padded convs then a crop."""

    def __init__(self, model, masked: bool):
        super().__init__()
        self.masked, self.embedding, self.head = masked, model.embedding, model.output_conv
        self.k = model.layers[0].vert_stack.weight.shape[-1]
        c = self.k // 2
        self.vw, self.hw, self.links, self.res, self.cond = (torch.nn.ParameterList(),
                                                            torch.nn.ParameterList(), [], [], [])
        for i, lay in enumerate(model.layers):
            wv, wh = lay.vert_stack.weight.detach(), lay.horiz_stack.weight.detach()
            if masked:  # the full kernels a masked implementation stores
                wv = F.pad(wv, (0, 0, 0, c))  # rows c+1..2c (below the pixel)
                wh = F.pad(wh, (0, c))  # columns right of the pixel
            self.vw.append(torch.nn.Parameter(wv.clone()))
            self.hw.append(torch.nn.Parameter(wh.clone()))
            mv = torch.ones_like(self.vw[-1])
            mh = torch.ones_like(self.hw[-1])
            if masked:
                mv[:, :, c + (i > 0):] = 0
                mh[:, :, :, c + (i > 0):] = 0
            elif i == 0:
                mv[:, :, -1] = 0
                mh[..., -1] = 0
            self.register_buffer(f"mv{i}", mv)
            self.register_buffer(f"mh{i}", mh)
            self.links.append(lay.vert_to_horiz)
            self.res.append(lay.horiz_resid)
            self.cond.append(getattr(lay, "class_cond_embedding", None))
        self.links, self.res = torch.nn.ModuleList(self.links), torch.nn.ModuleList(self.res)
        self.vb = [lay.vert_stack.bias for lay in model.layers]
        self.hb = [lay.horiz_stack.bias for lay in model.layers]

    @staticmethod
    def _gate(u):
        a, b = u.chunk(2, 1)
        return torch.tanh(a) * torch.sigmoid(b)

    def forward(self, tokens):
        x = self.embedding(tokens).permute(0, 3, 1, 2)
        v = h = x
        H, W, c = x.shape[2], x.shape[3], self.k // 2
        for i in range(len(self.vw)):
            wv, wh = self.vw[i] * getattr(self, f"mv{i}"), self.hw[i] * getattr(self, f"mh{i}")
            if self.masked:
                V = F.conv2d(v, wv, self.vb[i], padding=c)
                Hc = F.conv2d(h, wh, self.hb[i], padding=(0, c))
            else:
                V = F.conv2d(v, wv, self.vb[i], padding=c)[:, :, :H]
                Hc = F.conv2d(h, wh, self.hb[i], padding=(0, c))[..., :W]
            v = self._gate(V)
            out = self.res[i](self._gate(Hc + self.links[i](V)))
            h = h + out if i else out
        return self.head(h)


def default_pixelcnn(dtype=torch.float32, device="cpu", backend=None, **kw):
    cfg = {**MODEL, **kw}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return genfast.nn.PixelCNN(**cfg, backend=backend).to(device=device, dtype=dtype)


def _tokens(B, H, W, levels, device):
    def make() -> Inputs:
        g = torch.Generator(device=device).manual_seed(0)
        return {"tokens": torch.randint(0, levels, (B, H, W), generator=g, device=device)}
    return make


def _stepper(kind: str, backend, dtype, device, cfg) -> Factory:
    def factory(inp: Inputs):
        model = default_pixelcnn(dtype, device, backend, **cfg)
        net = model if kind == "genfast" else TorchPixelCNN(model, masked=kind != "cropped")
        if kind == "compile":
            net = torch.compile(net, dynamic=False)
        params = list(net.parameters())

        def run():
            loss = F.cross_entropy(net(inp["tokens"]), inp["tokens"])
            return torch.autograd.grad(loss, params, allow_unused=True)
        return run
    return factory


def step_case(shape, dtype, device, backends, cfg, compile_default=False) -> Case:
    providers: dict[str, Factory] = {
        f"genfast:{be}": _stepper("genfast", be, dtype, device, cfg) for be in backends}
    providers[EAGER] = _stepper("eager", None, dtype, device, cfg)
    providers[CROPPED] = _stepper("cropped", None, dtype, device, cfg)
    providers[COMPILED] = _stepper("compile", None, dtype, device, cfg)
    floor = "forward only, eager cropped (floor)"

    def fwd_only(inp):
        net = TorchPixelCNN(default_pixelcnn(dtype, device, **cfg), masked=False)
        return lambda: net(inp["tokens"])

    providers[floor] = fwd_only
    B, H, W = shape
    C, L = cfg["channels"], cfg["layers"]
    return Case(op="pixelcnn_train_step", name=f"{L} gated layers C{C} k{cfg['kernel_size']}",
                shape=shape, dtype=dtype, device=device, mode="forward+backward",
                inputs=_tokens(B, H, W, cfg["levels"], device), providers=providers,
                bytes=B * H * W * C * 8 * L * dtype.itemsize, eager=EAGER, floor=floor,
                compile_default=compile_default, count_flops=True)


# ------------------------------------------------------------------ generation
def _gen_provider(kind: str, backend, shape, threads_, dtype, device, cfg) -> Factory:
    B, H, W = shape

    def factory(inp: Inputs):
        model = default_pixelcnn(dtype, device, **cfg)
        if kind == "naive":
            net = TorchPixelCNN(model, masked=False)

            @torch.no_grad()
            def run():  # NAIVE_PIXELS of the H*W steps: a full forward, then a sample, each
                toks = torch.zeros(B, H, W, dtype=torch.long, device=device)
                g = torch.Generator(device=device).manual_seed(0)
                for p in range(NAIVE_PIXELS):
                    logits = net(toks)[:, :, p // W, p % W]
                    u = torch.rand(logits.shape, generator=g, device=device)
                    toks[:, p // W, p % W] = (logits - torch.log(-torch.log(u))).argmax(-1)
                return toks
        else:
            def run():
                with torch.no_grad():
                    return model.generate(B, size=(H, W), seed=0, backend=backend)

        def timed():
            with threads(threads_):
                return run()
        return timed
    return factory


def gen_case(shape, threads_, dtype, device, backends, cfg, naive=True) -> Case:
    args = (shape, threads_, dtype, device, cfg)
    providers: dict[str, Factory] = {
        f"genfast:{be}": _gen_provider("genfast", be, *args)
        for be in backends if be != "reference"}
    providers[CACHED] = _gen_provider("cached", "reference", *args)
    if naive:
        providers[NAIVE] = _gen_provider("naive", None, *args)
    B, H, W = shape
    return Case(op=GEN_OP, name=f"{B} images {H}x{W} threads={threads_ or 'all'}", shape=shape,
                dtype=dtype, device=device, mode="sample", inputs=dict, providers=providers,
                bytes=0, eager=CACHED, floor=CACHED, table=False)


def cases(device: str = "cpu", scope: str = "default",
          dtypes: list[torch.dtype] | None = None) -> list[Case]:
    """quick: tiny shapes. default: the issue's 7x7 conv (forward, forward+backward, compiled
    once), the 10-layer gated PixelCNN training step and generation of 16 28x28 images.
    full: the same with every backend (the reference too)."""
    cuda = device.startswith("cuda")
    backends = backends_for(device, scope)
    if "reference" not in backends:  # the cropped decomposition is a provider of its own here
        backends = [*backends, "reference"]
    if dtypes is None:
        dtypes = [torch.float32, torch.bfloat16] if cuda else [torch.float32]
    quick = scope == "quick"
    cfg = QUICK_MODEL if quick else MODEL
    out: list[Case] = []
    for dtype in dtypes:
        shape = QUICK_CONV if quick else (GPU_CONV if cuda else CONV)
        out.append(conv_case(shape, dtype, device, "forward", backends))
        out.append(conv_case(shape, dtype, device, "forward+backward", backends,
                             compile_default=not quick))
        if dtype == torch.float32 or cuda:
            out.append(step_case(QUICK_STEP if quick else STEP, dtype, device, backends, cfg))
        if dtype == torch.float32:
            gen = QUICK_GEN if quick else GEN
            out.append(gen_case(gen, None if cuda else 2, dtype, device, backends, cfg))
            if cuda:
                for B in (1, 64):
                    out.append(gen_case((B, 28, 28), None, dtype, device, backends, cfg,
                                        naive=False))
    return out


def _images_per_s(r: dict) -> float | None:
    if r.get("median_ms") is None:
        return None
    B, H, W = r["shape"]
    secs = r["median_ms"] / 1e3
    if r["provider"] == NAIVE:  # NAIVE_PIXELS of H*W pixels were timed
        secs *= H * W / NAIVE_PIXELS
    return B / secs


def sections(rows: list[dict]) -> list[str]:
    """Generation in images/s, with the ratios the issue names (genfast vs each baseline)."""
    mine = [r for r in rows if r["op"] == GEN_OP]
    if not mine:
        return []
    lines = [f"### {GEN_OP}: images/s (naive: {NAIVE_PIXELS} pixels timed, scaled to H*W)", "",
             "| case | provider | images/s | genfast vs it |", "|---|---|---:|---:|"]
    lines += rate_rows(mine, _images_per_s, lambda r, rate: f"{rate:,.3g}")
    return [*lines, ""]
