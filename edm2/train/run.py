"""`edm2 train` as a library call: typed options, presets, the run directory, logs (docs/method.md#presets).

    opts = TrainOptions(outdir="runs/demo", data="data/digits.zip", preset="edm2-img64-xs", duration=64 << 10)
    result = run_training(opts)      # resumes from the newest training state in runs/demo

Every rank checks the options and the dataset before any compute; rank 0 creates the run
directory and writes `training_options.json` when it has none; an existing one that disagrees on
anything that changes the numbers is refused. Every rank appends its stdout/stderr to `log.txt`.
"""

import dataclasses
import json
from pathlib import Path

from edm2.distributed import barrier, init_distributed, print0, resolve_env
from edm2.errors import ConfigError
from edm2.io.atomic import atomic_write_text
from edm2.presets import get_training_preset
from edm2.train.loop import TrainingResult, plan_training, training_loop
from edm2.train.status import tee_output

EX_TEMPFAIL = 75  # exit status after a signal: a training state is written, re-run the same command
OPTIONS_FILE = "training_options.json"

# Options that may change between invocations of one run without changing what it computes
# (or, for duration, only how far it goes); everything else must match training_options.json.
OPERATIONAL = (
    "outdir",
    "preset",
    "duration",
    "batch_gpu",
    "bench",
    "status",
    "snapshot",
    "checkpoint",
    "slice",
    "workers",
    "channels_last",
    "compile",
    "fast",
    "dry_run",
)


@dataclasses.dataclass
class TrainOptions:
    """The options of `edm2 train`; None fields are filled from the preset (docs/method.md#presets)."""

    outdir: str  # Where to save the results.
    data: str  # Path to the dataset (ZIP or folder).
    cond: bool = True  # Train class-conditional model.
    preset: str = "edm2-img512-s"  # Configuration preset; fills the options left None.
    duration: int | None = None  # Training duration in images.
    batch: int | None = None  # Total batch size in images.
    channels: int | None = None  # Channel multiplier (model_channels).
    dropout: float | None = None  # Dropout probability.
    P_mean: float | None = None  # Noise level mean, ln(sigma).
    P_std: float | None = None  # Noise level standard deviation, ln(sigma).
    lr: float | None = None  # Reference learning rate.
    decay: float | None = None  # Learning rate decay start, in batches.
    batch_gpu: int = 0  # Limit batch size per process; 0 = no limit.
    precision: str = "fp16"  # fp32, fp16 or bf16 (mixed precision only on CUDA).
    loss_scaling: float = 1.0  # Loss scaling.
    bench: bool = True  # Enable cuDNN benchmarking.
    status: int = 128 << 10  # Interval of status prints, in images; 0 = never.
    snapshot: int = 8 << 20  # Interval of network snapshots, in images; 0 = never.
    checkpoint: int = 128 << 20  # Interval of training states, in images; 0 = never.
    slice: int | None = None  # Train at most this many images in this invocation.
    seed: int = 0  # Random seed.
    workers: int = 2  # DataLoader worker processes (0 = read in the training process).
    channels_last: bool = False  # Channels-last convolutions: faster on CPU, equal up to float rounding.
    compile: bool = False  # torch.compile the network: faster after minutes of compiling, equal up to float rounding.
    fast: bool = False  # compile + channels-last + fused attention (+ fused Adam on CUDA): equal up to float rounding.
    channel_mult: list[int] | None = None  # Per-resolution channel multipliers (UNet default 1,2,3,4).
    num_blocks: int | None = None  # Residual blocks per resolution (UNet default 3).
    attn_resolutions: list[int] | None = None  # Resolutions with self-attention (UNet default 16,8).
    ema_stds: list[float] = dataclasses.field(default_factory=lambda: [0.050, 0.100])  # EMA lengths to track.
    dry_run: bool = False  # Print the options and exit.

    def resolved(self) -> "TrainOptions":
        """A copy with the preset's values in every option left None (docs/method.md#presets)."""
        missing = [
            f
            for f in ("duration", "batch", "channels", "dropout", "P_mean", "P_std", "lr", "decay")
            if getattr(self, f) is None
        ]
        if not missing:
            return dataclasses.replace(self)

        preset = get_training_preset(self.preset)
        return dataclasses.replace(self, **{f: getattr(preset, f) for f in missing})


