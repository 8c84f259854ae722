"""A short training of every config A-G of the paper's Table 1 on the digits: the loss decreases
(issue 21). The networks are tiny, the learning rate constant (no warm-up) and each config keeps
its own loss, EMA, Adam betas and gradient handling (edm2.train.configs)."""

import json

import numpy as np
import pytest
import torch

from edm2.data.digits import write_digits
from edm2.train.configs import CONFIG_NAMES
from edm2.train.run import TrainOptions, run_training

pytest.importorskip("sklearn")

# Raw weights (A-C) take a step of the size of their own scale at a lower rate than the
# weight-normalised D-G (the boxes of Figs. 16-22: 1e-4 and 2e-4 against 1e-2).
LR = {"A": 0.002, "B": 0.002, "C": 0.002, "D": 0.02, "E": 0.02, "F": 0.02, "G": 0.02}


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    path = tmp_path_factory.mktemp("digits") / "digits"
    write_digits(str(path), resolution=8)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIG_NAMES)
def test_a_short_training_of_each_config_lowers_its_loss(tmp_path, digits, config):
    opts = TrainOptions(
        outdir=str(tmp_path / config), data=str(digits), config=config, duration=2048, batch=32, channels=16,
        dropout=0.0, P_mean=-0.4, P_std=1.0, lr=LR[config], decay=0, loss_scaling=1.0, precision="fp32",
        status=128, snapshot=1024, checkpoint=2048, workers=0, channel_mult=[1, 2], num_blocks=1,
        attn_resolutions=[4],
    )  # fmt: skip
    result = run_training(
        opts, progress=False, device="cpu", lr_kwargs=dict(ref_lr=LR[config], ref_batches=0, rampup_Mimg=0)
    )
    assert result.finished
    lines = [json.loads(line) for line in (tmp_path / config / "stats.jsonl").read_text().splitlines()]
    losses = [line["Loss/loss"] for line in lines if "Loss/loss" in line]
    assert len(losses) == 16
    first, last = np.mean(losses[:4]), np.mean(losses[-4:])
    assert last < first, (config, losses)
    snapshots = sorted(p.name for p in (tmp_path / config).glob("network-snapshot-*"))
    assert len(snapshots) == (3 if config == "A" else 6)  # one traditional EMA (A) or two power-function EMAs


@pytest.mark.slow
def test_config_a_resumes_exactly_and_its_snapshot_reloads(tmp_path, digits):
    """Config A trained in two slices (a training state with the traditional EMA between them)
    equals one uninterrupted run; its snapshot records the config and the EMA kind and reloads."""
    from edm2.io.snapshot import load_snapshot

    def options(name, **kw):
        return TrainOptions(
            outdir=str(tmp_path / name), data=str(digits), config="A", duration=2048, batch=64, channels=8,
            dropout=0.1, lr=0.002, decay=0, precision="fp32", status=0, snapshot=1024, checkpoint=1024, workers=0,
            channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4], **kw,
        )  # fmt: skip

    run_training(options("whole"), progress=False, device="cpu")
    assert not run_training(options("sliced", slice=1024), progress=False, device="cpu").finished
    assert run_training(options("sliced", slice=1024), progress=False, device="cpu").finished
    name = "network-snapshot-0000002-0.072.safetensors"  # the ramp-up's h / (ln 2 nimg) = 0.05 / ln 2
    whole, info = load_snapshot(tmp_path / "whole" / name)
    sliced, _ = load_snapshot(tmp_path / "sliced" / name)
    assert whole.config == "A" and info.network_kwargs["config"] == "A"
    assert info.extra["ema_kind"] == "traditional" and info.extra["training_options"]["config"] == "A"
    for (key, a), b in zip(whole.state_dict().items(), sliced.state_dict().values()):
        assert torch.equal(a, b), key
    x = torch.randn(2, 3, 8, 8)
    assert torch.isfinite(whole(x, torch.tensor([0.5, 2.0]), torch.eye(10)[:2])).all()
