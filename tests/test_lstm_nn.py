"""genfast.nn.LSTM / LSTMCell against torch.nn.LSTM / LSTMCell loaded with the same weights, on
the CPU: outputs, final states and every gradient (input, initial states, parameters) over
layers 1-3, bidirectional, proj_size, batch_first, packed sequences, non-contiguous input,
given or default states and unbatched input, per backend (reference, the C++ kernels, auto);
checkpoints load both ways; convert_lstm / revert_lstm; dropout; torch.compile(fullgraph);
torch.export; double backward (gradgradcheck, a WGAN-GP penalty equal to torch's). Bad input:
test_lstm_nn_errors.py."""

import copy
import io

import pytest
import torch
from _helpers import fast_backends
from torch import nn
from torch.nn.utils.rnn import pack_sequence, pad_packed_sequence

from genfast.nn import LSTM, LSTMCell, convert_lstm, revert_lstm

# The C++ backend where this build has it, and auto (None): the C++ kernels or the reference.
BACKENDS = ["reference", *[b for b in fast_backends("lstm") if b == "cpu"], None]
TOL = {torch.float64: dict(rtol=1e-9, atol=1e-11), torch.float32: dict(rtol=1e-5, atol=2e-5)}


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def twins(dtype=torch.float64, backend=None, cls=LSTM, **kw):
    """A torch module and genfast's with torch's (random) weights."""
    ref = getattr(nn, cls.__name__)(dtype=dtype, **kw)
    ours = cls(dtype=dtype, backend=backend, **kw)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def close(got, want, dtype, what=""):
    torch.testing.assert_close(got, want, **TOL[dtype], msg=lambda m: f"{what}\n{m}")


def flat(out):
    """(y, (h, c)) or a PackedSequence output -> its tensors."""
    y, (h, c) = out
    return [y.data if isinstance(y, nn.utils.rnn.PackedSequence) else y, h, c]


def outputs_and_grads(module, inputs, call):
    """The outputs of call(module, *inputs) and the gradients of a fixed random projection of
    them with respect to the inputs and every parameter."""
    outs = flat(call(module, *inputs))
    g = torch.Generator().manual_seed(7)
    loss = sum((o * torch.randn(o.shape, generator=g, dtype=o.dtype)).sum() for o in outs)
    wrt = [t for t in inputs if t is not None and t.requires_grad] + list(module.parameters())
    return outs, torch.autograd.grad(loss, wrt, allow_unused=True)


def compare(ref, ours, inputs, call, dtype):
    want, want_g = outputs_and_grads(ref, inputs, call)
    got, got_g = outputs_and_grads(ours, inputs, call)
    for name, a, b in zip(("output", "h_n", "c_n"), got, want, strict=True):
        close(a, b, dtype, name)
    names = ["input"] * (len(got_g) - len(list(ours.parameters())))
    names += [n for n, _ in ours.named_parameters()]
    for name, a, b in zip(names, got_g, want_g, strict=True):
        close(a, b, dtype, f"grad of {name}")


CONFIGS = [  # (module kwargs, initial state given, non-contiguous input)
    (dict(num_layers=1), False, False),
    (dict(num_layers=1, bias=False, batch_first=True), True, True),
    (dict(num_layers=2, bidirectional=True), True, False),
    (dict(num_layers=3, proj_size=3), True, True),
    (dict(num_layers=2, bidirectional=True, proj_size=2, batch_first=True), False, True),
    (dict(num_layers=3, bidirectional=True, batch_first=True), True, False),
]


def _input(T, B, n_in, kw, dtype, noncontig):
    shape = (B, T, n_in) if kw.get("batch_first") else (T, B, n_in)
    if noncontig:  # every other feature of a wider tensor, and the two leading dims swapped
        x = torch.randn(shape[1], shape[0], 2 * n_in, dtype=dtype)[..., ::2].transpose(0, 1)
        assert not x.is_contiguous()
    else:
        x = torch.randn(shape, dtype=dtype)
    return x.requires_grad_()


