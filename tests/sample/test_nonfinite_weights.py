"""Networks with non-finite weights are refused where they are loaded (edm2.io.snapshot
check_finite_tensors): `generate` and `metrics gen` name the file and the weight and write
nothing, instead of all-black images and a score; the same for official pickles."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from tiny_networks import tiny_network

from edm2.cli import main
from edm2.errors import FormatError
from edm2.io.snapshot import load_snapshot, save_snapshot
from edm2.nn import Precond
from edm2.sample.generate import load_network

TINY = tiny_network()
ENCODER = {"class": "StandardRGBEncoder"}


def snapshot_with(path, name, value, dtype=torch.float16):
    """A tiny snapshot whose tensor `name` holds `value` at one element (every other weight finite)."""
    torch.manual_seed(0)
    state = Precond(**TINY).state_dict()
    state[name].view(-1)[min(5, state[name].numel() - 1)] = value
    save_snapshot(path, state, TINY, ENCODER, 65536, 0.1, dtype=dtype)
    return path


CASES = [
    ("unet.enc.8x8_conv.weight", float("nan"), torch.float16),
    ("unet.out_gain", float("inf"), torch.float16),
    ("unet.dec.8x8_block0.conv_res0.weight", float("-inf"), torch.float32),
    ("logvar_linear.weight", 1e6, torch.float16),  # finite in float32, infinite once stored as float16
]


@pytest.mark.parametrize("name, value, dtype", CASES, ids=["nan", "inf-gain", "minus-inf-fp32", "fp16-overflow"])
def test_generate_refuses_a_snapshot_with_a_non_finite_weight_and_writes_nothing(tmp_path, name, value, dtype):
    path = snapshot_with(tmp_path / "net.safetensors", name, value, dtype)
    out = tmp_path / "images"
    r = CliRunner().invoke(
        main, ["generate", "--net", str(path), "--outdir", str(out), "--seeds", "0-1", "--steps", "2"]
    )
    assert r.exit_code == 1, r.output
    errors = [line for line in r.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and errors[0].startswith(f"Error: {path}: weight {name} is not finite"), r.output
    assert not out.exists() or not list(out.rglob("*.png"))
    with pytest.raises(FormatError, match=f"weight {name} is not finite"):
        load_snapshot(path)


def test_metrics_gen_refuses_a_snapshot_with_a_nan_weight_before_any_image(tmp_path):
    path = snapshot_with(tmp_path / "net.safetensors", "unet.enc.8x8_conv.weight", float("nan"))
    ref = tmp_path / "ref.npz"
    np.savez(ref, mu=np.zeros(4), sigma=np.eye(4))
    out = tmp_path / "gen.json"
    args = ["metrics", "gen", "--net", str(path), "--ref", str(ref), "--num", "4", "--steps", "2", "--json", str(out)]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 1, r.output
    errors = [line for line in r.output.splitlines() if line.startswith("Error")]
    assert errors == [line for line in errors if line.startswith(f"Error: {path}: weight unet.enc.8x8_conv.weight ")]
    assert len(errors) == 1, r.output
    assert not out.exists()


def test_an_official_pickle_with_nan_weights_is_refused_by_name(tmp_path):
    sys.path.insert(0, str(Path(__file__).parents[1] / "io"))
    from official_pickles import TINY_NETWORK, make_official_pickles

    (pkl,) = make_official_pickles(
        tmp_path,
        [
            dict(
                path=tmp_path / "net-0000100-0.100.pkl",
                network_kwargs=TINY_NETWORK,
                seed=0,
                encoder="rgb",
                fill=float("nan"),
            )
        ],  # fmt: skip
    )
    with pytest.raises(FormatError, match=r"net-0000100-0.100.pkl: the pickled Precond: weight \S+ is not finite"):
        load_network(pkl, device="cpu")
    r = CliRunner().invoke(main, ["generate", "--net", str(pkl), "--outdir", str(tmp_path / "img"), "--seeds", "0"])
    assert r.exit_code == 1 and "is not finite" in r.output and not (tmp_path / "img").exists()
