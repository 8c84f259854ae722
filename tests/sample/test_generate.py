"""Image generation (docs/method.md#sampling): seeds split across ranks, per-seed randomness,
guidance arithmetic, PNG output, network sources and presets."""

import os
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest
import torch
from click.testing import CliRunner
from tiny_networks import tiny_network

from edm2.cli import main
from edm2.errors import ConfigError, DownloadError
from edm2.io.snapshot import save_snapshot
from edm2.nn import Precond
from edm2.sample import edm_sampler
from edm2.sample.generate import (
    generate_batches,
    generate_images,
    image_path,
    load_network,
    rank_batches,
    resolve_networks,
    split_indices,
)

TINY = tiny_network()


def tiny_net(seed=0, **overrides):
    """A small conditional Precond whose output depends on its input (gains set to 1)."""
    torch.manual_seed(seed)
    net = Precond(**{**TINY, **overrides})
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("gain"):
                p.fill_(1.0)
    return net.eval().requires_grad_(False)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny networks: thread synchronisation costs more than it saves on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def net():
    return tiny_net()


@pytest.fixture
def snapshot(tmp_path, net):
    path = tmp_path / "net.safetensors"
    save_snapshot(path, net.state_dict(), net.init_kwargs, {"class": "StandardRGBEncoder"}, 65536, 0.1, dtype=None)
    return path


def generate_all(net, seeds, **kwargs):
    """{seed: uint8 CHW image} over all batches of a single rank."""
    out = {}
    for batch in generate_batches(net, seeds=seeds, device="cpu", **kwargs):
        if batch.images is not None:
            out.update(zip(batch.seeds, batch.images.numpy()))
    return out


# ---- seeds and ranks --------------------------------------------------------------------------


