"""Every file name the project writes or reads, in one place (standard library only, so the
Snakefile imports it too).

    network-snapshot-0065536-0.100.safetensors   a training snapshot: <prefix>-<kimg>-<std>.<ext>
    phema-0000065-0.100.safetensors              a post-hoc EMA reconstruction, same pattern
    edm2-img512-xs-2147483-0.135.pkl             an official release, same pattern
    training-state-0000065.pt                    a training state
    dataset.json                                 the labels of a dataset: {"labels": [[path, label], ...] | null}
    00000/img00000000.png                        image 0 of a dataset written by `edm2 dataset convert`

kimg is `nimg // 1000` with 7 digits and the std has 3 decimals, as in the official file names
(training/training_loop.py and reconstruct_phema.py of NVlabs/edm2). Reading is more lenient:
any number of kimg digits, any number of std decimals, and a greedy prefix.
"""

import dataclasses
import json
import math
import os
import re

from edm2.errors import DataError

SNAPSHOT_PREFIX = "network-snapshot"  # written by `edm2 train`
PHEMA_PREFIX = "phema"  # written by `edm2 phema`
DATASET_JSON = "dataset.json"
DONE_FILE = "training-done.json"

SNAPSHOT_NAME = re.compile(r"^(?P<prefix>.*)-(?P<kimg>\d+)-(?P<std>\d+\.\d+)\.(?P<ext>pkl|safetensors)$")
STATE_NAME = re.compile(r"^training-state-(?P<kimg>\d+)\.pt$")


def std_text(std) -> str:
    """An EMA std as it appears in file names: 3 decimals ('0.100'); accepts a float or its text."""
    return f"{float(std):.3f}"


def snapshot_name(prefix: str, kimg: int, std, ext: str = "safetensors") -> str:
    """`<prefix>-<kimg, 7 digits>-<std, 3 decimals>.<ext>`, e.g. ('phema', 65, 0.1) -> 'phema-0000065-0.100.safetensors'."""
    return f"{prefix}-{int(kimg):07d}-{std_text(std)}.{ext}"


CERTIFICATE_EXT = "certificate.json"  # the certificate of a reconstruction, beside it (docs/phema.md#certificate)


def certificate_name(snapshot: str) -> str:
    """The certificate JSON beside a reconstructed snapshot:
    'phema-0000065-0.100.safetensors' -> 'phema-0000065-0.100.certificate.json'."""
    return snapshot.removesuffix(".safetensors") + "." + CERTIFICATE_EXT


def tensor_variant_prefix(prefix: str, overrides: dict) -> str:
    """The file-name prefix of a per-tensor EMA variant (edm2.ema.per_tensor): `<prefix>-<tag>`
    with tag 'NAME=STD' per tensor, joined by '+' in the order given, e.g. ('phema',
    {'enc-64x64-conv': 0.05}) -> 'phema-enc-64x64-conv=0.050'. Characters other than letters,
    digits, '.', '_' and '-' in a name (a pattern's '*') become '_'."""
    tag = "+".join(f"{re.sub(r'[^A-Za-z0-9._-]', '_', name)}={std_text(std)}" for name, std in overrides.items())
    return f"{prefix}-{tag}"


@dataclasses.dataclass(frozen=True)
class SnapshotName:
    """The parts of a snapshot file name."""

    prefix: str
    kimg: int
    std: float
    ext: str  # 'safetensors' or 'pkl'


def parse_snapshot_name(name: str, ext: str | None = None) -> SnapshotName | None:
    """The parts of `<prefix>-<kimg>-<std>.<pkl|safetensors>` (a bare name, not a path), or None.

    `ext`: accept only this extension. The prefix is greedy, so 'a-1-0.1-0000065-0.100.pkl' has
    the prefix 'a-1-0.1'.
    """
    m = SNAPSHOT_NAME.match(name)
    if m is None or (ext is not None and m.group("ext") != ext):
        return None
    return SnapshotName(m.group("prefix"), int(m.group("kimg")), float(m.group("std")), m.group("ext"))


def training_state_name(kimg: int) -> str:
    """`training-state-<kimg, 7 digits>.pt`."""
    return f"training-state-{int(kimg):07d}.pt"


def parse_training_state_name(name: str) -> int | None:
    """The kimg of a training-state file name, or None."""
    m = STATE_NAME.match(name)
    return int(m.group("kimg")) if m else None


MAX_CLASSES = 1 << 20  # class indices of dataset.json: labels become one-hot vectors of max + 1 entries


def parse_dataset_json(raw: bytes, where: str) -> dict | None:
    """`dataset.json` -> {relative path: label}, or None when its `labels` is null.

    A label is a class index (int >= 0) or a vector of numbers, the same kind for every image.
    Raises DataError naming `where` for invalid JSON, a missing `labels` key, entries that are not
    [path, label] pairs, negative or non-numeric labels, and mixed kinds.
    """
    try:
        labels = json.loads(raw)["labels"]
    except RecursionError:
        raise DataError(
            f'{where}: the JSON is nested too deeply; expected {{"labels": [[path, label], ...]}}'
        ) from None
    except (ValueError, KeyError, TypeError) as e:
        raise DataError(
            f'{where} is not valid dataset metadata ({e!r}); expected {{"labels": [[path, label], ...]}}'
        ) from None
    if labels is None:
        return None
    if not isinstance(labels, list) or not all(isinstance(x, list) and len(x) == 2 for x in labels):
        raise DataError(f"{where}: 'labels' must be a list of [relative_path, label] pairs or null")
    kinds = {}
    for name, label in labels:
        if not isinstance(name, str):
            raise DataError(f"{where}: {str(name)[:60]} is not a file name (a string)")
        if isinstance(label, int) and not isinstance(label, bool):
            if not 0 <= label < MAX_CLASSES:
                raise DataError(f"{where}: class index of {name} is {label}, outside [0, {MAX_CLASSES - 1}]")
            kind = "class index"
        elif (
            isinstance(label, list)
            and len(label) <= MAX_CLASSES
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in label)
        ):
            kind = f"vector of length {len(label)}"
        else:
            raise DataError(
                f"{where}: label of {name} is {str(label)[:80]}; use an integer class index or a list of finite numbers"
            )
        kinds.setdefault(kind, name)
    if len(kinds) > 1:
        (k1, n1), (k2, n2) = list(kinds.items())[:2]
        raise DataError(f"{where} mixes label types: {n1} has a {k1}, {n2} has a {k2}; use one kind for all images")
    return {str(name): label for name, label in labels}


# ---- datasets ------------------------------------------------------------------------------------


def file_ext(name) -> str:
    """Lower-cased extension with the dot, '' if none."""
    return os.path.splitext(str(name))[1].lower()


def pil_extensions() -> set:
    """Every extension PIL can open (after registering all its plugins)."""
    import PIL.Image  # here, not at the top: the Snakefile imports this module without PIL

    PIL.Image.init()
    return set(PIL.Image.EXTENSION)


def is_image_name(name) -> bool:
    """An input image of `edm2 dataset convert`: a file whose lower-cased extension PIL knows."""
    return file_ext(name) in pil_extensions()


def out_name(idx: int, pattern: str) -> str:
    """Name of image `idx` in a written dataset: with s = f'{idx:08d}', `s[:5]/<pattern with s>`
    (1000 files per folder, as the official dataset_tool.py writes them)."""
    s = f"{idx:08d}"
    return f"{s[:5]}/{pattern.format(s)}"
