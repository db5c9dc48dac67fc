"""genfast.nn.SelfAttention2d against reference layers written from BigGAN-PyTorch's
``layers.Attention`` (with its SNConv2d power iteration) and heykeetae's SAGAN ``Self_Attn``
semantics: forward, gradients, double backward, checkpoints, the historic SAGAN bugs, errors."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import genfast
from genfast.nn import SelfAttention2d

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class BigGANSNConv2d(nn.Conv2d):
    """BigGAN's SNConv2d (one singular value, one iteration): buffers u0 (1, out), sv0 (1,);
    each forward runs v = normalize(u W), u = normalize(v W^T) from the stored u (storing the
    new u and sv only in training) and divides W by sigma = v W^T u^T."""

    def __init__(self, c_in, c_out):
        super().__init__(c_in, c_out, 1, bias=False)
        self.register_buffer("u0", torch.randn(1, c_out))
        self.register_buffer("sv0", torch.ones(1))

    def sigma(self):
        m = self.weight.view(self.weight.shape[0], -1)
        with torch.no_grad():
            v = F.normalize(self.u0 @ m, eps=1e-12)
            u = F.normalize(v @ m.t(), eps=1e-12)
            if self.training:
                self.u0[:] = u
        sv = (v @ m.t() @ u.t()).squeeze()
        if self.training:
            self.sv0[:] = sv.detach()
        return sv

    def forward(self, x):
        return F.conv2d(x, self.weight / self.sigma())


class BigGANAttention(nn.Module):
    """BigGAN-PyTorch layers.Attention's semantics: theta / phi to C/8, g to C/2, phi and g
    max-pooled 2x2, beta = softmax over keys of theta^T phi, o(g beta^T), gamma * o + x."""

    def __init__(self, ch, sn=True):
        super().__init__()
        conv = BigGANSNConv2d if sn else (lambda a, b: nn.Conv2d(a, b, 1, bias=False))
        self.ch = ch
        self.theta, self.phi = conv(ch, ch // 8), conv(ch, ch // 8)
        self.g, self.o = conv(ch, ch // 2), conv(ch // 2, ch)
        self.gamma = nn.Parameter(torch.tensor(0.0))

    def forward(self, x):
        B, _, H, W = x.shape
        theta = self.theta(x).view(B, self.ch // 8, H * W)
        phi = F.max_pool2d(self.phi(x), 2).flatten(2)
        g = F.max_pool2d(self.g(x), 2).flatten(2)
        beta = F.softmax(torch.bmm(theta.transpose(1, 2), phi), -1)
        o = self.o(torch.bmm(g, beta.transpose(1, 2)).view(B, self.ch // 2, H, W))
        return self.gamma * o + x


class SAGANSelfAttn(nn.Module):
    """heykeetae's Self_Attn (the fixed version, without biases): q, k to C/8, v C -> C,
    energy = q^T k over all positions, softmax over keys, out = v attention^T, gamma (1,)."""

    def __init__(self, ch):
        super().__init__()
        self.query_conv = nn.Conv2d(ch, ch // 8, 1, bias=False)
        self.key_conv = nn.Conv2d(ch, ch // 8, 1, bias=False)
        self.value_conv = nn.Conv2d(ch, ch, 1, bias=False)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        B, C, H, W = x.shape
        q = self.query_conv(x).view(B, -1, H * W).permute(0, 2, 1)
        k = self.key_conv(x).view(B, -1, H * W)
        attention = torch.softmax(torch.bmm(q, k), -1)
        v = self.value_conv(x).view(B, -1, H * W)
        out = torch.bmm(v, attention.permute(0, 2, 1)).view(B, C, H, W)
        return self.gamma * out + x


def _plain_from_biggan(ref: BigGANAttention, **kw) -> SelfAttention2d:
    layer = SelfAttention2d(ref.ch, spectral_norm=False, **kw).to(ref.gamma.dtype)
    layer.load_state_dict(ref.state_dict())
    return layer


def _sagan_pair(ch, dtype=torch.float64):
    ref = SAGANSelfAttn(ch).to(dtype)
    layer = SelfAttention2d(ch, v_ratio=1, pool=False, spectral_norm=False).to(dtype)
    with torch.no_grad():
        layer.theta.weight.copy_(ref.query_conv.weight)
        layer.phi.weight.copy_(ref.key_conv.weight)
        layer.g.weight.copy_(ref.value_conv.weight)
        layer.o.weight.copy_(torch.eye(ch, dtype=dtype).view(ch, ch, 1, 1))
        ref.gamma.fill_(0.7)
        layer.gamma.fill_(0.7)
    return ref, layer


def _params(module):
    """The parameters both layers have, in the same order (SAGAN's has no o)."""
    if isinstance(module, SAGANSelfAttn):
        return [module.query_conv.weight, module.key_conv.weight, module.value_conv.weight,
                module.gamma]
    if isinstance(module, SelfAttention2d) and module.v_ratio == 1 and not module.pool:
        return [module.theta.weight, module.phi.weight, module.g.weight, module.gamma]
    return [module.theta.weight, module.phi.weight, module.g.weight, module.o.weight,
            module.gamma]


def _grads(module, x):
    x = x.detach().requires_grad_()
    y = module(x)
    w = torch.randn(y.shape, generator=torch.Generator().manual_seed(9), dtype=y.dtype)
    return (y, *torch.autograd.grad((y * w).sum(), [x, *_params(module)]))


@pytest.mark.parametrize("hw", [(8, 8), (7, 5), (3, 2)])
def test_equals_biggan_attention_forward_and_gradients(hw):
    torch.manual_seed(0)
    ref = BigGANAttention(16, sn=False).double()
    with torch.no_grad():
        ref.gamma.fill_(-0.8)
    layer = _plain_from_biggan(ref)
    x = torch.randn(3, 16, *hw, dtype=torch.float64)
    for a, b in zip(_grads(ref, x), _grads(layer, x), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("hw", [(6, 6), (5, 3)])
def test_equals_sagan_self_attn_forward_and_gradients(hw):
    torch.manual_seed(1)
    ref, layer = _sagan_pair(16)
    x = torch.randn(2, 16, *hw, dtype=torch.float64)
    # heykeetae's gamma is (1,), this layer's 0-dim: compare their gradients' values.
    for a, b in zip(_grads(ref, x), _grads(layer, x), strict=True):
        torch.testing.assert_close(b.reshape(a.shape), a, rtol=1e-10, atol=1e-12)


def test_float32_spectral_norm_layer_equals_biggan_in_eval():
    torch.manual_seed(2)
    ref = BigGANAttention(32).eval()
    with torch.no_grad():
        ref.gamma.fill_(1.3)
    layer = SelfAttention2d(32).eval()
    layer.load_state_dict(ref.state_dict())
    x = torch.randn(2, 32, 9, 8)
    torch.testing.assert_close(layer(x), ref(x), rtol=1e-5, atol=1e-5)


def test_saved_for_backward_is_linear_in_positions():
    """Memory O(H W): nothing the backward keeps has the (H W) x (H W / 4) attention map's size
    (the reference layer saves that map, 16x the input here)."""
    torch.manual_seed(12)
    layer = SelfAttention2d(16)
    with torch.no_grad():
        layer.gamma.fill_(0.5)
    x = torch.randn(1, 16, 32, 32, requires_grad=True)
    n, m = 32 * 32, 16 * 16
    for module, small in ((layer, True), (BigGANAttention(16, sn=False), False)):
        sizes = []

        def pack(t, sizes=sizes):
            sizes.append(t.numel())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            module(x).sum().backward()
        assert (max(sizes) < n * m) == small, (max(sizes), n * m)


def test_channels_last_and_strided_input():
    torch.manual_seed(13)
    layer = SelfAttention2d(16).eval()
    with torch.no_grad():
        layer.gamma.fill_(0.5)
    x = torch.randn(2, 16, 6, 10)
    want = layer(x)
    torch.testing.assert_close(layer(x.to(memory_format=torch.channels_last)), want)
    torch.testing.assert_close(layer(torch.randn(2, 16, 6, 20)[..., ::2].copy_(x)), want)


def test_gamma_zero_at_init_is_identity_with_gradients():
    torch.manual_seed(3)
    layer = SelfAttention2d(16)
    assert layer.gamma.shape == () and layer.gamma.item() == 0.0
    x = torch.randn(2, 16, 6, 5, requires_grad=True)
    y = layer(x)
    assert torch.equal(y, x)
    y.square().sum().backward()
    assert layer.gamma.grad.abs() > 0  # gamma learns although the layer is the identity
    torch.testing.assert_close(x.grad, 2 * x.detach())


@pytest.mark.parametrize("pool", [True, False])
def test_double_backward_r1_penalty_equals_reference(pool):
    """The R1 penalty's gradient: d/dtheta ||d sum D(x) / dx||^2 through the attention."""
    torch.manual_seed(4)
    if pool:
        ref = BigGANAttention(16, sn=False).double()
        with torch.no_grad():
            ref.gamma.fill_(0.9)
        layer = _plain_from_biggan(ref)
    else:
        ref, layer = _sagan_pair(16)
    x = torch.randn(2, 16, 5, 6, dtype=torch.float64)
    got = []
    for m in (ref, layer):
        xi = x.clone().requires_grad_()
        (g,) = torch.autograd.grad(m(xi).tanh().sum(), xi, create_graph=True)
        got.append((g, *torch.autograd.grad(g.square().sum(), [xi, *_params(m)])))
    for a, b in zip(*got, strict=True):
        torch.testing.assert_close(b.reshape(a.shape), a, rtol=1e-9, atol=1e-11)


def test_gradgradcheck_small():
    torch.manual_seed(5)
    layer = SelfAttention2d(8, pool=True, spectral_norm=False).double()
    with torch.no_grad():
        layer.gamma.fill_(0.5)
    x = torch.randn(1, 8, 4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(layer, (x,))


@pytest.mark.parametrize("sn", [True, False])
def test_state_dict_round_trip(sn):
    torch.manual_seed(6)
    a = SelfAttention2d(16, spectral_norm=sn)
    with torch.no_grad():
        a.gamma.fill_(0.4)
    x = torch.randn(2, 16, 6, 6)
    a(x)  # a training step moves the spectral-norm vectors
    b = SelfAttention2d(16, spectral_norm=sn)
    b.load_state_dict(a.state_dict())
    for k, v in a.state_dict().items():
        assert torch.equal(b.state_dict()[k], v), k
    a.eval()
    b.eval()
    assert torch.equal(a(x), b(x))
    prefix = "theta.parametrizations.weight." if sn else "theta."
    assert (prefix + ("original" if sn else "weight")) in a.state_dict()


def test_biggan_sn_checkpoint_loads_into_both():
    torch.manual_seed(7)
    ref = BigGANAttention(16).double()
    with torch.no_grad():
        ref.gamma.fill_(0.6)
    x = torch.randn(2, 16, 6, 4, dtype=torch.float64)
    ref.train()
    ref(x)  # a training forward moves u0 and sv0 off their initial values
    sd = ref.state_dict()
    assert {"theta.u0", "theta.sv0", "o.weight", "gamma"} <= set(sd)
    ref.eval()
    want = ref(x)
    sn = SelfAttention2d(16).double().eval()
    sn.load_state_dict(sd)  # strict: every key mapped
    assert torch.equal(sn.theta.parametrizations.weight.original, sd["theta.weight"])
    for name in ("theta", "phi", "g", "o"):  # the same W / sigma as BigGAN's eval forward
        conv = getattr(ref, name)
        torch.testing.assert_close(getattr(sn, name).weight, conv.weight / conv.sigma(),
                                   rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(sn(x), want, rtol=1e-12, atol=1e-12)
    nested = nn.Sequential(nn.Identity(), SelfAttention2d(16)).double().eval()
    nested.load_state_dict({f"1.{k}": v for k, v in sd.items()})  # the hook sees the prefix
    torch.testing.assert_close(nested(x), want, rtol=1e-12, atol=1e-12)
    plain = SelfAttention2d(16, spectral_norm=False).double().eval()
    plain.load_state_dict(sd)  # W / sigma folded into the plain weights
    torch.testing.assert_close(plain(x), want, rtol=1e-12, atol=1e-12)
    assert set(sd) == set(ref.state_dict())  # the caller's dict is not modified


def test_biggan_sn_training_forward_matches_once_converged():
    torch.manual_seed(8)
    ref = BigGANAttention(16).double()
    with torch.no_grad():
        ref.gamma.fill_(0.6)
    x = torch.randn(2, 16, 4, 4, dtype=torch.float64)
    for _ in range(200):  # converge BigGAN's u0 (each training forward is one iteration)
        ref(x)
    layer = SelfAttention2d(16).double()
    layer.load_state_dict(ref.state_dict())
    torch.testing.assert_close(layer(x), ref(x), rtol=1e-9, atol=1e-9)


def test_plain_biggan_checkpoint_into_spectral_norm_layer():
    torch.manual_seed(9)
    ref = BigGANAttention(16, sn=False).double()
    layer = SelfAttention2d(16).double().eval()
    layer.load_state_dict(ref.state_dict())
    for name in ("theta", "phi", "g", "o"):
        w = getattr(ref, name).weight
        conv = getattr(layer, name)
        assert torch.equal(conv.parametrizations.weight.original, w)
        sn = conv.parametrizations.weight[0]
        m = w.flatten(1)
        torch.testing.assert_close(sn._v, F.normalize(m.t() @ sn._u, dim=0))  # iterated
        sigma = sn._u @ m @ sn._v
        assert 0.9 < sigma / torch.linalg.matrix_norm(m, 2) <= 1 + 1e-12
        torch.testing.assert_close(conv.weight, w / sigma, rtol=1e-12, atol=1e-12)


# -- heykeetae's historic bugs -----------------------------------------------------------------
@pytest.mark.parametrize("pool", [True, False])
def test_output_at_query_takes_the_value_of_the_key_it_attends(pool):
    """SAGAN issue #11 (attention.permute(0, 1, 2) instead of (0, 2, 1)): with one-hot
    attention, position i must receive g at the key i attends, not g at position i's index
    of some other row."""
    C, H, W = 8, 4, 4
    layer = SelfAttention2d(C, qk_ratio=C, v_ratio=1, pool=pool, spectral_norm=False,
                            scale=50.0).double()
    eye = torch.eye(C, dtype=torch.float64).view(C, C, 1, 1)
    with torch.no_grad():
        layer.theta.weight.copy_(eye[:1])  # theta = channel 0, phi = channel 1, g = x
        layer.phi.weight.copy_(eye[1:2])
        layer.g.weight.copy_(eye)
        layer.o.weight.copy_(eye)
        layer.gamma.fill_(1.0)
    x = torch.zeros(1, C, H, W, dtype=torch.float64)
    sign = torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64).repeat(4)
    x[0, 0] = sign.view(H, W)  # queries: +1 attends the largest key, -1 the smallest
    x[0, 1] = torch.arange(H * W, dtype=torch.float64).view(H, W)  # keys (pooled: 5 7 13 15)
    x[0, 2] = x[0, 1] + 10  # values (pooled: 15 17 23 25)
    out = layer(x)[0, 2] - x[0, 2]
    big, small = (25.0, 15.0) if pool else (25.0, 10.0)
    want = torch.where(x[0, 0] > 0, x.new_tensor(big), x.new_tensor(small))
    torch.testing.assert_close(out, want, rtol=0, atol=1e-6)


def test_attention_is_nonlocal_matrix_product():
    """SAGAN issue #7 (an elementwise mul where bmm belongs): the output at one position must
    depend on the values at every other position through the attention weights."""
    torch.manual_seed(10)
    layer = SelfAttention2d(16, pool=False, spectral_norm=False).double()
    with torch.no_grad():
        layer.gamma.fill_(1.0)
    x = torch.randn(1, 16, 5, 5, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(layer(x)[0, :, 0, 0].sum(), x)
    assert (g[0].abs().sum(0) > 0).all()  # every position reaches the corner


def test_gamma_is_one_shared_scalar():
    """SAGAN issue #1 (gamma shaped (batch, 1, 1, 1)): one scalar, so a sample's output does not
    depend on the batch it comes in; SAGAN's (1,) gamma loads as the scalar."""
    torch.manual_seed(11)
    ref, layer = _sagan_pair(16)
    x = torch.randn(4, 16, 4, 4, dtype=torch.float64)
    torch.testing.assert_close(layer(x)[2:3], layer(x[2:3]), rtol=1e-13, atol=1e-13)
    assert dict(layer.named_parameters())["gamma"].shape == ()
    fresh = SelfAttention2d(16, v_ratio=1, pool=False, spectral_norm=False).double()
    fresh.load_state_dict({**layer.state_dict(), "gamma": ref.gamma.detach().clone()})
    assert fresh.gamma.shape == () and fresh.gamma.item() == pytest.approx(0.7)


def test_public_exports():
    assert genfast.nn.SelfAttention2d is SelfAttention2d


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="divisible by qk_ratio"):
        SelfAttention2d(12)
    with pytest.raises(ValueError, match="divisible by v_ratio"):
        SelfAttention2d(16, qk_ratio=4, v_ratio=3)
    with pytest.raises(ValueError, match="channels"):
        SelfAttention2d(0)
    with pytest.raises(ValueError, match="qk_ratio"):
        SelfAttention2d(16, qk_ratio=0)
    with pytest.raises(TypeError, match="pool"):
        SelfAttention2d(16, pool=1)
    with pytest.raises(ValueError, match="scale"):
        SelfAttention2d(16, scale=float("nan"))
    layer = SelfAttention2d(16)
    with pytest.raises(ValueError, match="dims"):
        layer(torch.randn(16, 4, 4))
    with pytest.raises(ValueError, match="channels"):
        layer(torch.randn(1, 8, 4, 4))
    with pytest.raises(ValueError, match="height and width"):
        layer(torch.randn(1, 16, 1, 4))
    sd = BigGANAttention(32).state_dict()
    with pytest.raises(RuntimeError, match="size mismatch|u0"):
        layer.load_state_dict(sd)
