"""`edm2 metrics ref|calc|gen` (docs/method.md#metrics) end to end on tiny data, with a CNN detector
made here: statistics against NumPy, the random subset of `calc`, `gen` equal to `generate`
then `calc`, seed ranges, the results JSON, and two gloo ranks."""

import json
import os
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest
import torch
from click.testing import CliRunner
from edm2_exit_checked import SCRIPT as EXIT_CHECKED
from metrics_helpers import class_images, tiny_snapshot, write_image_folder

from edm2.cli import main
from edm2.metrics.cnn import load_detector, train_detector
from edm2.metrics.stats import load_stats


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("metrics")
    images, labels = class_images(10, num_classes=3, res=8)  # 30 images
    data = write_image_folder(root / "data", images, labels)
    train_detector(data, root / "cnn.safetensors", epochs=3, batch=8, progress=False)
    return {"root": root, "images": images, "data": data, "cnn": root / "cnn.safetensors",
            "net": tiny_snapshot(root / "net.safetensors")}  # fmt: skip


def run(*args):
    r = CliRunner().invoke(main, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    return r


def features_of(files, images):
    with torch.no_grad():
        return load_detector(files["cnn"])(torch.from_numpy(np.asarray(images))).double().numpy()


def fd_by_eigenvalues(mu1, s1, mu2, s2):
    """Independent route: tr sqrtm(s1 s2) = sum of sqrt of the eigenvalues of the (non-symmetric) product."""
    root_eigs = np.sqrt(np.linalg.eigvals(s1 @ s2).astype(complex))
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * root_eigs.real.sum())


@pytest.fixture(scope="module")
def ref(files):
    dest = files["root"] / "ref.npz"
    run("metrics", "ref", "--data", files["data"], "--dest", dest, "--metrics", "fd_cnn", "--cnn-detector",
        files["cnn"], "--workers", 0, "--batch", 7)  # fmt: skip
    return dest


