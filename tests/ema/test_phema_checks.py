"""`edm2 phema` checks what it reads and seals what it writes (docs/phema.md, "Checks"): input
digests verified while streaming, non-finite input weights refused by name, outputs carrying the
digests of our snapshots, so that a damaged reconstruction is detected where it is loaded."""

import hashlib
import json
import os

import pytest
import torch
from click.testing import CliRunner
from test_phema import TINY, write_snapshots

from edm2.cli import main
from edm2.ema.phema import reconstruct_phema
from edm2.errors import FormatError
from edm2.io.safetensors_stream import read_safetensors_header
from edm2.io.snapshot import load_snapshot, read_snapshot_info, verify_safetensors
from edm2.sample.generate import load_network

STDS = "0.06,0.07,0.08"


@pytest.fixture
def inputs(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    write_snapshots(folder, [4, 8, 12], [0.05, 0.10])
    return folder


def flip(path, offset, count=8):
    """Invert `count` bytes of `path` from `offset` on (the size and the header stay as they were)."""
    with open(path, "r+b") as f:
        f.seek(offset)
        data = f.read(count)
        f.seek(offset)
        f.write(bytes(b ^ 0xFF for b in data))


def where(path, name, element=3) -> int:
    """File offset of element `element` of tensor `name`."""
    loc = read_safetensors_header(path)[0][name]
    return loc.start + element * loc.dtype.itemsize


def digest_of(folder) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize(
    "tensor",
    ["unet.enc.8x8_conv.weight", "unet.dec.4x4_block0.conv_res1.weight", "logvar_fourier.freqs"],
    ids=["combined", "combined-late", "copied-buffer"],
)
@pytest.mark.parametrize("chunk_elements", [None, 777], ids=["default-chunks", "small-chunks"])
def test_eight_flipped_bytes_in_an_input_are_refused_by_name_and_nothing_is_written(
    inputs, tmp_path, tensor, chunk_elements
):
    victim = inputs / "network-snapshot-0000008-0.050.safetensors"
    flip(victim, where(victim, tensor))
    out = tmp_path / "out"
    with pytest.raises(FormatError, match=f"{victim}: contents damaged .*No output written"):
        reconstruct_phema(inputs, out, STDS, chunk_elements=chunk_elements)
    assert not out.exists()


def test_a_flipped_byte_in_the_last_input_and_the_command_line(inputs, tmp_path):
    victim = inputs / "network-snapshot-0000012-0.100.safetensors"
    flip(victim, os.path.getsize(victim) - 1, 1)  # the very last byte of the tensor data
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["phema", "--indir", str(inputs), "--outdir", str(out), "--outstd", STDS])
    assert r.exit_code == 1 and r.output.strip().splitlines()[-1].startswith(f"Error: {victim}: contents damaged")
    assert not out.exists()


def test_edited_input_metadata_is_refused_before_the_pass(inputs, tmp_path):
    victim = inputs / "network-snapshot-0000004-0.100.safetensors"
    raw = victim.read_bytes()
    edited = raw.replace(b'first\\": true', b'first\\": null', 1)  # in the JSON of 'extra', itself JSON text
    assert edited != raw and len(edited) == len(raw)
    victim.write_bytes(edited)
    with pytest.raises(FormatError, match="metadata or tensor layout edited or damaged"):
        reconstruct_phema(inputs, tmp_path / "out", STDS)


@pytest.mark.parametrize(
    "tensor, value",
    [
        ("unet.enc.8x8_conv.weight", float("nan")),
        ("unet.out_gain", float("inf")),
        ("logvar_fourier.phases", float("nan")),
    ],
    ids=["nan", "inf", "nan-in-a-copied-buffer"],
)
def test_an_input_with_a_non_finite_weight_is_refused_by_name(tmp_path, tensor, value):
    folder = tmp_path / "in"
    folder.mkdir()

    def fill(nimg, std, template):
        g = torch.Generator().manual_seed(nimg + int(std * 1000))
        state = {k: torch.randn(v.shape, generator=g) for k, v in template.items()}
        if nimg == 12288 and std == 0.1:  # the last input: the one the buffers are copied from
            state[tensor].view(-1)[-1] = value
        return state

    write_snapshots(folder, [4, 8, 12], [0.05, 0.10], fill=fill)
    out = tmp_path / "out"
    with pytest.raises(
        FormatError, match=f"network-snapshot-0000012-0.100.safetensors: (weight|buffer) {tensor} is not finite"
    ):
        reconstruct_phema(folder, out, STDS, chunk_elements=500)
    assert not out.exists()


def test_outputs_carry_our_snapshot_digests_and_a_damaged_output_is_refused_by_generate(inputs, tmp_path):
    out = tmp_path / "out"
    result = reconstruct_phema(inputs, out, STDS, chunk_elements=777)
    for path in result["outputs"]:
        meta = read_safetensors_header(path)[1]
        assert len(meta["sha256"]) == 64 and len(meta["header_sha256"]) == 64 and meta["sha256"] != "0" * 64
        verify_safetensors(path)
        read_snapshot_info(path)
        net, _info = load_snapshot(path)
        assert all(torch.isfinite(p).all() for p in net.parameters())
    victim = result["outputs"][1]
    flip(victim, where(victim, "unet.enc.8x8_conv.weight"))
    with pytest.raises(FormatError, match=f"{victim}: contents damaged"):
        load_network(victim, device="cpu")
    r = CliRunner().invoke(main, ["generate", "--net", str(victim), "--outdir", str(tmp_path / "img"), "--seeds", "0"])
    assert r.exit_code == 1 and "contents damaged" in r.output and not (tmp_path / "img").exists()


def test_sealed_outputs_are_byte_identical_across_reruns(inputs, tmp_path):
    reconstruct_phema(inputs, tmp_path / "a", STDS, workers=2)
    reconstruct_phema(inputs, tmp_path / "b", STDS, workers=2)
    assert digest_of(tmp_path / "a") == digest_of(tmp_path / "b")
    meta = read_safetensors_header(next((tmp_path / "a").glob("*.safetensors")))[1]
    assert json.loads(meta["network_kwargs"]) == TINY
