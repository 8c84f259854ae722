"""`edm2 train --fast`: fused attention, fused/foreach Adam switching, and a compiled run that
resumes in slices exactly as it runs in one go (docs/training.md#fast-path)."""

import copy
import os
import signal
import subprocess
import sys

import pytest
import torch
from train_helpers import assert_same_tensors, cli_args, load_state, make_dataset, tiny_options, wait_for_steps

import edm2.train.speed as speed
from edm2.nn.unet import Block
from edm2.train.checkpoint import list_training_states
from edm2.train.loop import make_optimizer
from edm2.train.run import EX_TEMPFAIL, run_training
from edm2.train.speed import match_optimizer_implementation


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_attention_matches_the_official_einsums(dtype):
    x = torch.randn(3, 16, 4, 4, dtype=dtype, generator=torch.Generator().manual_seed(1), requires_grad=True)
    emb = torch.randn(3, 8, dtype=dtype, generator=torch.Generator().manual_seed(2))
    results = []
    for fused in (False, True):
        torch.manual_seed(0)  # the same weights
        block = Block(16, 16, 8, flavor="dec", attention=True, channels_per_head=4, fused_attention=fused)  # 4 heads
        block = block.to(dtype)
        with torch.no_grad():
            block.emb_gain.fill_(0.5)
        x.grad = None
        y = block.eval()(x, emb)  # eval: no forced weight normalisation between the two runs
        (y * torch.linspace(-1, 1, y.numel(), dtype=dtype).reshape(y.shape)).sum().backward()
        results.append((y.detach(), x.grad.clone(), block.attn_qkv.weight.grad.clone()))
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-13)
    for eager, fused in zip(*results):
        torch.testing.assert_close(fused, eager, **tol)


def test_adam_state_moves_between_the_foreach_and_fused_updates():
    """A state saved by one implementation continues under the other with the same numbers (up
    to float rounding): the step counters move to where that implementation keeps them."""
    torch.manual_seed(0)
    net = torch.nn.Linear(5, 3)
    grads = [[torch.randn_like(p) for p in net.parameters()] for _ in range(4)]

    def run(opt, steps):
        for g in steps:
            for p, gp in zip(net.parameters(), g):
                p.grad = gp.clone()
            for group in opt.param_groups:
                group["lr"] = 0.01
            opt.step()

    start = {k: v.clone() for k, v in net.state_dict().items()}
    opt = make_optimizer(net)
    run(opt, grads[:2])
    saved = copy.deepcopy(opt.state_dict())  # state_dict() holds references to the live state
    mid = {k: v.clone() for k, v in net.state_dict().items()}
    run(opt, grads[2:])
    foreach_end = {k: v.clone() for k, v in net.state_dict().items()}

    net.load_state_dict(mid)
    fused = make_optimizer(net, fused=True)
    fused.load_state_dict(saved)  # restores the saver's foreach choice ...
    match_optimizer_implementation(fused, True)  # ... which this undoes
    assert all(g["fused"] and not g["foreach"] for g in fused.param_groups)
    run(fused, grads[2:])
    for key, value in foreach_end.items():
        assert not torch.equal(value, start[key])
        torch.testing.assert_close(net.state_dict()[key], value, rtol=1e-6, atol=1e-7)
    match_optimizer_implementation(fused, False)  # and back: foreach keeps its counters on the CPU
    assert all(s["step"].device.type == "cpu" and s["step"].item() == 4 for s in fused.state.values())


@pytest.fixture
def traced_compile(monkeypatch):
    """torch.compile with the 'aot_eager' backend: forward and backward graphs traced as with
    inductor, run without generating kernels (seconds on CPU instead of minutes)."""
    monkeypatch.setattr(speed, "COMPILE_BACKEND", "aot_eager")
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.slow
def test_fast_run_in_slices_equals_one_go_and_stays_close_to_eager(tmp_path, traced_compile, capsys):
    data = make_dataset(tmp_path / "ds", num_images=48)
    one_go = run_training(tiny_options(tmp_path / "one", data, duration=2048, checkpoint=1024, fast=True))
    assert one_go.finished
    assert "Compiled the network's forward in" in capsys.readouterr().out
    sliced = tiny_options(tmp_path / "sliced", data, duration=2048, checkpoint=1024, slice=1024, fast=True)
    assert not run_training(sliced).finished
    assert run_training(sliced).finished
    a, b = (
        load_state(tmp_path / "one/training-state-0000001.pt"),
        load_state(tmp_path / "sliced/training-state-0000001.pt"),
    )
    for key in ("net", "optimizer", "ema"):
        assert_same_tensors(a[key], b[key], key)

    run_training(tiny_options(tmp_path / "eager", data, duration=2048, checkpoint=1024))
    eager = load_state(tmp_path / "eager/training-state-0000001.pt")
    for name, value in eager["net"].items():  # 16 Adam steps at lr 0.01: rounding only
        torch.testing.assert_close(a["net"][name], value, rtol=1e-3, atol=1e-3, msg=name)


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("EDM2_TEST_COMPILE"), reason="compiling takes minutes on CPU; set EDM2_TEST_COMPILE=1"
)
def test_fast_run_with_inductor_stays_close_to_eager(tmp_path):
    torch._dynamo.reset()
    data = make_dataset(tmp_path / "ds", num_images=48)
    run_training(tiny_options(tmp_path / "fast", data, duration=1024, checkpoint=1024, fast=True))
    run_training(tiny_options(tmp_path / "eager", data, duration=1024, checkpoint=1024))
    fast, eager = (load_state(tmp_path / f"{d}/training-state-0000001.pt") for d in ("fast", "eager"))
    for name, value in eager["net"].items():
        torch.testing.assert_close(fast["net"][name], value, rtol=1e-3, atol=1e-3, msg=name)


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("EDM2_TEST_COMPILE"), reason="compiling takes minutes on CPU; set EDM2_TEST_COMPILE=1"
)
def test_fast_cli_run_stops_on_sigterm_with_75_and_resumes(tmp_path):
    data = make_dataset(tmp_path / "ds", num_images=48)
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "edm2", "train", *cli_args(tiny_options(run_dir, data, fast=True))]
    assert "--fast" in cmd
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_SIZE", "MASTER_", "SLURM_"))}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for_steps(proc, run_dir, timeout=900, poll=0.05)  # nimg 0 and three steps done (compiling first)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == EX_TEMPFAIL, out
    assert "Compiled the network's forward in" in out and "Received SIGTERM" in out
    states = list_training_states(run_dir)
    assert 0 < load_state(states[0])["state"]["cur_nimg"] < 2048
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"Resuming from {states[0]}" in done.stdout and (run_dir / "training-done.json").exists()
