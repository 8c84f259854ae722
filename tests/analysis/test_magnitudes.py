"""Activation and weight magnitudes (EDM2 Appendix A.6, Eq. 3; edm2.analysis.magnitudes)."""

import importlib.util
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file
from tiny_networks import tiny_network

from edm2.analysis.magnitudes import (
    ActivationProbe,
    ProbeInputs,
    bucket_of,
    buckets,
    feature_magnitudes,
    measure_activations,
    measure_weights,
    measured_layers,
)
from edm2.cli import main
from edm2.nn import Precond


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[1] / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


official_pickles = _load("official_pickles", "io/official_pickles.py")

# The measured weights by name (Appendix A.6): A-E's and F-G's learned layers inside the blocks.
MEASURED = re.compile(
    r"^unet\.(enc|dec)\.(\d+)x\d+_(?!conv\.)\w+\.(conv0|affine|conv1|skip|qkv|proj|conv_res0|emb_linear|conv_res1|"
    r"conv_skip|attn_qkv|attn_proj)\.weight$"
)


def independent_weight_buckets(state_dict) -> dict:
    """{bucket: (max, mean, tensors, features)} by name patterns and NumPy, row RMS of each weight."""
    rows = {}
    for name, w in state_dict.items():
        m = MEASURED.match(name)
        if not m:
            continue
        w = w.to(torch.float64).numpy().reshape(w.shape[0], -1)
        bucket = f"{m.group(1).capitalize()}-{m.group(2)}x{m.group(2)}"
        rows.setdefault(bucket, []).append(np.sqrt((w**2).sum(axis=1) / w.shape[1]))
    return {
        b: (max(v.max() for v in r), np.concatenate(r).mean(), len(r), sum(v.size for v in r)) for b, r in rows.items()
    }


def test_eq3_is_the_rms_of_each_feature_by_hand():
    h = torch.tensor([[3.0, 4.0], [1.0, -1.0], [0.0, 0.0]])
    assert torch.allclose(feature_magnitudes(h), torch.tensor([math.sqrt(12.5), 1.0, 0.0]))
    conv = torch.zeros(2, 2, 2)  # 2 features of a 2x2 map
    conv[0] = torch.tensor([[1.0, 1.0], [1.0, 1.0]])
    conv[1] = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    assert torch.allclose(feature_magnitudes(conv), torch.tensor([1.0, 1.0]))  # sqrt(4/4)


def test_activation_magnitude_is_the_mean_over_samples_of_per_sample_eq3():
    """Two samples whose features have RMS 1 and 3 measure 2 (not sqrt(5), the RMS-inside reading)."""
    conv = torch.nn.Conv2d(1, 1, 1, bias=False)
    with torch.no_grad():
        conv.weight.fill_(1.0)
    x = torch.ones(2, 1, 4, 4)
    x[1] *= 3
    with torch.no_grad(), ActivationProbe(conv, layers={"unet.enc.4x4_block0.conv0": conv}) as probe:
        conv(x)
    assert probe.per_feature()["unet.enc.4x4_block0.conv0"].tolist() == [2.0]


# Tensors / features per bucket of the paper's S size (model_channels 192, 64x64x4 latents).
TABLE_S = {
    "A": [(9, 2304), (19, 10368), (19, 15936), (19, 21504), (32, 36864), (27, 23808), (27, 16128), (19, 5376)],
    "B": [(9, 2304), (13, 5760), (19, 15936), (19, 21504), (32, 36864), (27, 23808), (19, 9984), (19, 5376)],
    "C": [(9, 1728), (13, 4416), (19, 13824), (19, 18624), (32, 32256), (27, 20736), (19, 7872), (19, 4224)],
}
TABLE_ORDER = ["Enc-64x64", "Enc-32x32", "Enc-16x16", "Enc-8x8", "Dec-8x8", "Dec-16x16", "Dec-32x32", "Dec-64x64"]


@pytest.mark.parametrize("config", list("ABCDEFG"))
def test_bucket_membership_at_s_matches_the_tensor_and_feature_counts(config):
    with torch.device("meta"):
        net = Precond(64, 4, 1000, config=config, model_channels=192)
    counts = {}
    for name, module in measured_layers(net).items():
        tensors, features = counts.get(bucket_of(name), (0, 0))
        counts[bucket_of(name)] = (tensors + 1, features + module.weight.shape[0])
    expected = TABLE_S.get(config, TABLE_S["C"])
    assert [counts[b] for b in TABLE_ORDER] == expected
    assert buckets(net)[:4] == ["Enc-64x64", "Dec-64x64", "Enc-32x32", "Dec-32x32"]


@pytest.mark.parametrize("config", ["A", "G"])
def test_weight_magnitudes_equal_an_independent_computation(config):
    torch.manual_seed(1)
    net = Precond(**tiny_network(), config=config)
    got = measure_weights(net)["buckets"]
    want = independent_weight_buckets(net.state_dict())
    assert set(got) == set(want)
    for bucket, (vmax, vmean, tensors, features) in want.items():
        assert got[bucket]["tensors"] == tensors and got[bucket]["features"] == features
        assert got[bucket]["max"] == pytest.approx(vmax, rel=1e-6)
        assert got[bucket]["mean"] == pytest.approx(vmean, rel=1e-6)


