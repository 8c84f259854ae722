"""Every field of a snapshot's metadata is checked where it is read, with one line naming the file
and the field; the header digest covers the metadata and tensor layout, so an edited header is
detected; older snapshots without that digest stay readable; the write stays byte-identical."""

import hashlib
import json
import os
import struct

import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tiny_networks import tiny_network

from edm2.cli import main
from edm2.errors import FormatError
from edm2.io.snapshot import load_snapshot, read_snapshot_info, save_snapshot, verify_safetensors
from edm2.nn import Precond

RGB = {"class": "StandardRGBEncoder"}


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory):
    torch.manual_seed(0)
    net = Precond(**tiny_network())
    path = tmp_path_factory.mktemp("snap") / "network-snapshot-0000002-0.100.safetensors"
    save_snapshot(path, net.state_dict(), net.init_kwargs, RGB, 2048, 0.1)
    return path


def rewrite(src, dest, change=None, digests=False, tensors=None):
    """A copy of snapshot `src` whose metadata went through `change(meta)` (and tensors through
    `tensors(t)`), as another tool would write it; without the recorded digests unless `digests`
    (an old snapshot, or one whose editor dropped them)."""
    t = load_file(str(src))
    with safe_open(str(src), "pt") as f:
        meta = f.metadata()
    if not digests:
        meta.pop("sha256")
        meta.pop("header_sha256")
    if change is not None:
        change(meta)
    if tensors is not None:
        tensors(t)
    save_file(t, str(dest), metadata=meta)
    return dest


def setter(key, value):
    return lambda meta: meta.__setitem__(key, value)


def kwargs_with(**changes):
    def change(meta):
        kw = json.loads(meta["network_kwargs"])
        kw.update(changes)
        meta["network_kwargs"] = json.dumps(kw)

    return change


BAD_METADATA = {
    "nimg-text": (setter("nimg", "abc"), "'nimg'"),
    "nimg-negative": (setter("nimg", "-5"), "'nimg'"),
    "nimg-huge": (setter("nimg", "9" * 40), "'nimg'"),
    "kwargs-missing": (lambda m: m.pop("network_kwargs"), "'network_kwargs' is missing"),
    "kwargs-list": (setter("network_kwargs", "[1, 2]"), "'network_kwargs' is a list"),
    "kwargs-bad-json": (setter("network_kwargs", "{"), "'network_kwargs' is not valid JSON"),
    "kwargs-deep": (setter("network_kwargs", "[" * 100000 + "]" * 100000), "nested too deeply"),
    "extra-deep": (setter("extra", '{"a":' * 100000 + "1" + "}" * 100000), "'extra' is JSON nested too deeply"),
    "extra-string": (setter("extra", '"x"'), "'extra' is a str"),
    "encoder-missing": (lambda m: m.pop("encoder"), "'encoder' is missing"),
    "encoder-unknown": (setter("encoder", '{"class": "os.system"}'), "'encoder': class"),
    "encoder-vae-for-rgb": (setter("encoder", '{"class": "StabilityVAEEncoder"}'), "img_channels=3"),
    "ema-std-nan": (setter("ema_std", "nan"), "'ema_std'"),
    "ema-std-text": (setter("ema_std", "abc"), "'ema_std'"),
    "model-channels-huge": (kwargs_with(model_channels=10**6), "do not match the network"),
    "num-blocks-huge": (kwargs_with(num_blocks=10**6), "num_blocks is 1000000"),
    "levels-many": (kwargs_with(channel_mult=[1] * 1000), "channel_mult has 1000 entries"),
    "img-resolution-text": (kwargs_with(img_resolution="8"), "img_resolution is '8'"),
    "unknown-argument": (kwargs_with(colour="red"), "do not build"),
    "non-finite-argument": (kwargs_with(sigma_data=float("inf")), "sigma_data"),
    "label-dim-missing": (lambda m: m.__setitem__("network_kwargs", json.dumps({"img_resolution": 8})), "img_channels"),
}


