"""The network snapshot format: safetensors with the official state-dict key names and the
network/encoder configuration in the metadata (DESIGN.md, "File formats"). No pickle.

Metadata keys (all strings, as safetensors requires):
    format          "edm2-snapshot/1"
    network_kwargs  JSON of the `Precond` constructor arguments (`net.init_kwargs`)
    encoder         JSON of the encoder config ({"class": "StandardRGBEncoder"} or
                    {"class": "StabilityVAEEncoder", "vae_name": ..., ...})
    nimg            training images seen when the weights were taken (int)
    ema_std         relative EMA std, or "" when not an EMA
    extra           JSON of anything else (dataset/loss kwargs, phema inputs and coefficients)
"""

import dataclasses
import hashlib
import json
import struct
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from edm2.errors import FormatError, OutputError
from edm2.io.atomic import atomic_path
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


def write_safetensors(path, tensors: dict, metadata: dict) -> None:
    """Write `tensors` (name -> contiguous CPU tensor) and string `metadata` to a safetensors file:
    atomically, with the usual file mode (0666 less the umask), byte-identical for identical
    inputs, and with the SHA-256 of its tensor data in the metadata entry "sha256" (checked by
    `verify_safetensors` when the file is loaded).

    The safetensors writer orders the metadata entries differently on every call (a hash map).
    The header is rewritten in place with the entries sorted and the digest filled into a
    placeholder of the same length, so the data never moves.
    """
    with atomic_path(path, suffix=".safetensors") as tmp:
        try:
            save_file(tensors, str(tmp), metadata={**metadata, "sha256": "0" * 64})
        except Exception as e:  # the writer reports a failed write (disk full, ...) as its own error type
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise OutputError(f"cannot write {path}: {first}; free space or choose another location") from None
        with open(tmp, "r+b") as f:
            length, header = _read_header(f, tmp)
            meta = header.pop("__metadata__")
            meta["sha256"] = _data_sha256(f, 8 + length)
            ordered = {"__metadata__": dict(sorted(meta.items())), **header}  # tensors keep their order
            text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode()
            if len(text) > length:
                raise FormatError(f"{path}: unexpected safetensors header layout; not written")
            f.seek(8)
            f.write(text + b" " * (length - len(text)))


def verify_safetensors(path) -> None:
    """Raise `FormatError` if the tensor data of a safetensors file no longer matches the SHA-256
    recorded when it was written (a file damaged on disk or in transfer). Files without a
    recorded digest (older ones, the post-hoc EMA's streaming writer) are not checked."""
    with open(path, "rb") as f:
        length, header = _read_header(f, path)
        expected = (header.get("__metadata__") or {}).get("sha256")
        if expected is None:
            return
        actual = _data_sha256(f, 8 + length)
    if actual != expected:
        raise FormatError(
            f"{path}: contents damaged (SHA-256 of the tensor data {actual}, written with {expected}); "
            "restore or recreate the file"
        )


def _read_header(f, path) -> tuple[int, dict]:
    f.seek(0)
    raw = f.read(8)
    if len(raw) < 8:
        raise FormatError(f"{path}: not a safetensors file (too short)")
    (length,) = struct.unpack("<Q", raw)
    try:
        return length, json.loads(f.read(length))
    except ValueError:
        raise FormatError(f"{path}: not a safetensors file (unreadable header)") from None


def _data_sha256(f, start: int) -> str:
    f.seek(start)
    digest = hashlib.sha256()
    while chunk := f.read(1 << 24):
        digest.update(chunk)
    return digest.hexdigest()


def read_metadata(path, expected_format: str, what: str, missing: str) -> dict:
    """The string metadata of a safetensors file whose 'format' entry must be `expected_format`.

    `what` names the kind of file in errors ("edm2 snapshot"); `missing` is the whole message
    for a file that does not exist. No tensor data is read.
    """
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except FileNotFoundError:
        raise FormatError(missing) from None
    except Exception as e:
        raise FormatError(f"{path}: not a readable safetensors file ({e})") from None
    if meta.get("format") != expected_format:
        raise FormatError(
            f"{path}: not an {what} (metadata format={meta.get('format')!r}, expected {expected_format!r})"
        )
    return meta


def read_snapshot_info(path) -> SnapshotInfo:
    """Read only the metadata of a snapshot (fast: no tensor data is loaded)."""
    path = Path(path)
    meta = read_metadata(path, FORMAT, "edm2 snapshot", f"{path}: no such snapshot file")
    return SnapshotInfo(
        network_kwargs=json.loads(meta["network_kwargs"]),
        encoder=json.loads(meta["encoder"]),
        nimg=int(meta["nimg"]),
        ema_std=float(meta["ema_std"]) if meta.get("ema_std") else None,
        extra=json.loads(meta.get("extra") or "{}"),
    )


def load_state_dict(path, device="cpu") -> dict:
    return load_file(str(path), device=str(device))


def build_network(network_kwargs: dict, device="meta"):
    """Construct a `Precond` from stored constructor arguments (weights uninitialised on meta)."""
    with torch.device(device):
        return Precond(**network_kwargs)


def load_snapshot(path, device="cpu", dtype: torch.dtype | None = torch.float32):
    """Load a snapshot as `(net, info)`: an eval-mode `Precond` with grads disabled.

    Raises `FormatError` if the file is not a snapshot or its tensor data is damaged.

    `dtype` casts floating parameters and buffers (None keeps the stored dtype, fp16).
    """
    info = read_snapshot_info(path)
    verify_safetensors(path)
    state = load_state_dict(path, device=device)
    net = build_network(info.network_kwargs, device="meta")
    net.load_state_dict(state, strict=True, assign=True)
    if dtype is not None:
        net = net.to(dtype)
    net.eval().requires_grad_(False)
    return net, info
