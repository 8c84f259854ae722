"""`UNet` and `Precond` (docs/method.md#unet, #preconditioning, #official-details, Appendix A): structure, state-dict layout, RNG
draw order, preconditioning, precision, and the parameter counts of every model size."""

import numpy as np
import pytest
import torch
from tiny_networks import tiny_network
from torch.utils._python_dispatch import TorchDispatchMode

from edm2.nn import MPConv, Precond, UNet

# A tiny network with every kind of module: two levels, attention at 4x4, skip convs.
TINY = tiny_network(img_channels=2, label_dim=3, channels_per_head=4)


def _tiny(seed=0, **overrides):
    torch.manual_seed(seed)
    return Precond(**{**TINY, **overrides})


def _randomize_gains(net, seed=1):
    """Non-zero gains so that F(x) is not identically zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            if p.ndim == 0:
                p.copy_(torch.rand([], generator=g, dtype=p.dtype) + 0.5)
    return net


# --- Structure (docs/method.md#unet, #official-details) --------------------------------------------------------------

# The docs/method.md#unet layout, worked example: model_channels=192, 64x64 input: module -> (in, out, heads).
SPEC_TABLE_192 = {
    "enc.64x64_conv": (5, 192, None),
    **{f"enc.64x64_block{i}": (192, 192, 0) for i in range(3)},
    "enc.32x32_down": (192, 192, 0),
    "enc.32x32_block0": (192, 384, 0),
    **{f"enc.32x32_block{i}": (384, 384, 0) for i in (1, 2)},
    "enc.16x16_down": (384, 384, 0),
    "enc.16x16_block0": (384, 576, 9),
    **{f"enc.16x16_block{i}": (576, 576, 9) for i in (1, 2)},
    "enc.8x8_down": (576, 576, 0),
    "enc.8x8_block0": (576, 768, 12),
    **{f"enc.8x8_block{i}": (768, 768, 12) for i in (1, 2)},
    "dec.8x8_in0": (768, 768, 12),
    "dec.8x8_in1": (768, 768, 0),
    **{f"dec.8x8_block{i}": (1536, 768, 12) for i in range(3)},
    "dec.8x8_block3": (1344, 768, 12),
    "dec.16x16_up": (768, 768, 0),
    "dec.16x16_block0": (1344, 576, 9),
    **{f"dec.16x16_block{i}": (1152, 576, 9) for i in (1, 2)},
    "dec.16x16_block3": (960, 576, 9),
    "dec.32x32_up": (576, 576, 0),
    "dec.32x32_block0": (960, 384, 0),
    **{f"dec.32x32_block{i}": (768, 384, 0) for i in (1, 2)},
    "dec.32x32_block3": (576, 384, 0),
    "dec.64x64_up": (384, 384, 0),
    "dec.64x64_block0": (576, 192, 0),
    **{f"dec.64x64_block{i}": (384, 192, 0) for i in (1, 2, 3)},
}


def _in_out_heads(name, module):
    if isinstance(module, MPConv):
        return module.weight.shape[1], module.weight.shape[0], None
    out = module.conv_res1.weight.shape[0]
    if name.startswith("dec"):
        cin = module.conv_res0.weight.shape[1]
    else:
        cin = module.conv_skip.weight.shape[1] if module.conv_skip is not None else out
    return cin, out, module.num_heads


def test_modules_match_the_spec_example_table():
    with torch.device("meta"):
        net = Precond(64, 4, 1000, model_channels=192)
    unet = net.unet
    modules = {f"enc.{k}": m for k, m in unet.enc.items()} | {f"dec.{k}": m for k, m in unet.dec.items()}
    assert list(modules) == list(SPEC_TABLE_192)  # names and order
    for name, module in modules.items():
        assert _in_out_heads(name, module) == SPEC_TABLE_192[name], name
    assert unet.emb_fourier.freqs.shape == (192,)  # cnoise = cblock[0]
    assert unet.emb_noise.weight.shape == (768, 192)  # cemb = max(cblock)
    assert unet.emb_label.weight.shape == (768, 1000)
    assert unet.out_conv.weight.shape == (4, 192, 3, 3)
    # Decoder blocks all have a skip conv; of the encoder blocks only the level-changing block0 has one.
    for name, module in modules.items():
        if "block" in name:
            expected_skip = name.startswith("dec") or (name.endswith("block0") and not name.startswith("enc.64"))
            assert (module.conv_skip is not None) == expected_skip, name


def _spec_state_dict_keys(res, channel_mult, num_blocks, attn, label_dim):
    """State-dict keys derived from the rules of docs/method.md#unet (not from the module tree)."""

    def block(prefix, skip, heads):
        keys = [f"{prefix}.emb_gain", f"{prefix}.conv_res0.weight", f"{prefix}.emb_linear.weight"]
        keys += [f"{prefix}.conv_res1.weight"]
        keys += [f"{prefix}.conv_skip.weight"] if skip else []
        keys += [f"{prefix}.attn_qkv.weight", f"{prefix}.attn_proj.weight"] if heads else []
        return keys

    keys = ["unet.out_gain", "unet.emb_fourier.freqs", "unet.emb_fourier.phases", "unet.emb_noise.weight"]
    keys += ["unet.emb_label.weight"] if label_dim else []
    levels = len(channel_mult)
    for level in range(levels):
        r = res >> level
        if level == 0:
            keys.append(f"unet.enc.{r}x{r}_conv.weight")
        else:
            keys += block(f"unet.enc.{r}x{r}_down", False, False)
        for i in range(num_blocks):
            # Only a block that changes the channel count has a skip conv (cin != cout).
            change = i == 0 and level > 0 and channel_mult[level] != channel_mult[level - 1]
            keys += block(f"unet.enc.{r}x{r}_block{i}", change, r in attn)
    for level in reversed(range(levels)):
        r = res >> level
        if level == levels - 1:
            keys += block(f"unet.dec.{r}x{r}_in0", False, True) + block(f"unet.dec.{r}x{r}_in1", False, False)
        else:
            keys += block(f"unet.dec.{r}x{r}_up", False, False)
        for i in range(num_blocks + 1):
            keys += block(f"unet.dec.{r}x{r}_block{i}", True, r in attn)
    keys += ["unet.out_conv.weight", "logvar_fourier.freqs", "logvar_fourier.phases", "logvar_linear.weight"]
    return keys


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(img_resolution=64, img_channels=4, label_dim=1000, model_channels=192),
        dict(img_resolution=64, img_channels=3, label_dim=0, model_channels=128),
        dict(TINY),
    ],
)
def test_state_dict_keys_follow_spec_registration_order(kwargs):
    with torch.device("meta"):
        net = Precond(**kwargs)
    expected = _spec_state_dict_keys(
        kwargs["img_resolution"],
        kwargs.get("channel_mult", [1, 2, 3, 4]),
        kwargs.get("num_blocks", 3),
        kwargs.get("attn_resolutions", [16, 8]),
        kwargs["label_dim"],
    )
    assert list(net.state_dict()) == expected
    # Parameters iterate in the same order (buffers are the Fourier freqs/phases only).
    buffers = {"unet.emb_fourier.freqs", "unet.emb_fourier.phases", "logvar_fourier.freqs", "logvar_fourier.phases"}
    assert [n for n, _ in net.named_parameters()] == [k for k in expected if k not in buffers]
    assert {n for n, _ in net.named_buffers()} == buffers


