"""`Block` (docs/method.md#blocks) against an independent float64 reference written from docs/method.md#blocks, with
the attention done by explicit loops over the interleaved qkv channels (docs/method.md#official-details)."""

import numpy as np
import pytest
import torch

from edm2.nn import Block


def _mpconv(weight, x, gain=1.0):
    """Eval-mode MPConv: per-output-channel RMS normalisation, then gain/sqrt(fan_in) (docs/method.md#mp-layers)."""
    w = weight.detach().double().numpy()
    rows = w.reshape(w.shape[0], -1)
    rows = rows / (1e-4 + np.sqrt((rows**2).mean(axis=1, keepdims=True))) * float(gain) / np.sqrt(rows.shape[1])
    w = torch.from_numpy(rows.reshape(w.shape))
    if w.ndim == 2:
        return x @ w.T
    return torch.nn.functional.conv2d(x, w, padding=w.shape[-1] // 2)


def _silu(x):
    return x / (1 + torch.exp(-x)) / 0.596


def _mix(a, b, t):
    return ((1 - t) * a + t * b) / np.sqrt((1 - t) ** 2 + t**2)


def _attention(qkv, heads):
    """docs/method.md#blocks with explicit loops: channel head*3c + ch*3 + s holds q (s=0), k (1), v (2)."""
    N, C3, H, W = qkv.shape
    C = C3 // 3
    c = C // heads
    flat = qkv.reshape(N, C3, H * W).numpy()
    out = np.zeros([N, C, H * W])
    for n in range(N):
        for h in range(heads):
            q, k, v = (np.stack([flat[n, h * 3 * c + ch * 3 + s] for ch in range(c)]) for s in range(3))
            q, k, v = (a / (1e-4 + np.sqrt((a**2).mean(axis=0, keepdims=True))) for a in (q, k, v))
            logits = np.zeros([H * W, H * W])
            for i in range(H * W):
                for j in range(H * W):
                    logits[i, j] = sum(q[ch, i] * k[ch, j] / np.sqrt(c) for ch in range(c))
            weights = np.exp(logits - logits.max(axis=1, keepdims=True))
            weights /= weights.sum(axis=1, keepdims=True)
            for ch in range(c):
                for i in range(H * W):
                    out[n, h * c + ch, i] = sum(weights[i, j] * v[ch, j] for j in range(H * W))
    return torch.from_numpy(out.reshape(N, C, H, W))


def _reference_block(block, x, emb, flavor, mode, heads, clip=256):
    if mode == "down":
        x = torch.nn.functional.avg_pool2d(x, 2)
    elif mode == "up":
        x = x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    if flavor == "enc":
        if block.conv_skip is not None:
            x = _mpconv(block.conv_skip.weight, x)
        x = x / (1e-4 + x.square().mean(dim=1, keepdim=True).sqrt())
    y = _mpconv(block.conv_res0.weight, _silu(x))
    c = _mpconv(block.emb_linear.weight, emb, gain=block.emb_gain) + 1
    y = _silu(y * c[:, :, None, None])
    y = _mpconv(block.conv_res1.weight, y)
    if flavor == "dec" and block.conv_skip is not None:
        x = _mpconv(block.conv_skip.weight, x)
    x = _mix(x, y, 0.3)
    if heads:
        y = _attention(_mpconv(block.attn_qkv.weight, x), heads)
        x = _mix(x, _mpconv(block.attn_proj.weight, y), 0.3)
    return x.clamp(-clip, clip) if clip is not None else x


CASES = [  # in, out, flavor, resample, attention, channels_per_head -> heads
    (6, 8, "enc", "keep", True, 4),
    (8, 8, "enc", "down", False, 4),
    (12, 8, "dec", "up", False, 4),
    (16, 8, "dec", "keep", True, 2),
    (8, 8, "dec", "keep", True, 8),
]


@pytest.mark.parametrize("cin, cout, flavor, mode, attention, cph", CASES)
def test_block_matches_independent_reference(cin, cout, flavor, mode, attention, cph):
    torch.manual_seed(0)
    block = Block(cin, cout, 5, flavor=flavor, resample_mode=mode, attention=attention, channels_per_head=cph)
    block = block.double().eval()
    with torch.no_grad():
        block.emb_gain.fill_(0.8)
    heads = cout // cph if attention else 0
    assert block.num_heads == heads
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, cin, 4, 4, generator=g, dtype=torch.float64)
    emb = torch.randn(2, 5, generator=g, dtype=torch.float64)
    with torch.no_grad():
        y = block(x, emb)
        ref = _reference_block(block, x, emb, flavor, mode, heads)
    assert y.dtype == torch.float64
    torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)


