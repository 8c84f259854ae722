"""The network snapshot format: safetensors with the official state-dict key names and the
network/encoder configuration in the metadata (README "File formats", docs/training.md). No pickle.

Metadata keys (all strings, as safetensors requires):
    format          "edm2-snapshot/1"
    network_kwargs  JSON of the `Precond` constructor arguments (`net.init_kwargs`)
    encoder         JSON of the encoder config ({"class": "StandardRGBEncoder"} or
                    {"class": "StabilityVAEEncoder", "vae_name": ..., ...})
    nimg            training images seen when the weights were taken (int)
    ema_std         relative EMA std, or "" when not an EMA
    extra           JSON of anything else (dataset/loss kwargs, phema inputs and coefficients)
    sha256          SHA-256 of the tensor data
    header_sha256   SHA-256 of the rest of the header (`header_sha256`); absent in older files

Every field is checked where it is read (`read_snapshot_info`), bounds included (docs/data.md,
"Limits on input files").
"""

import dataclasses
import functools
import hashlib
import json
import math
import os
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from edm2.errors import FormatError, OutputError, one_line
from edm2.io.atomic import atomic_path
from edm2.io.files import open_regular
from edm2.io.safetensors_stream import header_sha256, parse_safetensors_header
from edm2.nn import Precond

FORMAT = "edm2-snapshot/1"


@dataclasses.dataclass
class SnapshotInfo:
    """Everything in a snapshot except the tensors."""

    network_kwargs: dict
    encoder: dict
    nimg: int
    ema_std: float | None
    extra: dict

    @property
    def kimg(self) -> int:
        return self.nimg // 1000


def save_snapshot(
    path,
    state_dict: dict,
    network_kwargs: dict,
    encoder: dict,
    nimg: int,
    ema_std: float | None = None,
    extra: dict | None = None,
    dtype: torch.dtype | None = torch.float16,
) -> None:
    """Write a snapshot atomically. Floating tensors are cast to `dtype` (None keeps them)."""
    tensors = {}
    for name, value in state_dict.items():
        value = value.detach().to("cpu")
        if dtype is not None and value.is_floating_point():
            value = value.to(dtype)
        tensors[name] = value.contiguous()
    metadata = {
        "format": FORMAT,
        "network_kwargs": json.dumps(network_kwargs),
        "encoder": json.dumps(encoder),
        "nimg": str(int(nimg)),
        "ema_std": "" if ema_std is None else repr(float(ema_std)),
        "extra": json.dumps(extra or {}),
    }
    write_safetensors(path, tensors, metadata)


# Bounds on the network arguments read from a file, checked before a network is built from them
# (building is the cost: modules per level and levels; the widths only size meta tensors, and
# the tensors in the file must then match them).
_NETWORK_LIMITS = {
    "img_resolution": (1, 1 << 16),
    "img_channels": (1, 1024),
    "label_dim": (0, 1 << 20),
    "num_blocks": (0, 64),
    "model_channels": (1, 1 << 20),
    "logvar_channels": (1, 1 << 20),
    "channels_per_head": (1, 1 << 20),
}
_MAX_LIST = 64  # channel_mult, attn_resolutions, resample_filter
_MAX_LEVELS = 16  # entries of channel_mult: resolution levels of the U-Net


def write_safetensors(path, tensors: dict, metadata: dict) -> None:
    """Write `tensors` (name -> contiguous CPU tensor) and string `metadata` to a safetensors file:
    atomically, with the usual file mode (0666 less the umask), byte-identical for identical
    inputs, with the SHA-256 of its tensor data in the metadata entry "sha256" and the SHA-256
    of the rest of the header (metadata, "sha256" included, and the tensors' dtypes, shapes and
    offsets: `header_sha256`) in "header_sha256". `verify_safetensors` checks both,
    `read_metadata` the second (no tensor data read).

    The safetensors writer orders the metadata entries differently on every call (a hash map).
    The header is rewritten in place with the entries sorted and the digests filled into
    placeholders of the same length, so the data never moves.
    """
    with atomic_path(path, suffix=".safetensors") as tmp:
        try:
            save_file(tensors, str(tmp), metadata={**metadata, "sha256": "0" * 64, "header_sha256": "0" * 64})
        except Exception as e:  # the writer reports a failed write (disk full, ...) as its own error type
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise OutputError(f"cannot write {path}: {first}; free space or choose another location") from None
        with open(tmp, "r+b") as f:
            length, header = _read_header(f, tmp)
            meta = header.pop("__metadata__")
            meta["sha256"] = _data_sha256(f, 8 + length)
            meta["header_sha256"] = header_sha256(header, meta)
            ordered = {"__metadata__": dict(sorted(meta.items())), **header}  # tensors keep their order
            text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode()
            if len(text) > length:
                raise FormatError(f"{path}: unexpected safetensors header layout; not written")
            f.seek(8)
            f.write(text + b" " * (length - len(text)))