def _state(B, kw, H, dtype):
    L = kw.get("num_layers", 1) * (2 if kw.get("bidirectional") else 1)
    P = kw.get("proj_size", 0) or H
    return (torch.randn(L, B, P, dtype=dtype, requires_grad=True),
            torch.randn(L, B, H, dtype=dtype, requires_grad=True))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("kw", "with_state", "noncontig"), CONFIGS)
def test_matches_torch_lstm(kw, with_state, noncontig, backend, dtype):
    torch.manual_seed(0)
    ref, ours = twins(dtype, backend, input_size=5, hidden_size=7, **kw)
    x = _input(6, 3, 5, kw, dtype, noncontig)
    hx = _state(3, kw, 7, dtype) if with_state else (None, None)
    compare(ref, ours, (x, *hx),
            lambda m, x, h, c: m(x, None if h is None else (h, c)), dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("enforce_sorted", [True, False])
@pytest.mark.parametrize("with_state", [True, False])
def test_packed_sequences_match_torch(enforce_sorted, with_state, backend):
    torch.manual_seed(1)
    kw = dict(num_layers=2, bidirectional=True, proj_size=3)
    ref, ours = twins(torch.float64, backend, input_size=4, hidden_size=5, **kw)
    lengths = [5, 4, 2, 1] if enforce_sorted else [2, 5, 1, 4]
    seqs = [torch.randn(n, 4, dtype=torch.float64, requires_grad=True) for n in lengths]
    hx = _state(4, kw, 5, torch.float64) if with_state else (None, None)

    def call(m, *args):
        h, c = args[-2:]
        packed = pack_sequence(list(args[:-2]), enforce_sorted=enforce_sorted)
        return m(packed, None if h is None else (h, c))

    compare(ref, ours, (*seqs, *hx), call, torch.float64)
    packed = pack_sequence(seqs, enforce_sorted=enforce_sorted)
    got, want = ours(packed)[0], ref(packed)[0]
    assert isinstance(got, nn.utils.rnn.PackedSequence)
    for a, b in zip(got[1:], want[1:], strict=True):  # batch_sizes, sorted / unsorted indices
        assert (a is None and b is None) or torch.equal(a, b)
    padded, lens = pad_packed_sequence(got)
    close(padded, pad_packed_sequence(want)[0], torch.float64, "padded output")
    assert lens.tolist() == lengths


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("with_state", [True, False])
def test_unbatched_input_matches_torch(batch_first, with_state, backend):
    torch.manual_seed(2)
    kw = dict(num_layers=2, bidirectional=True, batch_first=batch_first)
    ref, ours = twins(torch.float64, backend, input_size=3, hidden_size=4, **kw)
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    hx = tuple(s[:, 0].detach().requires_grad_() for s in _state(1, kw, 4, torch.float64)) \
        if with_state else (None, None)
    compare(ref, ours, (x, *hx), lambda m, x, h, c: m(x, None if h is None else (h, c)),
            torch.float64)
    y, (h, c) = ours(x, None if hx[0] is None else hx)
    assert y.shape == (5, 8) and h.shape == (4, 4) and c.shape == (4, 4)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("bias", "batched", "with_state"),
                         [(True, True, True), (False, True, False), (True, False, True),
                          (True, False, False)])
def test_cell_matches_torch(bias, batched, with_state, backend, dtype):
    torch.manual_seed(3)
    ref, ours = twins(dtype, backend, LSTMCell, input_size=5, hidden_size=6, bias=bias)
    lead = (4,) if batched else ()
    x = torch.randn(*lead, 5, dtype=dtype, requires_grad=True)
    hx = tuple(torch.randn(*lead, 6, dtype=dtype, requires_grad=True) for _ in range(2)) \
        if with_state else (None, None)

    def call(m, x, h, c):
        return m(x, None if h is None else (h, c))

    want = ref(x, None if hx[0] is None else hx)
    got = call(ours, x, *hx)
    for a, b in zip(got, want, strict=True):
        close(a, b, dtype)
    # compare wants (y, (h, c)); a cell step's y is its h.
    compare(ref, ours, (x, *hx), lambda m, *a: (lambda hc: (hc[0], hc))(call(m, *a)), dtype)