def loop_arguments(opts: TrainOptions) -> dict:
    """training_loop() keyword arguments of resolved options (the mapping of the official train.py)."""
    network_kwargs = dict(model_channels=int(opts.channels), dropout=float(opts.dropout))
    if opts.channel_mult is not None:
        network_kwargs["channel_mult"] = [int(v) for v in opts.channel_mult]
    if opts.num_blocks is not None:
        network_kwargs["num_blocks"] = int(opts.num_blocks)
    if opts.attn_resolutions is not None:
        network_kwargs["attn_resolutions"] = [int(v) for v in opts.attn_resolutions]
    return dict(
        run_dir=str(opts.outdir),
        dataset_kwargs=dict(path=str(opts.data), use_labels=bool(opts.cond)),
        network_kwargs=network_kwargs,
        loss_kwargs=dict(P_mean=float(opts.P_mean), P_std=float(opts.P_std)),
        lr_kwargs=dict(ref_lr=float(opts.lr), ref_batches=float(opts.decay)),
        ema_stds=[float(s) for s in opts.ema_stds],
        seed=int(opts.seed),
        batch_size=int(opts.batch),
        batch_gpu=int(opts.batch_gpu) or None,
        total_nimg=int(opts.duration),
        slice_nimg=int(opts.slice) if opts.slice else None,
        status_nimg=int(opts.status) or None,
        snapshot_nimg=int(opts.snapshot) or None,
        checkpoint_nimg=int(opts.checkpoint) or None,
        loss_scaling=float(opts.loss_scaling),
        cudnn_benchmark=bool(opts.bench),
        precision=opts.precision,
        num_workers=int(opts.workers),
        channels_last=bool(opts.channels_last),
        compile=bool(opts.compile),
        fast=bool(opts.fast),
    )


def _options_record(opts: TrainOptions) -> dict:
    record = dataclasses.asdict(opts)
    record["data"] = str(Path(opts.data).resolve())
    record["outdir"] = str(Path(opts.outdir).resolve())
    return record


def check_run_dir(outdir, record: dict) -> bool:
    """Refuse a run directory whose training_options.json disagrees with `record`; True if it has one."""
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


def run_training(opts: TrainOptions, progress: bool | None = None, device: str | None = None, stop=None, **loop_extra):
    """Validate, prepare the run directory and train; returns a TrainingResult (None on a dry run).

    `stop`: a StopSignal the caller installed, so that a SIGTERM during the start-up is caught too
    and stops the run before its first step. `loop_extra` goes to training_loop() as is (e.g.
    step_hook, lr_kwargs overrides for tests).
    """
    opts = opts.resolved()
    kwargs = loop_arguments(opts)
    kwargs.update(loop_extra)
    record = _options_record(opts)
    if opts.dry_run:
        _plan(kwargs, resolve_env().world_size)
        check_run_dir(opts.outdir, record)
        print(json.dumps({"options": record, "training_loop": kwargs}, indent=2, default=str))
        print("Dry run; exiting.")
        return None

    env, _device = init_distributed(device)
    print0("Loading dataset...")
    plan = _plan(kwargs, env.world_size)  # every rank checks the options and the data before any compute
    outdir = Path(opts.outdir)
    exists = check_run_dir(outdir, record)
    if env.rank == 0:
        outdir.mkdir(parents=True, exist_ok=True)
        if not exists:
            loop = {k: v for k, v in kwargs.items() if not callable(v)}
            text = json.dumps({"options": record, "training_loop": loop}, indent=2, default=str) + "\n"
            atomic_write_text(outdir / OPTIONS_FILE, text)
    barrier()
    with tee_output(outdir / "log.txt"):
        print0(f"Training options: {json.dumps(record)}")
        return training_loop(
            **kwargs,
            device=device,
            progress=progress,
            stop=stop,
            snapshot_extra={"training_options": record},
            plan=plan,
        )


def _plan(kwargs: dict, world_size: int):
    """plan_training() of training_loop() keyword arguments."""
    return plan_training(
        kwargs["dataset_kwargs"],
        kwargs["precision"],
        kwargs["batch_size"],
        kwargs["batch_gpu"],
        world_size,
        kwargs["total_nimg"],
        kwargs["slice_nimg"],
        kwargs["status_nimg"],
        kwargs["snapshot_nimg"],
        kwargs["checkpoint_nimg"],
    )


def exit_status(result: TrainingResult | None) -> int:
    """0 when the slice or the run finished (or a dry run); 75 (EX_TEMPFAIL) after a signal."""
    if result is not None and result.signal is not None:
        return EX_TEMPFAIL
    return 0
