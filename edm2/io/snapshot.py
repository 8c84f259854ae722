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
import json
import struct
from pathlib import Path

import torch

from edm2.errors import FormatError
from edm2.io.atomic import atomic_path

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
    atomically, with the usual file mode (0666 less the umask), and byte-identical for identical
    inputs.

    The safetensors writer orders the metadata entries differently on every call (a hash map);
    the header is rewritten in place with the entries sorted, which keeps its length, so two
    identical runs write identical files.
    """
    from safetensors.torch import save_file

    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
        _sort_metadata_in_place(tmp)


def _sort_metadata_in_place(path) -> None:
    with open(path, "r+b") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        raw = f.read(length)
        header = json.loads(raw)
        meta = header.pop("__metadata__", None)
        ordered = {"__metadata__": dict(sorted(meta.items()))} if meta is not None else {}
        ordered.update(header)  # tensor entries keep the writer's (deterministic) order
        text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) > length:  # not the writer's JSON layout: leave the file as written
            return
        f.seek(8)
        f.write(text + b" " * (length - len(text)))


def read_metadata(path, expected_format: str, what: str, missing: str) -> dict:
    """The string metadata of a safetensors file whose 'format' entry must be `expected_format`.

    `what` names the kind of file in errors ("edm2 snapshot"); `missing` is the whole message
    for a file that does not exist. No tensor data is read.
    """
    from safetensors import safe_open

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
    from safetensors.torch import load_file

    return load_file(str(path), device=str(device))


def build_network(network_kwargs: dict, device="meta"):
    """Construct a `Precond` from stored constructor arguments (weights uninitialised on meta)."""
    from edm2.nn import Precond

    with torch.device(device):
        return Precond(**network_kwargs)


def load_snapshot(path, device="cpu", dtype: torch.dtype | None = torch.float32):
    """Load a snapshot as `(net, info)`: an eval-mode `Precond` with grads disabled.

    `dtype` casts floating parameters and buffers (None keeps the stored dtype, fp16).
    """
    info = read_snapshot_info(path)
    state = load_state_dict(path, device=device)
    net = build_network(info.network_kwargs, device="meta")
    net.load_state_dict(state, strict=True, assign=True)
    if dtype is not None:
        net = net.to(dtype)
    net.eval().requires_grad_(False)
    return net, info