def test_cell_steps_equal_the_layer():
    torch.manual_seed(4)
    layer = LSTM(3, 5, dtype=torch.float64, backend="reference")
    cell = LSTMCell(3, 5, dtype=torch.float64)
    cell.load_state_dict({k[:-3]: v for k, v in layer.state_dict().items()})  # drop "_l0"
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    h = c = torch.zeros(2, 5, dtype=torch.float64)
    ys = []
    for t in range(6):
        h, c = cell(x[t], (h, c))
        ys.append(h)
    y, (h_n, c_n) = layer(x)
    close(torch.stack(ys), y, torch.float64)
    close(h, h_n[0], torch.float64)
    close(c, c_n[0], torch.float64)


@pytest.mark.parametrize("kw", [dict(num_layers=2, bidirectional=True, proj_size=2),
                                dict(num_layers=1, bias=False)])
def test_checkpoints_load_both_ways(kw):
    torch.manual_seed(5)
    ref = nn.LSTM(3, 4, **kw)
    ours = LSTM(3, 4, **kw)
    assert list(ours.state_dict()) == list(ref.state_dict())
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in ref.named_parameters()]
    buf = io.BytesIO()
    torch.save(ref.state_dict(), buf)
    buf.seek(0)
    ours.load_state_dict(torch.load(buf))
    x = torch.randn(5, 2, 3)
    for a, b in zip(flat(ours(x)), flat(ref(x)), strict=True):
        close(a, b, torch.float32)
    back = nn.LSTM(3, 4, **kw)
    back.load_state_dict(ours.state_dict())
    for a, b in zip(flat(back(x)), flat(ours(x)), strict=True):
        close(a, b, torch.float32)
    cell_ref, cell = nn.LSTMCell(3, 4), LSTMCell(3, 4)
    cell.load_state_dict(cell_ref.state_dict())
    cell_ref.load_state_dict(LSTMCell(3, 4).state_dict())
    assert list(cell.state_dict()) == list(cell_ref.state_dict())
    # The whole module pickles, copies and moves like torch's; flatten_parameters is harmless.
    for m in (copy.deepcopy(ours), ours.double().float()):
        m.flatten_parameters()
        for a, b in zip(flat(m(x)), flat(ref(x)), strict=True):
            close(a, b, torch.float32)


class _Tagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(11, 4)
        self.rnn = nn.LSTM(4, 6, num_layers=2, batch_first=True, bidirectional=True)
        self.cell = nn.LSTMCell(12, 5)
        self.head = nn.Linear(5, 3)

    def forward(self, tokens):
        y, _ = self.rnn(self.emb(tokens))
        h, _ = self.cell(y[:, -1])
        return self.head(h)


class _MyLSTM(nn.LSTM):  # a user's subclass with its own forward: convert leaves it alone
    def forward(self, x, hx=None):
        return super().forward(x, hx)


def test_convert_and_revert_keep_the_module_objects_and_outputs():
    torch.manual_seed(6)
    model = _Tagger()
    model.rnn.eval()
    tokens = torch.randint(0, 11, (3, 7))
    want = model(tokens)
    params = {n: p for n, p in model.named_parameters()}
    modules = dict(model.named_modules())
    assert convert_lstm(model, backend="reference") is model
    assert type(model.rnn) is LSTM and type(model.cell) is LSTMCell
    assert model.rnn.backend == "reference" and not model.rnn.training and model.cell.training
    assert all(p is params[n] for n, p in model.named_parameters())
    assert all(m is modules[n] for n, m in model.named_modules())
    close(model(tokens), want, torch.float32)
    assert list(model.state_dict()) == list(_Tagger().state_dict())
    revert_lstm(model)
    assert type(model.rnn) is nn.LSTM and type(model.cell) is nn.LSTMCell
    assert not hasattr(model.rnn, "backend") and not model.rnn.training
    assert all(p is params[n] for n, p in model.named_parameters())
    close(model(tokens), want, torch.float32)
    # A bare module converts to itself; a subclass of torch's with its own forward does not.
    bare = nn.LSTM(2, 3)
    assert convert_lstm(bare) is bare and type(bare) is LSTM
    mine = _MyLSTM(2, 3)
    assert type(convert_lstm(mine)) is _MyLSTM
    with pytest.raises(ValueError, match="backend"):
        convert_lstm(nn.LSTM(2, 3), backend="gpu")


