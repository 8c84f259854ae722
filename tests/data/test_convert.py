"""`edm2 dataset convert` (docs/method.md#datasets): layout, labels, determinism, bad input, atomicity."""

import io
import json
import os
import signal
import subprocess
import sys
import time
import zipfile

import numpy as np
import PIL.Image
import pytest
from click.testing import CliRunner
from data_helpers import png_bytes, random_rgb, write_tree, write_zip

from edm2.cli import main
from edm2.data import ImageFolderDataset, make_transform
from edm2.data.convert import convert_dataset, decode_rgb
from edm2.errors import ConfigError, DataError


def read_zip(path):
    with zipfile.ZipFile(path) as z:
        return {i.filename: z.read(i.filename) for i in z.infolist()}, z.infolist()


def decode(data):
    return np.array(PIL.Image.open(io.BytesIO(data)))


def jpeg_bytes(arr, mode="RGB"):
    buf = io.BytesIO()
    PIL.Image.fromarray(arr).convert(mode).save(buf, format="jpeg", quality=90)
    return buf.getvalue()


@pytest.fixture
def classes(tmp_path):
    """3 top-level class folders (+ a root file) of 12x10 RGB images."""
    rng = np.random.default_rng(0)
    files = {f"{c}/{i}.png": random_rgb(rng, 10, 12) for c in ["cat", "dog", "emu"] for i in range(3)}
    files["root.png"] = random_rgb(rng, 10, 12)
    return write_tree(tmp_path / "src", files), files


def left_over(dirpath):
    return [p for p in os.listdir(dirpath) if p.startswith(".")]


# ---- output layout ---------------------------------------------------------------------------


def test_zip_layout_names_labels_and_pixels(classes, tmp_path):
    src, files = classes
    report = convert_dataset(src, tmp_path / "out.zip", resolution="8x8", transform="center-crop", workers=1)
    contents, infos = read_zip(tmp_path / "out.zip")
    order = sorted(files)  # cat/0, cat/1, cat/2, dog/..., emu/..., root.png
    names = [f"00000/img{i:08d}.png" for i in range(10)]
    assert sorted(contents) == sorted(names + ["dataset.json"])
    assert all(i.compress_type == zipfile.ZIP_STORED for i in infos)
    # labels: sorted top-level names '', cat, dog, emu -> 0..3 ('' is the root file)
    want_labels = {"cat": 1, "dog": 2, "emu": 3, "root.png": 0}
    meta = json.loads(contents["dataset.json"])
    assert meta["labels"] == [[n, want_labels[o.split("/")[0]]] for n, o in zip(names, order)]
    t = make_transform("center-crop", 8, 8)
    for n, o in zip(names, order):
        np.testing.assert_array_equal(decode(contents[n]), t(files[o]))
    assert report.num_written == 10 and report.labelled and report.resolution == (8, 8)


def test_pngs_are_uncompressed(classes, tmp_path):
    src, _ = classes
    convert_dataset(src, tmp_path / "out.zip", resolution="8x8", transform="center-crop", workers=1)
    contents, _ = read_zip(tmp_path / "out.zip")
    data = contents["00000/img00000000.png"]
    idat = b"".join(data[i + 4 : i + 4 + int.from_bytes(data[i - 4 : i], "big")] for i in _find_all(data, b"IDAT"))
    assert len(idat) >= 8 * (1 + 8 * 3)  # stored deflate blocks: no smaller than the raw scanlines
    assert idat[0] == 0x78 and idat[1] >> 6 == 0  # zlib header: FLEVEL 0 (fastest/none)


def _find_all(data, tag):
    i = data.find(tag)
    while i >= 0:
        yield i
        i = data.find(tag, i + 1)


def test_same_bytes_whatever_the_worker_count(classes, tmp_path):
    src, _ = classes
    outs = []
    for workers in [1, 2, 3]:
        dest = tmp_path / f"out{workers}.zip"
        convert_dataset(src, dest, resolution="8x8", transform="center-crop", workers=workers, progress=False)
        outs.append(dest.read_bytes())
    assert outs[0] == outs[1] == outs[2]


