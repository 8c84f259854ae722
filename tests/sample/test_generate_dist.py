"""Generation under torchrun with two gloo ranks: same images as one process (docs/method.md#sampling)."""

import os
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest
import torch
from edm2_exit_checked import SCRIPT as EXIT_CHECKED

from edm2.io.snapshot import save_snapshot
from edm2.nn import Precond
from edm2.sample.generate import generate_batches


@pytest.mark.slow
def test_two_gloo_ranks_write_the_same_images_as_one_process(tmp_path):
    torch.manual_seed(1)
    net = Precond(8, 3, 4, model_channels=8, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4])
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("gain"):
                p.fill_(1.0)
    net.eval().requires_grad_(False)
    snapshot = tmp_path / "net.safetensors"
    save_snapshot(snapshot, net.state_dict(), net.init_kwargs, {"class": "StandardRGBEncoder"}, 0, dtype=None)

    out = tmp_path / "out"
    seeds = list(range(5)) + [1003]  # 6 seeds, batch 2, 2 ranks -> 4 chunks of sizes 2, 2, 1, 1
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", EXIT_CHECKED,
        "generate", "--net", str(snapshot), "--outdir", str(out), "--seeds", "0-4,1003", "--batch", "2",
        "--steps", "3", "--subdirs",
    ]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        expected = {}
        for batch in generate_batches(net, seeds=seeds, device="cpu", max_batch=6, num_steps=3):
            expected.update(zip(batch.seeds, batch.images.numpy()))
    finally:
        torch.set_num_threads(threads)
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == [f"000000/{s:06d}.png" for s in range(5)] + ["001000/001003.png"]
    for s in seeds:
        img = np.array(PIL.Image.open(out / f"{s // 1000 * 1000:06d}" / f"{s:06d}.png")).transpose(2, 0, 1)
        np.testing.assert_array_equal(img, expected[s])


def _children(pid):
    try:
        return [int(c) for c in open(f"/proc/{pid}/task/{pid}/children").read().split()]
    except OSError:
        return []


def _alive(pid):
    """True while `pid` exists and is not a zombie (a dead process not yet reaped)."""
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_ranks_end_when_their_torchrun_agent_is_killed(tmp_path):
    """SIGKILL of torchrun's agent ends both ranks of a 2-rank `edm2 generate` (they run in
    sessions of their own, so nothing else would stop them before their seeds are done)."""
    import signal
    import time

    torch.manual_seed(1)
    net = Precond(8, 3, 4, model_channels=8, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4])
    net.eval().requires_grad_(False)
    snapshot = tmp_path / "net.safetensors"
    save_snapshot(snapshot, net.state_dict(), net.init_kwargs, {"class": "StandardRGBEncoder"}, 0, dtype=None)
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "edm2",
        "generate", "--net", str(snapshot), "--outdir", str(out), "--seeds", "0-99999", "--batch", "2",
        "--steps", "3",
    ]  # fmt: skip
    agent = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ranks = []
    try:
        # Both ranks are past their set-up once the first images are written.
        deadline = time.monotonic() + 300
        while not (out.is_dir() and len(list(out.glob("*.png"))) >= 4):
            assert agent.poll() is None and time.monotonic() < deadline, "generate did not start writing images"
            time.sleep(0.2)
        ranks = _children(agent.pid)
        assert len(ranks) == 2 and all(_alive(r) for r in ranks), ranks
        agent.send_signal(signal.SIGKILL)
        agent.wait()
        deadline = time.monotonic() + 60  # PR_SET_PDEATHSIG acts at once; this only bounds a hang
        while any(_alive(r) for r in ranks) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(r) for r in ranks), "ranks still running after their launcher was killed"
        assert len(list(out.glob("*.png"))) < 100000
    finally:
        for pid in [agent.pid, *ranks]:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        agent.wait()
