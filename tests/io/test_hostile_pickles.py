"""Pickles built to exhaust memory or time, or to nest without end, are refused before they are
unpickled: a memo index beyond the objects made (the C unpickler would allocate its memo up to
it), shared references that expand exponentially (a "billion laughs"), containers nested deeper
than the limit or containing themselves, lengths past the end of the file. Every reader of
official pickles (networks, their in-place layout, statistics) and every command on them gives one
line and writes nothing."""

import importlib.util
import io
import json
import os
import pickle
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from edm2.cli import main
from edm2.errors import FormatError
from edm2.io.official import (
    MAX_PICKLE_NESTING,
    check_pickle_structure,
    load_official_pickle,
    load_official_stats,
    official_pickle_layout,
    safe_load,
)

_spec = importlib.util.spec_from_file_location("official_pickles", Path(__file__).with_name("official_pickles.py"))
official_pickles = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(official_pickles)

PROTO = b"\x80\x04"


def shared_pairs(levels: int) -> bytes:
    """Opcodes of a tuple (x, x) of a tuple (y, y) ... `levels` deep, every level memoized and
    fetched twice: a few bytes per level, 2**levels objects when expanded."""
    out = bytearray(b"]q\x00")  # an empty list, memo 0
    for i in range(1, levels):
        out += b"h" + bytes([i - 1]) + b"h" + bytes([i - 1]) + b"\x86q" + bytes([i])
    return bytes(out)


BOMBS = {
    "memo-index": PROTO + b"Nr\xff\xff\xff\x7f.",  # 9 bytes: LONG_BINPUT 2**31 - 1
    "memo-index-text": b"(lp99999999999\n.",  # protocol 0 PUT
    "memo-get-unset": PROTO + b"j\x00\x00\x00\x10.",
    "billion-laughs": PROTO + shared_pairs(60) + b".",
    "laughs-in-a-set": PROTO + b"\x8f(" + shared_pairs(60) + b"\x90.",  # hashing it would never end
    "nested-tuples": PROTO + b")" + b"\x85" * 100000 + b".",
    "nested-lists": PROTO + b"]" * 5000 + b"a" * 4999 + b".",
    "nested-dicts": PROTO + b"}" + b"(K\x00}" * 1000 + b"u" * 1000 + b".",
    "bytes-past-the-end": PROTO + b"\x8e" + (1 << 60).to_bytes(8, "little") + b"xx.",
    "unicode-past-the-end": PROTO + b"X\xff\xff\xff\x7fabc.",
    "no-stop": PROTO + b"N" * 100,
    "stack-underflow": PROTO + b"a.",
    "unknown-opcode": PROTO + b"\xff.",
    "text-line-without-end": b"I" + b"1" * 100000,
}


@pytest.mark.parametrize("case", sorted(BOMBS))
def test_hostile_pickles_are_refused_quickly_by_every_reader(tmp_path, case):
    path = tmp_path / f"{case}.pkl"
    path.write_bytes(BOMBS[case])
    for reader in (safe_load, load_official_pickle, official_pickle_layout, load_official_stats):
        start = time.monotonic()
        with pytest.raises(FormatError) as e:
            reader(path)
        assert time.monotonic() - start < 10, reader
        assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_the_limits_are_named(tmp_path):
    for case, expected in [
        ("memo-index", "memo index 2147483647"),
        ("billion-laughs", "shared references are expanded"),
        ("nested-tuples", f"more than {MAX_PICKLE_NESTING} levels"),
        ("bytes-past-the-end", "past the end of the file"),
    ]:
        with pytest.raises(FormatError, match=expected):
            safe_load(io.BytesIO(BOMBS[case]))


def test_the_walk_accepts_what_pickle_writes_and_leaves_the_file_where_it_was():
    shared = {"a": [1, 2.5, "x", b"y" * 5000], "b": (None, True)}
    for protocol in range(6):
        data = pickle.dumps(
            {"s": shared, "t": shared, "u": {1, 2}, "v": frozenset([3]), "w": bytearray(b"z")}, protocol
        )
        f = io.BytesIO(b"junk" + data)
        f.seek(4)
        check_pickle_structure(f, len(data) + 4)
        assert f.tell() == 4


def test_nesting_just_within_the_limit_is_accepted():
    value = []
    for _ in range(MAX_PICKLE_NESTING - 2):
        value = [value]
    assert safe_load(io.BytesIO(pickle.dumps(value, 4))) is not None


# ---- real official pickles whose dataset_kwargs are hostile ------------------------------------