def test_convert_a_parametrized_lstm():
    torch.manual_seed(7)
    ref = nn.LSTM(3, 4, dtype=torch.float64)
    ours = nn.LSTM(3, 4, dtype=torch.float64)
    ours.load_state_dict(ref.state_dict())
    for m in (ref, ours):
        nn.utils.parametrizations.weight_norm(m, "weight_hh_l0")
    assert convert_lstm(ours, backend="reference") is ours
    assert isinstance(ours, LSTM) and nn.utils.parametrize.is_parametrized(ours)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    for a, b in zip(flat(ours(x)), flat(ref(x)), strict=True):
        close(a, b, torch.float64)
    nn.utils.parametrize.remove_parametrizations(ours, "weight_hh_l0")
    assert type(ours) is LSTM
    for a, b in zip(flat(ours(x)), flat(ref(x)), strict=True):
        close(a, b, torch.float64)
    back = revert_lstm(convert_lstm(ref))
    assert type(back).__bases__[0] is nn.LSTM and nn.utils.parametrize.is_parametrized(back)


@pytest.mark.parametrize("backend", BACKENDS)
def test_dropout_between_layers(backend):
    torch.manual_seed(8)
    ref, ours = twins(torch.float64, backend, input_size=3, hidden_size=5, num_layers=3,
                      dropout=0.4)
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    ref.eval()
    ours.eval()
    for a, b in zip(flat(ours(x)), flat(ref(x)), strict=True):
        close(a, b, torch.float64)
    # In training, torch drops the same (T, B, D*P) layer outputs from the same generator.
    ref.train()
    ours.train()
    torch.manual_seed(9)
    want = flat(ref(x))
    torch.manual_seed(9)
    got = flat(ours(x))
    for a, b in zip(got, want, strict=True):
        close(a, b, torch.float64)
    assert not torch.allclose(got[0], flat(ours.eval()(x))[0])


def test_torch_compile_fullgraph_forward_and_backward():
    """Dynamo refuses every nn.LSTM subclass (an isinstance test of torch's) unless
    torch._dynamo.config.allow_rnn is set; with it genfast's module compiles to genfast's ops,
    whole graph, with its gradients. LSTMCell is not on dynamo's list: it compiles as is."""
    torch.manual_seed(10)
    model = LSTM(3, 4, num_layers=2, bidirectional=True, batch_first=True)
    cell = LSTMCell(3, 4)

    def step(x, h0, c0):
        y, (h, c) = model(x, (h0, c0))
        hc, cc = cell(x[:, 0], (h0[0], c0[0]))
        return y.square().sum() + h.sum() + c.sum() + hc.sum() + cc.sum()

    def loss_and_grads(fn, params):
        x = torch.randn(2, 5, 3, generator=torch.Generator().manual_seed(0),
                        requires_grad=True)
        h0, c0 = torch.ones(4, 2, 4) / 3, torch.ones(4, 2, 4) / 5
        for p in params:
            p.grad = None
        loss = fn(x, h0, c0)
        loss.backward()
        return [loss, x.grad] + [p.grad for p in params]

    both = [*model.parameters(), *cell.parameters()]

    with torch._dynamo.config.patch(allow_rnn=True):
        got = loss_and_grads(torch.compile(step, fullgraph=True, backend="aot_eager"), both)
    for a, b in zip(got, loss_and_grads(step, both), strict=True):
        close(a, b, torch.float32)

    def cell_step(x, h0, c0):
        hc, cc = cell(x[:, 0], (h0[0], c0[0]))
        return hc.square().sum() + cc.sum()

    mine = list(cell.parameters())
    got = loss_and_grads(torch.compile(cell_step, fullgraph=True, backend="aot_eager"), mine)
    for a, b in zip(got, loss_and_grads(cell_step, mine), strict=True):
        close(a, b, torch.float32)