@pytest.mark.parametrize("case", sorted(BAD_METADATA))
def test_bad_metadata_is_one_error_naming_the_file_and_field(snapshot, tmp_path, case):
    change, expected = BAD_METADATA[case]
    path = rewrite(snapshot, tmp_path / "bad.safetensors", change)
    with pytest.raises(FormatError, match=expected) as e:
        read_snapshot_info(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(FormatError, match=expected):
        load_snapshot(path)


@pytest.mark.parametrize(
    "change",
    [
        lambda t: t.__setitem__("unet.out_gain", torch.zeros(2)),  # another shape
        lambda t: t.pop("unet.out_gain"),  # missing
        lambda t: t.__setitem__("unet.extra", torch.zeros(2)),  # unexpected
        lambda t: t.__setitem__("unet.out_gain", torch.zeros([], dtype=torch.int32)),  # not a float
    ],
)
def test_tensors_that_do_not_fit_network_kwargs_are_refused_from_the_header(snapshot, tmp_path, change):
    path = rewrite(snapshot, tmp_path / "bad.safetensors", tensors=change)
    with pytest.raises(FormatError, match=r"unet\.(out_gain|extra)") as e:
        read_snapshot_info(path)
    assert str(path) in str(e.value)


def test_a_vae_encoder_with_the_wrong_channel_count_is_refused(snapshot, tmp_path):
    vae = {"class": "StabilityVAEEncoder", "raw_mean": [1.0, 2.0, 3.0], "raw_std": [1.0, 1.0, 1.0]}
    net = Precond(**tiny_network(img_channels=4))
    path = tmp_path / "vae.safetensors"
    save_snapshot(path, net.state_dict(), net.init_kwargs, {"class": "StabilityVAEEncoder"}, 0)
    assert read_snapshot_info(path).encoder["class"] == "StabilityVAEEncoder"
    bad = rewrite(path, tmp_path / "bad.safetensors", setter("encoder", json.dumps(vae)))
    with pytest.raises(FormatError, match="raw_mean .* expected 4 finite numbers"):
        read_snapshot_info(bad)
    vae = {"class": "StabilityVAEEncoder", "raw_mean": [1.0] * 4, "raw_std": [1.0, 1.0, 0.0, 1.0]}
    bad = rewrite(path, tmp_path / "bad2.safetensors", setter("encoder", json.dumps(vae)))
    with pytest.raises(FormatError, match="raw_std .* not positive"):
        read_snapshot_info(bad)


@pytest.mark.parametrize("field", ["nimg", "network_kwargs", "encoder", "ema_std", "extra", "format"])
def test_edited_metadata_is_detected_by_the_header_digest(snapshot, tmp_path, field):
    values = {"nimg": "4096", "network_kwargs": None, "encoder": json.dumps(RGB) + " ", "ema_std": "0.05"}
    values |= {"extra": '{"a": 1}', "format": "edm2-snapshot/1"}

    def change(meta):
        meta[field] = (
            values[field] if values[field] is not None else meta[field].replace('"label_dim": 4', '"label_dim": 4 ')
        )

    path = rewrite(snapshot, tmp_path / "edited.safetensors", change, digests=True)
    if field == "format":  # the same value: nothing edited, nothing to detect
        read_snapshot_info(path)
        return
    with pytest.raises(FormatError, match="metadata or tensor layout edited or damaged"):
        read_snapshot_info(path)
    with pytest.raises(FormatError, match="edited or damaged"):
        verify_safetensors(path)


def test_an_edited_tensor_shape_is_detected_even_when_the_data_digest_still_fits(snapshot, tmp_path):
    # Same bytes, another shape: only the header digest can tell.
    path = rewrite(
        snapshot,
        tmp_path / "reshaped.safetensors",
        digests=True,
        tensors=lambda t: t.__setitem__("unet.out_conv.weight", t["unet.out_conv.weight"].reshape(-1)),
    )
    with pytest.raises(FormatError):
        read_snapshot_info(path)


def test_old_snapshots_without_the_header_digest_still_load(snapshot, tmp_path):
    def drop_header_digest(meta):
        meta.pop("header_sha256")

    path = rewrite(snapshot, tmp_path / "old.safetensors", drop_header_digest, digests=True)
    net, info = load_snapshot(path)
    assert info.nimg == 2048 and info.ema_std == 0.1
    reference, _ = load_snapshot(snapshot)
    for (name, a), (_, b) in zip(net.state_dict().items(), reference.state_dict().items()):
        assert torch.equal(a, b), name


def test_the_header_digest_is_recorded_and_the_write_stays_byte_identical(snapshot, tmp_path):
    net, info = load_snapshot(snapshot, dtype=None)
    for name in ("a", "b"):
        save_snapshot(tmp_path / f"{name}.safetensors", net.state_dict(), info.network_kwargs, RGB, 2048, 0.1)
    a, b = (tmp_path / "a.safetensors").read_bytes(), (tmp_path / "b.safetensors").read_bytes()
    assert a == b and a == snapshot.read_bytes()
    (n,) = struct.unpack("<Q", a[:8])
    header = json.loads(a[8 : 8 + n])
    meta = header.pop("__metadata__")
    recorded = meta.pop("header_sha256")
    text = json.dumps({"__metadata__": meta, **header}, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert recorded == hashlib.sha256(text.encode()).hexdigest()  # independent recomputation


@pytest.mark.parametrize(
    "header",
    [
        b"[" * 100000 + b"]" * 100000,  # nested too deeply
        b'{"__metadata__": [1]}',  # metadata not a map
        b'{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4000000]}}',  # data past the end
        b'{"w": {"dtype": "F32", "shape": "x", "data_offsets": [0, 4]}}',  # malformed shape
        b'{"w": 5}',  # malformed entry
        b"7",  # not an object
    ],
)
def test_malformed_safetensors_headers_are_format_errors(tmp_path, header):
    path = tmp_path / "h.safetensors"
    padded = header + b" " * (-len(header) % 8)
    path.write_bytes(struct.pack("<Q", len(padded)) + padded + b"\0" * 16)
    for reader in (read_snapshot_info, verify_safetensors):
        with pytest.raises(FormatError) as e:
            reader(path)
        assert str(path) in str(e.value)


def test_a_header_length_beyond_the_file_is_refused_without_reading_it(tmp_path):
    path = tmp_path / "long.safetensors"
    path.write_bytes(struct.pack("<Q", 1 << 62) + b"{}")
    with pytest.raises(FormatError, match="header length"):
        read_snapshot_info(path)


@pytest.mark.parametrize(
    "command",
    [
        ["flops", "{net}"],
        ["generate", "--net", "{net}", "--outdir", "{out}", "--seeds", "0", "--steps", "2", "--device", "cpu"],
        ["phema", "--indir", "{dir}", "--outdir", "{out}", "--outstd", "0.05"],
        ["report", "model-info", "--net", "{net}", "--out", "{out}/info.json"],
    ],
)
@pytest.mark.parametrize(
    "change, expected",
    [(kwargs_with(model_channels=10**6), "do not match the network"), (setter("nimg", "abc"), "'nimg'")],
    ids=["model-channels", "nimg"],
)
def test_commands_report_bad_metadata_in_one_line(snapshot, tmp_path, command, change, expected):
    (tmp_path / "in").mkdir()
    path = rewrite(snapshot, tmp_path / "in" / snapshot.name, change)
    out = tmp_path / "o"
    r = CliRunner().invoke(main, [a.format(net=path, dir=path.parent, out=out) for a in command])
    assert r.exit_code == 1, r.output
    [error] = [line for line in r.output.splitlines() if line.startswith("Error: ")]  # beside progress lines
    assert str(path) in error and expected in error
    assert "Traceback" not in r.output and "Gflops" not in r.output
    assert not out.exists() or not [p for p in out.rglob("*") if p.is_file()]


@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
def test_a_fifo_or_device_named_like_a_snapshot_is_refused_without_blocking(tmp_path, kind):
    path = tmp_path / "net.safetensors"
    if kind == "fifo":
        os.mkfifo(path)  # opening it for reading would wait forever for a writer
    else:
        os.symlink("/dev/zero", path)
    for reader in (read_snapshot_info, verify_safetensors, load_snapshot):
        with pytest.raises(FormatError, match="not a regular file"):
            reader(path)
