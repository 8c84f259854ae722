"""The networks of the paper's ablation configs A-G (arXiv 2312.02696 Table 1, Section 2, Appendix B;
docs/method.md#ablation-ladder): parameter counts at S against Table 1, per-module and per-block counts,
EDM `DhariwalUNet` state-dict names for A, and the properties the paper claims for each step."""

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from edm2.errors import ConfigError
from edm2.nn import MPConv, Precond
from edm2.nn.ablation import Conv, FourierFeatures, rms_group_norm
from edm2.presets import MODEL_SIZES

S = dict(img_resolution=64, img_channels=4, label_dim=1000, model_channels=192)
# A small network with every kind of module: three levels, attention at 8x8 and 4x4 (A: also 16x16).
SMALL = dict(img_resolution=16, img_channels=4, label_dim=10, model_channels=32, channel_mult=[1, 2, 3], num_blocks=2)


def _meta(config, **kwargs):
    with torch.device("meta"):
        return Precond(config=config, **{**S, **kwargs})


def _small(config, seed=0, **kwargs):
    torch.manual_seed(seed)
    kwargs = {"attn_resolutions": [16, 8, 4] if config == "A" else [8, 4], "channels_per_head": 16, **kwargs}
    return Precond(config=config, **SMALL, **kwargs)


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters()) if module is not None else 0


# --- Parameter counts at S (Table 1 "Mparams") ---------------------------------------------------------------

TABLE1_MPARAMS = {"A": 295.9, "B": 291.8, "C": 277.8, "D": 277.8, "E": 277.8, "F": 280.2, "G": 280.2}
EXACT_PARAMS = {
    "A": 295_902_724,
    "B": 291_757_957,
    "C": 277_816_640,
    "D": 277_816_640,
    "E": 277_816_640,
    "F": 280_212_800,
    "G": 280_212_837,
}
# embedding / In / encoder / decoder / Out / uncertainty head.
BREAKDOWN = {
    "A": (1_506_816, 7_104, 90_293_184, 204_088_320, 7_300, 0),
    "B": (1_506_816, 7_104, 88_516_800, 201_719_808, 7_300, 129),
    "C": (1_505_280, 8_640, 83_128_320, 193_167_360, 6_912, 128),
    "F": (915_456, 8_640, 86_114_304, 193_167_360, 6_912, 128),
    "G": (915_456, 8_640, 86_114_319, 193_167_381, 6_913, 128),
}
BREAKDOWN["D"] = BREAKDOWN["E"] = BREAKDOWN["C"]
# Per-block counts: A, B, C-E, F (G = F plus one emb_gain per block).
BLOCKS = {
    "enc.64x64_block0": (960_000, 960_000, 811_008, 811_008),
    "enc.32x32_down": (960_000, 960_000, 811_008, 811_008),
    "enc.32x32_block0": (3_249_408, 2_657_280, 2_359_296, 3_022_848),
    "enc.16x16_block1": (8_191_872, 8_191_872, 7_741_440, 7_741_440),
    "enc.8x8_block0": (13_282_176, 13_282_176, 12_681_216, 14_008_320),
    "dec.8x8_in0": (14_166_528, 14_166_528, 13_565_952, 13_565_952),
    "dec.8x8_block3": (19_181_952, 19_181_952, 18_579_456, 18_579_456),
    "dec.16x16_up": (11_802_624, 11_802_624, 11_206_656, 11_206_656),
    "dec.16x16_block0": (12_949_440, 12_949_440, 12_496_896, 12_496_896),
    "dec.64x64_block3": (1_366_080, 1_366_080, 1_216_512, 1_216_512),
}


@pytest.mark.parametrize("config", list("ABCDEFG"))
def test_parameter_counts_at_s_equal_table_1(config):
    net = _meta(config)
    total = _count(net)
    assert total == EXACT_PARAMS[config]
    assert round(total / 1e6, 1) == TABLE1_MPARAMS[config]


@pytest.mark.parametrize("config", list("ABCDEFG"))
def test_parameter_breakdown_per_stage(config):
    net = _meta(config)
    unet = net.unet
    emb = sum(p.numel() for n, p in unet.named_parameters() if n.startswith(("map_", "emb_")))
    stem = _count(unet.enc["64x64_conv"])
    enc = _count(unet.enc) - stem
    out = sum(p.numel() for n, p in unet.named_parameters() if n.startswith("out_"))
    head = _count(net.logvar_linear)
    assert (emb, stem, enc, _count(unet.dec), out, head) == BREAKDOWN[config]