def test_block_submodules_in_official_order_and_shapes():
    enc = Block(6, 8, 5, flavor="enc", attention=True, channels_per_head=4)
    assert [n for n, _ in enc.named_parameters()] == [
        "emb_gain",
        "conv_res0.weight",
        "emb_linear.weight",
        "conv_res1.weight",
        "conv_skip.weight",
        "attn_qkv.weight",
        "attn_proj.weight",
    ]
    shapes = {n: tuple(p.shape) for n, p in enc.named_parameters()}
    assert shapes == {
        "emb_gain": (),
        "conv_res0.weight": (8, 8, 3, 3),  # encoder: conv_res0 input is out_channels
        "emb_linear.weight": (8, 5),
        "conv_res1.weight": (8, 8, 3, 3),
        "conv_skip.weight": (8, 6, 1, 1),
        "attn_qkv.weight": (24, 8, 1, 1),
        "attn_proj.weight": (8, 8, 1, 1),
    }
    dec = Block(12, 8, 5, flavor="dec")
    assert dec.conv_res0.weight.shape == (8, 12, 3, 3)  # decoder: conv_res0 input is in_channels
    assert dec.attn_qkv is None and dec.num_heads == 0
    assert Block(8, 8, 5).conv_skip is None
    assert isinstance(enc.emb_gain, torch.nn.Parameter) and enc.emb_gain.item() == 0


def test_zero_emb_gain_gives_unit_modulation():
    torch.manual_seed(2)
    block = Block(8, 8, 5).double().eval()
    x = torch.randn(1, 8, 4, 4, dtype=torch.float64)
    with torch.no_grad():
        a = block(x, torch.randn(1, 5, dtype=torch.float64))
        b = block(x, torch.randn(1, 5, dtype=torch.float64) * 100)
    assert torch.equal(a, b)  # emb_gain = 0: emb_linear(emb) = 0 -> modulation exactly 1


def test_block_clips_outputs_in_place_to_clip_act():
    torch.manual_seed(3)
    block = Block(4, 4, 3, flavor="dec").eval()
    x = torch.randn(1, 4, 4, 4) * 1e4
    emb = torch.randn(1, 3)
    with torch.no_grad():
        y = block(x, emb)
        assert y.abs().max().item() == 256
        block.clip_act = None
        assert block(x, emb).abs().max().item() > 256


def test_dropout_only_in_training():
    torch.manual_seed(4)
    block = Block(4, 4, 3, flavor="dec", dropout=0.5)
    x, emb = torch.randn(1, 4, 8, 8), torch.randn(1, 3)
    with torch.no_grad():
        block.emb_gain.fill_(1)
        block.eval()
        assert torch.equal(block(x, emb), block(x, emb))  # eval: no dropout, deterministic
        plain = block(x, emb)
        block.train()
        block.dropout = 0
        no_drop = block(x, emb)  # training without dropout differs only by the weight renormalisation
        block.dropout = 0.5
        dropped = block(x, emb)
    assert (no_drop - plain).abs().max() < 1e-2
    assert (dropped - no_drop).abs().max() > 0.1
