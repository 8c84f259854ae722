"""FLOP counting by the official convention (docs/method.md#flops, #official-details): hand counts of single
layers, the paper's figures for every img512 preset, and a cross-check against an independent
`torch.jit.trace`-based count (the official method) on a small CPU network."""

import math
import warnings

import pytest
import torch
from click.testing import CliRunner
from tiny_networks import tiny_network

from edm2.commands.flops import flops as flops_command
from edm2.metrics.flops import FlopCounterMode, count_flops, count_flops_of
from edm2.nn import Block, MPConv, MPFourier, Precond, mp_cat, mp_silu, mp_sum, normalize, resample

TINY = tiny_network(img_channels=2, label_dim=3, channels_per_head=4)


def _flops(fn, *args, **kwargs):
    with torch.no_grad(), FlopCounterMode() as counter:
        fn(*args, **kwargs)
    return counter.result().total_flops


def _weight_norm(out, fan_in):
    """normalize(w) on an [out, fan_in] weight: vector_norm numel(w) + add out + div numel(w)."""
    return out * fan_in + out + out * fan_in


# --- Hand counts of single ops (docs/method.md#flops table) ---------------------------------------------


def test_mp_ops_by_hand():
    x = torch.zeros(2, 3, 4, 5)
    n = x.numel()
    assert _flops(mp_silu, x) == 3 * n + n  # silu 3/elem, divide by 0.596
    assert _flops(mp_sum, x, x, 0.3) == 2 * n + n  # lerp 2/elem, divide
    assert _flops(mp_cat, x, torch.zeros(2, 7, 4, 5)) == n + 2 * 7 * 4 * 5  # two scalings, free cat
    assert _flops(normalize, x, dim=1) == n + 2 * 4 * 5 + n  # vector_norm(input), add eps, divide
    assert _flops(normalize, x) == n + 2 + n
    assert _flops(resample, torch.zeros(1, 3, 8, 8), mode="down") == 3 * 4 * 4 * 4  # 4 per output
    assert _flops(resample, torch.zeros(1, 3, 4, 4), mode="up") == 4 + 3 * 8 * 8 * 4  # filter*4, 4 per output
    assert _flops(resample, x, mode="keep") == 0
    assert _flops(MPFourier(16), torch.zeros(2)) == 4 * 2 * 16  # outer, add phase, cos, * sqrt(2)


def test_single_conv_layer_by_hand():
    conv = MPConv(4, 8, kernel=[3, 3])
    x = torch.zeros(1, 4, 16, 16)
    fan_in = 4 * 3 * 3
    conv_cost = (8 * 16 * 16) * fan_in  # numel(out) * prod(weight.shape[1:])
    eval_cost = _weight_norm(8, fan_in) + 8 * fan_in + conv_cost  # normalize, MP scaling, conv
    assert eval_cost == 74600
    assert count_flops(conv, args=(x,), forced_weight_norm=False).total_flops == eval_cost
    assert count_flops(conv, args=(x,)).total_flops == eval_cost + _weight_norm(8, fan_in)  # 75184
    assert count_flops(conv, args=(x,)).total_params == 8 * fan_in


def test_linear_layer_with_a_learned_gain_by_hand():
    lin = MPConv(6, 5, kernel=[])
    gain = torch.tensor(2.0)
    expected = _weight_norm(5, 6) + 1 + 5 * 6 + (3 * 5) * 6  # + gain/sqrt(fan_in), scaling, matmul
    assert count_flops(
        lin, args=(torch.zeros(3, 6),), kwargs=dict(gain=gain), forced_weight_norm=False
    ).total_flops == (expected)


