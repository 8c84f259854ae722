"""Bad input is refused with a clear message before any compute (issue 4, deliverable 5)."""

import json

import pytest
from train_helpers import make_dataset, tiny_options

from edm2.errors import ConfigError, DataError
from edm2.train.run import run_training


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data") / "ds", num_images=8)


def refuse(opts, error, match):
    with pytest.raises(error, match=match):
        run_training(opts)


def assert_nothing_trained(outdir):
    names = {p.name for p in outdir.iterdir()} if outdir.exists() else set()
    assert not any(n.startswith(("network-snapshot", "training-state", "stats")) for n in names), names


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(duration=1000), r"--duration 1000 must be a positive multiple of --batch 64"),
        (dict(status=100), r"--status 100 must be a multiple of --batch 64"),
        (dict(snapshot=64 * 15), r"--snapshot 960 must be a multiple of 1024"),
        (dict(checkpoint=1536, batch=32, snapshot=1024), r"--checkpoint 1536 must be a multiple of 1024"),
        (dict(batch_gpu=24), r"choose a --batch-gpu that divides 64"),
        (dict(slice=1024, checkpoint=0), r"--slice needs checkpoints"),
        (dict(precision="fp8"), r"--precision must be one of fp32, fp16, bf16"),
    ],
)
def test_inconsistent_sizes_are_refused(tmp_path, data, overrides, match):
    with pytest.raises(ConfigError, match=match):
        run_training(tiny_options(tmp_path / "run", data, **overrides))
    assert_nothing_trained(tmp_path / "run")


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("lr", NAN, "--lr must be a finite number > 0, got nan"),
        ("lr", INF, "--lr must be a finite number > 0, got inf"),
        ("lr", 0.0, "--lr must be > 0, got 0.0"),
        ("P_std", INF, "--P_std must be a finite number > 0, got inf"),
        ("P_std", 0.0, "--P_std must be > 0"),
        ("P_mean", -INF, "--P_mean must be a finite number, got -inf"),
        ("dropout", NAN, "--dropout must be a finite number in [0, 1), got nan"),
        ("dropout", 1.0, "--dropout must be in [0, 1), got 1.0"),
        ("decay", -1.0, "--decay must be >= 0"),
        ("loss_scaling", INF, "--ls must be a finite number > 0, got inf"),
        ("loss_scaling", 0.0, "--ls must be > 0"),
        ("channels", 0, "--channels must be >= 1, got 0"),
        ("batch_gpu", -8, "--batch-gpu must be >= 0"),
        ("seed", -1, "--seed must be >= 0"),
        ("channel_mult", [], "--channel-mult needs at least 1 item"),
        ("attn_resolutions", [0], "--attn-resolutions must be >= 1"),
        ("ema_stds", [0.05, NAN], "--ema-stds must hold finite numbers"),
        ("ema_stds", [0.3], "--ema-stds must be in (0, 0.288675)"),
        ("cond", "yes", "--cond must be True or False"),
    ],
)
def test_non_finite_and_out_of_range_options_are_refused_naming_the_option(tmp_path, data, option, value, message):
    """The table's bounds (edm2.train.options) hold for every option, NaN and infinities included,
    when the options are made: before anything is read or written."""
    with pytest.raises(ConfigError) as excinfo:
        run_training(tiny_options(tmp_path / "run", data, **{option: value}))
    assert message in str(excinfo.value) and "\n" not in str(excinfo.value)
    assert not (tmp_path / "run").exists()


def test_dataset_with_wrong_channel_count_is_refused(tmp_path):
    gray = make_dataset(tmp_path / "gray", num_images=4, channels=1)
    refuse(tiny_options(tmp_path / "run", gray), DataError, r"has 1 channels; training needs RGB images \(3\)")
    assert_nothing_trained(tmp_path / "run")


def test_cond_without_labels_is_refused(tmp_path):
    unlabelled = make_dataset(tmp_path / "nolabels", num_images=4, labels=False)
    refuse(tiny_options(tmp_path / "run", unlabelled), DataError, r"has no labels.*--uncond")
    assert_nothing_trained(tmp_path / "run")


def test_existing_run_dir_with_different_options_is_refused(tmp_path, data):
    outdir = tmp_path / "run"
    outdir.mkdir()
    first = tiny_options(outdir, data)
    record = first.resolved().record()  # as run_training writes it
    (outdir / "training_options.json").write_text(json.dumps({"options": record}))
    refuse(tiny_options(outdir, data, lr=0.02), ConfigError, r"different options \(lr: 0\.01 there, 0\.02 now\)")
    refuse(tiny_options(outdir, data, cond=False), ConfigError, r"cond: True there, False now")
    assert_nothing_trained(outdir)


def test_dry_run_checks_and_writes_nothing(tmp_path, data, capsys):
    assert run_training(tiny_options(tmp_path / "run", data, dry_run=True)) is None
    assert "Dry run; exiting." in capsys.readouterr().out
    assert not (tmp_path / "run").exists()
    refuse(tiny_options(tmp_path / "run", data, dry_run=True, batch_gpu=24), ConfigError, "--batch-gpu")
