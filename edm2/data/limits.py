"""Bounded reading of the files a dataset is made of (docs/data.md, "Limits on input files").

A source or dataset is user input, possibly hostile: a small ZIP whose member inflates to
gigabytes, a symlink to /dev/zero or a FIFO named like an image (reading never ends or never
starts), an image header claiming 50000x50000 pixels, a `.npy` header claiming more elements
than its bytes hold. Every reader of `edm2.data` goes through these functions, which check the
declared size before anything is read or decoded and raise `DataError` naming the file and the
limit. `dataset convert` can raise the pixel limit (--max-pixels); the others hold for every
command.
"""

import contextlib
import io
import os
import stat
import warnings
import zipfile

import numpy as np
import PIL.Image

from edm2.errors import DataError

MAX_IMAGE_PIXELS = 1 << 27  # decoded pixels per image (134 M: 11585 x 11585; ImageNet's largest is 30 M)
MAX_FILE_BYTES = 1 << 30  # bytes of one file: an image, a .npy array, dataset.json (a ZIP member: uncompressed)
MAX_ZIP_RATIO = 200  # uncompressed / compressed size of a ZIP member larger than RATIO_FLOOR
RATIO_FLOOR = 1 << 20  # members smaller than this are never refused for their ratio


def check_regular(path, name: str) -> os.stat_result:
    """`os.stat(path)` (following links) of a file that must be a regular file; raises
    `DataError` naming `name` for a FIFO, device, socket, folder or a link to one, or a dangling
    link. Such files are refused by name rather than read (reading /dev/zero never ends,
    opening a FIFO blocks). The size is checked when the file is read (`read_file`)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise DataError(f"{name}: a link to a file that does not exist; remove it") from None
    except OSError as e:
        raise DataError(f"{name}: cannot be read ({e.strerror or e})") from None
    if not stat.S_ISREG(st.st_mode):
        kind = (
            "a FIFO"
            if stat.S_ISFIFO(st.st_mode)
            else "a device"
            if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
            else "a socket"
            if stat.S_ISSOCK(st.st_mode)
            else "a folder"
            if stat.S_ISDIR(st.st_mode)
            else "not a regular file"
        )
        raise DataError(f"{name} is {kind} (or a link to one), not a regular file; remove it from the source")
    return st


def read_file(path, name: str) -> bytes:
    """The bytes of a regular file of at most `MAX_FILE_BYTES` (see `check_regular`); opened
    without blocking and checked again on the open file, so a file swapped for a FIFO or one
    that grows while read cannot get past the bound."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise DataError(f"{name}: no such file (or a dangling link)") from None
    except OSError as e:
        raise DataError(f"{name}: cannot be read ({e.strerror or e})") from None
    with open(fd, "rb", closefd=True) as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise DataError(f"{name} is not a regular file (a FIFO, device or link to one); remove it from the source")
        if st.st_size > MAX_FILE_BYTES:
            raise DataError(f"{name}: {st.st_size} bytes exceeds the limit of {MAX_FILE_BYTES} bytes for one file")
        data = f.read(MAX_FILE_BYTES + 1)  # and no more, should it grow meanwhile
    if len(data) > MAX_FILE_BYTES:
        raise DataError(f"{name}: more than {MAX_FILE_BYTES} bytes, the limit for one file")
    return data


def read_zip_member(zf: zipfile.ZipFile, member: str, name: str) -> bytes:
    """The bytes of ZIP member `member`, refused before inflating when its declared size exceeds
    `MAX_FILE_BYTES` or its compression ratio exceeds `MAX_ZIP_RATIO` (a ZIP bomb). The declared
    size is also what the reader stops at, so a member cannot inflate past it."""
    check_zip_member(zf.getinfo(member), name)
    return zf.read(member)


def check_zip_member(info: zipfile.ZipInfo, name: str) -> None:
    """Raise `DataError` naming `name` when a ZIP member declares more than `MAX_FILE_BYTES`
    uncompressed or a compression ratio over `MAX_ZIP_RATIO` (see `read_zip_member`)."""
    if info.file_size > MAX_FILE_BYTES:
        raise DataError(f"{name}: inflates to {info.file_size} bytes, more than the limit of {MAX_FILE_BYTES} bytes")
    if info.file_size > RATIO_FLOOR and info.file_size > MAX_ZIP_RATIO * max(info.compress_size, 1):
        raise DataError(
            f"{name}: inflates {info.compress_size} bytes to {info.file_size} (ratio over the limit of "
            f"{MAX_ZIP_RATIO}: a ZIP bomb?)"
        )


@contextlib.contextmanager
def _pil_check_off():
    """PIL's own decompression-bomb check off while a header is parsed: ours runs instead, at
    a limit the caller chooses, with the image's size in the message."""
    saved = PIL.Image.MAX_IMAGE_PIXELS
    PIL.Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        PIL.Image.MAX_IMAGE_PIXELS = saved


def open_image(data: bytes, name: str, max_pixels: int = MAX_IMAGE_PIXELS, hint: str = "") -> PIL.Image.Image:
    """A decoded (loaded) PIL image from file bytes, refused by its header's size before the
    pixels are decoded when width x height exceeds `max_pixels` (`hint`: how to raise the limit,
    appended to the message). Raises `DataError`; PIL's own errors for unreadable files pass."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with _pil_check_off():
            img = PIL.Image.open(io.BytesIO(data))  # parses the header only
        w, h = img.size
        if w * h > max_pixels:
            img.close()
            raise DataError(f"{name}: image {w}x{h} exceeds the limit of {max_pixels} pixels{hint}")
        img.load()
    return img


def load_npy(data: bytes, name: str) -> np.ndarray:
    """A `.npy` array from file bytes (no pickles), refused when its header claims more
    elements than the bytes hold (NumPy would allocate the claimed size first)."""
    f = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _fortran, dtype = read_header(f)
    except (ValueError, SyntaxError, OSError) as e:
        raise DataError(f"{name}: not a readable .npy file ({e})") from None
    count = 1
    for n in shape:
        count *= n
    if dtype.hasobject or count * dtype.itemsize > len(data) - f.tell():
        raise DataError(
            f"{name}: the .npy header claims {shape} {dtype} elements, more than the file's {len(data)} bytes hold"
        )
    f.seek(0)
    try:
        return np.load(f, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise DataError(f"{name}: not a readable .npy file ({e})") from None


def load_npz(path, name: str | None = None) -> dict:
    """`{key: array}` of an `.npz` file (no pickles), every member bounded like a ZIP member of a
    dataset (`read_zip_member`) and every `.npy` header like `load_npy`, before anything is
    inflated or allocated. Raises `DataError` naming the file (and the member)."""
    name = str(path) if name is None else name
    check_regular(path, name)
    arrays = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for member in zf.namelist():
                if not member.endswith(".npy"):
                    continue
                data = read_zip_member(zf, member, f"{name}:{member}")
                arrays[member[: -len(".npy")]] = load_npy(data, f"{name}:{member}")
    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, KeyError) as e:
        raise DataError(f"{name}: not a readable .npz file ({e})") from None
    return arrays
