"""`edm2 train`: options, presets, dry run, exit statuses; a real torchrun launch (slow)."""

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
from click.testing import CliRunner
from edm2_exit_checked import SCRIPT as EXIT_CHECKED
from train_helpers import cli_args, load_state, make_dataset, tiny_options

from edm2.cli import main
from edm2.presets import TRAINING_PRESETS


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("cli") / "ds", num_images=8)


def dry_run(*args):
    result = CliRunner().invoke(main, ["train", *args, "--dry-run"])
    assert result.exit_code == 0, result.output
    text = result.output.split("Dry run; exiting.")[0]
    return json.loads(text[text.index("{") :])


def test_help_lists_the_official_and_new_options():
    result = CliRunner().invoke(main, ["train", "--help"])
    assert result.exit_code == 0
    for option in (
        "--outdir",
        "--data",
        "--cond",
        "--uncond",
        "--preset",
        "--duration",
        "--batch",
        "--channels",
        "--dropout",
        "--P_mean",
        "--P_std",
        "--lr",
        "--decay",
        "--batch-gpu",
        "--fp16",
        "--ls",
        "--bench",
        "--status",
        "--snapshot",
        "--checkpoint",
        "--seed",
        "--dry-run",
        "--slice",
        "--precision",
        "--workers",
        "--channel-mult",
        "--num-blocks",
        "--attn-resolutions",
        "--ema-stds",
    ):
        assert option in result.output, option
    assert "75" in result.output


def test_preset_fills_only_the_options_not_given(tmp_path, data):
    cfg = dry_run(
        "--outdir",
        str(tmp_path / "r"),
        "--data",
        str(data),
        "--preset",
        "edm2-img64-xs",
        "--lr",
        "0.005",
        "--batch",
        "1Ki",
    )
    preset = TRAINING_PRESETS["edm2-img64-xs"]
    opts, loop = cfg["options"], cfg["derived"]
    assert opts["lr"] == 0.005 and opts["batch"] == 1024 and opts["duration"] == preset.duration
    assert opts["channels"] == preset.channels and opts["P_mean"] == preset.P_mean and opts["decay"] == preset.decay
    warm_up = 10.0  # the paper's 10 Mimg, --rampup's default
    assert loop["lr_kwargs"] == {"ref_lr": 0.005, "ref_batches": preset.decay, "rampup_Mimg": warm_up}
    assert loop["network_kwargs"] == {"model_channels": preset.channels, "dropout": preset.dropout}
    assert opts["precision"] == "fp16" and loop["intervals"] == {
        "status": 128 << 10,
        "snapshot": 8 << 20,
        "checkpoint": 128 << 20,
    }
    assert loop["dataset_kwargs"]["use_labels"] is True and loop["ema_stds"] == [0.05, 0.1]
    assert not (tmp_path / "r").exists()


def test_demo_overrides_and_flags(tmp_path, data):
    loop = dry_run(
        *cli_args(tiny_options(tmp_path / "r", data, slice=1024)),
        "--uncond",
        "--ema-stds",
        "0.1,0.05,0.2",
        "--status",
        "0",
    )["derived"]
    assert loop["network_kwargs"] == {
        "model_channels": 8,
        "dropout": 0.0,
        "channel_mult": [1, 2],
        "num_blocks": 1,
        "attn_resolutions": [4],
    }
    assert loop["dataset_kwargs"]["use_labels"] is False and loop["ema_stds"] == [0.05, 0.1, 0.2]
    assert loop["slice"] == 1024 and loop["intervals"]["status"] is None
    cfg = dry_run(
        *cli_args(tiny_options(tmp_path / "r", data)),
        "--attn-resolutions",
        "none",
        "--fp16",
        "False",
        "--precision",
        "fp32",
    )
    assert cfg["derived"]["network_kwargs"]["attn_resolutions"] == [] and cfg["options"]["precision"] == "fp32"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--fp16", "False", "--precision", "bf16"], "contradicts --precision"),
        (["--cond", "True", "--uncond"], "contradict each other"),
        (["--duration", "8Xi"], "not an image count"),
        (["--preset", "edm2-img1024-q"], "--preset must be one of edm2-img512-xxs"),
        (["--batch", "48"], "must be a positive multiple of --batch 48"),
        (["--lr", "nan"], "--lr must be a finite number > 0, got nan"),
        (["--lr", "inf"], "--lr must be a finite number > 0, got inf"),
        (["--P_std", "inf"], "--P_std must be a finite number > 0, got inf"),
        (["--dropout", "nan"], "--dropout must be a finite number in [0, 1), got nan"),
        (["--ls", "-inf"], "--ls must be a finite number > 0, got -inf"),
        (["--channels", "x"], "--channels must be an integer, got 'x'"),
        (["--ema-stds", "0.05,nan"], "nan"),
    ],
)
def test_bad_options_give_one_line_errors(tmp_path, data, args, message):
    before = signal.getsignal(signal.SIGTERM)
    result = CliRunner().invoke(
        main, ["train", "--outdir", str(tmp_path / "r"), "--data", str(data), *args, "--dry-run"]
    )
    assert result.exit_code != 0 and message in result.output, result.output
    assert signal.getsignal(signal.SIGTERM) is before  # the start-up signal handler is removed again