def test_random_config_g_network_has_activation_magnitudes_near_one_in_every_bucket():
    """Magnitude-preserving layers (Section 2.5): unit-variance inputs give unit-magnitude
    activations at every layer of a random G network (gains set to 1, as after some training)."""
    torch.manual_seed(0)
    net = Precond(**tiny_network(img_resolution=8, model_channels=32, label_dim=10, attn_resolutions=[4]))
    with torch.no_grad():
        for p in net.parameters():
            if p.ndim == 0:
                p.fill_(1.0)
    n = 48
    g = torch.Generator().manual_seed(0)
    sigma = (torch.randn(n, generator=g) - 0.4).exp()
    inputs = ProbeInputs(
        images=torch.randn(n, 3, 8, 8, generator=g) * 0.5,  # sigma_data = 0.5
        labels=torch.eye(10)[torch.randint(10, (n,), generator=g)],
        sigma=sigma,
        noise=torch.randn(n, 3, 8, 8, generator=g) * sigma.reshape(-1, 1, 1, 1),
    )
    result = measure_activations(net, inputs, batch=24)
    assert list(result["buckets"]) == ["Enc-8x8", "Dec-8x8", "Enc-4x4", "Dec-4x4"]
    for bucket, v in result["buckets"].items():
        assert 0.75 < v["mean"] < 1.3, (bucket, v)
        assert v["max"] < 3, (bucket, v)
    assert net.training  # restored


@pytest.mark.slow
def test_cli_on_an_official_pickle_and_on_our_snapshot(tmp_path):
    """Weights of an official-format pickle (stand-in of the official code) against NumPy on the
    same weights; activations of one of our snapshots on a tiny dataset, one JSON per network."""
    from edm2.io.snapshot import save_snapshot

    make_dataset = _load("train_helpers", "train/train_helpers.py").make_dataset

    pkl = tmp_path / "raw" / "network-snapshot-0000004-0.100.pkl"
    pkl.parent.mkdir()
    official_pickles.make_official_pickles(
        tmp_path, [dict(path=pkl, network_kwargs=official_pickles.TINY_NETWORK, seed=3, encoder="rgb")]
    )
    runner = CliRunner()
    r = runner.invoke(main, ["analyze", "magnitudes", str(pkl), "--outdir", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    record = json.loads((tmp_path / "out" / "network-snapshot-0000004-0.100.json").read_text())
    assert (record["kimg"], record["ema_std"], record["activations"]) == (4, 0.1, None)
    ref = load_file(str(pkl) + ".ref.safetensors")
    for bucket, (vmax, vmean, tensors, features) in independent_weight_buckets(ref).items():
        assert record["weights"][bucket]["max"] == pytest.approx(vmax, rel=1e-5)
        assert record["weights"][bucket]["mean"] == pytest.approx(vmean, rel=1e-5)
        assert (record["weights"][bucket]["tensors"], record["weights"][bucket]["features"]) == (tensors, features)

    torch.manual_seed(2)
    kwargs = tiny_network(label_dim=4)
    net = Precond(**kwargs)
    snap = tmp_path / "network-snapshot-0000002-0.100.safetensors"
    save_snapshot(snap, net.state_dict(), kwargs, {"class": "StandardRGBEncoder"}, 2048, 0.1, {})
    data = make_dataset(tmp_path / "ds", num_images=12, resolution=8, num_classes=4)
    out = tmp_path / "snap.json"
    args = ["analyze", "magnitudes", str(snap), "--data", str(data), "--num", "20", "--batch", "8", "--out", str(out)]
    r = runner.invoke(main, args)
    assert r.exit_code == 0, r.output
    first = json.loads(out.read_text())
    assert first["inputs"] == dict(data=str(data), num=20, seed=0, P_mean=-0.4, P_std=1.0)
    assert set(first["activations"]) == set(first["weights"]) == {"Enc-8x8", "Dec-8x8", "Enc-4x4", "Dec-4x4"}
    layer = "unet.enc.8x8_block0.conv_res0"
    assert first["tensors"][layer]["bucket"] == "Enc-8x8"
    assert first["tensors"][layer]["activations"]["features"] == 8
    r = runner.invoke(main, [*args[:-1], str(tmp_path / "again.json"), "--batch", "20"])
    again = json.loads((tmp_path / "again.json").read_text())["activations"]  # the same draws in other batches
    for bucket, v in first["activations"].items():
        assert (again[bucket]["max"], again[bucket]["mean"]) == pytest.approx((v["max"], v["mean"]), rel=1e-5)

    plot = tmp_path / "fig15.png"
    r = runner.invoke(main, ["analyze", "plot-magnitudes", str(out), str(tmp_path / "again.json"), "--out", str(plot)])
    assert r.exit_code == 0, r.output
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_cli_errors_are_one_line(tmp_path):
    snap = tmp_path / "x.safetensors"
    snap.write_bytes(b"not a snapshot")
    r = CliRunner().invoke(main, ["analyze", "magnitudes", str(snap)])
    assert r.exit_code != 0 and "exactly one of --out" in r.output
    r = CliRunner().invoke(main, ["analyze", "magnitudes", str(snap), "--out", str(tmp_path / "a.json")])
    assert r.exit_code != 0 and len(r.output.strip().splitlines()) == 1 and not (tmp_path / "a.json").exists()
