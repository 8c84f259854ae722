"""The training monitor (edm2.train.monitor): magnitudes, loss per sigma band and gradient norm in
stats.jsonl, TensorBoard events read back with the tensorboard package's own reader, a run with
all of it equal bit for bit to one without, and a resumed run continuing the same curves."""

import json
import shutil

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from train_helpers import assert_same_tensors, load_state, make_dataset, tiny_options

from edm2.train.monitor import gradient_norm, report_loss_by_sigma, sigma_band_names
from edm2.train.run import run_training
from edm2.train.stats import StatsCollector

BUCKETS = ["Enc-8x8", "Dec-8x8", "Enc-4x4", "Dec-4x4"]


def events(run_dir) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def stats_lines(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "stats.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same 2048-image run with the monitor (probe every 512 images, TensorBoard) and without."""
    root = tmp_path_factory.mktemp("monitor")
    data = make_dataset(root / "ds", num_images=48)
    on = tiny_options(root / "on", data, probe=512, tensorboard=True)
    off = tiny_options(root / "off", data, probe=0, tensorboard=False)
    assert run_training(on).finished and run_training(off).finished
    return dict(on=root / "on", off=root / "off", data=data)


@pytest.mark.slow
def test_the_monitor_changes_no_result_bit_for_bit(runs):
    a = load_state(runs["on"] / "training-state-0000002.pt")
    b = load_state(runs["off"] / "training-state-0000002.pt")
    for key in ("net", "optimizer", "ema", "loss_fn"):
        assert_same_tensors(a[key], b[key], key)
    assert [line["Loss/loss"] for line in stats_lines(runs["on"])[1:]] == [
        line["Loss/loss"] for line in stats_lines(runs["off"])[1:]
    ]
    assert not list(runs["off"].glob("events.out.tfevents.*"))


@pytest.mark.slow
def test_stats_hold_magnitudes_loss_per_sigma_band_and_gradient_norm(runs):
    lines = stats_lines(runs["on"])
    for bucket in BUCKETS:
        # Weights at every status; forced weight normalisation keeps G's at 1 (Sec. 2.3).
        assert all(line[f"Magnitudes/weights_max/{bucket}"] == pytest.approx(1, abs=1e-3) for line in lines)
    probed = [
        round(line["Progress/kimg"] * 1000)
        for line in lines
        if line["Magnitudes/activations_max/Enc-8x8"] == line["Magnitudes/activations_max/Enc-8x8"]
    ]
    assert probed == [0, 512, 1024, 1536, 2048]
    later = lines[1:]
    assert all(line["Loss/grad_norm"] > 0 for line in later)
    bands = sigma_band_names()
    assert all(any(line[b] == line[b] for b in bands) for line in later)  # NaN where no sample fell
    assert not any(k.startswith(("Magnitudes", "Loss_by_sigma", "Loss/grad")) for k in stats_lines(runs["off"])[1])


@pytest.mark.slow
def test_tensorboard_events_read_back_with_the_tensorboard_reader(runs):
    acc = events(runs["on"])
    lines = stats_lines(runs["on"])
    steps = [round(line["Progress/kimg"] * 1000) for line in lines]
    assert steps == list(range(0, 2049, 64))
    loss = acc.Scalars("Loss/loss")
    assert [e.step for e in loss] == steps[1:]  # no loss before the first step
    assert [e.value for e in loss] == pytest.approx([line["Loss/loss"] for line in lines[1:]], rel=1e-5)
    tags = set(acc.Tags()["scalars"])
    want = {"Loss/learning_rate", "Loss/grad_norm", "Timing/images_per_sec", *sigma_band_names()[3:7]}
    want |= {f"Magnitudes/{k}_{s}/{b}" for k in ("weights", "activations") for s in ("max", "mean") for b in BUCKETS}
    assert want <= tags
    assert [e.step for e in acc.Scalars("Magnitudes/activations_mean/Dec-4x4")] == [0, 512, 1024, 1536, 2048]
    grids = acc.Images("Samples/ema")
    assert [e.step for e in grids] == [0, 1024, 2048]
    assert grids[0].width > 8 * 8 and grids[0].height > 2 * 8  # 2 rows of 8 samples, upscaled


@pytest.mark.slow
def test_a_resumed_run_continues_the_same_curves(runs, tmp_path):
    """Resume from the 1 kimg training state after the run had gone on to 2 kimg (as after a
    kill): the events past the state are purged and rewritten, every step once, same values."""
    run_dir = tmp_path / "run"
    shutil.copytree(runs["on"], run_dir)
    for name in ("training-state-0000002.pt", "training-done.json"):
        (run_dir / name).unlink()
    before = {e.step: e.value for e in events(run_dir).Scalars("Loss/loss")}
    result = run_training(tiny_options(run_dir, runs["data"], probe=512, tensorboard=True))
    assert (result.start_nimg, result.cur_nimg) == (1024, 2048)
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 2
    acc = events(run_dir)
    after = acc.Scalars("Loss/loss")
    assert [e.step for e in after] == list(range(64, 2049, 64))  # none missing, none twice
    assert [e.value for e in after] == pytest.approx([before[e.step] for e in after], rel=1e-6)
    assert [e.step for e in acc.Images("Samples/ema")] == [0, 1024, 2048]


def test_loss_per_sigma_band_by_hand():
    stats = StatsCollector("cpu")
    loss = torch.tensor([1.0, 2.0, 4.0, float("nan")]).reshape(4, 1, 1, 1).expand(4, 1, 2, 2)
    sigma = torch.tensor([0.005, 0.5, 0.6, 0.5])
    report_loss_by_sigma(stats, loss, sigma)
    means = stats.flush()
    names = sigma_band_names()
    assert means[names[0]] == 1.0  # below 0.01
    assert means[names[4]] == 3.0  # 0.3 to 1: (2 + 4) / 2, the NaN sample left out
    assert all(means[n] != means[n] for n in names if n not in (names[0], names[4]))


def test_gradient_norm_equals_torchs_total_norm():
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    net(torch.randn(5, 3)).square().sum().backward()
    want = torch.nn.utils.get_total_norm([p.grad for p in net.parameters()])
    assert gradient_norm(net).item() == pytest.approx(want.item(), rel=1e-6)


@pytest.mark.slow
def test_config_a_is_monitored_at_its_traditional_ema(tmp_path):
    """Config A (EDM's network with biases and group norms, one traditional EMA): magnitudes too."""
    data = make_dataset(tmp_path / "ds", num_images=16)
    opts = tiny_options(tmp_path / "a", data, config="A", duration=256, snapshot=1024, probe=128, status=128)
    run_training(opts)
    lines = stats_lines(tmp_path / "a")
    assert [round(line["Progress/kimg"] * 1000) for line in lines] == [0, 128, 256]
    assert all(line["Magnitudes/activations_max/Dec-4x4"] > 0 for line in lines)
    assert all(0 < line["Magnitudes/weights_mean/Enc-8x8"] < 1 for line in lines)  # He-uniform: RMS 1/sqrt(3 fan_in)