@pytest.mark.parametrize("config", list("ABCDEFG"))
def test_per_block_parameter_counts(config):
    unet = _meta(config).unet
    column = {"A": 0, "B": 1, "C": 2, "D": 2, "E": 2, "F": 3, "G": 3}[config]
    for name, counts in BLOCKS.items():
        part, key = name.split(".")
        expected = counts[column] + (1 if config == "G" else 0)  # G: one emb_gain per block
        assert _count(getattr(unet, part)[key]) == expected, name


def test_what_each_step_changes_in_the_counts():
    # B: the seven attention layers at 32x32 (norm2 768 + qkv 443,520 + proj 147,840 at C = 384) go,
    # the uncertainty head (128 weights + 1 bias) arrives.
    assert EXACT_PARAMS["A"] - EXACT_PARAMS["B"] == 7 * (768 + 443_520 + 147_840) - 129
    # F: the encoder's 1x1 convs move to the start of the main path (conv0 becomes C_out -> C_out)
    # and map_layer1 goes.
    a, b = _meta("E").unet, _meta("F").unet
    assert _count(a.map_layer1) == 589_824 and not hasattr(b, "map_layer1")
    grown = sum(_count(b.enc[k].conv_res0) - _count(a.enc[k].conv0) for k in a.enc if k.endswith("block0"))
    assert grown == 2_985_984
    # G: 36 block gains + the output gain.
    assert EXACT_PARAMS["G"] - EXACT_PARAMS["F"] == 37


@pytest.mark.parametrize("size", ["xxs", "xs", "s", "m", "l", "xl", "xxl"])
def test_every_config_builds_at_every_size(size):
    channels = MODEL_SIZES[size].model_channels
    counts = {c: _count(_meta(c, model_channels=channels)) for c in "ABCDEFG"}
    assert counts["C"] == counts["D"] == counts["E"]  # D and E change only how weights are used
    assert counts["G"] - counts["F"] == 37  # the gains
    assert counts["A"] > counts["B"] > counts["F"] > counts["C"]
    assert round(counts["G"] / 1e6, 2) == MODEL_SIZES[size].params_img512


# --- Structure and names ------------------------------------------------------------------------------------


def _dhariwal_state_dict_shapes(img_channels=4, label_dim=1000, mc=192, mult=(1, 2, 3, 4), blocks=3, attn=(32, 16, 8)):
    """Key -> shape of an EDM `DhariwalUNet(img_resolution=64, in_channels=out_channels=img_channels,
    model_channels=mc, ...)` state dict, enumerated from EDM's module rules (not from our module tree):
    Linear/Conv2d `weight` (+ `bias`), `resample_filter` [1, 1, 2, 2] on resampling convs (also the
    parameter-free skip of down/up blocks), GroupNorm `weight` and `bias`."""
    emb = mc * max(mult)
    shapes = {
        "map_layer0.weight": (emb, mc),
        "map_layer0.bias": (emb,),
        "map_layer1.weight": (emb, emb),
        "map_layer1.bias": (emb,),
        "map_label.weight": (emb, label_dim),
    }

    def conv(prefix, cin, cout, k, resample=False):
        if k:
            shapes[f"{prefix}.weight"] = (cout, cin, k, k)
            shapes[f"{prefix}.bias"] = (cout,)
        if resample:
            shapes[f"{prefix}.resample_filter"] = (1, 1, 2, 2)

    def norm(prefix, c):
        shapes[f"{prefix}.weight"] = (c,)
        shapes[f"{prefix}.bias"] = (c,)

    def block(prefix, cin, cout, resample=False, attention=False):
        norm(f"{prefix}.norm0", cin)
        conv(f"{prefix}.conv0", cin, cout, 3, resample)
        shapes[f"{prefix}.affine.weight"] = (2 * cout, emb)
        shapes[f"{prefix}.affine.bias"] = (2 * cout,)
        norm(f"{prefix}.norm1", cout)
        conv(f"{prefix}.conv1", cout, cout, 3)
        if cin != cout or resample:
            conv(f"{prefix}.skip", cin, cout, 1 if cin != cout else 0, resample)
        if attention:
            norm(f"{prefix}.norm2", cout)
            conv(f"{prefix}.qkv", cout, 3 * cout, 1)
            conv(f"{prefix}.proj", cout, cout, 1)
        return cout

    cout, skips = mc, []
    conv("enc.64x64_conv", img_channels, mc, 3)
    skips.append(mc)
    for level, m in enumerate(mult):
        res = 64 >> level
        if level:
            skips.append(block(f"enc.{res}x{res}_down", cout, cout, resample=True))
        for i in range(blocks):
            cout = block(f"enc.{res}x{res}_block{i}", cout, mc * m, attention=res in attn)
            skips.append(cout)
    for level, m in reversed(list(enumerate(mult))):
        res = 64 >> level
        if level == len(mult) - 1:
            block(f"dec.{res}x{res}_in0", cout, cout, attention=True)
            block(f"dec.{res}x{res}_in1", cout, cout)
        else:
            block(f"dec.{res}x{res}_up", cout, cout, resample=True)
        for i in range(blocks + 1):
            cout = block(f"dec.{res}x{res}_block{i}", cout + skips.pop(), mc * m, attention=res in attn)
    norm("out_norm", cout)
    conv("out_conv", cout, img_channels, 3)
    return shapes