def _check_header_digest(path, entries: dict, metadata: dict) -> None:
    expected = metadata.get("header_sha256")
    if expected is None:  # written before the header digest existed
        return
    actual = header_sha256(entries, metadata)
    if actual != expected:
        raise FormatError(
            f"{path}: metadata or tensor layout edited or damaged (their SHA-256 is {actual[:16]}..., written with "
            f"{expected[:16]}...); restore or recreate the file"
        )


def verify_safetensors(path) -> None:
    """Raise `FormatError` if the header (metadata and tensor layout) or the tensor data of a
    safetensors file no longer match the SHA-256s recorded when it was written (a file damaged
    on disk or in transfer, or edited). Files without a recorded digest (older ones, post-hoc
    EMA outputs written before its writer recorded them) are not checked; some older ones have
    only the data digest."""
    with open_regular(path) as f:
        length, entries, meta = parse_safetensors_header(f, path, os.fstat(f.fileno()).st_size)
        _check_header_digest(path, entries, meta)
        expected = meta.get("sha256")
        if expected is None:
            return
        actual = _data_sha256(f, 8 + length)
    if actual != expected:
        raise FormatError(
            f"{path}: contents damaged (SHA-256 of the tensor data {actual}, written with {expected}); "
            "restore or recreate the file"
        )


def _read_header(f, path) -> tuple[int, dict]:
    length, entries, meta = parse_safetensors_header(f, path, os.fstat(f.fileno()).st_size)
    return length, {"__metadata__": meta, **entries}


def _data_sha256(f, start: int) -> str:
    f.seek(start)
    digest = hashlib.sha256()
    while chunk := f.read(1 << 24):
        digest.update(chunk)
    return digest.hexdigest()


def read_header(path, expected_format: str, what: str, missing: str) -> tuple[dict, dict]:
    """`({name: entry}, metadata)` of a safetensors file whose 'format' metadata entry must be
    `expected_format`: the header bounded and checked (`parse_safetensors_header`), and its
    recorded header digest, if any, verified. `what` names the kind of file in errors ("edm2
    snapshot"); `missing` is the whole message for a file that does not exist. No tensor data
    is read. Raises `FormatError`."""
    with open_regular(path, missing) as f:
        _, entries, meta = parse_safetensors_header(f, path, os.fstat(f.fileno()).st_size)
    if meta.get("format") != expected_format:
        raise FormatError(
            f"{path}: not an {what} (metadata format={meta.get('format')!r}, expected {expected_format!r})"
        )
    _check_header_digest(path, entries, meta)
    return entries, meta


def read_metadata(path, expected_format: str, what: str, missing: str) -> dict:
    """The string metadata of a safetensors file whose 'format' entry must be `expected_format`
    (see `read_header`; the header digest, if recorded, is verified)."""
    return read_header(path, expected_format, what, missing)[1]


def json_field(path, meta: dict, key: str, kind: type, default=None):
    """The metadata entry `key` parsed as JSON of type `kind` (dict or list); `default` when the
    entry is absent or empty and a default is given. Raises `FormatError` naming the file and
    the field for a missing entry, bad JSON, JSON nested too deeply or a value of another type."""
    text = meta.get(key)
    if not text:
        if default is not None:
            return default
        raise FormatError(f"{path}: metadata field {key!r} is missing")
    try:
        value = json.loads(text)
    except RecursionError:
        raise FormatError(f"{path}: metadata field {key!r} is JSON nested too deeply") from None
    except ValueError as e:
        raise FormatError(f"{path}: metadata field {key!r} is not valid JSON ({e})") from None
    if not isinstance(value, kind):
        expected = {dict: "an object", list: "a list"}.get(kind, kind.__name__)
        raise FormatError(f"{path}: metadata field {key!r} is a {type(value).__name__}, expected {expected}")
    return value


