"""Every reader of source images and datasets has a bound: an image refused by its header's size
before it is decoded, a ZIP member by its declared size or compression ratio before it is
inflated, a `.npy` by the elements its header claims, a symlink to /dev/zero or a FIFO named like
an image by name (never opened), dataset.json by its nesting and its class indices. One line
naming the input and the limit; nothing left behind at --dest."""

import os
import struct
import zipfile
import zlib

import numpy as np
import pytest
from click.testing import CliRunner
from data_helpers import png_bytes, write_tree, write_zip

from edm2.cli import main
from edm2.data.convert import convert_dataset
from edm2.data.dataset import ImageFolderDataset
from edm2.data.limits import MAX_FILE_BYTES, MAX_IMAGE_PIXELS, MAX_ZIP_RATIO
from edm2.errors import DataError


def png_header_bomb(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR for width x height RGB, with one short IDAT: decoding it
    would allocate width*height*3 bytes."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(1000))) + chunk(b"IEND", b"")
    )


def jpeg_header_bomb(width: int, height: int) -> bytes:
    """A real 8x8 JPEG whose frame header (SOF0) claims width x height."""
    import io

    import PIL.Image

    buf = io.BytesIO()
    PIL.Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buf, format="jpeg")
    data = bytearray(buf.getvalue())
    at = data.index(b"\xff\xc0") + 5  # marker, length (2), precision (1), then height, width
    data[at : at + 4] = struct.pack(">HH", height, width)
    return bytes(data)