def test_attention_block_by_hand():
    N, C, H, W, E, heads = 1, 8, 4, 4, 4, 2
    c, HW, n = C // heads, H * W, N * C * H * W
    block = Block(C, C, E, attention=True, channels_per_head=c)
    layers = [  # (out, fan_in, gain is a tensor) of every MPConv the forward runs
        (C, C * 9, False),  # conv_res0
        (C, E, True),  # emb_linear
        (C, C * 9, False),  # conv_res1
        (3 * C, C, False),  # attn_qkv
        (C, C, False),  # attn_proj
    ]
    weights = sum(_weight_norm(o, k) + o * k + g for o, k, g in layers)
    expected = (
        weights
        + (n + N * HW + n)  # pixel norm (encoder)
        + 4 * n  # mp_silu
        + (C * 9) * n  # conv_res0
        + E * C  # emb_linear matmul
        + C  # + 1
        + n  # modulation
        + 4 * n  # mp_silu
        + (C * 9) * n  # conv_res1
        + 3 * n  # mp_sum
        + C * 3 * n  # attn_qkv conv
        + (3 * n + N * heads * 3 * HW + 3 * n)  # normalize q, k, v over the head width
        + n  # k / sqrt(c)
        + N * heads * HW * HW * c  # logits (einsum -> matmul)
        + 3 * N * heads * HW * HW  # softmax
        + N * heads * c * HW * HW  # weighted values (einsum -> matmul)
        + C * n  # attn_proj conv
        + 3 * n  # mp_sum
        + 2 * n  # clamp
    )
    args = (torch.zeros(N, C, H, W), torch.zeros(N, E))
    assert count_flops(block, args=args, forced_weight_norm=False).total_flops == expected
    forced = sum(_weight_norm(o, k) for o, k, _ in layers)
    assert count_flops(block, args=args).total_flops == expected + forced


# --- The paper's figures (issue 2 item 8; docs/method.md#unet) -----------------------------------------

TARGETS = {  # preset -> (Gflops per evaluation, params in M)
    "edm2-img512-xs": (45.75, 124.71),
    "edm2-img512-s": (102.48, 280.21),
    "edm2-img512-m": (181.78, 497.81),
    "edm2-img512-l": (283.66, 777.50),
    "edm2-img512-xl": (408.10, 1119.28),
    "edm2-img512-xxl": (555.12, 1523.16),
}


@pytest.mark.parametrize("preset", TARGETS)
def test_img512_presets_match_the_official_figures(preset):
    result, kwargs = count_flops_of(preset)
    assert kwargs["img_channels"] == 4 and kwargs["label_dim"] == 1000
    assert (round(result.gflops, 2), round(result.mparams, 2)) == TARGETS[preset]
    assert result.unknown == {}
    assert sum(row.flops for row in result.ops) == result.total_flops
    assert result.ops[0].name == "_convolution"


def test_counts_do_not_depend_on_what_ran_before():
    from edm2.nn.layers import _FILTERS

    with torch.device("meta"):
        net = Precond(16, 4, 10, model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[8])
    _FILTERS.clear()
    cold = count_flops(net).total_flops  # resample's filters are made during this count
    warm = count_flops(net).total_flops  # and taken from the cache here
    assert cold == warm


def test_counting_works_on_meta_and_leaves_the_network_alone():
    with torch.device("meta"):
        net = Precond(64, 4, 1000, model_channels=128)
    net.train()
    assert count_flops(net).total_flops == 45_747_332_401
    assert net.training and all(m.training for m in net.modules())
    cpu = Precond(**TINY).train()
    before = {k: v.clone() for k, v in cpu.state_dict().items()}
    count_flops(cpu)
    assert all(torch.equal(v, before[k]) for k, v in cpu.state_dict().items())  # no forced rewrite
    assert cpu.training


def test_dropout_is_free_and_batch_size_scales_activations_only():
    with torch.device("meta"):
        plain = count_flops(Precond(**TINY)).total_flops
        assert count_flops(Precond(**TINY, dropout=0.1)).total_flops == plain
        net = Precond(**TINY)
    one, two, three = (count_flops(net, batch_size=n).total_flops for n in (1, 2, 3))
    # Weight normalisation is per forward, everything else per sample.
    assert three - two == two - one < one


# --- Cross-check against the official method: jit.trace + the docs/method.md#flops table ----------------

_UNIT = {"add", "sub", "rsub", "mul", "div", "exp", "pow", "reciprocal", "square", "sqrt", "rsqrt", "sin", "cos"}
_UNIT |= {"log", "eq", "gt", "neg", "mean", "sum", "clamp_min", "floor_divide", "addcmul", "outer"}
_FACTOR = {"lerp": 2, "leaky_relu": 2, "clamp": 2, "silu": 3, "sigmoid": 3, "softmax": 3}
_ALIASES = {"clip": "clamp", "ger": "outer"}  # TorchScript's operator aliases


