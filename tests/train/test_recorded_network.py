"""Precision and attention are part of a network's recorded configuration (issue 20, deliverable 2):
a snapshot of a `--precision bf16` or `--fast` run rebuilds the network as it was trained, so it
evaluates and generates exactly as the live network did. Before, `Precond.amp_dtype` and
`Block.fused_attention` were set from outside the constructor and a bf16 run's snapshots reloaded
with the fp16 path, a `--fast` run's with the einsum attention."""

import dataclasses

import pytest
import torch
from train_helpers import make_dataset, tiny_options

from edm2.data.encoders import StandardRGBEncoder
from edm2.io.snapshot import load_snapshot, read_snapshot_info, save_snapshot
from edm2.nn import Precond
from edm2.sample import edm_sampler
from edm2.train.data import open_dataset
from edm2.train.loop import build_network
from edm2.train.run import run_training

CUDA = torch.cuda.is_available()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("recorded") / "ds", num_images=8)


def live_network(opts, device):
    """The network the training loop builds for `opts` (32 channels: one attention head of 64 at
    4x4), with non-zero gains and fp16-exact weights and buffers (snapshots store fp16), in eval mode."""
    opts = dataclasses.replace(opts, channels=32).resolved()
    image, label = open_dataset(opts.dataset_kwargs())[0]
    torch.manual_seed(0)
    ref = StandardRGBEncoder().encode_latents(torch.as_tensor(image).unsqueeze(0))
    net = build_network(ref, label, opts, device)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("gain"):
                p.fill_(0.5)
            p.copy_(p.half().float())
        for b in net.buffers():
            b.copy_(b.half().float())
    return net.eval().requires_grad_(False)


def reloaded(net, path, device):
    save_snapshot(path, net.state_dict(), net.init_kwargs, {"class": "StandardRGBEncoder"}, nimg=0, ema_std=0.05)
    loaded, _info = load_snapshot(path, device=device)
    return loaded


def outputs(net, device):
    """The denoiser at three noise levels and four EDM sampler steps, from fixed noise and labels."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn([4, net.img_channels, net.img_resolution, net.img_resolution], generator=gen).to(device)
    labels = torch.eye(net.label_dim)[torch.tensor([0, 1, 2, 3])].to(device)
    sigma = torch.tensor([0.05, 1.0, 20.0, 80.0], device=device)
    with torch.no_grad():
        denoised = net(x * sigma.reshape(-1, 1, 1, 1), sigma, labels)
        images = edm_sampler(net, x, labels, num_steps=4)
    return denoised, images


@pytest.mark.parametrize("precision, fast", [("bf16", False), ("fp16", True), ("bf16", True)])
def test_a_snapshot_records_precision_and_attention_and_evaluates_as_the_live_network(tmp_path, data, precision, fast):
    device = torch.device("cuda" if CUDA else "cpu")
    net = live_network(tiny_options(tmp_path / "run", data, precision=precision, fast=fast), device)
    assert net.amp_dtype == (torch.bfloat16 if precision == "bf16" else torch.float16)
    assert net.init_kwargs.get("amp_dtype") == ("bfloat16" if precision == "bf16" else None)
    assert net.init_kwargs.get("fused_attention") == (True if fast else None)

    loaded = reloaded(net, tmp_path / "snapshot.safetensors", device)
    assert loaded.amp_dtype == net.amp_dtype and loaded.init_kwargs == net.init_kwargs
    blocks = [m for m in loaded.modules() if getattr(m, "num_heads", 0)]
    assert blocks and all(b.fused_attention == fast for b in blocks)
    for live, again in zip(outputs(net, device), outputs(loaded, device)):
        assert torch.equal(live, again)


def test_the_recorded_settings_matter_so_the_test_above_is_not_vacuous(tmp_path, data):
    """Rebuilt without them (as before the fix), the network computes something else: on CPU the
    attention differs (the mixed-precision path runs on CUDA only), on CUDA also the precision."""
    device = torch.device("cuda" if CUDA else "cpu")
    net = live_network(tiny_options(tmp_path / "run", data, precision="bf16", fast=True), device)
    kwargs = {k: v for k, v in net.init_kwargs.items() if k not in ("amp_dtype", "fused_attention")}
    old_style = Precond(**kwargs).to(device).eval()
    old_style.load_state_dict(net.state_dict())
    assert old_style.amp_dtype == torch.float16
    assert not torch.equal(outputs(net, device)[0], outputs(old_style, device)[0])


def test_a_bf16_run_writes_snapshots_that_reload_with_bf16(tmp_path, data):
    """A real (CPU) run: the snapshot's metadata and the rebuilt network carry bf16; an fp16 run's
    configuration stays the official one (no amp_dtype key), so its files are as before."""
    run_training(tiny_options(tmp_path / "bf16", data, precision="bf16", duration=1024, status=1024))
    path = tmp_path / "bf16" / "network-snapshot-0000001-0.100.safetensors"
    assert read_snapshot_info(path).network_kwargs["amp_dtype"] == "bfloat16"
    net, info = load_snapshot(path)
    assert net.amp_dtype == torch.bfloat16 and info.extra["precision"] == "bf16"
    fp16 = live_network(tiny_options(tmp_path / "fp16", data, precision="fp16"), "cpu")
    assert "amp_dtype" not in fp16.init_kwargs and "fused_attention" not in fp16.init_kwargs


def test_official_network_arguments_still_build_with_the_defaults():
    net = Precond(8, 3, 4, True, 0.5, 16, model_channels=8, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4])
    assert net.amp_dtype == torch.float16 and "amp_dtype" not in net.init_kwargs
    assert not any(getattr(m, "fused_attention", False) for m in net.modules())
    with pytest.raises(ValueError, match="amp_dtype must be one of float16, bfloat16"):
        Precond(8, 3, 4, amp_dtype="float8")