class _Both(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = LSTM(3, 4, bidirectional=True, batch_first=True)
        self.cell = LSTMCell(8, 4)

    def forward(self, x):
        y, _ = self.rnn(x)
        return self.cell(y[:, -1])[0]


def test_torch_export():
    """torch.export traces without dynamo's module check: one genfast::lstm_layer node per
    direction (and one for the cell), the exported program computing what eager does."""
    torch.manual_seed(13)
    model = _Both().eval()
    x = torch.randn(2, 5, 3)
    ep = torch.export.export(model, (x,))
    nodes = [n for n in ep.graph.nodes if n.target is torch.ops.genfast.lstm_layer.default]
    assert len(nodes) == 3
    x2 = torch.randn(2, 5, 3)
    close(ep.module()(x2), model(x2), torch.float32)


@pytest.mark.parametrize("backend", BACKENDS[:-1])
def test_gradgradcheck_through_the_module(backend):
    torch.manual_seed(11)
    m = LSTM(2, 3, num_layers=2, bidirectional=True, proj_size=2, dtype=torch.float64,
             backend=backend)
    cell = LSTMCell(2, 3, dtype=torch.float64, backend=backend)
    cell.requires_grad_(False)
    # The other weights are constants: gradgradcheck's cost grows with every input.
    fixed = {n: p.detach() for n, p in m.named_parameters()}

    def fn(x, h0, c0, w_hh):
        params = dict(fixed, weight_hh_l1_reverse=w_hh)
        y, (h, c) = torch.func.functional_call(m, params, (x, (h0, c0)))
        hc, cc = cell(x[0], (c0[1], c0[0]))
        return y, h, c, hc, cc

    x = torch.randn(3, 1, 2, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(4, 1, 2, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(4, 1, 3, dtype=torch.float64, requires_grad=True)
    w = fixed["weight_hh_l1_reverse"].clone().requires_grad_()
    # fast_mode checks random projections of the Jacobians (a few evaluations, not one per
    # input element), which is what keeps this test to a second or two.
    assert torch.autograd.gradcheck(fn, (x, h0, c0, w), fast_mode=True)
    assert torch.autograd.gradgradcheck(fn, (x, h0, c0, w), fast_mode=True)


def _critic(rnn, head, x):
    y, _ = rnn(x)
    return head(y[:, -1]).squeeze(-1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_wgan_gp_penalty_through_the_lstm_equals_torch(backend):
    """The gradient penalty differentiates the critic's input gradient: the LSTM's backward
    itself is differentiated, which torch's cuDNN LSTM cannot do and genfast's must."""
    torch.manual_seed(12)
    ref, ours = twins(torch.float64, backend, input_size=3, hidden_size=4, num_layers=2,
                      batch_first=True)
    head = nn.Linear(4, 1, dtype=torch.float64)
    real, fake = torch.randn(2, 4, 5, 3, dtype=torch.float64).unbind(0)
    alpha = torch.rand(4, 1, 1, dtype=torch.float64)

    def critic_step(rnn):
        mix = (alpha * real + (1 - alpha) * fake).requires_grad_()
        score = _critic(rnn, head, mix)
        (g,) = torch.autograd.grad(score.sum(), mix, create_graph=True)
        penalty = (g.flatten(1).norm(dim=1) - 1).square().mean()
        loss = _critic(rnn, head, fake).mean() - _critic(rnn, head, real).mean() + 10 * penalty
        return penalty, torch.autograd.grad(loss, [*rnn.parameters(), *head.parameters()])

    want_p, want_g = critic_step(ref)
    got_p, got_g = critic_step(ours)
    close(got_p, want_p, torch.float64, "penalty")
    assert got_p > 0
    for a, b in zip(got_g, want_g, strict=True):
        close(a, b, torch.float64, "critic gradient")