# Appendix A for TINY: (key, draw, shape) in the order the constructor draws them.
def _tiny_draws():
    def blk(prefix, cin0, cout, skip_in=None, attn=False):
        rows = [(f"{prefix}.conv_res0.weight", "randn", (cout, cin0, 3, 3))]
        rows += [(f"{prefix}.emb_linear.weight", "randn", (cout, 16))]
        rows += [(f"{prefix}.conv_res1.weight", "randn", (cout, cout, 3, 3))]
        rows += [(f"{prefix}.conv_skip.weight", "randn", (cout, skip_in, 1, 1))] if skip_in else []
        rows += [(f"{prefix}.attn_qkv.weight", "randn", (3 * cout, cout, 1, 1))] if attn else []
        rows += [(f"{prefix}.attn_proj.weight", "randn", (cout, cout, 1, 1))] if attn else []
        return rows

    u = "unet"
    return [
        (f"{u}.emb_fourier.freqs", "fourier_randn", (8,)),
        (f"{u}.emb_fourier.phases", "fourier_rand", (8,)),
        (f"{u}.emb_noise.weight", "randn", (16, 8)),
        (f"{u}.emb_label.weight", "randn", (16, 3)),
        (f"{u}.enc.8x8_conv.weight", "randn", (8, 3, 3, 3)),
        *blk(f"{u}.enc.8x8_block0", 8, 8),
        *blk(f"{u}.enc.4x4_down", 8, 8),
        *blk(f"{u}.enc.4x4_block0", 16, 16, skip_in=8, attn=True),
        *blk(f"{u}.dec.4x4_in0", 16, 16, attn=True),
        *blk(f"{u}.dec.4x4_in1", 16, 16),
        *blk(f"{u}.dec.4x4_block0", 32, 16, skip_in=32, attn=True),
        *blk(f"{u}.dec.4x4_block1", 24, 16, skip_in=24, attn=True),
        *blk(f"{u}.dec.8x8_up", 16, 16),
        *blk(f"{u}.dec.8x8_block0", 24, 8, skip_in=24),
        *blk(f"{u}.dec.8x8_block1", 16, 8, skip_in=16),
        (f"{u}.out_conv.weight", "randn", (2, 8, 3, 3)),
        ("logvar_fourier.freqs", "fourier_randn", (128,)),
        ("logvar_fourier.phases", "fourier_rand", (128,)),
        ("logvar_linear.weight", "randn", (1, 128)),
    ]


