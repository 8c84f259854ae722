"""Per-tensor EMA lengths and several training lengths in one pass (edm2.ema.per_tensor,
edm2.ema.phema; docs/phema.md#per-tensor): a variant equals, bit for bit, the network assembled
by hand from two global reconstructions."""

import json

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file
from test_phema import BUFFERS, write_snapshots
from tiny_networks import tiny_network

from edm2.cli import main
from edm2.ema.per_tensor import D6_TENSORS, parse_tensor_std, resolve_tensors
from edm2.ema.phema import reconstruct_phema
from edm2.errors import ConfigError
from edm2.io.snapshot import build_network


@pytest.fixture(scope="module")
def snapshots(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    write_snapshots(folder, [4, 8, 12, 16], [0.050, 0.100], seed=3)
    return folder


def test_variant_equals_hand_combined_global_reconstructions_bit_for_bit(snapshots, tmp_path):
    glob = reconstruct_phema(snapshots, tmp_path / "g", "0.070,0.150", chunk_elements=777, workers=2)
    variants = [{"unet.enc.*": 0.070}, {"map-label": 0.070, "unet.out_conv.weight": 0.070}]
    per = reconstruct_phema(snapshots, tmp_path / "p", "0.150", tensor_std=variants, chunk_elements=777, workers=2)
    assert [p.name for p in per["outputs"]] == [
        "phema-unet.enc._=0.070-0000016-0.150.safetensors",
        "phema-map-label=0.070+unet.out_conv.weight=0.070-0000016-0.150.safetensors",
    ]
    short, long = (load_file(str(p)) for p in glob["outputs"])
    for path, moved in zip(per["outputs"], [lambda n: n.startswith("unet.enc."), lambda n: n in variants_names]):
        got = load_file(str(path))
        assert got.keys() == long.keys()
        for name, value in got.items():
            want = short[name] if moved(name) and name not in BUFFERS else long[name]
            assert torch.equal(value, want), (path.name, name)
        assert sum(moved(n) for n in got) >= 1
    record = json.loads(per["outputs"][1].with_name(per["outputs"][1].stem + ".certificate.json").read_text())
    assert [(t["spec"], t["tensors"], t["std"]) for t in record["tensor_std"]] == [
        ("map-label", ["unet.emb_label.weight"], 0.07),
        ("unet.out_conv.weight", ["unet.out_conv.weight"], 0.07),
    ]
    assert record["tensor_std"][0]["coefficients"] == glob["records"][0]["coefficients"]
    assert record["coefficients"] == glob["records"][1]["coefficients"] and record["ema_std"] == 0.15
    # One pass: every input byte read once for the two variants, as for the two global outputs.
    assert per["bytes_read"] == glob["bytes_read"]
    # Fig. 5b from score JSONs of the variants (values made up here; the workflow scores them).
    scores = [
        write_score(tmp_path / "s" / f"v{i}.json", path, 0.15, 16, 5.0 + i) for i, path in enumerate(per["outputs"])
    ]
    base = write_score(tmp_path / "s" / "base.json", glob["outputs"][1], 0.15, 16, 6.0)
    args = ["report", "per-tensor", "--metric", "fid", "--grid-score", str(base), "--out", str(tmp_path / "f5b")]
    r = CliRunner().invoke(main, args + list(map(str, scores)))
    assert r.exit_code == 0 and "2 curves; global 0.150: 6" in r.output and "best unet.enc.* at 0.070: 5" in r.output, (
        r.output
    )
    assert (tmp_path / "f5b.png").is_file() and (tmp_path / "f5b.svg").is_file()
    r = CliRunner().invoke(main, args + [str(base)])  # a grid network is no variant
    assert r.exit_code == 1 and "is not a variant of `edm2 phema --tensor-std`" in r.output


def write_score(path, network, ema_std, kimg, fid):
    """A score JSON as `edm2 metrics gen --json` writes it (docs/HELPERS.md), for `network`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps({"metrics": {"fid": {"values": [fid]}}, "network": str(network), "ema_std": ema_std, "kimg": kimg})
    )
    return path


variants_names = {"unet.emb_label.weight", "unet.out_conv.weight"}


def test_several_training_lengths_in_one_pass(snapshots, tmp_path):
    both = reconstruct_phema(snapshots, tmp_path / "b", "0.080", outkimg=[8, 16], chunk_elements=777)
    assert [p.name for p in both["outputs"]] == ["phema-0000008-0.080.safetensors", "phema-0000016-0.080.safetensors"]
    assert [len(r["inputs"]) for r in both["records"]] == [4, 8]
    for kimg, path in zip((8, 16), both["outputs"]):
        alone = reconstruct_phema(snapshots, tmp_path / f"a{kimg}", "0.080", outkimg=kimg, chunk_elements=777)
        assert alone["records"][0]["coefficients"] == both["records"][kimg // 16]["coefficients"]
        a, b = load_file(str(alone["outputs"][0])), load_file(str(path))
        for name in set(a) - set(BUFFERS):  # the same sums, in a wider matrix product: equal to fp16 rounding
            torch.testing.assert_close(a[name].double(), b[name].double(), rtol=2.0**-10, atol=1e-6)
    assert both["bytes_read"] == alone["bytes_read"]  # the inputs up to kimg 16, read once
    scores = [
        write_score(tmp_path / "s" / f"{k}-{s}.json", "x", s, k, 5 + (s - 0.05 * k / 8) ** 2)
        for k in (8, 16)
        for s in (0.05, 0.1, 0.15)
    ]
    r = CliRunner().invoke(
        main, ["report", "over-training", "--metric", "fid", "--out", str(tmp_path / "f5c"), *map(str, scores)]
    )
    assert r.exit_code == 0 and "kimg 8: 5 at 0.050, kimg 16: 5 at 0.100" in r.output, r.output
    assert (tmp_path / "f5c.png").is_file()


def test_paper_d6_names_resolve_for_g_and_ablation_networks():
    shape = dict(img_resolution=64, channel_mult=[1, 2, 3, 4], num_blocks=3, model_channels=8, channels_per_head=8)
    for config in ("G", "B"):
        kw = tiny_network(**shape, **({} if config == "G" else {"config": config}))
        names = list(build_network(kw, device="meta").state_dict())
        resolved = {spec: resolve_tensors(spec, names) for spec in D6_TENSORS}
        assert all(len(v) == 1 and v[0].endswith(".weight") for v in resolved.values()), resolved
        assert len({v[0] for v in resolved.values()}) == 28
        layer = "emb_linear" if config == "G" else "affine"
        assert resolved["enc-64x64-block0-affine"] == [f"unet.enc.64x64_block0.{layer}.weight"]
        assert resolved["map-label"] == ["unet.emb_label.weight" if config == "G" else "unet.map_label.weight"]


def test_bad_tensor_specs_are_refused_in_one_line(snapshots, tmp_path):
    with pytest.raises(ConfigError, match="is not NAME=STD"):
        parse_tensor_std("unet.out_conv.weight")
    with pytest.raises(ConfigError, match="outside the valid range"):
        parse_tensor_std("map-label=0.3")
    args = ["phema", "--indir", str(snapshots), "--outdir", str(tmp_path / "o"), "--outstd", "0.1"]
    r = CliRunner().invoke(main, args + ["--tensor-std", "enc-64x64-block0-affine=0.05"])
    assert r.exit_code == 1 and "no tensor of the network matches" in r.output and not (tmp_path / "o").exists()
    r = CliRunner().invoke(main, args + ["--tensor-std", "unet.enc.*=0.05,unet.enc.8x8_conv.weight=0.07"])
    assert r.exit_code == 1 and "selected twice" in r.output


def test_tensor_std_yaml_holds_one_variant_or_a_list(tmp_path):
    from edm2.ema.per_tensor import read_tensor_std_yaml

    one = tmp_path / "one.yaml"
    one.write_text("map-label: 0.05\nunet.enc.*: 0.2\n")
    assert read_tensor_std_yaml(one) == [{"map-label": 0.05, "unet.enc.*": 0.2}]
    many = tmp_path / "many.yaml"
    many.write_text("- {map-label: 0.05}\n- {map-label: 0.15}\n")
    assert read_tensor_std_yaml(many) == [{"map-label": 0.05}, {"map-label": 0.15}]
    bad = tmp_path / "bad.yaml"
    bad.write_text("- 0.05\n")
    with pytest.raises(ConfigError, match="expected a mapping NAME: STD"):
        read_tensor_std_yaml(bad)
