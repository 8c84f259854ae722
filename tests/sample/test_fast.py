"""The sampling fast path (edm2.sample.fast): compiled denoisers, one graph per network for all
batch sizes (smaller batches padded), equal to the eager sampler up to float rounding."""

import os

import numpy as np
import PIL.Image
import pytest
import torch
from click.testing import CliRunner
from test_generate import generate_all, tiny_net

import edm2.sample.fast as fast_module
from edm2.cli import main
from edm2.io.snapshot import save_snapshot
from edm2.sample import StackedRandomGenerator, edm_sampler
from edm2.sample.fast import FastDenoiser, fast_by_default
from edm2.sample.generate import generate_batches


class Latents:
    """An 'encoder' whose decode returns the latents themselves, to compare them in float."""

    def init(self, device):
        pass

    def decode(self, x):
        return x.clone()


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def trace_only(monkeypatch):
    """torch.compile with the 'eager' backend: Dynamo traces the network into a graph and runs it
    without generating kernels (seconds instead of minutes on CPU), enough to test the plumbing."""
    monkeypatch.setattr(fast_module, "DEFAULT_BACKEND", "eager")
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def latents_by_seed(net, seeds, device="cpu", **kwargs):
    out = {}
    for batch in generate_batches(net, encoder=Latents(), seeds=seeds, device=device, **kwargs):
        out.update(zip(batch.seeds, batch.images))
    return out


def test_fast_path_is_on_by_default_on_cuda_only():
    assert fast_by_default("cuda") and fast_by_default(torch.device("cuda", 0))
    assert not fast_by_default("cpu")


def test_fast_generation_pads_smaller_batches_into_one_graph_and_matches_eager(trace_only, capsys):
    net, guide = tiny_net(0), tiny_net(1)
    opts = dict(seeds=range(5), max_batch=3, num_steps=3, gnet=guide, guidance=2.0, S_churn=5)  # batches 3 + 2
    eager = latents_by_seed(net, fast=False, **opts)
    assert "Fast path" not in capsys.readouterr().out
    fast = latents_by_seed(net, fast=True, progress=True, **opts)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Fast path")]
    assert len(lines) == 2 and all("input 3x3x8x8" in line for line in lines), lines  # main + guide, batch 3 only
    assert sorted(fast) == list(range(5))
    for seed in range(5):  # the order of float sums only: eager differs as much between batch sizes
        scale = eager[seed].abs().max().item()  # up to ~160: guidance 2 on a random tiny net
        torch.testing.assert_close(fast[seed], eager[seed], rtol=1e-4, atol=1e-4 * scale)


def test_denoiser_wrapper_keeps_the_net_interface(trace_only):
    net = tiny_net()
    denoiser = FastDenoiser(net, batch=4, log=None)
    assert (denoiser.img_channels, denoiser.img_resolution, denoiser.label_dim) == (3, 8, 4)
    x = torch.randn(2, 3, 8, 8)
    sigma = torch.tensor([0.5, 3.0])  # per-sample sigmas are padded too
    labels = torch.eye(4)[:2]
    with torch.no_grad():
        out = denoiser(x, sigma, labels)
        torch.testing.assert_close(out, net(x, sigma, labels), rtol=1e-5, atol=1e-6)
    assert out.shape == x.shape and list(denoiser.warmup_seconds) == [(4, 3, 8, 8)]