def test_construction_draws_random_numbers_in_appendix_a_order():
    net = _tiny(seed=1234)
    state = net.state_dict()
    torch.manual_seed(1234)
    for key, draw, shape in _tiny_draws():
        if draw == "fourier_randn":
            expected = 2 * np.pi * torch.randn(shape) * 1
        elif draw == "fourier_rand":
            expected = 2 * np.pi * torch.rand(shape)
        else:
            expected = torch.randn(shape)
        assert torch.equal(state[key], expected), key
    drawn = {key for key, _, _ in _tiny_draws()}
    assert all(state[k].ndim == 0 and state[k].item() == 0 for k in state if k not in drawn)  # gains: zeros


# --- Parameter counts (docs/method.md#unet) -----------------------------------------------------------------

PARAMS_M = {  # model_channels -> (img512 with 4-channel latents, img64 RGB), millions
    64: (31.31, None),
    128: (124.71, 124.71),
    192: (280.21, 280.21),
    256: (497.81, 497.80),
    320: (777.50, 777.49),
    384: (1119.28, 1119.28),
    448: (1523.16, None),
}


@pytest.mark.parametrize("channels", sorted(PARAMS_M))
def test_parameter_counts_of_every_model_size(channels):
    for img_channels, expected in zip((4, 3), PARAMS_M[channels]):
        if expected is None:
            continue
        with torch.device("meta"):
            net = Precond(64, img_channels, 1000, model_channels=channels)
        assert round(sum(p.numel() for p in net.parameters()) / 1e6, 2) == expected


# --- Precond behaviour (docs/method.md#preconditioning, #official-details) ---------------------------------------------------


def test_zero_initialised_gains_give_d_equal_c_skip_x():
    net = _tiny().eval()
    x = torch.randn(3, 2, 8, 8)
    sigma = torch.tensor([0.1, 1.0, 20.0])
    with torch.no_grad():
        d = net(x, sigma, torch.eye(3))
    c_skip = 0.25 / (sigma**2 + 0.25)
    torch.testing.assert_close(d, c_skip[:, None, None, None] * x, rtol=1e-6, atol=0)
    with torch.no_grad():
        assert net.unet(x, sigma.log() / 4, torch.eye(3)).eq(0).all()  # F == 0 at init


def test_preconditioning_coefficients_by_hand():
    net = _randomize_gains(_tiny().double().eval())
    x = torch.randn(2, 2, 8, 8, dtype=torch.float64)
    labels = torch.eye(3, dtype=torch.float64)[[0, 2]]
    sigma = 1.3
    with torch.no_grad():
        d = net(x, sigma, labels)
        F = net.unet(x / np.sqrt(0.25 + 1.69), torch.full([1], np.log(1.3) / 4, dtype=torch.float64), labels)
    c_skip, c_out = 0.25 / (1.69 + 0.25), 1.3 * 0.5 / np.sqrt(1.69 + 0.25)
    torch.testing.assert_close(d, c_skip * x + c_out * F, rtol=1e-14, atol=1e-14)