def test_ref_statistics_match_numpy_over_all_images(files, ref):
    stats = load_stats(ref)
    assert stats["num_images"] == 30 and set(stats) == {"num_images", "resolution", "fd_cnn"}
    f = features_of(files, files["images"])
    np.testing.assert_allclose(stats["fd_cnn"]["mu"], f.mean(0), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(stats["fd_cnn"]["sigma"], np.cov(f, rowvar=False), rtol=1e-5, atol=1e-7)


def test_calc_uses_the_seeded_random_subset(files, ref):
    out = files["root"] / "calc.json"
    dest = files["root"] / "subset.npz"
    run("metrics", "calc", "--images", files["data"], "--ref", ref, "--num", 20, "--seed", 3, "--cnn-detector",
        files["cnn"], "--workers", 0, "--json", out, "--dest", dest)  # fmt: skip
    idx = np.arange(30)
    np.random.RandomState(3).shuffle(idx)  # docs/method.md#official-details: shuffle, keep the first n, sort
    f = features_of(files, files["images"][np.sort(idx[:20])])
    sub = load_stats(dest)
    np.testing.assert_allclose(sub["fd_cnn"]["mu"], f.mean(0), rtol=1e-6, atol=1e-7)
    r = load_stats(ref)["fd_cnn"]
    expected = fd_by_eigenvalues(f.mean(0), np.cov(f, rowvar=False), r["mu"], r["sigma"])
    result = json.loads(out.read_text())
    assert result["metrics"]["fd_cnn"]["values"][0] == pytest.approx(expected, rel=1e-4, abs=1e-6)
    assert result["num_images"] == 20 and result["detectors"] == {"fd_cnn": str(files["cnn"])}


def test_calc_with_fewer_images_than_requested_is_an_error(files, ref):
    r = CliRunner().invoke(main, ["metrics", "calc", "--images", str(files["data"]), "--ref", str(ref), "--num", "31",
                                  "--cnn-detector", str(files["cnn"]), "--workers", "0"])  # fmt: skip
    assert r.exit_code == 1 and "fewer than the 31 requested" in r.output


def test_metric_missing_from_the_reference_is_an_error(files, ref):
    r = CliRunner().invoke(main, ["metrics", "calc", "--images", str(files["data"]), "--ref", str(ref), "--num", "5",
                                  "--metrics", "fid"])  # fmt: skip
    assert r.exit_code == 1 and "no statistics for fid" in r.output


def test_gen_equals_generate_then_calc_for_each_seed_range(files, ref):
    out = files["root"] / "gen.json"
    run("metrics", "gen", "--net", files["net"], "--ref", ref, "--num", 6, "--seed", 2, "--seeds-ranges", 2,
        "--batch", 4, "--steps", 3, "--cnn-detector", files["cnn"], "--json", out)  # fmt: skip
    result = json.loads(out.read_text())
    values = []
    for k, (lo, hi) in enumerate([(2, 7), (8, 13)]):
        folder = files["root"] / f"gen{k}"
        run("generate", "--net", files["net"], "--outdir", folder, "--seeds", f"{lo}-{hi}", "--batch", 5, "--steps", 3)
        calc = files["root"] / f"calc{k}.json"
        run("metrics", "calc", "--images", folder, "--ref", ref, "--num", 6, "--cnn-detector", files["cnn"],
            "--workers", 0, "--json", calc)  # fmt: skip
        values.append(json.loads(calc.read_text())["metrics"]["fd_cnn"]["values"][0])
        # the PNGs hold exactly the images that gen fed to the detector
        imgs = np.stack(
            [np.array(PIL.Image.open(folder / f"{s:06d}.png")).transpose(2, 0, 1) for s in range(lo, hi + 1)]
        )
        assert imgs.shape == (6, 3, 8, 8)
    m = result["metrics"]["fd_cnn"]
    np.testing.assert_allclose(m["values"], values, rtol=1e-5)  # same images; features in other batches
    assert m["min"] == min(m["values"]) and m["mean"] == pytest.approx(np.mean(m["values"]))
    assert m["std"] == pytest.approx(np.std(m["values"]))
    assert result["seeds"] == [[2, 7], [8, 13]] and result["num_images"] == 6
    assert result["num_steps"] == 3 and result["nfe"] == 5 and result["guidance"] == 1.0 and result["gnet"] is None
    assert result["ema_std"] == 0.05 and result["nimg"] == 131072 and result["kimg"] == 131
    assert result["network"] == str(files["net"]) and result["ref"] == str(ref)
    assert result["detectors"] == {"fd_cnn": str(files["cnn"])}


def test_gen_results_record_the_guidance_interval(files, ref):
    """A guidance interval (arXiv 2404.07724) reaches the sampler and the results JSON: the
    guided steps, the interval options, and the guide's evaluations on those steps only."""
    out = files["root"] / "gen-interval.json"
    run("metrics", "gen", "--net", files["net"], "--gnet", files["net"], "--guidance", 2, "--ref", ref, "--num", 4,
        "--batch", 4, "--steps", 4, "--guidance_start", 1, "--guidance_stop", 2, "--cnn-detector", files["cnn"],
        "--json", out)  # fmt: skip
    result = json.loads(out.read_text())
    assert result["guided_steps"] == [1, 2] and result["guidance"] == 2.0
    assert result["sampler"]["guidance_start"] == 1 and result["sampler"]["guidance_stop"] == 2
    assert result["sampler"]["sigma_lo"] == 0.0 and result["sampler"]["sigma_hi"] is None  # inf: every level
    assert result["nfe"] == 7 and result["network_evaluations"] == 7 + 4  # guide: 2 evaluations x 2 steps


def test_gen_with_two_guides_records_each_weight_and_counts_each_guide(files, ref):
    """CFG and autoguidance together (arXiv 2406.02507 App. B.2 Eq. 6): --gnet twice with a total
    --guidance and --guidance-mix reach the sampler; both guides being the main net itself, the
    FD equals the unguided one exactly; each guide's evaluations are counted."""
    out, plain = files["root"] / "gen-two.json", files["root"] / "gen-plain.json"
    common = ["--net", files["net"], "--ref", ref, "--num", 4, "--batch", 4, "--steps", 3,
              "--cnn-detector", files["cnn"], "--eager"]  # fmt: skip
    run("metrics", "gen", *common, "--gnet", files["net"], "--gnet", files["net"], "--guidance", 2.2,
        "--guidance-mix", 0.25, "--json", out)  # fmt: skip
    run("metrics", "gen", *common, "--json", plain)
    result, unguided = json.loads(out.read_text()), json.loads(plain.read_text())
    assert result["guidance"] == pytest.approx(2.2) and result["guidance_mix"] == 0.25
    assert [g["guidance"] for g in result["guides"]] == pytest.approx([1.9, 1.3])
    assert result["gnet"] == [str(files["net"])] * 2 and result["sampler"]["guidance"] == pytest.approx([1.9, 1.3])
    assert result["network_evaluations"] == 5 + 2 * 5  # every step guided, two guides
    assert result["metrics"]["fd_cnn"]["values"] == unguided["metrics"]["fd_cnn"]["values"]


@pytest.mark.slow
def test_two_gloo_ranks_give_the_same_reference_statistics(files, ref, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    dest = tmp_path / "ref2.npz"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", EXIT_CHECKED, "metrics",
        "ref", "--data", str(files["data"]), "--dest", str(dest), "--metrics", "fd_cnn", "--cnn-detector",
        str(files["cnn"]), "--workers", "0", "--batch", "4",
    ]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    one, two = load_stats(ref), load_stats(dest)
    assert two["num_images"] == 30
    # equal up to the float32 rounding of features computed in other batch compositions
    np.testing.assert_allclose(two["fd_cnn"]["mu"], one["fd_cnn"]["mu"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(two["fd_cnn"]["sigma"], one["fd_cnn"]["sigma"], rtol=1e-4, atol=1e-7)


def test_reference_records_its_detector_and_another_detector_is_refused(files, ref, tmp_path):
    stats = load_stats(ref)
    detector = stats["fd_cnn"]["detector"]
    assert detector["location"] == str(files["cnn"]) and len(detector["sha256"]) == 64
    assert stats["resolution"] == [8, 8] and stats["num_images"] == 30
    # the same weights copied elsewhere still match (the digest is of the weights, not the path)
    copy = tmp_path / "copy.safetensors"
    copy.write_bytes(files["cnn"].read_bytes())
    run("metrics", "calc", "--images", files["data"], "--ref", ref, "--num", 10, "--cnn-detector", copy,
        "--workers", 0)  # fmt: skip
    other = tmp_path / "other.safetensors"
    train_detector(files["data"], other, epochs=1, batch=8, progress=False, seed=5)
    r = CliRunner().invoke(main, ["metrics", "calc", "--images", str(files["data"]), "--ref", str(ref), "--num",
                                  "10", "--cnn-detector", str(other), "--workers", "0"])  # fmt: skip
    assert r.exit_code == 1 and "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1
    assert str(other) in r.output and str(files["cnn"]) in r.output and "recompute the reference" in r.output


def test_a_reference_of_another_resolution_is_refused(files, ref, tmp_path):
    images, labels = class_images(4, num_classes=3, res=16)
    data16 = write_image_folder(tmp_path / "data16", images, labels)
    r = CliRunner().invoke(main, ["metrics", "calc", "--images", str(data16), "--ref", str(ref), "--num", "10",
                                  "--cnn-detector", str(files["cnn"]), "--workers", "0"])  # fmt: skip
    assert r.exit_code == 1 and "8x8 images, these are 16x16" in r.output