@pytest.mark.parametrize("option, value", [("--lr", "nan"), ("--lr", "inf"), ("--P_std", "inf"), ("--dropout", "nan")])
def test_non_finite_options_are_one_line_errors_before_anything_is_written(tmp_path, data, option, value):
    """Issue 25 item 3: these used to train to the end (or fail after training_options.json)."""
    outdir = tmp_path / "r"
    result = CliRunner().invoke(main, ["train", "--outdir", str(outdir), "--data", str(data), option, value])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"Error: {option} must be a finite number{' in [0, 1)' if option == '--dropout' else ' > 0'}, got {value}"
    ]
    assert not outdir.exists()


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun", path=os.path.dirname(sys.executable)) is None, reason="no torchrun")
def test_torchrun_two_processes(tmp_path, data):
    opts = tiny_options(tmp_path / "run", data, duration=1024, batch=32, status=512)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RANK", "WORLD_SIZE", "MASTER_", "LOCAL_RANK", "SLURM_"))
    }
    env["OMP_NUM_THREADS"] = "1"
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    cmd = [torchrun, "--standalone", "--nproc_per_node=2", EXIT_CHECKED, "train", *cli_args(opts), "--batch-gpu=8"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    state = load_state(tmp_path / "run" / "training-state-0000001.pt")  # written after the ranks' consistency check
    assert state["state"]["cur_nimg"] == 1024
    log = (tmp_path / "run" / "log.txt").read_text()
    assert log.count("Training from 0 kimg to 1 kimg") == 1 and "Status: kimg 1.0" in log
    assert (tmp_path / "run" / "training-done.json").exists()


@pytest.mark.slow
def test_one_slurm_task_per_rank(tmp_path, data):
    """Two plain processes with only SLURM's variables (as `srun --ntasks 2 edm2 train ...` starts them)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    opts = tiny_options(tmp_path / "run", data, duration=128, batch=32, status=64, snapshot=0, checkpoint=0)
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RANK", "WORLD_SIZE", "MASTER_", "LOCAL_RANK", "SLURM_"))
    }
    base.update(
        OMP_NUM_THREADS="1",
        SLURM_NTASKS="2",
        SLURM_JOB_ID="77",
        SLURM_LAUNCH_NODE_IPADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    procs = [
        subprocess.Popen(
            [sys.executable, EXIT_CHECKED, "train", *cli_args(opts)],
            env={**base, "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in range(2)
    ]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert "Training from 0 kimg" in outs[0] and "Training from" not in outs[1]  # rank 0 prints, rank 1 is quiet
    lines = (tmp_path / "run" / "stats.jsonl").read_text().splitlines()
    assert len(lines) == 3  # nimg 0, 64, 128, written once (rank 0)


def test_a_snapshot_interval_longer_than_the_duration_is_warned_and_a_summary_closes_the_run(data, tmp_path):
    opts = tiny_options(tmp_path / "run", data, duration=128, batch=32, status=64, snapshot=1024, checkpoint=1024)
    result = CliRunner().invoke(main, ["train", *cli_args(opts)])
    assert result.exit_code == 0, result.output
    assert "Warning: --snapshot 1024 is longer than --duration 128" in result.output
    assert "Trained 128 images in" in result.output and "finished the duration of 0 kimg" in result.output
    assert "network-snapshot-0000000-0.100.safetensors" in result.output  # where the snapshots are


def test_no_tensorboard_and_probe_reach_the_options(data, tmp_path):
    cfg = dry_run("--outdir", str(tmp_path / "r"), "--data", str(data), "--no-tensorboard", "--probe", "2Ki")
    options = cfg.get("options", cfg)
    assert (options["tensorboard"], options["probe"]) == (False, 2048)
    cfg = dry_run("--outdir", str(tmp_path / "r"), "--data", str(data))
    options = cfg.get("options", cfg)
    assert (options["tensorboard"], options["probe"]) == (True, None)  # the probe follows --snapshot
    result = CliRunner().invoke(
        main,
        ["train", "--outdir", str(tmp_path / "r"), "--data", str(data), "--tensorboard", "True", "--no-tensorboard"],
    )
    assert result.exit_code != 0 and "contradict" in result.output
