"""Training states, network snapshots and the done marker of a run directory (docs/method.md#training).

training-state-{kimg:07d}.pt                    torch.save of plain state dicts (weights_only), with
                                                a SHA-256 of the contents ("checksum") checked on load
network-snapshot-{kimg:07d}-{std:.3f}.safetensors   one per EMA, fp16 (edm2.io.snapshot)
training-done.json                              {"nimg", "kimg", "snapshots"} once the duration is reached
"""

import hashlib
import json
from pathlib import Path

import torch

from edm2.distributed import barrier, check_ddp_consistency
from edm2.ema.tracking import describe_ema_state
from edm2.errors import ConfigError, OutputError, one_line
from edm2.io.atomic import atomic_path, atomic_write_text, torch_save
from edm2.io.snapshot import save_snapshot
from edm2.naming import (
    DONE_FILE,
    SNAPSHOT_PREFIX,
    parse_snapshot_name,
    parse_training_state_name,
    snapshot_name,
    training_state_name,
)

STATE_KEYS = ("state", "net", "loss_fn", "optimizer", "ema")


def state_path(run_dir, cur_nimg: int) -> Path:
    """`RUN/training-state-<kimg>.pt` of the training state at `cur_nimg` images."""
    return Path(run_dir) / training_state_name(cur_nimg // 1000)


def snapshot_path(run_dir, cur_nimg: int, std: float) -> Path:
    """`RUN/network-snapshot-<kimg>-<std>.safetensors` of the EMA with relative std `std` at `cur_nimg` images."""
    return Path(run_dir) / snapshot_name(SNAPSHOT_PREFIX, cur_nimg // 1000, std)


def list_training_states(run_dir) -> list[Path]:
    """`training-state-*.pt` files of a run, newest (highest kimg, numeric compare) first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [(kimg, p) for p in run_dir.iterdir() if (kimg := parse_training_state_name(p.name)) is not None]
    return [p for _kimg, p in sorted(found, key=lambda item: item[0], reverse=True)]


def list_snapshots(run_dir) -> list[str]:
    """Sorted names of the training snapshots (`network-snapshot-*.safetensors`) in a run directory."""
    run_dir = Path(run_dir)
    names = [p.name for p in run_dir.iterdir() if _is_training_snapshot(p.name)] if run_dir.is_dir() else []
    return sorted(names)


def content_checksum(data) -> str:
    """SHA-256 of a training state's contents: every tensor's dtype, shape and bytes, every other
    value's repr, walked in key order (dicts), so equal contents give equal digests."""
    digest = hashlib.sha256()

    def walk(value, key):
        if isinstance(value, dict):
            digest.update(f"{key}{{".encode())
            for k in sorted(value, key=str):
                walk(value[k], f"{k!r}:")
            digest.update(b"}")
        elif isinstance(value, (list, tuple)):
            digest.update(f"{key}[".encode())
            for item in value:
                walk(item, "")
            digest.update(b"]")
        elif isinstance(value, torch.Tensor):
            t = value.detach().to("cpu").contiguous().reshape(-1)
            digest.update(f"{key}tensor:{t.dtype}:{list(value.shape)};".encode())
            digest.update(memoryview(t.view(torch.uint8).numpy()))
        else:
            digest.update(f"{key}{value!r};".encode())

    walk(data, "")
    return digest.hexdigest()


def _is_training_snapshot(name: str) -> bool:
    parsed = parse_snapshot_name(name, ext="safetensors")
    return parsed is not None and parsed.prefix == SNAPSHOT_PREFIX


def read_training_state(path) -> dict:
    """Load one training state safely (weights_only) and verify its checksum.

    Raises ValueError if it is not a training state or its contents differ from the checksum
    written with it (a file damaged on disk that still unpickles). States written before the
    checksum existed load without the check.
    """
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, not a zip, unpickling refused, ...
        raise ValueError(f"{type(e).__name__}: {one_line(str(e))}") from None
    if not isinstance(data, dict) or any(k not in data for k in STATE_KEYS):
        raise ValueError(f"not a training state (expected the keys {', '.join(STATE_KEYS)})")
    if "cur_nimg" not in data["state"]:
        raise ValueError("its 'state' has no cur_nimg")
    expected = data.pop("checksum", None)
    if expected is not None:
        actual = content_checksum(data)
        if actual != expected:
            raise ValueError(f"contents damaged: SHA-256 {actual[:16]}..., written with {expected[:16]}...")
    return data


def load_latest_training_state(run_dir, log=print) -> tuple[dict | None, Path | None]:
    """The newest readable training state of a run (docs/method.md#training); unreadable ones are reported and skipped."""
    for path in list_training_states(run_dir):
        try:
            return read_training_state(path), path
        except ValueError as e:
            log(f"Warning: cannot read {path} ({e}); trying the previous training state.")
    return None, None


def write_training_state(path, data: dict) -> None:
    """torch.save (with a "checksum" of the contents) under a temporary name, then rename."""
    try:
        with atomic_path(path, suffix=".pt") as tmp:
            torch_save({**data, "checksum": content_checksum(data)}, tmp)
    except OSError as e:  # a full disk, a quota, an I/O error: named, in words
        raise OutputError(
            f"cannot write training state {path}: {e.strerror or e}; free space or choose another --outdir"
        ) from None


def write_snapshots(run_dir, cur_nimg, ema, network_kwargs, encoder_config, extra) -> list[Path]:
    """One fp16 safetensors snapshot per tracked EMA (docs/method.md#training), named by its
    relative std (PowerFunctionEMA, HalfLifeEMA.snapshots); returns the paths."""
    paths = []
    for ema_net, std in ema.snapshots(cur_nimg):
        path = snapshot_path(run_dir, cur_nimg, std)
        save_snapshot(
            path,
            ema_net.state_dict(),
            network_kwargs=network_kwargs,
            encoder=encoder_config,
            nimg=cur_nimg,
            ema_std=std,
            extra=extra,
            dtype=torch.float16,
        )
        paths.append(path)
    return paths


def write_done(run_dir, cur_nimg: int) -> None:
    """`RUN/training-done.json` ({"nimg", "kimg", "snapshots"}), atomically, once the duration is reached."""
    data = {"nimg": int(cur_nimg), "kimg": int(cur_nimg) // 1000, "snapshots": list_snapshots(run_dir)}
    atomic_write_text(Path(run_dir) / DONE_FILE, json.dumps(data, indent=2) + "\n")


def save_training_state(run_dir, cur_nimg: int, elapsed: float, *, net, loss_fn, optimizer, ema, rank, device) -> None:
    """Rank 0 writes `training-state-{kimg}.pt` atomically (the official CheckpointIO.save: state,
    net, loss_fn, optimizer, ema); then every rank checks that its network matches rank 0's
    (docs/method.md#training). `elapsed`: seconds trained in all invocations so far."""
    path = state_path(run_dir, cur_nimg)
    if rank == 0:
        data = dict(
            state=dict(cur_nimg=cur_nimg, total_elapsed_time=elapsed),
            net=net.state_dict(),
            loss_fn=loss_fn.kwargs(),
            optimizer=optimizer.state_dict(),
            ema=ema.state_dict(),
        )
        write_training_state(path, data)
        print(f"Saved {path.name}")
    check_ddp_consistency(net, device)
    barrier()


def restore_training_state(run_dir, *, net, optimizer, ema, loss_fn, log=print) -> tuple[int, float]:
    """Load the newest readable training state of `run_dir` into the objects (docs/method.md#training);
    returns (cur_nimg, elapsed seconds), (0, 0.0) when there is none. ConfigError when it tracks
    other EMA lengths or holds another network than the options describe."""
    data, path = load_latest_training_state(run_dir, log=log)
    if data is None:
        return 0, 0.0
    log(f"Resuming from {path}")
    saved, wanted = describe_ema_state(data["ema"]), ema.describe()
    if saved != wanted:
        raise ConfigError(
            f"{path} tracks a {saved}, this run asks for a {wanted}; use the same --ema-stds and --config or a new "
            "--outdir"
        )
    try:
        net.load_state_dict(data["net"])
    except RuntimeError as e:
        raise ConfigError(
            f"{path} holds a different network than the options describe ({e}); use a new --outdir"
        ) from None
    optimizer.load_state_dict(data["optimizer"])
    ema.load_state_dict(data["ema"])
    for key, value in data["loss_fn"].items():
        setattr(loss_fn, key, value)
    return int(data["state"]["cur_nimg"]), float(data["state"].get("total_elapsed_time", 0.0))
