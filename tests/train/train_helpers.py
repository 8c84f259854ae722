"""Helpers of the training tests: tiny datasets on disk and tiny training options."""

import json
import time

import numpy as np
import PIL.Image
import torch

from edm2.train.run import TrainOptions


def make_dataset(root, num_images=32, resolution=8, channels=3, num_classes=4, labels=True, seed=0):
    """A folder of PNG files (or NPY latents when channels=8) plus dataset.json in the official format.

    The images are smooth class-dependent patterns plus a little noise, so a model can learn them.
    """
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    entries = []
    yy, xx = np.mgrid[0:resolution, 0:resolution] / max(resolution - 1, 1)
    for i in range(num_images):
        cls = i % num_classes
        name = f"{i // 10:05d}/img{i:08d}" + (".npy" if channels == 8 else ".png")
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        if channels == 8:
            arr = rng.normal(size=(8, resolution, resolution)).astype(np.float32)
            arr[4:] = np.abs(arr[4:]) * 0.1
            np.save(root / name, arr)
        else:
            base = np.stack([np.cos(np.pi * (cls + 1) * xx), np.sin(np.pi * (cls + 1) * yy), xx * yy][:channels], -1)
            img = np.clip((base * 0.5 + 0.5) * 255 + rng.normal(scale=8, size=base.shape), 0, 255).astype(np.uint8)
            PIL.Image.fromarray(img.squeeze(-1) if channels == 1 else img).save(root / name)
        entries.append([name, cls])
    (root / "dataset.json").write_text(json.dumps({"labels": entries if labels else None}))
    return root


def tiny_options(outdir, data, **overrides) -> TrainOptions:
    """A very small conditional model on 8x8 images, fp32, no workers, no TensorBoard, all options explicit."""
    kw = dict(
        outdir=str(outdir),
        data=str(data),
        cond=True,
        duration=2048,
        batch=64,
        channels=8,
        dropout=0.0,
        P_mean=-0.8,
        P_std=1.6,
        lr=0.01,
        decay=35000,
        precision="fp32",
        status=64,
        snapshot=1024,
        checkpoint=1024,
        workers=0,
        channel_mult=[1, 2],
        num_blocks=1,
        attn_resolutions=[4],
        tensorboard=False,  # event files and sample grids: tests/train/test_monitor.py turns them on
    )
    kw.update(overrides)
    return TrainOptions(**kw)


def load_state(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_tensors(a, b, where=""):
    """Bit-identical nested dicts/lists of tensors and numbers."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same_tensors(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tensors(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), f"{where} differs (max abs diff {(a.double() - b.double()).abs().max().item():g})"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def cli_args(opts: TrainOptions) -> list[str]:
    """The `edm2 train` arguments that give exactly `opts` (every preset option explicit)."""

    def lst(v):
        return ",".join(str(x) for x in v) if v else "none"

    return (
        [
            f"--outdir={opts.outdir}",
            f"--data={opts.data}",
            f"--duration={opts.duration}",
            f"--batch={opts.batch}",
            f"--channels={opts.channels}",
            f"--dropout={opts.dropout}",
            f"--P_mean={opts.P_mean}",
            f"--P_std={opts.P_std}",
            f"--lr={opts.lr}",
            f"--decay={opts.decay}",
            f"--precision={opts.precision}",
            f"--status={opts.status}",
            f"--snapshot={opts.snapshot}",
            f"--checkpoint={opts.checkpoint}",
            f"--workers={opts.workers}",
            f"--channel-mult={lst(opts.channel_mult)}",
            f"--num-blocks={opts.num_blocks}",
            f"--attn-resolutions={lst(opts.attn_resolutions)}",
            f"--seed={opts.seed}",
        ]
        + ([f"--slice={opts.slice}"] if opts.slice else [])
        + ([] if opts.cond else ["--uncond"])
        + (["--fast"] if opts.fast else [])
        + ([] if opts.tensorboard else ["--no-tensorboard"])
        + ([f"--probe={opts.probe}"] if opts.probe is not None else [])
    )


def wait_for_steps(proc, run_dir, statuses=4, timeout=120, poll=0.02) -> None:
    """Wait until a training subprocess has written `statuses` lines of stats.jsonl (nimg 0 and
    then one per status interval), or has exited, or `timeout` seconds have passed."""
    stats = run_dir / "stats.jsonl"
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if stats.exists() and len(stats.read_text().splitlines()) >= statuses:
            return
        time.sleep(poll)


def run_two_slurm_task_ranks(opts: TrainOptions, job_id: int, timeout=300):
    """`edm2 train` as two SLURM tasks of one job on this machine (ranks from SLURM_PROCID, a free
    port), each through tests/edm2_exit_checked.py; returns [(stdout, stderr)] and the processes."""
    import os
    import socket
    import subprocess
    import sys

    from edm2_exit_checked import SCRIPT as EXIT_CHECKED

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_SIZE", "MASTER_", "SLURM_"))}
    env.update(OMP_NUM_THREADS="1", SLURM_NTASKS="2", SLURM_JOB_ID=str(job_id), SLURM_LAUNCH_NODE_IPADDR="127.0.0.1")
    env["MASTER_PORT"] = str(port)
    procs = [
        subprocess.Popen(
            [sys.executable, EXIT_CHECKED, "train", *cli_args(opts)],
            env={**env, "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(2)
    ]
    return [p.communicate(timeout=timeout) for p in procs], procs