def _int_field(path, meta: dict, key: str, lo: int, hi: int) -> int:
    text = meta.get(key)
    if text is None:
        raise FormatError(f"{path}: metadata field {key!r} is missing")
    if not re.fullmatch(r"[0-9]{1,19}", text) or not lo <= int(text) <= hi:
        raise FormatError(f"{path}: metadata field {key!r} is {text[:40]!r}, expected an integer in [{lo}, {hi}]")
    return int(text)


def _std_field(path, meta: dict, key: str) -> float | None:
    text = meta.get(key)
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise FormatError(f"{path}: metadata field {key!r} is {text[:40]!r}, expected a positive number or ''")
    return value


def check_network_kwargs(kwargs, where: str) -> dict:
    """Check `Precond` constructor arguments read from a file (`where` names the file and the
    field in errors) before anything is built from them: an object of plain JSON values with
    finite numbers, the required keys, integer sizes and list lengths within bounds (they decide
    how many modules a build makes). Returns `kwargs`; raises `FormatError`."""
    if not isinstance(kwargs, dict):
        raise FormatError(f"{where} is a {type(kwargs).__name__}, expected an object of Precond arguments")
    for key, value in kwargs.items():
        values = value if isinstance(value, list) else [value]
        if isinstance(value, list) and len(value) > _MAX_LIST:
            raise FormatError(f"{where}: {key} has {len(value)} entries, more than the limit of {_MAX_LIST}")
        for v in values:
            if not (v is None or isinstance(v, (bool, int, str)) or (isinstance(v, float) and math.isfinite(v))):
                raise FormatError(f"{where}: {key} is {str(value)[:60]}, expected finite numbers, strings or null")
    for key in ("img_resolution", "img_channels", "label_dim"):
        if key not in kwargs:
            raise FormatError(f"{where} has no {key}")
    for key, (lo, hi) in _NETWORK_LIMITS.items():
        value = kwargs.get(key, lo)
        if type(value) is not int or not lo <= value <= hi:
            raise FormatError(f"{where}: {key} is {value!r}, expected an integer in [{lo}, {hi}]")
    if len(kwargs.get("channel_mult") or []) > _MAX_LEVELS:
        raise FormatError(f"{where}: channel_mult has more than {_MAX_LEVELS} levels")
    for key in ("channel_mult", "attn_resolutions", "resample_filter"):
        value = kwargs.get(key, [1])
        if not isinstance(value, list) or not all(type(v) is int and 0 <= v <= 1 << 20 for v in value):
            raise FormatError(f"{where}: {key} is {str(value)[:60]}, expected a list of non-negative integers")
    if not kwargs.get("channel_mult", [1]):
        raise FormatError(f"{where}: channel_mult is empty")
    return kwargs


@functools.lru_cache(maxsize=8)
def _network_shapes(network_kwargs_json: str) -> dict:
    net = build_network(json.loads(network_kwargs_json), device="meta")
    return {k: list(v.shape) for k, v in net.state_dict().items()}


def network_shapes(network_kwargs: dict, where: str) -> dict:
    """`{name: shape}` of the state dict of `Precond(**network_kwargs)` (checked with
    `check_network_kwargs`, built once per process on the meta device). Raises `FormatError`
    naming `where` when the arguments do not build a network."""
    check_network_kwargs(network_kwargs, where)
    try:
        return _network_shapes(json.dumps(network_kwargs, sort_keys=True))
    except Exception as e:  # the constructor's own complaints: TypeError, ValueError, ZeroDivisionError, ...
        raise FormatError(f"{where} do not build an edm2.nn.Precond ({type(e).__name__}: {e})") from None


def check_shapes(found: dict, expected: dict, where: str) -> None:
    """Raise `FormatError` (naming `where`) unless `found` {name: shape} is `expected` exactly."""
    if found == expected:
        return
    missing, unexpected = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    if missing or unexpected:
        parts = [
            f"{len(names)} {label}, e.g. {names[0]}"
            for label, names in (("missing", missing), ("unexpected", unexpected))
            if names
        ]
        first = "; ".join(parts)
    else:
        name = next(k for k in expected if found[k] != expected[k])
        first = f"{name} is {found[name]} in the file, {expected[name]} by network_kwargs"
    raise FormatError(f"{where}: the tensors do not match the network that network_kwargs describe ({first})")


