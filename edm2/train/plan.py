"""The plan of a training run: the options checked against each other, the number of processes
and the data, before any compute (docs/method.md#training).

    plan = plan_training(opts, world_size)     ConfigError / DataError, or:
    plan.batch_gpu, plan.rounds                micro-batch per process and accumulation rounds
    plan.intervals.snapshot                    named intervals in images (None = never)
    plan.intervals.stop_at(cur_nimg, ...)      where this invocation stops (slice or duration)

`edm2 train` makes the plan before it writes anything; `training_loop` uses its dataset instead
of opening another. The checks are those of the official training_loop.py's assertions.
"""

import dataclasses

from edm2.errors import ConfigError
from edm2.train.data import open_dataset
from edm2.train.options import TrainOptions


@dataclasses.dataclass(frozen=True)
class Intervals:
    """The intervals of a run in images; None disables one (the options' 0)."""

    status: int | None  # Status line and stats.jsonl every N images.
    snapshot: int | None  # EMA snapshots every N images.
    checkpoint: int | None  # Training state every N images and at the end (None: only on a signal).
    slice: int | None  # Train at most N images in one invocation (None: no limit).

    @classmethod
    def of(cls, opts: TrainOptions) -> "Intervals":
        return cls(opts.status or None, opts.snapshot or None, opts.checkpoint or None, opts.slice or None)

    def check(self, batch_size: int, total_nimg: int) -> None:
        """The divisibility rules of docs/method.md#training (the official assertions); ConfigError."""
        if batch_size <= 0:
            raise ConfigError(f"--batch must be positive, got {batch_size}")
        if total_nimg <= 0 or total_nimg % batch_size:
            raise ConfigError(f"--duration {total_nimg} must be a positive multiple of --batch {batch_size}")
        for name, value, need_1024 in [
            ("--slice", self.slice, False),
            ("--status", self.status, False),
            ("--snapshot", self.snapshot, True),
            ("--checkpoint", self.checkpoint, True),
        ]:
            if value is None:
                continue
            if value < 0:
                raise ConfigError(f"{name} must be positive, or 0 to disable it; got {value}")
            if value % batch_size:
                raise ConfigError(f"{name} {value} must be a multiple of --batch {batch_size}")
            if need_1024 and value % 1024:
                raise ConfigError(
                    f"{name} {value} must be a multiple of 1024 (so that kimg names the image count exactly, "
                    "docs/method.md#training); use e.g. 8Mi or 1Ki"
                )
        if self.slice is not None and not self.checkpoint:
            raise ConfigError("--slice needs checkpoints to resume from; set --checkpoint (e.g. 128Mi)")

    def stop_at(self, cur_nimg: int, total_nimg: int, batch_size: int) -> int:
        """Where an invocation that starts at `cur_nimg` stops: the duration, or the slice rounded
        down to a checkpoint (or snapshot, or batch) as the official loop does; ConfigError when
        the slice ends before the next one."""
        if self.slice is None or cur_nimg >= total_nimg:
            return total_nimg
        granularity = self.checkpoint or self.snapshot or batch_size
        stop_at = min(total_nimg, (cur_nimg + self.slice) // granularity * granularity)
        if stop_at <= cur_nimg:
            raise ConfigError(
                f"--slice {self.slice} ends before the next checkpoint ({cur_nimg} + {self.slice} images rounded "
                f"down to a multiple of {granularity}); make the slice at least as long as --checkpoint"
            )
        return stop_at


def resolve_batch(batch_size: int, batch_gpu: int | None, world_size: int) -> tuple[int, int, int]:
    """(batch_gpu_total, batch_gpu, rounds) with batch = batch_gpu * rounds * world (docs/method.md#training)."""
    if batch_size % world_size:
        raise ConfigError(f"--batch {batch_size} is not divisible by the number of processes ({world_size})")
    batch_gpu_total = batch_size // world_size
    if not batch_gpu or batch_gpu > batch_gpu_total:
        batch_gpu = batch_gpu_total
    rounds = batch_gpu_total // batch_gpu
    if batch_size != batch_gpu * rounds * world_size:
        raise ConfigError(
            f"--batch {batch_size} must equal --batch-gpu {batch_gpu} x accumulation rounds x {world_size} "
            f"processes; choose a --batch-gpu that divides {batch_gpu_total}"
        )
    return batch_gpu_total, batch_gpu, rounds


@dataclasses.dataclass
class TrainingPlan:
    """Resolved options checked against each other, the process count and the data."""

    dataset: object  # ImageFolderDataset, checked against the options (edm2.train.data.open_dataset)
    batch_size: int  # Images per optimizer step, all processes together.
    batch_gpu_total: int  # Images per process per optimizer step.
    batch_gpu: int  # Images per process per forward/backward round.
    rounds: int  # Gradient accumulation rounds per step.
    total_nimg: int  # The run's duration in images.
    intervals: Intervals


def plan_training(opts: TrainOptions, world_size: int) -> TrainingPlan:
    """Check resolved options for `world_size` processes (ConfigError) and open the dataset
    (DataError); nothing is written."""
    intervals = Intervals.of(opts)
    intervals.check(opts.batch, opts.duration)
    batch_gpu_total, batch_gpu, rounds = resolve_batch(opts.batch, opts.batch_gpu or None, world_size)
    dataset = open_dataset(opts.dataset_kwargs())
    return TrainingPlan(dataset, opts.batch, batch_gpu_total, batch_gpu, rounds, opts.duration, intervals)
