"""`edm2 train` as a library call: checked options, the run directory, logs (docs/method.md#presets).

    opts = TrainOptions(outdir="runs/demo", data="data/digits.zip", preset="edm2-img64-xs", duration=64 << 10)
    result = run_training(opts)      # resumes from the newest training state in runs/demo

The options are those of the table in edm2.train.options (checked when constructed). Every rank
checks them against each other and the dataset (edm2.train.plan) before any compute; rank 0
creates the run directory and writes `training_options.json` when it has none; an existing one
that disagrees on an option that is not operational (one that changes what is computed) is
refused, so a run may be resumed with another duration, intervals or speed options. Every rank
appends its stdout/stderr to `log.txt`.

One writer per run: once the options and the dataset are checked (nothing in the run folder is
read for that, and a refused dataset leaves no folder behind), rank 0 takes the run folder's
lock (edm2.io.runlock.RunLock, a POSIX record lock that a killed process releases) before
anything there is read or written, and every rank
learns the outcome before any other work; a second `edm2 train` on the same --outdir (a
resubmitted job beside a live one) is refused in one line naming the holder, whatever the first
has written so far. The lock is held until the run returns.
"""

import dataclasses
import json
from pathlib import Path

from edm2.distributed import all_ranks_agree, barrier, init_distributed, print0, resolve_env
from edm2.errors import ConfigError
from edm2.io.atomic import atomic_write_text
from edm2.io.runlock import RunLock
from edm2.train.loop import TrainingResult, training_loop
from edm2.train.options import OPERATIONAL, TrainOptions
from edm2.train.plan import plan_training
from edm2.train.status import tee_output

EX_TEMPFAIL = 75  # exit status after a signal: a training state is written, re-run the same command
OPTIONS_FILE = "training_options.json"

__all__ = ["TrainOptions", "run_training", "check_run_dir", "exit_status", "EX_TEMPFAIL", "OPTIONS_FILE"]


def check_run_dir(outdir, record: dict) -> bool:
    """Refuse a run directory whose training_options.json disagrees with `record` on an option
    that is not operational (edm2.train.options.OPERATIONAL); True if it has one."""
    path = Path(outdir) / OPTIONS_FILE
    if not path.is_file():
        return False
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path} is unreadable ({e}); fix or delete it, or use a new --outdir") from None
    old = old.get("options", old)
    diffs = [
        f"{key}: {old.get(key)!r} there, {value!r} now"
        for key, value in record.items()
        if key not in OPERATIONAL and key in old and old[key] != value  # keys new to this version pass
    ]
    if diffs:
        raise ConfigError(
            f"{outdir} holds a run with different options ({'; '.join(diffs)}); "
            "resume it with its own options (see its training_options.json) or choose a new --outdir"
        )
    return True


def options_json(opts: TrainOptions, lr_kwargs: dict | None = None) -> str:
    """`training_options.json` of resolved options: {"options": the record (as in the snapshots'
    metadata), "derived": what the loop makes of them (network, loss, schedule and dataset
    arguments, the intervals)}."""
    derived = dict(
        dataset_kwargs=opts.dataset_kwargs(),
        network_kwargs=opts.network_kwargs(),
        loss_kwargs=opts.loss_kwargs(),
        config_training=dataclasses.asdict(opts.training()),  # the config's loss, EMA, Adam, safety
        lr_kwargs=lr_kwargs or opts.lr_kwargs(),
        ema_stds=[float(s) for s in opts.ema_stds] if opts.training().ema == "power" else None,  # A: none
        intervals=dict(status=opts.status or None, snapshot=opts.snapshot or None, checkpoint=opts.checkpoint or None),
        slice=opts.slice or None,
    )
    return json.dumps({"options": opts.record(), "derived": derived}, indent=2) + "\n"


def run_training(opts: TrainOptions, progress: bool | None = None, device: str | None = None, stop=None, **loop_extra):
    """Validate, prepare the run directory and train; returns a TrainingResult (None on a dry run).

    `stop`: a StopSignal the caller installed, so that a SIGTERM during the start-up is caught too
    and stops the run before its first step. `loop_extra` goes to training_loop() as is
    (step_hook, lr_kwargs).
    """
    opts = opts.resolved()
    record = opts.record()
    if opts.dry_run:
        plan_training(opts, resolve_env().world_size)
        check_run_dir(opts.outdir, record)
        print(options_json(opts, loop_extra.get("lr_kwargs")), end="")
        print("Dry run; exiting.")
        return None

    env, device_ = init_distributed(device)
    print0("Loading dataset...")
    plan = plan_training(opts, env.world_size)  # every rank checks the options and the data before any compute
    outdir = Path(opts.outdir)
    lock = lock_run_dir(outdir, env.rank, device_)  # before anything in outdir is read or written
    try:
        exists = check_run_dir(outdir, record)
        if env.rank == 0:
            outdir.mkdir(parents=True, exist_ok=True)
            if not exists:
                atomic_write_text(outdir / OPTIONS_FILE, options_json(opts, loop_extra.get("lr_kwargs")))
        barrier()
        with tee_output(outdir / "log.txt"):
            print0(f"Training options: {json.dumps(record)}")
            return training_loop(opts, device=device, progress=progress, stop=stop, plan=plan, **loop_extra)
    finally:
        if lock is not None:
            lock.release()


def lock_run_dir(outdir, rank: int, device) -> RunLock | None:
    """Rank 0 takes the lock of the run folder `outdir` (created if missing); every rank then
    learns whether it got it (one all-reduce), so that all go on or all stop. Returns the held
    lock on rank 0 (None elsewhere, or where the file system cannot lock: a warning is given).
    Raises ConfigError on every rank when another process holds it: rank 0's message names the
    holder (host, process id, since when)."""
    lock, refusal = None, None
    if rank == 0:
        try:
            lock = RunLock(outdir, "run folder").acquire()
        except ConfigError as e:
            refusal = e
    if all_ranks_agree(refusal is not None, device):
        if lock is not None:
            lock.release()
        raise refusal or ConfigError(f"{outdir} is in use by another process (rank 0 was refused its lock)")
    return lock


def exit_status(result: TrainingResult | None) -> int:
    """0 when the slice or the run finished (or a dry run); 75 (EX_TEMPFAIL) after a signal."""
    if result is not None and result.signal is not None:
        return EX_TEMPFAIL
    return 0