def test_folder_destination_and_reader_round_trip(classes, tmp_path):
    src, files = classes
    convert_dataset(src, tmp_path / "out", resolution="8,8", transform="center-crop", workers=2, progress=False)
    ds = ImageFolderDataset(tmp_path / "out")
    assert len(ds) == 10 and ds.resolution == 8 and ds.label_dim == 4
    assert not left_over(tmp_path)


def test_labels_from_source_dataset_json_and_zip_source(tmp_path):
    rng = np.random.default_rng(1)
    files = {f"x{i}.png": random_rgb(rng, 8, 8) for i in range(4)}
    files["dataset.json"] = {"labels": [[f"x{i}.png", [i, 0.5]] for i in range(4)]}
    src = write_zip(tmp_path / "src.zip", files)
    convert_dataset(src, tmp_path / "out.zip", workers=1, max_images=3)
    meta = json.loads(read_zip(tmp_path / "out.zip")[0]["dataset.json"])
    assert meta["labels"] == [[f"00000/img{i:08d}.png", [i, 0.5]] for i in range(3)]


def test_one_folder_name_gives_no_labels(tmp_path):
    rng = np.random.default_rng(2)
    src = write_tree(tmp_path / "src", {f"only/{i}.png": random_rgb(rng, 8, 8) for i in range(3)})
    report = convert_dataset(src, tmp_path / "out.zip", workers=1)
    assert json.loads(read_zip(tmp_path / "out.zip")[0]["dataset.json"]) == {"labels": None}
    assert not report.labelled


def test_unlabelled_image_makes_labels_null_with_a_note(tmp_path):
    rng = np.random.default_rng(2)
    files = {f"{i}.png": random_rgb(rng, 8, 8) for i in range(3)}
    files["dataset.json"] = {"labels": [["0.png", 1], ["1.png", 2]]}
    report = convert_dataset(write_tree(tmp_path / "src", files), tmp_path / "out.zip", workers=1)
    assert json.loads(read_zip(tmp_path / "out.zip")[0]["dataset.json"]) == {"labels": None}
    assert "2.png" in report.summary()


def test_center_crop_wide_skips_leave_gaps(tmp_path):
    files = {"a.png": np.zeros((8, 16, 3), np.uint8), "b.png": np.zeros((8, 4, 3), np.uint8)}
    files["c.png"] = np.full((8, 16, 3), 200, np.uint8)
    report = convert_dataset(write_tree(tmp_path / "src", files), tmp_path / "o.zip", "16x8", "center-crop-wide")
    contents, _ = read_zip(tmp_path / "o.zip")
    assert sorted(contents) == ["00000/img00000000.png", "00000/img00000002.png", "dataset.json"]
    assert report.skipped[0][0] == "b.png" and "center-crop-wide" in report.skipped[0][1]
    assert decode(contents["00000/img00000002.png"]).shape == (16, 16, 3)


# ---- image modes -----------------------------------------------------------------------------


def test_image_modes_are_converted_to_rgb():
    rgb = random_rgb(np.random.default_rng(3), 6, 6)
    # RGBA: alpha dropped, colour kept
    rgba = np.concatenate([rgb, np.full((6, 6, 1), 7, np.uint8)], axis=2)
    np.testing.assert_array_equal(decode_rgb(png_bytes(rgba), "a.png"), rgb)
    # palette: PIL's palette lookup
    pal = PIL.Image.fromarray(rgb).convert("P", palette=PIL.Image.Palette.ADAPTIVE, colors=8)
    buf = io.BytesIO()
    pal.save(buf, format="png")
    np.testing.assert_array_equal(decode_rgb(buf.getvalue(), "p.png"), np.array(pal.convert("RGB")))
    # grayscale 8-bit: replicated
    gray = rgb[:, :, 0]
    np.testing.assert_array_equal(decode_rgb(png_bytes(gray), "g.png"), np.repeat(gray[:, :, None], 3, 2))
    # 16-bit grayscale: the high byte (v >> 8), not PIL's clip to 255
    g16 = (np.arange(36, dtype=np.uint16).reshape(6, 6) * 1800).astype(np.uint16)
    out = decode_rgb(png_bytes(g16), "g16.png")
    np.testing.assert_array_equal(out, np.repeat((g16 >> 8).astype(np.uint8)[:, :, None], 3, 2))
    # CMYK JPEG: decoded and converted by PIL
    cmyk = decode_rgb(jpeg_bytes(rgb, "CMYK"), "c.jpg")
    assert cmyk.shape == (6, 6, 3) and cmyk.dtype == np.uint8