def test_zero_dim_sigma_and_python_sigma_work():
    net = _randomize_gains(_tiny().double().eval())
    x = torch.randn(2, 2, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        a = net(x, torch.tensor(0.7, dtype=torch.float64))
        b = net(x, torch.full([2], 0.7, dtype=torch.float64))
        c = net(x, 0.7)
    assert a.shape == x.shape
    torch.testing.assert_close(a, b, rtol=0, atol=1e-14)  # [1] broadcasts vs [2]: rounding only
    torch.testing.assert_close(a, c, rtol=0, atol=0)  # a Python float sigma keeps float64 precision


def test_conditional_net_without_labels_uses_a_zero_label_embedding():
    net = _randomize_gains(_tiny().double().eval())
    x = torch.randn(4, 2, 8, 8, dtype=torch.float64)
    eye = torch.eye(3, dtype=torch.float64)
    with torch.no_grad():
        none = net(x, 2.0)  # labels [1, label_dim] of zeros, broadcast over the batch
        zeros = net(x, 2.0, torch.zeros(4, 3, dtype=torch.float64))
        onehot = net(x, 2.0, eye[[0, 1, 2, 0]])
        emb_label = net.unet.emb_label(torch.zeros(1, 3, dtype=torch.float64))
    assert emb_label.eq(0).all()
    torch.testing.assert_close(none, zeros, rtol=0, atol=1e-14)
    assert not torch.allclose(none, onehot)


def test_unconditional_net_ignores_labels_and_has_no_label_embedding():
    net = _randomize_gains(_tiny(label_dim=0).eval())
    assert net.unet.emb_label is None and "unet.emb_label.weight" not in net.state_dict()
    x = torch.randn(2, 2, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(net(x, 1.0), net(x, 1.0, torch.ones(2, 7)), rtol=0, atol=0)


def test_logvar_head_depends_only_on_sigma():
    net = _randomize_gains(_tiny().eval())
    sigma = torch.tensor([0.5, 3.0])
    with torch.no_grad():
        d, u1 = net(torch.randn(2, 2, 8, 8), sigma, return_logvar=True)
        _, u2 = net(torch.randn(2, 2, 8, 8), sigma, torch.eye(3)[:2], return_logvar=True)
        expected = net.logvar_linear(net.logvar_fourier(sigma.log() / 4)).reshape(-1, 1, 1, 1)
    assert d.shape == (2, 2, 8, 8) and u1.shape == (2, 1, 1, 1)
    torch.testing.assert_close(u1, u2, rtol=0, atol=0)
    torch.testing.assert_close(u1, expected, rtol=0, atol=0)


def test_gains_are_parameters_and_init_kwargs_rebuild_the_net():
    net = _tiny()
    names = [n for n, p in net.named_parameters() if p.ndim == 0]
    assert names[0] == "unet.out_gain" and all(n.endswith(("out_gain", "emb_gain")) for n in names)
    assert net.init_kwargs == dict(TINY, use_fp16=True, sigma_data=0.5, logvar_channels=128)
    with torch.device("meta"):
        clone = Precond(**net.init_kwargs)
    assert [(k, v.shape) for k, v in clone.state_dict().items()] == [(k, v.shape) for k, v in net.state_dict().items()]
    assert isinstance(net.unet, UNet) and net.amp_dtype == torch.float16


def test_training_forward_normalises_every_weight_in_place_and_eval_does_not():
    net = _tiny()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(1, 2, 8, 8)
    net.eval()
    with torch.no_grad():
        net(x, 1.0)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    net.train()
    with torch.no_grad():
        net(x, 1.0, return_logvar=True)
    for key, value in net.state_dict().items():
        if key.endswith(".weight"):
            rows = value.reshape(value.shape[0], -1)
            old = before[key].reshape(rows.shape[0], -1)
            expected = old / (1e-4 + old.square().mean(dim=1, keepdim=True).sqrt())
            torch.testing.assert_close(rows, expected, rtol=1e-6, atol=1e-7)
        else:
            assert torch.equal(value, before[key]), key  # gains and Fourier buffers untouched


def test_use_fp16_has_no_effect_on_cpu():
    net = _randomize_gains(_tiny().eval())
    x = torch.randn(2, 2, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(net(x, 1.0), net(x, 1.0, force_fp32=True), rtol=0, atol=0)
        assert net(x.half(), 1.0).dtype == torch.float32


# --- Float64 end to end (README: one deliberate difference) ------------------------------------------


class _DtypeRecorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops_by_dtype = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (list, tuple)) else [out]:
            if isinstance(t, torch.Tensor) and t.is_floating_point():
                self.ops_by_dtype.setdefault(t.dtype, set()).add(func.overloadpacket.__name__)
        return out


def test_float64_runs_in_float64_throughout():
    net = _randomize_gains(_tiny().double().eval())
    x = torch.randn(2, 2, 8, 8, dtype=torch.float64)
    labels = torch.eye(3, dtype=torch.float64)[:2]
    with torch.no_grad(), _DtypeRecorder() as rec:
        d, u = net(x, torch.tensor([0.3, 4.0], dtype=torch.float64), labels, return_logvar=True)
    assert d.dtype == torch.float64 and u.dtype == torch.float64
    # Only the constant resampling filter is created in float32 (from NumPy) before its cast.
    assert set(rec.ops_by_dtype) <= {torch.float64, torch.float32}
    assert rec.ops_by_dtype.get(torch.float32, set()) <= {"lift_fresh", "lift_fresh_copy"}
    assert "linalg_vector_norm" in rec.ops_by_dtype[torch.float64]  # norms in float64 too


def test_float64_and_float32_agree():
    net64 = _randomize_gains(_tiny().double().eval())
    net32 = _tiny().eval()
    net32.load_state_dict({k: v.float() for k, v in net64.state_dict().items()})
    x = torch.randn(3, 2, 8, 8, dtype=torch.float64)
    sigma = torch.tensor([0.05, 1.0, 30.0], dtype=torch.float64)
    labels = torch.eye(3, dtype=torch.float64)
    with torch.no_grad():
        d64 = net64(x, sigma, labels)
        d32 = net32(x.float(), sigma.float(), labels.float())
    assert d32.dtype == torch.float32
    torch.testing.assert_close(d32.double(), d64, rtol=1e-5, atol=1e-5)


def test_float64_gradient_matches_finite_differences():
    net = _randomize_gains(_tiny().double().eval())
    x = torch.randn(1, 2, 8, 8, dtype=torch.float64, requires_grad=True)
    direction = torch.randn(1, 2, 8, 8, dtype=torch.float64)
    weight = torch.randn(1, 2, 8, 8, dtype=torch.float64)

    def loss(inp):
        return (net(inp, 0.8, torch.eye(3, dtype=torch.float64)[:1]) * weight).sum()

    loss(x).backward()
    assert x.grad.dtype == torch.float64
    assert all(p.grad is not None and p.grad.dtype == torch.float64 for p in net.unet.parameters() if p.ndim > 1)
    h = 1e-6
    with torch.no_grad():
        numeric = (loss(x + h * direction) - loss(x - h * direction)) / (2 * h)
    torch.testing.assert_close((x.grad * direction).sum(), numeric, rtol=1e-7, atol=1e-9)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="mixed precision runs only on CUDA devices")
@pytest.mark.parametrize("amp_dtype", [torch.float16, torch.bfloat16])
def test_mixed_precision_on_cuda_keeps_the_embedding_in_fp32(amp_dtype):
    net = _randomize_gains(_tiny()).cuda().eval()
    net.amp_dtype = amp_dtype
    x = torch.randn(2, 2, 8, 8, device="cuda")
    labels = torch.eye(3, device="cuda")[:2]
    with torch.no_grad(), _DtypeRecorder() as rec:
        d = net(x, 1.0, labels)
    with torch.no_grad():
        reference = net(x, 1.0, labels, force_fp32=True)
    assert d.dtype == torch.float32
    low, fp32 = rec.ops_by_dtype[amp_dtype], rec.ops_by_dtype[torch.float32]
    assert "convolution" in low and "convolution" not in fp32  # main image path (docs/method.md#preconditioning)
    assert "bmm" in low and "bmm" not in fp32  # attention in the activation dtype (docs/method.md#blocks)
    assert "mm" in fp32 and "mm" not in low  # embedding path stays fp32 (docs/method.md#official-details)
    torch.testing.assert_close(d, reference, rtol=5e-2, atol=5e-2)