@pytest.mark.slow
def test_cli_fast_and_eager_flags(tmp_path, trace_only):
    net = tiny_net()
    snapshot = tmp_path / "net.safetensors"
    save_snapshot(snapshot, net.state_dict(), net.init_kwargs, {"class": "StandardRGBEncoder"}, 65536, 0.1, dtype=None)
    expected = generate_all(net, [0, 1, 2], num_steps=3, max_batch=2)
    for flag in ("--eager", "--fast"):
        out = tmp_path / flag.strip("-")
        args = ["generate", "--net", str(snapshot), "--outdir", str(out), "--seeds", "0-2", "--batch", "2"]
        r = CliRunner().invoke(main, [*args, "--steps", "3", flag])
        assert r.exit_code == 0, r.output
        assert ("Fast path: compiled the denoiser for input 2x3x8x8" in r.output) == (flag == "--fast"), r.output
        for s in range(3):
            img = np.array(PIL.Image.open(out / f"{s:06d}.png")).transpose(2, 0, 1).astype(int)
            diff = np.abs(img - expected[s])
            assert diff.max() <= (0 if flag == "--eager" else 1), (flag, s)  # fast: float rounding at most


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("EDM2_TEST_COMPILE"), reason="compiling takes minutes on CPU; set EDM2_TEST_COMPILE=1"
)
def test_inductor_sampler_matches_eager_within_float32_rounding():
    torch._dynamo.reset()
    net = tiny_net()
    rnd = StackedRandomGenerator("cpu", [0, 1, 2])
    noise = rnd.randn([3, 3, 8, 8], device="cpu")
    labels = torch.eye(4)[rnd.randint(4, size=[3], device="cpu")]
    with torch.no_grad():
        eager = edm_sampler(net, noise, labels, num_steps=4)
        fast = edm_sampler(FastDenoiser(net, batch=4, backend="inductor", log=None), noise, labels, num_steps=4)
    torch.testing.assert_close(fast, eager, rtol=1e-5, atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_cuda_graph_sampler_with_a_guide_matches_eager_within_fp16_rounding():
    torch._dynamo.reset()
    net, guide = tiny_net(0).cuda(), tiny_net(1).cuda()
    opts = dict(seeds=range(5), max_batch=3, num_steps=4, gnet=guide, guidance=1.5)  # batches 3 + 2 (padded)
    eager = latents_by_seed(net, fast=False, device="cuda", **opts)
    fast = latents_by_seed(net, fast=None, device="cuda", **opts)  # None: on by default on CUDA
    for seed in range(5):
        scale = eager[seed].abs().max().item()
        torch.testing.assert_close(fast[seed], eager[seed], rtol=1e-2, atol=1e-2 * scale)


def _failing_backend(graph_module, example_inputs):
    """A torch.compile backend that fails the way a missing compiler does, at the first call."""
    raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found (a backend made to fail)")


@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_a_compile_failure_falls_back_to_the_eager_network_with_one_line(mode):
    torch._dynamo.reset()
    net = tiny_net()
    lines = []
    denoiser = FastDenoiser(net, batch=4, mode=mode, backend=_failing_backend, log=lines.append)
    x, labels = torch.randn(3, 3, 8, 8), torch.eye(4)[:3]
    with torch.no_grad():
        for sigma in (0.5, 2.0, 7.0):  # later calls stay eager, and say nothing more
            out = denoiser(x, torch.tensor(sigma), labels)
            assert torch.equal(out, net(x, torch.tensor(sigma), labels))  # the eager network itself
    assert len(lines) == 1 and lines[0].startswith("Fast path unavailable (") and "\n" not in lines[0], lines
    assert "install a C and C++ compiler" in lines[0] and "--eager" in lines[0]
    assert denoiser.fallback_reason == lines[0]
    torch._dynamo.reset()


def test_an_error_of_the_inputs_is_not_hidden_by_the_fallback():
    """The fallback runs the eager network on the same inputs: an error there is the caller's."""
    torch._dynamo.reset()
    denoiser = FastDenoiser(tiny_net(), batch=None, backend=_failing_backend, log=None)
    with torch.no_grad(), pytest.raises(RuntimeError):
        denoiser(torch.randn(2, 5, 8, 8), torch.tensor(1.0), torch.eye(4)[:2])  # 5 channels, not 3
    torch._dynamo.reset()


@pytest.mark.slow
def test_generate_without_a_cxx_compiler_falls_back_and_writes_the_eager_images(tmp_path):
    """`edm2 generate --fast` where Inductor finds no C++ compiler (CXX pointing nowhere): exit 0,
    one line saying why, and the images of `--eager`, byte for byte."""
    import subprocess
    import sys

    net = tiny_net()
    snapshot = tmp_path / "net.safetensors"
    save_snapshot(snapshot, net.state_dict(), net.init_kwargs, {"class": "StandardRGBEncoder"}, 65536, 0.1, dtype=None)
    env = {**os.environ, "CXX": "/nonexistent/g++", "CC": "/nonexistent/gcc", "OMP_NUM_THREADS": "1"}
    outs = {}
    for flag in ("--fast", "--eager"):
        outs[flag] = tmp_path / flag.strip("-")
        cmd = [sys.executable, "-m", "edm2", "generate", "--net", str(snapshot), "--outdir", str(outs[flag]),
               "--seeds", "0-2", "--batch", "2", "--steps", "3", "--device", "cpu", flag]  # fmt: skip
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        assert r.returncode == 0, r.stdout + r.stderr
        said = [line for line in r.stdout.splitlines() if line.startswith("Fast path")]
        if flag == "--fast":
            assert len(said) == 1 and said[0].startswith("Fast path unavailable (") and "compiler" in said[0], r.stdout
            assert "Traceback" not in r.stdout + r.stderr
        else:
            assert said == []
    for s in range(3):
        name = f"{s:06d}.png"
        assert (outs["--fast"] / name).read_bytes() == (outs["--eager"] / name).read_bytes()