HOSTILE_KWARGS = {
    "laughs": "x = ['lol']\nfor _ in range(60):\n    x = [x, x]",
    "deep": f"x = []\nfor _ in range({MAX_PICKLE_NESTING + 50}):\n    x = [x]",
    "cycle": "x = [1]\nx.append(x)",
    "cycle-dict": "x = {'a': 1}\nx['self'] = x",
    "bytes": "x = b'not text'",  # snapshot metadata is JSON: such values cannot be carried over
    "set": "x = {1, 2}",
    "nan": "x = float('nan')",
}

MAKE = """
import json, pickle, sys
import torch
import dnnlib
from training import encoders, networks_edm2, training_loop

net = networks_edm2.Precond(**json.loads(sys.argv[1])).eval().requires_grad_(False).to(torch.float16)
for name, path in json.loads(sys.argv[2]).items():
    exec(KINDS[name])
    data = dnnlib.EasyDict(encoder=encoders.StandardRGBEncoder(), loss_fn=training_loop.EDM2Loss(),
                           dataset_kwargs=dnnlib.EasyDict(class_name="training.dataset.ImageFolderDataset", path=x))
    data.ema = net
    with open(path, "wb") as f:
        pickle.dump(data, f, protocol=4)
"""


@pytest.fixture(scope="module")
def hostile_networks(tmp_path_factory):
    """{kind: official network pickle whose dataset_kwargs hold the hostile value}, one per folder."""
    root = tmp_path_factory.mktemp("hostile")
    paths = {}
    for name in HOSTILE_KWARGS:
        (root / name).mkdir()
        paths[name] = root / name / "network-snapshot-0000001-0.100.pkl"
    script = MAKE.replace("KINDS[name]", "KINDS[name]").replace(
        "import dnnlib", f"import dnnlib\nKINDS = {HOSTILE_KWARGS!r}"
    )
    kwargs = json.dumps(official_pickles.TINY_NETWORK)
    official_pickles.run_with_packages(root, script, kwargs, json.dumps({k: str(v) for k, v in paths.items()}))
    for path in paths.values():
        assert path.stat().st_size < 200_000
    return paths


@pytest.mark.parametrize("case", sorted(HOSTILE_KWARGS))
def test_official_networks_with_hostile_dataset_kwargs_are_refused(hostile_networks, case):
    paths = hostile_networks
    with pytest.raises(FormatError) as e:
        load_official_pickle(paths[case])
    assert str(paths[case]) in str(e.value)
    with pytest.raises(FormatError):
        official_pickle_layout(paths[case])


@pytest.mark.parametrize(
    "command",
    [
        ["convert-official", "{pkl}", "{out}/net.safetensors"],
        ["generate", "--net", "{pkl}", "--outdir", "{out}", "--seeds", "0", "--steps", "2", "--device", "cpu"],
        ["phema", "--indir", "{dir}", "--outdir", "{out}", "--outstd", "0.05"],
    ],
)
@pytest.mark.parametrize("case", ["laughs", "cycle"])
def test_commands_on_hostile_pickles_fail_in_one_line_and_write_nothing(hostile_networks, tmp_path, command, case):
    pkl = hostile_networks[case]
    out = tmp_path / "out"
    args = [a.format(pkl=pkl, dir=pkl.parent, out=out) for a in command]
    start = time.monotonic()
    r = CliRunner().invoke(main, args)
    assert time.monotonic() - start < 60
    assert r.exit_code == 1, r.output
    [error] = [line for line in r.output.splitlines() if line.startswith("Error: ")]
    assert str(pkl) in error and "Traceback" not in r.output
    assert not out.exists() or not [p for p in out.rglob("*") if p.is_file()]


@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
def test_a_fifo_or_device_named_like_a_pickle_is_refused_without_blocking(tmp_path, kind):
    path = tmp_path / "network-snapshot-0000001-0.100.pkl"
    if kind == "fifo":
        os.mkfifo(path)
    else:
        os.symlink("/dev/zero", path)
    for reader in (safe_load, load_official_pickle, official_pickle_layout, load_official_stats):
        with pytest.raises(FormatError, match="not a regular file"):
            reader(path)


def test_a_tensor_storage_claiming_more_elements_than_its_bytes_is_refused():
    import warnings

    import torch

    from edm2.io.official import _load_from_bytes

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.save(torch.FloatStorage(4), buf, _use_new_zipfile_serialization=False)
    payload = buf.getvalue()
    assert _load_from_bytes(payload).value.size() == 4  # the real one loads
    count = b"X\x03\x00\x00\x00cpuq\x03K\x04N"  # the persistent id's location 'cpu' and element count 4
    at = payload.index(count)
    huge = payload[:at] + count.replace(b"K\x04", b"J\x00\x00\x00\x40") + payload[at + len(count) :]  # 2**30
    assert len(huge) < 1000
    with pytest.raises(FormatError, match="claims 1073741824 elements"):
        _load_from_bytes(huge)