@pytest.mark.parametrize("config,attn", [("A", (32, 16, 8)), ("B", (16, 8))])
def test_a_dhariwal_unet_state_dict_loads_strictly(config, attn):
    unet = _meta(config).unet
    expected = _dhariwal_state_dict_shapes(attn=attn)
    got = {k: tuple(v.shape) for k, v in unet.state_dict().items()}
    assert got == expected
    # A state dict with EDM's names and random values loads with strict=True and lands in place.
    torch.manual_seed(0)
    small = _small(config).unet
    values = {k: torch.randn(v.shape) for k, v in small.state_dict().items()}
    small.load_state_dict(values, strict=True)
    assert all(torch.equal(small.state_dict()[k], v) for k, v in values.items())


def test_c_to_e_keep_edm_names_and_f_uses_edm2_names():
    c, f = _meta("C").unet, _meta("F").unet
    block = dict(c.enc["32x32_block0"].named_parameters())
    assert list(block) == ["conv0.weight", "affine.weight", "conv1.weight", "skip.weight"]
    assert list(dict(c.enc["16x16_block0"].named_parameters()))[-2:] == ["qkv.weight", "proj.weight"]
    assert [n for n, _ in c.named_children()] == [
        "map_noise",
        "map_layer0",
        "map_layer1",
        "map_label",
        "enc",
        "dec",
        "out_conv",
    ]
    assert c.enc["64x64_conv"].weight.shape == (192, 5, 3, 3)  # constant-1 input channel
    assert c.dec["8x8_in0"].affine.weight.shape == (768, 768)  # scale only, no shift
    fb = dict(f.enc["32x32_block0"].named_parameters())
    assert list(fb) == ["conv_res0.weight", "emb_linear.weight", "conv_res1.weight", "conv_skip.weight"]
    assert fb["conv_res0.weight"].shape == (384, 384, 3, 3)  # encoder 1x1 conv moved first (B.6)
    assert [n for n, _ in f.named_children()] == ["emb_fourier", "emb_noise", "emb_label", "enc", "dec", "out_conv"]


@pytest.mark.parametrize("config", list("ABCDEFG"))
def test_attention_blocks_per_config(config):
    unet = _meta(config).unet
    heads = {
        f"{p}.{k}": b.num_heads for p in ("enc", "dec") for k, b in getattr(unet, p).items() if hasattr(b, "num_heads")
    }
    assert sum(1 for h in heads.values() if h) == (22 if config == "A" else 15)
    assert heads["dec.8x8_in0"] == 12 and heads["dec.8x8_in1"] == 0
    assert heads["enc.32x32_block0"] == (6 if config == "A" else 0)


def test_config_is_recorded_in_init_kwargs_and_rebuilds_the_network():
    for config in "ABCDEF":
        net = _small(config)
        assert net.init_kwargs["config"] == config
        torch.manual_seed(0)
        clone = Precond(**net.init_kwargs)
        assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), clone.state_dict().values()))
    assert "config" not in _small("G").init_kwargs  # G's metadata is what it always was
    assert list(_small("G").state_dict()) == list(
        Precond(**SMALL, attn_resolutions=[8, 4], channels_per_head=16).state_dict()
    )
    with pytest.raises(ConfigError, match="unknown network config 'H'"):
        Precond(config="H", **SMALL)
    with pytest.raises(ConfigError, match="no uncertainty head"):
        _small("A")(torch.zeros(1, 4, 16, 16), 1.0, return_logvar=True)


# --- What each step claims (Section 2, Appendix B) ------------------------------------------------------------