# ---- bad input -------------------------------------------------------------------------------


@pytest.fixture
def bad_source(tmp_path):
    rng = np.random.default_rng(4)
    good = jpeg_bytes(random_rgb(rng, 16, 16))
    files = {
        "a.png": random_rgb(rng, 16, 16),
        "b_corrupt.png": b"this is not a png",
        "c_truncated.jpg": good[: len(good) // 2],
        "d.png": random_rgb(rng, 16, 16),
        "notes.txt": b"not an image",
    }
    return write_tree(tmp_path / "src", files)


def test_fail_mode_names_the_first_bad_file_and_writes_nothing(bad_source, tmp_path):
    with pytest.raises(DataError, match="b_corrupt.png"):
        convert_dataset(bad_source, tmp_path / "out.zip", workers=2, progress=False)
    assert not (tmp_path / "out.zip").exists() and not left_over(tmp_path)


def test_skip_mode_counts_and_lists_skipped_files(bad_source, tmp_path):
    report = convert_dataset(bad_source, tmp_path / "out.zip", workers=2, on_error="skip", progress=False)
    assert [n for n, _ in report.skipped] == ["b_corrupt.png", "c_truncated.jpg"]
    assert report.num_written == 2 and report.ignored == ["notes.txt"]
    contents, _ = read_zip(tmp_path / "out.zip")
    assert sorted(contents) == ["00000/img00000000.png", "00000/img00000003.png", "dataset.json"]
    text = report.summary()
    assert "skipped 2 images" in text and "b_corrupt.png" in text and "notes.txt" in text


def test_small_images_are_upscaled_or_refused(tmp_path):
    rng = np.random.default_rng(5)
    src = write_tree(tmp_path / "src", {"big.png": random_rgb(rng, 20, 20), "small.png": random_rgb(rng, 10, 12)})
    report = convert_dataset(src, tmp_path / "a.zip", "16x16", "center-crop", workers=1)
    assert report.upscaled == ["small.png"] and report.num_written == 2
    with pytest.raises(DataError, match="small.png is 12x10, smaller than the 16x16"):
        convert_dataset(src, tmp_path / "b.zip", "16x16", "center-crop", workers=1, upscale=False)
    report = convert_dataset(src, tmp_path / "c.zip", "16x16", "center-crop", workers=1, on_error="skip", upscale=False)
    assert report.num_written == 1 and report.skipped[0][0] == "small.png"


def test_mismatched_sizes_name_the_file(tmp_path):
    files = {"a.png": np.zeros((8, 8, 3), np.uint8), "b.png": np.zeros((16, 16, 3), np.uint8)}
    src = write_tree(tmp_path / "src", files)
    with pytest.raises(DataError, match="b.png comes out 16x16x3 but earlier images are 8x8x3"):
        convert_dataset(src, tmp_path / "o.zip", workers=1)
    assert not (tmp_path / "o.zip").exists()


def test_first_image_must_be_square_power_of_two(tmp_path):
    src = write_tree(tmp_path / "src", {"a.png": np.zeros((8, 12, 3), np.uint8)})
    with pytest.raises(ConfigError, match="a.png comes out 12x8"):
        convert_dataset(src, tmp_path / "o.zip", workers=1)
    with pytest.raises(ConfigError, match="power-of-two"):
        convert_dataset(src, tmp_path / "o.zip", "12x12", "center-crop", workers=1)


def test_dataset_json_problems(tmp_path):
    img = np.zeros((8, 8, 3), np.uint8)
    missing = write_tree(tmp_path / "s1", {"a.png": img, "dataset.json": {"labels": [["a.png", 0], ["gone.png", 1]]}})
    with pytest.raises(DataError, match="gone.png"):
        convert_dataset(missing, tmp_path / "o.zip", workers=1)
    report = convert_dataset(missing, tmp_path / "o.zip", workers=1, on_error="skip")
    assert "gone.png" in report.summary()
    mixed = {"a.png": img, "b.png": img, "dataset.json": {"labels": [["a.png", 0], ["b.png", [1, 2]]]}}
    with pytest.raises(DataError, match="mixes label types: a.png has a class index, b.png has a vector"):
        convert_dataset(write_tree(tmp_path / "s2", mixed), tmp_path / "p.zip", workers=1)
    broken = write_tree(tmp_path / "s3", {"a.png": img, "dataset.json": b"{nope"})
    with pytest.raises(DataError, match="s3/dataset.json is not valid"):
        convert_dataset(broken, tmp_path / "q.zip", workers=1)


def test_source_and_destination_problems(tmp_path, classes):
    src, _ = classes
    (tmp_path / "bad.zip").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(DataError, match="bad.zip is not a readable ZIP"):
        convert_dataset(tmp_path / "bad.zip", tmp_path / "o.zip")
    with pytest.raises(DataError, match="does not exist"):
        convert_dataset(tmp_path / "nothing", tmp_path / "o.zip")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(DataError, match="not empty"):
        convert_dataset(src, tmp_path / "full", "8x8", "center-crop")
    (tmp_path / "exists.zip").write_bytes(b"x")
    with pytest.raises(DataError, match="already exists"):
        convert_dataset(src, tmp_path / "exists.zip", "8x8", "center-crop")
    with pytest.raises(ConfigError, match="inside the source"):
        convert_dataset(src, src / "out", "8x8", "center-crop")
    (tmp_path / "empty").mkdir()
    convert_dataset(src, tmp_path / "empty", "8x8", "center-crop", workers=1)  # an empty folder is fine
    assert (tmp_path / "empty" / "dataset.json").is_file()


def test_interrupt_leaves_no_output(classes, tmp_path, monkeypatch):
    src, _ = classes
    import edm2.data.convert as conv

    calls = []
    real = conv.ImageJob.__call__

    def flaky(self, task):
        calls.append(task)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(self, task)

    monkeypatch.setattr(conv.ImageJob, "__call__", flaky)
    for dest in [tmp_path / "out.zip", tmp_path / "outdir"]:
        calls.clear()
        with pytest.raises(KeyboardInterrupt):
            convert_dataset(src, dest, "8x8", "center-crop", workers=1, progress=False)
        assert not dest.exists()
    assert not left_over(tmp_path)


def _patched_job(monkeypatch, action):
    """Make ImageJob run `action(task)` first; worker processes inherit the patch (fork)."""
    import edm2.data.convert as conv

    real = conv.ImageJob.__call__

    def patched(self, task):
        action(task)
        return real(self, task)

    monkeypatch.setattr(conv.ImageJob, "__call__", patched)


@pytest.mark.skipif(sys.platform != "linux", reason="relies on fork inheriting a monkeypatch")
def test_out_of_order_workers_still_write_in_input_order(tmp_path, monkeypatch):
    rng = np.random.default_rng(7)
    src = write_tree(tmp_path / "src", {f"{i:03d}.png": random_rgb(rng, 8, 8) for i in range(80)})
    convert_dataset(src, tmp_path / "ref.zip", workers=1, progress=False)
    # Early chunks are slow, so later chunks overtake them and wait in the parent for their turn.
    _patched_job(monkeypatch, lambda task: time.sleep(0.02 if task[0] % 17 < 3 else 0))
    convert_dataset(src, tmp_path / "out.zip", workers=3, progress=False)
    assert (tmp_path / "ref.zip").read_bytes() == (tmp_path / "out.zip").read_bytes()


@pytest.mark.skipif(sys.platform != "linux", reason="relies on fork inheriting a monkeypatch")
def test_dead_or_failing_worker_is_reported_and_leaves_no_output(classes, tmp_path, monkeypatch):
    src, _ = classes

    def die(task):
        if task[0] == 4:
            os._exit(9)

    _patched_job(monkeypatch, die)
    with pytest.raises(RuntimeError, match="worker process died .exit code 9"):
        convert_dataset(src, tmp_path / "a.zip", "8x8", "center-crop", workers=2, progress=False)

    def bug(task):
        if task[0] == 6:
            raise ZeroDivisionError("a bug in a worker")

    monkeypatch.undo()  # the first patch off again
    _patched_job(monkeypatch, bug)
    with pytest.raises(RuntimeError, match="(?s)converter worker failed.*ZeroDivisionError: a bug in a worker"):
        convert_dataset(src, tmp_path / "b.zip", "8x8", "center-crop", workers=2, progress=False)
    assert not (tmp_path / "a.zip").exists() and not (tmp_path / "b.zip").exists() and not left_over(tmp_path)


# ---- command line ----------------------------------------------------------------------------


def test_cli_convert_and_one_line_errors(classes, tmp_path):
    src, _ = classes
    runner = CliRunner()
    before = signal.getsignal(signal.SIGTERM)
    r = runner.invoke(main, ["dataset", "convert", "--help"])
    assert r.exit_code == 0 and "Examples:" in r.output and "--on-error" in r.output
    args = ["dataset", "convert", "--source", str(src), "--dest", str(tmp_path / "o.zip"), "--quiet"]
    r = runner.invoke(main, [*args, "--resolution", "8x8", "--transform", "center-crop", "--workers", "2"])
    assert r.exit_code == 0, r.output
    assert "wrote 10 of 10 images (8x8, labelled)" in r.output
    r = runner.invoke(main, [*args, "--resolution", "8x8"])
    assert r.exit_code == 1 and r.output.startswith("Error: destination") and r.output.count("\n") == 1
    r = runner.invoke(main, [*args[:-2], str(tmp_path / "p.zip"), "--resolution", "8by8"])
    assert r.exit_code == 1 and "not WxH" in r.output
    assert signal.getsignal(signal.SIGTERM) is before  # the command's SIGTERM handler is removed again


@pytest.mark.slow
def test_sigterm_leaves_no_output(tmp_path):
    rng = np.random.default_rng(6)
    src = write_tree(tmp_path / "src", {f"{i:04d}.png": random_rgb(rng, 64, 64) for i in range(2000)})
    dest = tmp_path / "out.zip"
    cmd = [sys.executable, "-m", "edm2", "dataset", "convert", "--source", str(src), "--dest", str(dest)]
    proc = subprocess.Popen([*cmd, "--workers", "2", "--resolution", "32x32", "--transform", "center-crop"])
    deadline = time.monotonic() + 60
    while not any(p.stat().st_size > 100_000 for p in tmp_path.glob(".out.zip.*.tmp")):  # mid-way
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    assert not dest.exists() and not left_over(tmp_path)


def _children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except FileNotFoundError:
        return []


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


@pytest.mark.slow
def test_sigkill_of_the_parent_ends_its_workers_and_the_next_run_removes_the_stale_temporary(tmp_path):
    rng = np.random.default_rng(7)
    src = write_tree(tmp_path / "src", {f"{i:04d}.png": random_rgb(rng, 64, 64) for i in range(600)})
    dest = tmp_path / "out.zip"
    cmd = [sys.executable, "-m", "edm2", "dataset", "convert", "--source", str(src), "--dest", str(dest),
           "--workers", "2", "--resolution", "256x256", "--transform", "center-crop", "--quiet"]  # fmt: skip
    proc = subprocess.Popen(cmd)
    deadline = time.monotonic() + 60
    while not any(p.stat().st_size > 1_000_000 for p in tmp_path.glob(".out.zip.*.tmp")):  # mid-way
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    workers = _children(proc.pid)
    assert len(workers) >= 2
    proc.kill()  # SIGKILL: no cleanup code runs in the parent
    proc.wait(timeout=30)
    deadline = time.monotonic() + 20
    while any(_alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(w) for w in workers), "workers outlived their killed parent"
    assert left_over(tmp_path) and not dest.exists()  # the killed run's temporary is still there
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert dest.exists() and not left_over(tmp_path)  # the next run removed it