def _shape(value):
    t = value.type()
    return t.sizes() if isinstance(t, torch._C.TensorType) else None


def _trace_count(net, args):
    """Official-style count: trace the forward, charge each graph node by the docs/method.md#flops table,
    with einsum charged as the matmul it is rewritten into (product of all index sizes)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = torch.jit.trace(net, args, check_trace=False).inlined_graph
    total = scalar_nodes = 0
    for node in graph.nodes():
        if not node.kind().startswith("aten::"):
            continue
        name = node.kind()[len("aten::") :].rstrip("_")
        name = _ALIASES.get(name, name)
        out = _shape(node.output()) if node.outputsSize() == 1 else None
        ins = [_shape(i) for i in node.inputs()]
        if name in _UNIT or name in _FACTOR:
            cost = _FACTOR.get(name, 1) * math.prod(out)
            scalar_nodes += len(out) == 0
        elif name == "linalg_vector_norm":
            cost = math.prod(ins[0])
        elif name == "matmul":
            cost = math.prod(out) * ins[0][-1]
        elif name == "_convolution":
            cost = math.prod(out) * math.prod(ins[1][1:])
        elif name == "einsum":
            equation = node.inputsAt(0).node().s("value")
            operands = list(node.inputsAt(1).node().inputs())
            sizes = {}
            for letters, operand in zip(equation.split("->")[0].split(","), operands):
                sizes.update(zip(letters, _shape(operand)))
            cost = math.prod(sizes.values())
        else:
            cost = 0
        total += cost
    return total, scalar_nodes


def test_dispatch_count_equals_a_trace_count_of_a_training_mode_forward():
    torch.manual_seed(0)
    net = Precond(**TINY).train()  # training mode: the forced normalisation is in the graph
    args = (torch.zeros(1, 2, 8, 8), torch.zeros(1), torch.zeros(1, 3))
    traced, scalar_nodes = _trace_count(net, args)
    ours = count_flops(Precond(**TINY)).total_flops
    # The tracer records Python scalar arithmetic (e.g. gain / sqrt(fan_in)) as extra 0-dim
    # nodes worth 1 flop each; everything else agrees exactly.
    assert traced - scalar_nodes <= ours <= traced
    assert traced - ours < 1e-4 * traced


# --- The command ---------------------------------------------------------------------------


def test_command_on_a_preset_prints_params_gflops_and_the_table():
    result = CliRunner().invoke(flops_command, ["edm2-img512-xs"])
    assert result.exit_code == 0, result.output
    assert "124.71 M" in result.output and "45.75 per evaluation" in result.output
    assert "_convolution" in result.output and "linalg_vector_norm" in result.output
    img64 = CliRunner().invoke(flops_command, ["edm2-img64-s", "--no-table"])
    assert img64.exit_code == 0 and "img_channels=3" in img64.output and "_convolution" not in img64.output


def test_command_on_a_snapshot_file(tmp_path):
    from edm2.io.snapshot import save_snapshot

    net = Precond(**TINY)
    path = tmp_path / "network-snapshot-0000000-0.100.safetensors"
    save_snapshot(path, net.state_dict(), net.init_kwargs, {"class": "StandardRGBEncoder"}, 0, 0.1)
    result = CliRunner().invoke(flops_command, [str(path), "--no-table"])
    assert result.exit_code == 0, result.output
    expected = count_flops(net)
    assert f"{expected.total_flops:,} flops" in result.output
    assert f"({expected.total_params:,})" in result.output


def test_command_errors_and_help():
    from edm2.cli import main

    bad = CliRunner().invoke(main, ["flops", "edm2-img512-huge"])
    assert bad.exit_code != 0 and "neither a snapshot file nor a training preset" in bad.output
    helped = CliRunner().invoke(main, ["flops", "--help"])
    assert helped.exit_code == 0 and "Examples" in helped.output and "edm2 flops edm2-img512-xs" in helped.output
