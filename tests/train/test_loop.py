"""A short training run checked against the recipe: the loss falls, the first step has lr 0,
the EMAs and snapshots equal the power-function EMA of the parameter trajectory (docs/method.md#training, #ema)."""

import json

import numpy as np
import pytest
import torch
from train_helpers import load_state, make_dataset, tiny_options

from edm2.ema import power_function_beta
from edm2.io.snapshot import load_state_dict, read_snapshot_info
from edm2.train.run import run_training

FAST_LR = dict(ref_lr=0.02, ref_batches=35000, rampup_Mimg=0.0002)  # warm-up in 200 images instead of 10M


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("loop")
    data = make_dataset(root / "ds", num_images=32)
    trajectory, lrs, gains_after_first = [], [], []

    def hook(cur_nimg, net, optimizer, ema, lr):
        trajectory.append({k: v.detach().double().clone() for k, v in net.named_parameters()})
        lrs.append(lr)
        if len(lrs) == 1:
            gains = [net.unet.out_gain]
            gains_after_first.extend((p.detach().clone(), optimizer.state[p]["exp_avg"].clone()) for p in gains)

    opts = tiny_options(root / "run", data, duration=1024, batch=32, status=32)
    result = run_training(opts, lr_kwargs=FAST_LR, step_hook=hook)
    return dict(dir=root / "run", result=result, trajectory=trajectory, lrs=lrs, gains=gains_after_first, opts=opts)


def test_the_loss_falls(run):
    lines = [json.loads(line) for line in (run["dir"] / "stats.jsonl").read_text().splitlines()]
    assert "Loss/loss" not in lines[0] and lines[0]["Progress/kimg"] == 0  # status at nimg 0, before any step
    losses = [line["Loss/loss"] for line in lines[1:]]
    assert len(losses) == 32
    assert np.mean(losses[-6:]) < 0.8 * np.mean(losses[:6])


def test_run_finishes_with_outputs_and_done_marker(run):
    assert run["result"].finished and run["result"].signal is None
    done = json.loads((run["dir"] / "training-done.json").read_text())
    assert done["nimg"] == 1024 and done["kimg"] == 1
    assert done["snapshots"] == [
        f"network-snapshot-000000{k}-{s}.safetensors" for k in (0, 1) for s in ("0.050", "0.100")
    ]
    assert "Status: kimg 1.0" in (run["dir"] / "log.txt").read_text()
    opts = json.loads((run["dir"] / "training_options.json").read_text())
    assert opts["options"]["batch"] == 32 and opts["derived"]["lr_kwargs"] == FAST_LR


def test_first_step_uses_learning_rate_zero(run):
    lrs = run["lrs"]
    assert lrs[0] == 0.0
    assert lrs[1] == pytest.approx(0.02 * 32 / 200)  # pre-step cur_nimg / rampup
    for value, exp_avg in run["gains"]:  # out_gain starts at 0 and stays 0 although its Adam moment moved
        assert value.item() == 0.0 and exp_avg.abs().item() > 0


def expected_emas(trajectory, std, batch):
    ema = None
    for step, params in enumerate(trajectory, start=1):
        beta = float(power_function_beta(std=std, t_next=step * batch, t_delta=batch))  # docs/method.md#ema
        ema = (
            {k: v.clone() for k, v in params.items()}
            if ema is None
            else {k: beta * ema[k] + (1 - beta) * v for k, v in params.items()}
        )
    return ema


@pytest.mark.parametrize("std", [0.050, 0.100])
def test_ema_and_snapshot_equal_the_power_function_ema_of_the_trajectory(run, std):
    expected = expected_emas(run["trajectory"], std, batch=32)
    state = load_state(run["dir"] / "training-state-0000001.pt")
    stored = state["ema"]["emas"][state["ema"]["stds"].index(std)]
    snap_path = run["dir"] / f"network-snapshot-0000001-{std:.3f}.safetensors"
    snap = load_state_dict(snap_path)
    info = read_snapshot_info(snap_path)
    assert info.nimg == 1024 and info.ema_std == std and info.encoder == {"class": "StandardRGBEncoder"}
    assert info.network_kwargs["model_channels"] == 8 and info.network_kwargs["label_dim"] == 4
    assert info.extra["loss_kwargs"]["P_mean"] == -0.8 and info.extra["training_options"]["batch"] == 32
    for name, value in expected.items():
        torch.testing.assert_close(stored[name].double(), value, rtol=1e-5, atol=1e-6)
        assert snap[name].dtype == torch.float16
        torch.testing.assert_close(snap[name].double(), value, rtol=2e-3, atol=1e-4)
    # The averages differ from the live weights (the test is not vacuous).
    live = run["trajectory"][-1]
    assert any(not torch.allclose(expected[k], live[k], rtol=1e-3) for k in live)
    for name in ("unet.emb_fourier.freqs", "logvar_fourier.phases"):  # buffers copied from the live net
        assert torch.equal(snap[name], state["net"][name].half())


def test_snapshot_at_nimg_0_holds_the_normalised_initial_weights(run):
    snap = load_state_dict(run["dir"] / "network-snapshot-0000000-0.050.safetensors")
    w = snap["unet.enc.8x8_conv.weight"].double()
    rms = w.flatten(1).norm(dim=1) / np.sqrt(w[0].numel())
    torch.testing.assert_close(rms, torch.ones_like(rms), rtol=2e-3, atol=0)  # normalize(randn): unit RMS per output
    assert snap["unet.out_gain"].item() == 0.0


def test_latent_datasets_train_through_the_vae_encoder_without_loading_the_vae(tmp_path):
    data = make_dataset(tmp_path / "latents", num_images=8, channels=8)
    opts = tiny_options(tmp_path / "run", data, duration=64, status=0, snapshot=1024, checkpoint=0)
    run_training(opts)
    info = read_snapshot_info(tmp_path / "run" / "network-snapshot-0000000-0.100.safetensors")
    assert info.network_kwargs["img_channels"] == 4 and info.network_kwargs["img_resolution"] == 8
    assert info.encoder["class"] == "StabilityVAEEncoder" and info.encoder["batch_size"] == 8


def test_rampup_sets_the_warm_up_of_the_steps_learning_rate(tmp_path):
    """--rampup R (images): step at nimg t runs at lr * min(t / R, 1) (the paper's 10 Mimg warm-up,
    shortened); with the default every step of a short run stays below 0.1% of --lr."""
    data = make_dataset(tmp_path / "ds", num_images=32)
    lrs = {}

    def hook(cur_nimg, net, optimizer, ema, lr):
        lrs.setdefault(rampup, []).append(lr)

    for rampup in (96, 10_000_000):
        opts = tiny_options(
            tmp_path / f"run-{rampup}", data, duration=192, batch=32, status=0, snapshot=0, rampup=rampup
        )
        run_training(opts, step_hook=hook)
    assert lrs[96] == pytest.approx([0.01 * min(t / 96, 1) for t in range(0, 192, 32)], rel=1e-12, abs=0)
    assert lrs[10_000_000] == pytest.approx([0.01 * t / 1e7 for t in range(0, 192, 32)], rel=1e-12, abs=0)
    assert json.loads((tmp_path / "run-96" / "training_options.json").read_text())["derived"]["lr_kwargs"] == {
        "ref_lr": 0.01,
        "ref_batches": 35000.0,
        "rampup_Mimg": 96e-6,
    }