def zip_with_declared_size(path, name: str, declared: int):
    """A ZIP holding `name` (1 KiB of deflated zeros) whose headers declare `declared` bytes."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr(name, bytes(1024))
    data = bytearray(path.read_bytes())
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):  # local header, central directory
        at = data.index(signature) + offset
        data[at : at + 4] = struct.pack("<I", declared)
    path.write_bytes(bytes(data))
    return path


def convert_fails(source, dest, match):
    with pytest.raises(DataError, match=match) as e:
        convert_dataset(source, dest, workers=1, progress=False)
    assert "\n" not in str(e.value)
    assert not dest.exists() and not list(dest.parent.glob(f".{dest.name}*"))
    return str(e.value)


GOOD = np.zeros((8, 8, 3), np.uint8)


@pytest.mark.parametrize(
    "bomb",
    [png_header_bomb(50000, 50000), png_header_bomb(1 << 20, 200), jpeg_header_bomb(60000, 60000)],
    ids=["png-square", "png-wide", "jpeg"],
)
def test_images_too_large_are_refused_from_their_header(tmp_path, bomb):
    src = write_tree(tmp_path / "src", {"a.png": GOOD, "b.png": bomb})
    text = convert_fails(src, tmp_path / "out.zip", f"exceeds the limit of {MAX_IMAGE_PIXELS} pixels")
    assert "b.png" in text
    zipped = write_zip(tmp_path / "src.zip", {"a.png": GOOD, "b.png": bomb})
    convert_fails(zipped, tmp_path / "out2.zip", "b.png.*exceeds the limit")


def test_the_pixel_limit_can_be_lowered_and_raised_from_the_command_line(tmp_path):
    src = write_tree(tmp_path / "src", {"a.png": np.zeros((16, 16, 3), np.uint8)})
    r = CliRunner().invoke(
        main,
        [
            "dataset",
            "convert",
            "--source",
            str(src),
            "--dest",
            str(tmp_path / "o.zip"),
            "--max-pixels",
            "255",
            "--quiet",
        ],
    )
    assert r.exit_code == 1 and "image 16x16 exceeds the limit of 255 pixels" in r.output
    assert r.output.count("\n") == 1 and not (tmp_path / "o.zip").exists()
    r = CliRunner().invoke(
        main,
        [
            "dataset",
            "convert",
            "--source",
            str(src),
            "--dest",
            str(tmp_path / "o.zip"),
            "--max-pixels",
            "256",
            "--quiet",
        ],
    )
    assert r.exit_code == 0, r.output


def test_a_zip_member_declaring_gigabytes_is_refused_before_inflating(tmp_path):
    src = zip_with_declared_size(tmp_path / "bomb.zip", "a.png", 1 << 31)
    text = convert_fails(src, tmp_path / "out.zip", f"more than the limit of {MAX_FILE_BYTES} bytes")
    assert "a.png" in text and "2147483648" in text


def test_a_zip_member_with_a_bomb_like_ratio_is_refused(tmp_path):
    src = tmp_path / "ratio.zip"
    with zipfile.ZipFile(src, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("a.png", png_bytes(GOOD) + bytes(8 << 20))  # 8 MiB of zeros after a valid PNG
    assert src.stat().st_size < 100_000
    convert_fails(src, tmp_path / "out.zip", f"ratio over the limit of {MAX_ZIP_RATIO}")


def test_a_dataset_json_member_is_bounded_too(tmp_path):
    src = zip_with_declared_size(tmp_path / "bomb.zip", "dataset.json", 1 << 31)
    with zipfile.ZipFile(src, "a") as z:
        z.writestr("a.png", png_bytes(GOOD))
    convert_fails(src, tmp_path / "out.zip", "dataset.json.*limit")


@pytest.mark.parametrize("kind", ["dev-zero", "fifo", "dangling", "dataset-json-fifo"])
def test_non_regular_files_are_refused_by_name_without_being_opened(tmp_path, kind):
    src = write_tree(tmp_path / "src", {"a.png": GOOD})
    name = "dataset.json" if kind == "dataset-json-fifo" else "b.png"
    if kind == "dev-zero":
        os.symlink("/dev/zero", src / name)
    elif kind == "dangling":
        os.symlink(tmp_path / "nowhere.png", src / name)
    else:
        os.mkfifo(src / name)
    text = convert_fails(src, tmp_path / "out.zip", name)  # a FIFO would block forever if opened
    assert {"dev-zero": "a device", "fifo": "a FIFO", "dataset-json-fifo": "a FIFO", "dangling": "does not exist"}[
        kind
    ] in text
    with pytest.raises(DataError, match=name):
        ImageFolderDataset(src)


def test_an_oversized_file_is_refused_before_reading_and_can_be_skipped(tmp_path):
    src = write_tree(tmp_path / "src", {"a.png": GOOD})
    (src / "b.png").touch()
    os.truncate(src / "b.png", MAX_FILE_BYTES + 1)  # sparse: no disk used, never read
    convert_fails(src, tmp_path / "out.zip", f"exceeds the limit of {MAX_FILE_BYTES} bytes")
    report = convert_dataset(src, tmp_path / "out.zip", workers=1, progress=False, on_error="skip")
    assert report.num_written == 1 and report.skipped[0][0] == "b.png"


def test_cli_names_the_non_regular_file_in_one_line(tmp_path):
    src = write_tree(tmp_path / "src", {"a.png": GOOD})
    os.symlink("/dev/zero", src / "zero.png")
    r = CliRunner().invoke(main, ["dataset", "convert", "--source", str(src), "--dest", str(tmp_path / "o.zip")])
    assert r.exit_code == 1 and r.output.count("\n") == 1 and "zero.png is a device" in r.output
    assert not (tmp_path / "o.zip").exists()


# ---- the dataset reader (training, metrics) ------------------------------------------------------


def npy_claiming(shape, dtype="<f4") -> bytes:
    """A .npy file whose header claims `shape` but which holds 16 bytes of data."""
    header = {"descr": dtype, "fortran_order": False, "shape": tuple(shape)}
    text = repr(header).encode()
    text += b" " * (-(len(text) + 11) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text + bytes(16)


def test_dataset_reader_bounds_images_members_and_npy_headers(tmp_path):
    with pytest.raises(DataError, match="exceeds the limit"):
        ImageFolderDataset(write_tree(tmp_path / "a", {"x.png": png_header_bomb(50000, 50000)}))
    with pytest.raises(DataError, match="limit of"):
        ImageFolderDataset(zip_with_declared_size(tmp_path / "b.zip", "x.png", 1 << 31))
    with pytest.raises(DataError, match=r"claims \(100000, 100000, 100000\)"):
        ImageFolderDataset(write_tree(tmp_path / "c", {"x.npy": npy_claiming([100000] * 3)}))
    with pytest.raises(DataError, match="x.npy"):
        ImageFolderDataset(write_tree(tmp_path / "d", {"x.npy": npy_claiming([1])}))  # 1-d: no image
    ok = np.arange(2 * 4 * 4, dtype=np.float32).reshape(2, 4, 4)
    (tmp_path / "e").mkdir()
    np.save(tmp_path / "e" / "x.npy", ok)
    assert np.array_equal(ImageFolderDataset(tmp_path / "e")[0][0], ok)


@pytest.mark.parametrize(
    "meta, match",
    [
        ('{"labels": ' + "[" * 100000 + "]" * 100000 + "}", "nested too deeply"),
        ({"labels": [["a.png", 10**15]]}, r"outside \[0, 1048575\]"),
        ({"labels": [["a.png", -1]]}, "outside"),
        ('{"labels": [["a.png", [NaN, 1]]]}', "finite numbers"),
        ({"labels": [[5, 1]]}, "not a file name"),
    ],
)
def test_dataset_json_structure_errors_are_one_line(tmp_path, meta, match):
    meta = meta.encode() if isinstance(meta, str) else meta
    src = write_tree(tmp_path / "src", {"a.png": GOOD, "dataset.json": meta})
    convert_fails(src, tmp_path / "out.zip", match)
    with pytest.raises(DataError, match=match):
        assert ImageFolderDataset(src).label_shape is None