@pytest.mark.parametrize("n,batch,world", [(10, 3, 2), (4, 32, 1), (3, 2, 4), (100, 7, 3), (0, 4, 2)])
def test_seed_chunks_follow_spec_formula_and_cover_each_seed_once(n, batch, world):
    chunks = split_indices(n, batch, world)
    num_batches = max(-(-n // (batch * world)), 1) * world  # docs/method.md#sampling
    assert len(chunks) == num_batches
    sizes = [len(c) for c in chunks]
    assert max(sizes) - min(sizes) <= 1 and max(sizes) <= batch  # array_split: nearly equal, contiguous
    assert np.array_equal(np.concatenate(chunks), np.arange(n))
    per_rank = [rank_batches(n, batch, r, world) for r in range(world)]
    assert len({len(b) for b in per_rank}) == 1  # every rank runs the same number of batches
    for r in range(world):
        for j, c in enumerate(per_rank[r]):
            assert np.array_equal(c, chunks[r + j * world])  # rank r takes chunks r, r+W, ...


def test_ten_seeds_batch_three_two_ranks_example():
    assert [c.tolist() for c in rank_batches(10, 3, 0, 2)] == [[0, 1, 2], [6, 7]]
    assert [c.tolist() for c in rank_batches(10, 3, 1, 2)] == [[3, 4, 5], [8, 9]]


# ---- per-seed randomness ----------------------------------------------------------------------


def test_image_depends_only_on_seed_not_on_batch_or_rank_split(net):
    seeds = [3, 7, 11, 20, 21]
    ref = generate_all(net, seeds, max_batch=5, num_steps=4)
    assert sorted(ref) == seeds
    assert len({img.tobytes() for img in ref.values()}) == len(seeds)  # different seeds differ
    assert generate_all(net, seeds, max_batch=1, num_steps=4).keys() == ref.keys()
    for max_batch in (1, 2):
        other = generate_all(net, seeds, max_batch=max_batch, num_steps=4)
        for s in seeds:
            np.testing.assert_array_equal(other[s], ref[s])
    split = {}
    for rank in range(3):  # simulated 3 ranks, batch 1
        split.update(generate_all(net, seeds, max_batch=1, rank=rank, world_size=3, num_steps=4))
    for s in seeds:
        np.testing.assert_array_equal(split[s], ref[s])


def test_noise_then_class_drawn_from_a_generator_seeded_with_seed_mod_2_32(net):
    seed = (1 << 32) + 5  # same stream as seed 5
    gen = torch.Generator("cpu").manual_seed(5)
    noise = torch.randn([3, 8, 8], generator=gen)
    cls = int(torch.randint(4, size=[], generator=gen))
    labels = torch.eye(4)[[cls]]
    expected = edm_sampler(net, noise[None], labels, num_steps=4)
    expected = (expected * 127.5 + 128).clip(0, 255).to(torch.uint8)[0].numpy()
    [batch] = list(generate_batches(net, seeds=[seed], device="cpu", num_steps=4))
    assert torch.equal(batch.labels, labels)
    np.testing.assert_array_equal(batch.images[0].numpy(), expected)


def test_class_option_overrides_label_after_the_draw(net):
    seeds = [0, 1, 2, 3]
    forced = [b for b in generate_batches(net, seeds=seeds, device="cpu", num_steps=2, class_idx=2)][0]
    assert torch.equal(forced.labels, torch.eye(4)[[2, 2, 2, 2]])
    for i, s in enumerate(seeds):  # the noise is the same whichever class is forced
        gen = torch.Generator().manual_seed(s)
        noise = torch.randn([1, 3, 8, 8], generator=gen)
        out = edm_sampler(net, noise, torch.eye(4)[[2]], num_steps=2)
        np.testing.assert_array_equal(
            forced.images[i].numpy(), (out * 127.5 + 128).clip(0, 255).to(torch.uint8)[0].numpy()
        )


def test_churn_noise_comes_from_the_per_seed_generator_after_the_noise_and_class(net):
    seeds = [4, 9]
    a = generate_all(net, seeds, max_batch=2, num_steps=3, S_churn=10)
    b = generate_all(net, seeds, max_batch=1, num_steps=3, S_churn=10)
    for s in seeds:
        np.testing.assert_array_equal(a[s], b[s])
    plain = generate_all(net, seeds, max_batch=2, num_steps=3)
    assert any(not np.array_equal(a[s], plain[s]) for s in seeds)


def test_bad_class_and_guidance_options_raise_clear_errors(net):
    with pytest.raises(ConfigError, match="out of range"):
        list(generate_batches(net, seeds=[0], device="cpu", class_idx=4))
    with pytest.raises(ConfigError, match="unconditional"):
        list(generate_batches(tiny_net(label_dim=0), seeds=[0], device="cpu", class_idx=0))
    with pytest.raises(ConfigError, match="guiding network"):
        list(generate_batches(net, seeds=[0], device="cpu", guidance=2.0))
    with pytest.raises(ConfigError, match="guiding network"):
        resolve_networks(net="a.safetensors", guidance=1.5)


# ---- guidance arithmetic (docs/method.md#sampling) ----------------------------------------------------------


class LinearDenoiser(torch.nn.Module):
    """D(x, sigma) = a x + b: a stand-in network with the attributes generation needs."""

    def __init__(self, a, b, label_dim=0, calls=None):
        super().__init__()
        self.a, self.b = a, b
        self.img_channels, self.img_resolution, self.label_dim = 3, 4, label_dim
        self.calls = calls if calls is not None else []
        self.dummy = torch.nn.Parameter(torch.zeros([]))

    def forward(self, x, sigma, labels=None):
        self.calls.append(labels)
        return self.a * x + self.b


class Exploding(LinearDenoiser):
    def forward(self, x, sigma, labels=None):
        raise AssertionError("the guiding network must not be evaluated when guidance == 1")


def latents_of(net, gnet=None, **kwargs):
    """Raw sampler output (before decoding) through generate_batches, via an identity 'encoder'."""

    class Identity:
        def init(self, device):
            pass

        def decode(self, x):
            return x

    [batch] = list(generate_batches(net, Identity(), seeds=[1, 2], gnet=gnet, device="cpu", num_steps=5, **kwargs))
    return batch.images


def test_guidance_one_never_evaluates_the_guide():
    out = latents_of(LinearDenoiser(0.5, 0.1), Exploding(0, 0), guidance=1.0)
    assert torch.isfinite(out).all()


def test_guide_equal_to_main_net_gives_the_unguided_result():
    net = LinearDenoiser(0.7, -0.2)
    np.testing.assert_array_equal(latents_of(net, net, guidance=3.0).numpy(), latents_of(net).numpy())


def test_guided_denoiser_is_guide_plus_w_times_main_minus_guide():
    # D = Dg + w (Dm - Dg) with Dm = 0.8 x + 0.1, Dg = 0.4 x - 0.3, w = 2.5 -> 1.4 x + 0.7.
    w = 2.5
    guided = latents_of(LinearDenoiser(0.8, 0.1), LinearDenoiser(0.4, -0.3), guidance=w)
    combined = latents_of(LinearDenoiser(0.4 + w * 0.4, -0.3 + w * 0.4))
    np.testing.assert_allclose(guided.numpy(), combined.numpy(), rtol=1e-5, atol=1e-5)


def test_guide_receives_the_same_labels_as_the_main_net():
    main_calls, guide_calls = [], []
    latents_of(LinearDenoiser(0.5, 0, 4, main_calls), LinearDenoiser(0.2, 0, 4, guide_calls), guidance=2.0)
    assert len(main_calls) == len(guide_calls) == 2 * 5 - 1  # NFE = 2N - 1
    for m, g in zip(main_calls, guide_calls):
        assert torch.equal(m, g)


# ---- files, CLI, sources ------------------------------------------------------------------------


def test_image_paths_with_and_without_subdirs(tmp_path):
    assert image_path(tmp_path, 7) == tmp_path / "000007.png"
    assert image_path(tmp_path, 12345, subdirs=True) == tmp_path / "012000" / "012345.png"


def test_generate_images_writes_one_png_per_seed_equal_to_the_batches(tmp_path, net, snapshot):
    seeds = [5, 999, 1000, 1001]
    written = generate_images(
        tmp_path / "out",
        net=str(snapshot),
        seeds=seeds,
        subdirs=True,
        max_batch=3,
        num_steps=3,
        progress=False,
        device="cpu",
    )
    assert sorted(written) == sorted(image_path(tmp_path / "out", s, True) for s in seeds)
    expected = generate_all(net, seeds, num_steps=3)
    for s in seeds:
        img = np.array(PIL.Image.open(image_path(tmp_path / "out", s, True)))
        np.testing.assert_array_equal(img.transpose(2, 0, 1), expected[s])
    leftovers = [p for p in (tmp_path / "out").rglob("*") if p.is_file() and not p.name.endswith(".png")]
    assert leftovers == []  # written atomically, no temporary files left


def test_cli_generate_matches_library_and_ignores_gnet_without_guidance(tmp_path, net, snapshot):
    out = tmp_path / "cli"
    r = CliRunner().invoke(
        main,
        [
            "generate",
            "--net",
            str(snapshot),
            "--gnet",
            "does-not-exist.pkl",
            "--outdir",
            str(out),
            "--seeds",
            "0-2",
            "--batch",
            "2",
            "--steps",
            "3",
            "--class",
            "1",
        ],
    )
    assert r.exit_code == 0, r.output
    expected = generate_all(net, [0, 1, 2], num_steps=3, class_idx=1)
    for s in range(3):
        img = np.array(PIL.Image.open(out / f"{s:06d}.png")).transpose(2, 0, 1)
        np.testing.assert_array_equal(img, expected[s])


def test_cli_guidance_without_gnet_is_a_one_line_error(tmp_path, snapshot):
    r = CliRunner().invoke(main, ["generate", "--net", str(snapshot), "--outdir", str(tmp_path), "--guidance", "2"])
    assert r.exit_code != 0 and "guiding network" in r.output


def test_cli_default_seeds_are_16_to_19(tmp_path, snapshot):
    r = CliRunner().invoke(main, ["generate", "--net", str(snapshot), "--outdir", str(tmp_path), "--steps", "2"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in tmp_path.glob("*.png")) == [f"{s:06d}.png" for s in range(16, 20)]


def test_load_network_reads_snapshot_metadata(snapshot):
    loaded = load_network(snapshot, device="cpu")
    assert loaded.nimg == 65536 and loaded.kimg == 65 and loaded.ema_std == 0.1
    assert type(loaded.encoder).__name__ == "StandardRGBEncoder"


def test_load_network_from_file_url_reads_the_file_in_place(tmp_path, monkeypatch, snapshot):
    monkeypatch.setenv("EDM2_CACHE_DIR", str(tmp_path / "cache"))
    loaded = load_network(snapshot.as_uri(), device="cpu")
    assert loaded.path == str(snapshot) and loaded.nimg == 65536  # never a (possibly stale) cached copy
    assert not (tmp_path / "cache").exists()


def test_official_pickle_name_gives_kimg_and_ema_std(tmp_path, monkeypatch, net):
    import edm2.sample.generate as generate_module

    path = tmp_path / "edm2-img512-xs-2147483-0.135.pkl"
    path.write_bytes(b"not read")
    monkeypatch.setattr(generate_module, "load_official_pickle", lambda p, dtype=None: {"ema": net, "encoder": None})
    loaded = load_network(path, device="cpu")
    assert loaded.nimg == 2147483648 and loaded.ema_std == 0.135  # kimg_to_nimg (docs/method.md#ema)


# ---- presets (docs/method.md#sampling) ------------------------------------------------------------------------

ROOT = "https://nvlabs-fi-cdn.nvidia.com/edm2/posthoc-reconstructions/"
# name: (main net file, guide file or None, guidance), transcribed from the presets table of the official README (generate_images.py).
PRESET_TABLE = {
    "edm2-img512-xs-fid": ("img512-xs-2147483-0.135", None, 1),
    "edm2-img512-xs-dino": ("img512-xs-2147483-0.200", None, 1),
    "edm2-img512-s-fid": ("img512-s-2147483-0.130", None, 1),
    "edm2-img512-s-dino": ("img512-s-2147483-0.190", None, 1),
    "edm2-img512-m-fid": ("img512-m-2147483-0.100", None, 1),
    "edm2-img512-m-dino": ("img512-m-2147483-0.155", None, 1),
    "edm2-img512-l-fid": ("img512-l-1879048-0.085", None, 1),
    "edm2-img512-l-dino": ("img512-l-1879048-0.155", None, 1),
    "edm2-img512-xl-fid": ("img512-xl-1342177-0.085", None, 1),
    "edm2-img512-xl-dino": ("img512-xl-1342177-0.155", None, 1),
    "edm2-img512-xxl-fid": ("img512-xxl-0939524-0.070", None, 1),
    "edm2-img512-xxl-dino": ("img512-xxl-0939524-0.150", None, 1),
    "edm2-img64-s-fid": ("img64-s-1073741-0.075", None, 1),
    "edm2-img64-m-fid": ("img64-m-2147483-0.060", None, 1),
    "edm2-img64-l-fid": ("img64-l-1073741-0.040", None, 1),
    "edm2-img64-xl-fid": ("img64-xl-0671088-0.040", None, 1),
    "edm2-img512-xs-guid-fid": ("img512-xs-2147483-0.045", "img512-xs-uncond-2147483-0.045", 1.4),
    "edm2-img512-xs-guid-dino": ("img512-xs-2147483-0.150", "img512-xs-uncond-2147483-0.150", 1.7),
    "edm2-img512-s-guid-fid": ("img512-s-2147483-0.025", "img512-xs-uncond-2147483-0.025", 1.4),
    "edm2-img512-s-guid-dino": ("img512-s-2147483-0.085", "img512-xs-uncond-2147483-0.085", 1.9),
    "edm2-img512-m-guid-fid": ("img512-m-2147483-0.030", "img512-xs-uncond-2147483-0.030", 1.2),
    "edm2-img512-m-guid-dino": ("img512-m-2147483-0.015", "img512-xs-uncond-2147483-0.015", 2.0),
    "edm2-img512-l-guid-fid": ("img512-l-1879048-0.015", "img512-xs-uncond-2147483-0.015", 1.2),
    "edm2-img512-l-guid-dino": ("img512-l-1879048-0.035", "img512-xs-uncond-2147483-0.035", 1.7),
    "edm2-img512-xl-guid-fid": ("img512-xl-1342177-0.020", "img512-xs-uncond-2147483-0.020", 1.2),
    "edm2-img512-xl-guid-dino": ("img512-xl-1342177-0.030", "img512-xs-uncond-2147483-0.030", 1.7),
    "edm2-img512-xxl-guid-fid": ("img512-xxl-0939524-0.015", "img512-xs-uncond-2147483-0.015", 1.2),
    "edm2-img512-xxl-guid-dino": ("img512-xxl-0939524-0.015", "img512-xs-uncond-2147483-0.015", 1.7),
    "edm2-img512-s-autog-fid": ("img512-s-2147483-0.070", "img512-xs-0134217-0.125", 2.1),
    "edm2-img512-s-autog-dino": ("img512-s-2147483-0.120", "img512-xs-0134217-0.165", 2.45),
    "edm2-img512-xxl-autog-fid": ("img512-xxl-0939524-0.075", "img512-m-0268435-0.155", 2.05),
    "edm2-img512-xxl-autog-dino": ("img512-xxl-0939524-0.130", "img512-m-0268435-0.205", 2.3),
    "edm2-img512-s-uncond-autog-fid": ("img512-s-uncond-2147483-0.070", "img512-xs-uncond-0134217-0.110", 2.85),
    "edm2-img512-s-uncond-autog-dino": ("img512-s-uncond-2147483-0.090", "img512-xs-uncond-0134217-0.125", 2.9),
    "edm2-img64-s-autog-fid": ("img64-s-1073741-0.045", "img64-xs-0134217-0.110", 1.7),
    "edm2-img64-s-autog-dino": ("img64-s-1073741-0.105", "img64-xs-0134217-0.175", 2.2),
    "edm2-img512-s-interval-fid": ("img512-s-2147483-0.025", "img512-xs-uncond-2147483-0.025", 2.1),
    "edm2-img512-s-interval-dino": ("img512-s-2147483-0.085", "img512-xs-uncond-2147483-0.085", 3.2),
    "edm2-img512-xxl-interval-fid": ("img512-xxl-0939524-0.015", "img512-xs-uncond-2147483-0.015", 2.0),
    "edm2-img512-xxl-interval-dino": ("img512-xxl-0939524-0.015", "img512-xs-uncond-2147483-0.015", 2.9),
}


def test_every_generation_preset_resolves_to_its_official_urls():
    from edm2.presets import GENERATION_PRESETS

    assert set(GENERATION_PRESETS) == set(PRESET_TABLE)
    for name, (net_file, gnet_file, guidance) in PRESET_TABLE.items():
        choice = resolve_networks(preset=name)
        assert choice.net == f"{ROOT}edm2-{net_file}.pkl"
        assert choice.gnet == (None if gnet_file is None else f"{ROOT}edm2-{gnet_file}.pkl")
        assert choice.guidance == pytest.approx(guidance)


def test_explicit_options_win_over_the_preset():
    choice = resolve_networks(preset="edm2-img512-s-guid-dino", net="mine.safetensors", guidance=1.0)
    assert choice.net == "mine.safetensors" and choice.gnet is None and choice.guidance == 1.0
    assert resolve_networks(net="edm2-img512-xs-fid").net == f"{ROOT}edm2-img512-xs-2147483-0.135.pkl"


def test_preset_offline_fails_fast_with_a_download_error(tmp_path, monkeypatch):
    monkeypatch.setenv("EDM2_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("EDM2_OFFLINE", "1")
    with pytest.raises(DownloadError, match="edm2-img512-s-2147483-0.085.pkl"):
        generate_images(tmp_path / "out", preset="edm2-img512-s-guid-dino", progress=False, device="cpu")
    r = CliRunner().invoke(main, ["generate", "--preset", "edm2-img512-s-guid-dino", "--outdir", str(tmp_path / "o")])
    errors = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.exit_code == 1 and len(errors) == 1 and errors[0].startswith("Error: cannot download")
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_cli_module_entry_point_runs(tmp_path, snapshot):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "edm2",
            "generate",
            "--net",
            str(snapshot),
            "--outdir",
            str(tmp_path),
            "--seeds",
            "1",
            "--steps",
            "2",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "000001.png").is_file()


def test_generate_counts_images_not_batches_and_says_where_they_went(tmp_path):
    from click.testing import CliRunner

    from edm2.cli import main
    from edm2.io.snapshot import save_snapshot
    from edm2.nn import Precond

    torch.manual_seed(0)
    net = Precond(8, 3, 0, model_channels=8, channel_mult=[1], num_blocks=1, attn_resolutions=[])
    snapshot = tmp_path / "net.safetensors"
    save_snapshot(snapshot, net.state_dict(), net.init_kwargs, {"class": "StandardRGBEncoder"}, 0, dtype=None)
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["generate", "--net", str(snapshot), "--outdir", str(out), "--seeds", "0-6",
                                  "--batch", "3", "--steps", "2"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "7/7" in r.output and "img" in r.output and f"Wrote 7 images to {out}" in r.output
    assert len(list(out.glob("*.png"))) == 7