def read_snapshot_info(path) -> SnapshotInfo:
    """Read only the metadata of a snapshot (fast: no tensor data is loaded), every field
    checked: the header digest (when recorded), `format`, `network_kwargs` (bounded, and the
    tensors' names, shapes and float dtypes equal to what they build), `encoder` (a known class
    whose channel count fits the network), `nimg`, `ema_std` and `extra`. Raises `FormatError`
    naming the file and the field."""
    path = Path(path)
    entries, meta = read_header(path, FORMAT, "edm2 snapshot", f"{path}: no such snapshot file")
    network_kwargs = json_field(path, meta, "network_kwargs", dict)
    found = {}
    for name, entry in entries.items():
        if entry["dtype"] not in ("F16", "BF16", "F32", "F64"):
            raise FormatError(f"{path}: tensor {name} has dtype {entry['dtype']}, expected F16/BF16/F32/F64")
        found[name] = entry["shape"]
    where = f"{path}: metadata field 'network_kwargs'"
    check_shapes(found, network_shapes(network_kwargs, where), str(path))
    encoder = json_field(path, meta, "encoder", dict)
    from edm2.data.encoders import check_encoder_config

    check_encoder_config(encoder, f"{path}: metadata field 'encoder'", network_kwargs["img_channels"])
    return SnapshotInfo(
        network_kwargs=network_kwargs,
        encoder=encoder,
        nimg=_int_field(path, meta, "nimg", 0, (1 << 63) - 1),
        ema_std=_std_field(path, meta, "ema_std"),
        extra=json_field(path, meta, "extra", dict, default={}),
    )


def load_state_dict(path, device="cpu") -> dict:
    try:
        return load_file(str(path), device=str(device))
    except Exception as e:  # the reader's own error type (truncated file, bad header, ...)
        raise FormatError(f"{path}: not a readable safetensors file ({one_line(str(e))})") from None


def build_network(network_kwargs: dict, device="meta"):
    """Construct a `Precond` from stored constructor arguments (weights uninitialised on meta)."""
    with torch.device(device):
        return Precond(**network_kwargs)


def check_finite_tensors(tensors: dict, where: str) -> None:
    """Raise `FormatError` naming `where` and the first tensor of `tensors` {name: tensor} that
    holds a NaN or an infinity: such weights give NaN images and scores, never an error of their
    own. One pass over the data (a reduction per tensor, read back once)."""
    names = [name for name, t in tensors.items() if t.is_floating_point() and t.numel()]
    if not names:
        return
    peaks = torch.stack([tensors[name].detach().abs().amax().float().cpu() for name in names])  # NaN/inf propagate
    if bool(torch.isfinite(peaks).all()):
        return
    name = names[int((~torch.isfinite(peaks)).nonzero()[0, 0])]
    t = tensors[name]
    raise FormatError(
        f"{where}: weight {name} is not finite ({int(t.isnan().sum())} NaN, {int(t.isinf().sum())} infinite "
        "values); the network was saved from a diverged run or damaged. Use an earlier snapshot"
    )


def load_snapshot(path, device="cpu", dtype: torch.dtype | None = torch.float32):
    """Load a snapshot as `(net, info)`: an eval-mode `Precond` with grads disabled.

    Raises `FormatError` if the file is not a snapshot, its tensor data is damaged or a weight
    is not finite (NaN or infinite; `check_finite_tensors`).

    `dtype` casts floating parameters and buffers (None keeps the stored dtype, fp16).
    """
    info = read_snapshot_info(path)
    verify_safetensors(path)
    state = load_state_dict(path, device=device)
    check_finite_tensors(state, str(path))
    net = build_network(info.network_kwargs, device="meta")
    try:
        net.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as e:  # the file changed since its header was read
        raise FormatError(f"{path}: {one_line(str(e))}") from None
    if dtype is not None:
        net = net.to(dtype)
    net.eval().requires_grad_(False)
    return net, info