class _ForwardWeights(TorchDispatchMode):
    """Collects the weights that convolutions and matrix products use: conv weights [out, in, k, k]
    (depthwise resampling filters excluded) and the right operand of `mm` ([in, out])."""

    def __init__(self):
        super().__init__()
        self.rows = []  # [out, fan_in] per layer

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name == "convolution" and args[8] == 1 and not args[6]:  # groups == 1, not transposed
            self.rows.append(args[1].detach().flatten(1))
        elif name == "mm":
            self.rows.append(args[1].detach().t())
        return func(*args, **(kwargs or {}))


def _forward_weight_norms(net, train=False):
    net.train(train)
    with _ForwardWeights() as seen:
        net(torch.randn(2, 4, 16, 16), torch.tensor([0.2, 2.0]), torch.eye(10)[:2], return_logvar=net.config != "A")
    return [r.double().norm(dim=1) for r in seen.rows]


def _scale_weights(net, seed=1):
    """Multiply every conv/linear weight by a random factor per output unit (1 .. 10), gains to 1."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (MPConv, Conv)) and m.weight is not None:
                m.weight.mul_(10 ** (torch.rand([m.weight.shape[0]] + [1] * (m.weight.ndim - 1), generator=g)))
        for p in net.parameters():
            if p.ndim == 0:
                p.fill_(1)
    return net


@pytest.mark.parametrize("config", list("DEFG"))
def test_weights_used_in_the_forward_have_unit_norm_per_output_feature(config):
    net = _scale_weights(_small(config))
    norms = _forward_weight_norms(net)
    assert len(norms) > 20
    for n in norms:  # Eqs. 46-47 (the 1/sqrt(fan_in) MP scaling included): ||w_i|| = 1, up to the
        # eps 1e-4 added to the row RMS (Eq. 47), a relative 1e-4 / RMS.
        torch.testing.assert_close(n, torch.ones_like(n), atol=1e-3, rtol=0)


@pytest.mark.parametrize("config", list("ABC"))
def test_without_weight_normalisation_the_forward_uses_the_stored_weights(config):
    net = _scale_weights(_small(config, seed=2))
    norms = torch.cat(_forward_weight_norms(net))
    stored = torch.cat(
        [
            m.weight.double().flatten(1).norm(dim=1)
            for m in net.modules()
            if isinstance(m, Conv) and m.weight is not None and m.weight.ndim == 4
        ]
    )
    assert norms.std() > 0.1
    assert torch.isin(stored, norms).all()


@pytest.mark.slow  # seconds each on 2 cores: make test runs it, make test-fast does not
@pytest.mark.parametrize("config", list("DEFG"))
def test_forced_weight_normalisation_in_training_mode(config):
    net = _scale_weights(_small(config))
    layers = [m for m in net.modules() if isinstance(m, (MPConv, Conv)) and m.weight is not None]
    before = [m.weight.detach().clone() for m in layers]
    _forward_weight_norms(net, train=False)  # eval mode never touches the stored weights
    assert all(torch.equal(m.weight, w) for m, w in zip(layers, before))
    _forward_weight_norms(net, train=True)
    for m, w in zip(layers, before):
        rows = m.weight.detach().double().flatten(1)
        fan_in = rows.shape[1]
        if config == "D":  # standard weight normalisation only (Eq. 47): stored weights keep growing freely
            assert torch.equal(m.weight, w)
        else:  # Eq. 66: ||w_i|| = sqrt(fan_in) after the forward
            torch.testing.assert_close(
                rows.norm(dim=1), torch.full_like(rows[:, 0], np.sqrt(fan_in)), rtol=1e-3, atol=0
            )


def _block_output_rms(net, weight_scale=1.0):
    """RMS of every encoder/decoder block output for unit-variance input, in float64."""
    net = net.double().eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (MPConv, Conv)) and m.weight is not None:
                m.weight.mul_(weight_scale)
    rms = []
    hooks = [
        b.register_forward_hook(lambda m, i, o: rms.append(float(o.square().mean().sqrt())))
        for b in [*net.unet.enc.values(), *net.unet.dec.values()]
    ]
    g = torch.Generator().manual_seed(5)
    x = torch.randn(4, 4, 16, 16, generator=g, dtype=torch.float64)
    with torch.no_grad():
        net(x, torch.full([4], 0.5, dtype=torch.float64), torch.eye(10, dtype=torch.float64)[:4])
    for h in hooks:
        h.remove()
    return np.array(rms)


@pytest.mark.slow  # seconds each on 2 cores: make test runs it, make test-fast does not
def test_g_keeps_activations_near_unit_magnitude_while_c_does_not_need_to():
    # G (Sections 2.2-2.5): with random weights and gains 1, every block output stays near RMS 1,
    # and rescaling the stored weights changes nothing (weight normalisation, Eq. 47).
    g = _small("G", seed=3)
    with torch.no_grad():
        for p in g.parameters():
            if p.ndim == 0:
                p.fill_(1)
    g_rms = _block_output_rms(g)
    assert 0.5 < g_rms.min() and g_rms.max() < 2.0
    g2 = _small("G", seed=3)
    with torch.no_grad():
        for p in g2.parameters():
            if p.ndim == 0:
                p.fill_(1)
    np.testing.assert_allclose(_block_output_rms(g2, weight_scale=7.0), g_rms, rtol=2e-3)  # eps of Eq. 47
    # C (Section 2.1): activations grow along the residual path (x + h, no normalisation of the
    # sum) and follow the weights' magnitude -- nothing keeps them at 1.
    c_rms = _block_output_rms(_small("C", seed=3))
    assert c_rms.max() / c_rms.min() > 2.0
    c_big = _block_output_rms(_small("C", seed=3), weight_scale=7.0)
    assert c_big.max() > 5 * c_rms.max()


@pytest.mark.slow  # seconds each on 2 cores: make test runs it, make test-fast does not
def test_a_b_and_g_start_from_d_equal_c_skip_x_while_c_to_f_do_not():
    x = torch.randn(2, 4, 16, 16)
    sigma = torch.tensor([0.3, 3.0])
    c_skip = 0.25 / (sigma**2 + 0.25)
    for config in "ABCDEFG":
        net = _small(config).eval()
        with torch.no_grad():
            d = net(x, sigma, torch.eye(10)[:2])
        identity = torch.allclose(d, c_skip.reshape(-1, 1, 1, 1) * x, atol=1e-6)
        assert identity == (config in "ABG"), config  # zero-initialised output layer (A-B) or out_gain 0 (G)


def test_fourier_features_of_c_to_f_have_rms_one_over_sqrt_2_and_g_rms_one():
    # Eqs. 69-75: E[cos^2] = 1/2, so G multiplies by sqrt(2).
    torch.manual_seed(0)
    feats = FourierFeatures(4096)
    a = torch.linspace(-2, 2, 64)
    b = feats(a)
    torch.testing.assert_close(b, torch.cos(a[:, None] * feats.freqs + feats.phases))
    assert abs(float(b.square().mean()) - 0.5) < 0.02
    g = _small("G").unet.emb_fourier(a)
    assert abs(float(g.square().mean()) - 1.0) < 0.3  # 32 features only


def test_rms_group_norm_is_eq_29():
    x = torch.randn(2, 64, 4, 4, dtype=torch.float64) * 3 + 1
    groups = x.reshape(2, 16, 4, 4, 4)  # min(32, 64 // 4) = 16 groups of 4 channels
    expected = groups / (1e-4 + groups.square().mean(dim=(2, 3, 4), keepdim=True).sqrt())
    torch.testing.assert_close(rms_group_norm(x), expected.reshape(x.shape))


@pytest.mark.slow  # seconds each on 2 cores: make test runs it, make test-fast does not
@pytest.mark.parametrize("config", list("ABCDEFG"))
def test_every_config_trains_a_step_and_reloads_exactly(config):
    net = _small(config).train()
    x = torch.randn(2, 4, 16, 16)
    out = net(x, torch.tensor([0.2, 2.0]), torch.eye(10)[:2], return_logvar=config != "A")
    loss = (out[0] if isinstance(out, tuple) else out).square().mean() + (
        out[1].mean() if isinstance(out, tuple) else 0
    )
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    clone = Precond(**net.init_kwargs)
    clone.load_state_dict(net.state_dict(), strict=True)
    net.eval()
    clone.eval()
    with torch.no_grad():
        assert torch.equal(net(x, 1.0), clone(x, 1.0))


# --- Config A against an independent functional forward (EDM's DhariwalUNet semantics, B.1) -------------------


def _adm_reference(sd, x, c_noise, onehot, heads_of):
    """ADM as implemented in EDM, written from the equations on a plain state dict (float64):
    positional embedding -> Lin+b -> SiLU -> Lin+b -> + label -> SiLU; blocks GN -> SiLU -> (resample)
    -> conv -> GN(h)(1 + scale) + shift -> SiLU -> conv, + skip, then GN -> qkv -> softmax(q^T k/8) attention."""
    F = torch.nn.functional

    def gn(t, p):
        return F.group_norm(t, min(32, t.shape[1] // 4), sd[f"{p}.weight"], sd[f"{p}.bias"], eps=1e-5)

    def conv(t, p, mode="keep"):
        if mode == "down":
            t = F.avg_pool2d(t, 2)
        elif mode == "up":
            t = t.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
        if f"{p}.weight" not in sd:
            return t
        w = sd[f"{p}.weight"]
        return F.conv2d(t, w, sd[f"{p}.bias"], padding=w.shape[-1] // 2)

    def block(t, p, mode, emb):
        h = conv(F.silu(gn(t, f"{p}.norm0")), f"{p}.conv0", mode)
        scale, shift = (emb @ sd[f"{p}.affine.weight"].t() + sd[f"{p}.affine.bias"]).chunk(2, dim=1)
        h = F.silu(gn(h, f"{p}.norm1") * (1 + scale[:, :, None, None]) + shift[:, :, None, None])
        h = conv(h, f"{p}.conv1")
        skip = conv(t, f"{p}.skip", mode)  # 1x1 conv, or only the resampling, or the identity
        t = h + skip
        heads = heads_of[p]
        if heads:
            n, c, hh, ww = t.shape
            qkv = conv(gn(t, f"{p}.norm2"), f"{p}.qkv").reshape(n, heads, c // heads, 3, hh * ww)
            q, k, v = qkv[:, :, :, 0], qkv[:, :, :, 1], qkv[:, :, :, 2]
            w = torch.softmax(torch.einsum("nhcq,nhck->nhqk", q, k) / np.sqrt(c // heads), dim=-1)
            a = torch.einsum("nhqk,nhck->nhcq", w, v).reshape(n, c, hh, ww)
            t = t + conv(a, f"{p}.proj")
        return t

    half = sd["map_layer0.weight"].shape[1] // 2
    freqs = 10000 ** (-torch.arange(half, dtype=torch.float64) / half)
    pe = torch.cat([torch.cos(c_noise[:, None] * freqs), torch.sin(c_noise[:, None] * freqs)], dim=1)
    emb = F.silu(pe @ sd["map_layer0.weight"].t() + sd["map_layer0.bias"])
    emb = emb @ sd["map_layer1.weight"].t() + sd["map_layer1.bias"]
    emb = F.silu(emb + onehot @ sd["map_label.weight"].t())
    skips = []
    # Encoder and decoder modules in the state dict's (registration) order.
    blocks = list(dict.fromkeys(".".join(k.split(".")[:2]) for k in sd if k.startswith(("enc.", "dec."))))
    for p in blocks:
        if p.startswith("enc."):
            x = conv(x, p) if p.endswith("_conv") else block(x, p, "down" if p.endswith("_down") else "keep", emb)
            skips.append(x)
        else:
            if "_block" in p:
                x = torch.cat([x, skips.pop()], dim=1)
            x = block(x, p, "up" if p.endswith("_up") else "keep", emb)
    return conv(F.silu(gn(x, "out_norm")), "out_conv")


@pytest.mark.slow  # seconds each on 2 cores: make test runs it, make test-fast does not
def test_config_a_equals_an_independent_adm_forward():
    net = _small("A", seed=4).double().eval()
    g = torch.Generator().manual_seed(6)
    with torch.no_grad():
        for p in net.parameters():  # random values everywhere, zero-initialised layers included
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) / np.sqrt(max(p[0].numel(), 1)))
    unet = net.unet
    sd = {k: v for k, v in unet.state_dict().items() if not k.endswith("resample_filter")}
    heads_of = {
        f"{p}.{k}": b.num_heads for p in ("enc", "dec") for k, b in getattr(unet, p).items() if hasattr(b, "num_heads")
    }
    x = torch.randn(2, 4, 16, 16, generator=g, dtype=torch.float64)
    c_noise = torch.tensor([-1.0, 0.7], dtype=torch.float64)
    onehot = torch.eye(10, dtype=torch.float64)[[3, 7]]
    with torch.no_grad():
        got = unet(x, c_noise, onehot)
    torch.testing.assert_close(got, _adm_reference(sd, x, c_noise, onehot, heads_of), rtol=1e-10, atol=1e-10)


# --- Configs C-F against an independent functional forward written from Appendix B.3-B.6 ------------------------


def _streamlined_reference(config, sd, x, c_noise, onehot, heads_of):
    """C-F on a plain state dict (float64), from the paper's equations: RMS group norm (Eq. 29),
    pixel norm of q, k, v and logits q.k / sqrt(c) (Eqs. 30-34), Fourier features cos(f a + phi)
    (Eqs. 35-36), w_i / ||w_i|| per output unit in D-F (Eq. 47); F per B.6 with EDM2's names.
    eps = 1e-4 is added to each RMS (docs/method.md#ablation-ladder, "eps placement"): the paper's
    placement inside the square root differs by up to 0.5% on the small activations of a random C."""
    Fn = torch.nn.functional

    def weight(p):
        w = sd[f"{p}.weight"]
        if config == "C":
            return w
        rows = w.flatten(1)
        return (rows / (rows.norm(dim=1, keepdim=True) + 1e-4 * np.sqrt(rows.shape[1]))).reshape(w.shape)

    def conv(t, p):
        w = weight(p)
        return t @ w.t() if w.ndim == 2 else Fn.conv2d(t, w, padding=w.shape[-1] // 2)

    def resample(t, mode):
        if mode == "down":
            return Fn.avg_pool2d(t, 2)
        return t.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3) if mode == "up" else t

    def rmsgn(t):
        n, c, h, w = t.shape
        g = t.reshape(n, min(32, c // 4), -1)
        return (g / (g.square().mean(dim=2, keepdim=True).sqrt() + 1e-4)).reshape(t.shape)

    def pixnorm(t, dim):
        return t / (t.square().mean(dim=dim, keepdim=True).sqrt() + 1e-4)

    def attention(t, p, qkv_name, proj_name):
        n, c, hh, ww = t.shape
        heads = heads_of[p]
        qkv = conv(t, f"{p}.{qkv_name}").reshape(n, heads, c // heads, 3, hh * ww)
        q, k, v = (pixnorm(qkv[:, :, :, i], dim=2) for i in range(3))
        w = torch.softmax(torch.einsum("nhcq,nhck->nhqk", q, k) / np.sqrt(c // heads), dim=-1)
        return conv(torch.einsum("nhqk,nhck->nhcq", w, v).reshape(n, c, hh, ww), f"{p}.{proj_name}")

    def block_c(t, p, mode, emb):  # C-E (B.3)
        h = conv(resample(Fn.silu(rmsgn(t)), mode), f"{p}.conv0")
        h = Fn.silu(rmsgn(h) * (1 + (emb @ weight(f"{p}.affine").t())[:, :, None, None]))
        h = conv(h, f"{p}.conv1")
        m = resample(t, mode)
        t = h + (conv(m, f"{p}.skip") if f"{p}.skip.weight" in sd else m)
        return t + attention(t, p, "qkv", "proj") if heads_of[p] else t

    def block_f(t, p, mode, emb):  # F (B.6)
        t = resample(t, mode)
        has_skip = f"{p}.conv_skip.weight" in sd
        if p.startswith("enc."):
            t = pixnorm(conv(t, f"{p}.conv_skip") if has_skip else t, dim=1)
        h = conv(Fn.silu(t), f"{p}.conv_res0")
        h = Fn.silu(h * (1 + (emb @ weight(f"{p}.emb_linear").t())[:, :, None, None]))
        h = conv(h, f"{p}.conv_res1")
        if p.startswith("dec.") and has_skip:
            t = conv(t, f"{p}.conv_skip")
        t = t + h
        return t + attention(t, p, "attn_qkv", "attn_proj") if heads_of[p] else t

    label = onehot * np.sqrt(onehot.shape[1])
    if config == "F":
        fourier = torch.cos(c_noise[:, None] * sd["emb_fourier.freqs"] + sd["emb_fourier.phases"])
        emb = Fn.silu(conv(fourier, "emb_noise") + conv(label, "emb_label"))
    else:
        fourier = torch.cos(c_noise[:, None] * sd["map_noise.freqs"] + sd["map_noise.phases"])
        emb = conv(Fn.silu(conv(fourier, "map_layer0")), "map_layer1")
        emb = Fn.silu(emb + conv(label, "map_label"))
    block = block_f if config == "F" else block_c
    x = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)
    skips = []
    for p in dict.fromkeys(".".join(k.split(".")[:2]) for k in sd if k.startswith(("enc.", "dec."))):
        mode = "down" if p.endswith("_down") else "up" if p.endswith("_up") else "keep"
        if p.startswith("enc."):
            x = conv(x, p) if p.endswith("_conv") else block(x, p, mode, emb)
            skips.append(x)
        else:
            x = block(torch.cat([x, skips.pop()], dim=1) if "_block" in p else x, p, mode, emb)
    return conv(x, "out_conv") if config == "F" else conv(Fn.silu(rmsgn(x)), "out_conv")


@pytest.mark.slow  # seconds each on 2 cores: make test runs it, make test-fast does not
@pytest.mark.parametrize("config", list("CDEF"))
def test_configs_c_to_f_equal_an_independent_forward_from_the_equations(config):
    net = _small(config, seed=4).double().eval()
    unet = net.unet
    sd = dict(unet.state_dict())
    heads_of = {
        f"{p}.{k}": b.num_heads for p in ("enc", "dec") for k, b in getattr(unet, p).items() if hasattr(b, "num_heads")
    }
    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, 4, 16, 16, generator=g, dtype=torch.float64)
    c_noise = torch.tensor([-1.0, 0.7], dtype=torch.float64)
    onehot = torch.eye(10, dtype=torch.float64)[[3, 7]]
    with torch.no_grad():
        got = unet(x, c_noise, onehot)
    expected = _streamlined_reference(config, sd, x, c_noise, onehot, heads_of)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)


class _SoftmaxDtypes(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.dtypes = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ == "_softmax":
            self.dtypes.add(args[0].dtype)
        return func(*args, **(kwargs or {}))


@pytest.mark.slow  # seconds each on 2 cores: make test runs it, make test-fast does not
@pytest.mark.parametrize("config", list("ABCDEFG"))
def test_fp16_main_path_with_float32_attention_logits_in_a_and_b_only(config):
    # B.1 / D.2: "partial" mixed precision (A-B) keeps attention logits and softmax in float32;
    # "full" (C-G) runs the whole attention in fp16. The embedding stays float32 in every config.
    net = _small(config).train()
    x = torch.randn(2, 4, 16, 16).half()
    with _SoftmaxDtypes() as seen:
        y = net.unet(x, torch.tensor([-0.5, 0.3]), torch.eye(10)[:2])
    assert y.dtype == torch.float16
    assert seen.dtypes == ({torch.float32} if config in "AB" else {torch.float16})
    y.float().square().mean().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in net.unet.parameters())


@pytest.mark.parametrize("config", list("ABCDEFG"))
def test_unconditional_rgb_networks_of_every_config(config):
    torch.manual_seed(0)
    net = Precond(
        8,
        3,
        0,
        config=config,
        model_channels=16,
        channel_mult=[1, 2],
        num_blocks=1,
        attn_resolutions=[4],
        channels_per_head=8,
    )
    assert all("label" not in name for name, _ in net.named_parameters())
    x = torch.randn(2, 3, 8, 8)
    d = net.eval()(x, torch.tensor([0.5, 2.0]), torch.eye(4)[:2])  # labels ignored when label_dim = 0
    assert d.shape == x.shape and torch.isfinite(d).all()


@pytest.mark.parametrize("config", list("ABCDEFG"))
def test_snapshots_record_the_config_and_reload_exactly(config, tmp_path):
    from edm2.io.snapshot import load_snapshot, read_snapshot_info, save_snapshot

    net = _small(config).eval()
    path = tmp_path / "network-snapshot-0000000-0.100.safetensors"
    save_snapshot(path, net.state_dict(), net.init_kwargs, {"class": "StandardRGBEncoder"}, 0, 0.1, dtype=None)
    assert read_snapshot_info(path).network_kwargs.get("config", "G") == config
    loaded, _ = load_snapshot(path)
    x = torch.randn(2, 4, 16, 16)
    with torch.no_grad():
        assert torch.equal(
            loaded(x, torch.tensor([0.3, 3.0]), torch.eye(10)[:2]), net(x, torch.tensor([0.3, 3.0]), torch.eye(10)[:2])
        )


def test_forced_weight_norm_layers_of_e_compute_exactly_as_g_mpconv():
    # E's layers (Conv with WeightNorm.FORCED) and F-G's MPConv (gain 1) are the same operation, Eq. 66.
    from edm2.nn.ablation import WeightNorm

    torch.manual_seed(0)
    ours = Conv(6, 5, 3, init="normal", weight_norm=WeightNorm.FORCED)
    mp = MPConv(6, 5, kernel=[3, 3])
    with torch.no_grad():
        mp.weight.copy_(ours.weight * 3)
        ours.weight.mul_(3)
    x = torch.randn(2, 6, 4, 4)
    for mode in (True, False):
        ours.train(mode)
        mp.train(mode)
        assert torch.equal(ours(x), mp(x))
        assert torch.equal(ours.weight, mp.weight)
