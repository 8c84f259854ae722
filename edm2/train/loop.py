"""The EDM2 training loop (docs/method.md#training): one function with plain arguments.

Per iteration (docs/method.md#training): status -> snapshot (rank 0) -> checkpoint -> exit if done -> one
optimizer step (docs/method.md#training) -> EMA update. A run is a pure function of its options: every random
draw is seeded from (seed, rank, cur_nimg) and the data stream resumes at cur_nimg.
"""

import contextlib
import dataclasses
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from edm2.data.dataset import ImageFolderDataset
from edm2.data.encoders import StabilityVAEEncoder, StandardRGBEncoder
from edm2.distributed import all_ranks_agree, barrier, check_ddp_consistency, init_distributed, print0
from edm2.ema import PowerFunctionEMA
from edm2.errors import ConfigError, DataError
from edm2.nn import Precond
from edm2.signals import StopSignal
from edm2.train import checkpoint as ckpt
from edm2.train.data import InfiniteSampler, make_batch_iterator
from edm2.train.loss import EDM2Loss
from edm2.train.schedule import learning_rate_schedule
from edm2.train.speed import ChannelsLast, CompiledForward, match_optimizer_implementation, use_fused_attention
from edm2.train.stats import StatsCollector
from edm2.train.status import StatusReporter, announce_start, print_summary

PRECISIONS = ("fp32", "fp16", "bf16")


def set_random_seed(*args) -> None:
    """Seed torch (all devices) and NumPy's global RNG with hash(args) mod 2^31 (docs/method.md#training, #official-details)."""
    seed = hash(args) % (1 << 31)
    torch.manual_seed(seed)
    np.random.seed(seed)


@dataclasses.dataclass
class TrainingResult:
    """What one invocation of the loop achieved."""

    cur_nimg: int  # Images trained when the loop returned.
    start_nimg: int  # Images trained when it started (0, or the resumed training state).
    stop_at_nimg: int  # Where this invocation meant to stop (end of the slice or the duration).
    total_nimg: int  # The run's duration.
    signal: int | None = None  # The signal that stopped it early, if any.

    @property
    def finished(self) -> bool:
        """The whole duration is trained."""
        return self.cur_nimg >= self.total_nimg


# ---- validation (all before any compute) ---------------------------------------------------------


def check_intervals(batch_size, total_nimg, slice_nimg, status_nimg, snapshot_nimg, checkpoint_nimg) -> None:
    """The divisibility rules of docs/method.md#training; None (or 0) disables an interval."""
    if batch_size <= 0:
        raise ConfigError(f"--batch must be positive, got {batch_size}")
    if total_nimg <= 0 or total_nimg % batch_size:
        raise ConfigError(f"--duration {total_nimg} must be a positive multiple of --batch {batch_size}")
    for name, value, need_1024 in [
        ("--slice", slice_nimg, False),
        ("--status", status_nimg, False),
        ("--snapshot", snapshot_nimg, True),
        ("--checkpoint", checkpoint_nimg, True),
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
    if slice_nimg is not None and not checkpoint_nimg:
        raise ConfigError("--slice needs checkpoints to resume from; set --checkpoint (e.g. 128Mi)")


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


def open_dataset(dataset_kwargs: dict):
    """The training dataset, checked against the options (docs/method.md#presets): 3 or 8 channels, labels if cond."""
    kwargs = dict(dataset_kwargs)
    dataset = ImageFolderDataset(**kwargs)
    path = kwargs.get("path")
    if dataset.num_channels not in (3, 8):
        raise DataError(
            f"dataset {path} has {dataset.num_channels} channels; training needs RGB images (3) or "
            "Stable Diffusion VAE latents (8, from `edm2 dataset encode`)"
        )
    if kwargs.get("use_labels", True) and not dataset.has_labels:
        raise DataError(f"dataset {path} has no labels (dataset.json); train it unconditionally with --uncond")
    return dataset


def make_training_encoder(num_channels: int, encoder_kwargs: dict | None = None):
    """StandardRGBEncoder for 3-channel pixels, StabilityVAEEncoder for 8-channel latents (docs/method.md#presets)."""
    if num_channels == 3:
        return StandardRGBEncoder()
    return StabilityVAEEncoder(
        **{"batch_size": 8, **(encoder_kwargs or {})}
    )  # micro-batch 8 in training (docs/method.md#official-details)


# ---- the step ------------------------------------------------------------------------------------


def accumulate_gradients(
    model, loss_fn, encoder, batches, rounds, batch_gpu_total, loss_scaling, device, stats=None, ddp=None
):
    """Forward and backward over `rounds` micro-batches (docs/method.md#training).

    Backpropagates `sum(loss) * loss_scaling / batch_gpu_total` per round. `model` is what the
    loss calls (the DDP wrapper, possibly wrapped again by a speed option); `ddp` (default: `model`
    if it is one) has its gradient synchronisation suppressed for all rounds but the last.
    """
    if ddp is None and isinstance(model, DistributedDataParallel):
        ddp = model
    for round_idx in range(rounds):
        last = round_idx == rounds - 1
        with contextlib.nullcontext() if last or ddp is None else ddp.no_sync():
            images, labels = next(batches)
            images = encoder.encode_latents(images.to(device, non_blocking=True))
            loss = loss_fn(model, images, labels.to(device, non_blocking=True))
            if stats is not None:
                stats.report("Loss/loss", loss)
            loss.sum().mul(loss_scaling / batch_gpu_total).backward()


def apply_gradients(net, optimizer, lr: float, force_finite: bool = True) -> None:
    """Set the step's lr in every param group, zero non-finite gradients, step (docs/method.md#training, #official-details)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    if force_finite:
        for param in net.parameters():
            if param.grad is not None:
                torch.nan_to_num(param.grad, nan=0, posinf=0, neginf=0, out=param.grad)
    optimizer.step()


def make_optimizer(net, fused: bool = False):
    """Adam, betas (0.9, 0.99), eps 1e-8, no weight decay (docs/method.md#training).

    The multi-tensor ('foreach') implementation is what CUDA uses by default; on CPU it gives
    bit-identical results to the per-tensor loop, with less Python overhead per step. `fused`
    (`edm2 train --fast` on CUDA): the single-kernel implementation, the same update up to float
    rounding.
    """
    if fused:
        return torch.optim.Adam(net.parameters(), lr=0.0, betas=(0.9, 0.99), eps=1e-8, fused=True)
    return torch.optim.Adam(net.parameters(), lr=0.0, betas=(0.9, 0.99), eps=1e-8, foreach=True)


# ---- helpers -------------------------------------------------------------------------------------


def build_network(ref_image, ref_label, network_kwargs, precision, device):
    """Precond sized from one encoded sample (docs/method.md#presets), in training mode on `device`."""
    net = Precond(
        img_resolution=ref_image.shape[-1],
        img_channels=ref_image.shape[1],
        label_dim=ref_label.shape[-1],
        **{**network_kwargs, "use_fp16": precision != "fp32"},
    )
    if precision == "bf16":
        net.amp_dtype = torch.bfloat16
    return net.train().requires_grad_(True).to(device)


def print_network_summary(net, inputs, max_nesting: int = 2) -> None:
    """Run one forward with `inputs` (in the net's current mode) and print a module table.

    In training mode this forward applies forced weight normalisation to every MPConv weight it
    touches, exactly as the official module summary does before DDP is built (docs/method.md#training).
    """
    modules = {name: m for name, m in net.named_modules() if name and name.count(".") < max_nesting}
    outputs = {}

    def hook(name):
        def fn(_module, _inputs, out):
            out = out[0] if isinstance(out, (tuple, list)) else out
            if isinstance(out, torch.Tensor):
                outputs.setdefault(name, (str(list(out.shape)), str(out.dtype).replace("torch.", "")))

        return fn

    hooks = [module.register_forward_hook(hook(name)) for name, module in modules.items()]
    try:
        with torch.no_grad():
            net(*inputs)
    finally:
        for h in hooks:
            h.remove()
    rows = [("Module", "Parameters", "Buffers", "Output shape", "Datatype")]
    for name, module in modules.items():
        if name in outputs:
            params = sum(p.numel() for p in module.parameters())
            buffers = sum(b.numel() for b in module.buffers())
            rows.append((name, str(params), str(buffers), *outputs[name]))
    total = sum(p.numel() for p in net.parameters()), sum(b.numel() for b in net.buffers())
    rows.append(("Total", str(total[0]), str(total[1]), "", ""))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    for i, row in enumerate(rows):
        if i in (1, len(rows) - 1):
            print("  ".join("-" * w for w in widths))
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    print()


def _disable_tf32() -> None:
    """Training computes in true fp32 (docs/method.md#training, #official-details)."""
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = False


def restore_latest(run_dir, net, optimizer, ema, loss_fn) -> tuple[int, float]:
    """Load the newest readable training state into the objects (docs/method.md#training); (cur_nimg, elapsed s)."""
    data, path = ckpt.load_latest_training_state(run_dir, log=print0)
    if data is None:
        return 0, 0.0
    print0(f"Resuming from {path}")
    stds = [float(s) for s in data["ema"]["stds"]]
    if stds != [float(s) for s in ema.stds]:
        raise ConfigError(
            f"{path} tracks EMA stds {stds}, this run asks for {ema.stds}; use the same --ema-stds or a new --outdir"
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


def slice_end(cur_nimg, total_nimg, slice_nimg, batch_size, snapshot_nimg, checkpoint_nimg) -> int:
    """Where this invocation stops: the duration, or the slice rounded down to a checkpoint (docs/method.md#training)."""
    if slice_nimg is None or cur_nimg >= total_nimg:
        return total_nimg
    granularity = checkpoint_nimg or snapshot_nimg or batch_size
    stop_at = min(total_nimg, (cur_nimg + slice_nimg) // granularity * granularity)
    if stop_at <= cur_nimg:
        raise ConfigError(
            f"--slice {slice_nimg} ends before the next checkpoint ({cur_nimg} + {slice_nimg} images rounded down "
            f"to a multiple of {granularity}); make the slice at least as long as --checkpoint"
        )
    return stop_at


# ---- the loop ------------------------------------------------------------------------------------


@dataclasses.dataclass
class TrainingPlan:
    """The options checked against each other, the process count and the data, before any compute.

    `plan_training` makes it once per run (`edm2 train` before it writes anything, or
    `training_loop` when called without one); the loop uses its dataset instead of opening another.
    """

    dataset: object  # ImageFolderDataset
    batch_gpu_total: int  # Images per process per optimizer step.
    batch_gpu: int  # Images per process per forward/backward round.
    rounds: int  # Gradient accumulation rounds per step.


def plan_training(
    dataset_kwargs,
    precision,
    batch_size,
    batch_gpu,
    world_size,
    total_nimg,
    slice_nimg,
    status_nimg,
    snapshot_nimg,
    checkpoint_nimg,
) -> TrainingPlan:
    """Validate the loop options (ConfigError) and open the dataset (DataError); see TrainingPlan."""
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    check_intervals(batch_size, total_nimg, slice_nimg, status_nimg, snapshot_nimg, checkpoint_nimg)
    batch_gpu_total, batch_gpu, rounds = resolve_batch(batch_size, batch_gpu, world_size)
    return TrainingPlan(open_dataset(dataset_kwargs), batch_gpu_total, batch_gpu, rounds)


@dataclasses.dataclass
class _Run:
    """What the loop body works on, built once by `training_loop`."""

    run_dir: Path
    rank: int
    world_size: int
    device: torch.device
    seed: int
    batch_size: int
    plan: TrainingPlan
    encoder: object
    net: torch.nn.Module  # Precond (what the optimizer, EMA and snapshots see)
    ddp: torch.nn.Module  # net, or its DistributedDataParallel wrapper with several processes
    model: object  # what the loss calls: ddp, possibly wrapped by speed options
    loss_fn: EDM2Loss
    optimizer: torch.optim.Optimizer
    ema: PowerFunctionEMA
    start_time: float
    elapsed_before: float


def _build_network(dataset, encoder_kwargs, network_kwargs, precision, batch_gpu, device, rank):
    """(encoder, net): the encoder the data needs and a Precond sized from the first item.

    Nothing draws from the CPU generator before the network's initialisation (the official
    training_loop builds the network right after `set_random_seed`), so the reference item's VAE
    sampling runs under a forked RNG. Rank 0 prints the official module summary, whose forward
    also normalises the MPConv weights in place.
    """
    encoder = make_training_encoder(dataset.num_channels, encoder_kwargs)
    ref_image, ref_label = dataset[0]
    with torch.random.fork_rng(devices=[]):
        ref_image = encoder.encode_latents(torch.as_tensor(ref_image).to(device).unsqueeze(0))
    print0("Constructing network...")
    net = build_network(ref_image, ref_label, network_kwargs, precision, device)
    if rank == 0:
        R, C, L = net.img_resolution, net.img_channels, net.label_dim
        inputs = [torch.zeros([batch_gpu, C, R, R]), torch.ones([batch_gpu]), torch.zeros([batch_gpu, L])]
        print_network_summary(net, [t.to(device) for t in inputs])
    return encoder, net


def _wrap_model(net, world_size, device, channels_last, compile, fast=False):
    """(ddp, model): DDP with several processes (it broadcasts rank 0's parameters and buffers),
    then the speed options (edm2.train.speed); `fast` implies channels-last, compile and fused
    attention."""
    if fast:
        channels_last = compile = True
        use_fused_attention(net)
    ddp = net
    if world_size > 1:
        ddp = DistributedDataParallel(net, device_ids=[device] if device.type == "cuda" else None)
    model = ChannelsLast(ddp) if channels_last else ddp
    if compile:
        model = CompiledForward(model, net)
    return ddp, model


def _make_run(
    run_dir, env, device, seed, batch_size, plan, start_time, encoder_kwargs, network_kwargs, precision,
    channels_last, compile, loss_kwargs, ema_stds, fast=False,
) -> tuple[_Run, int]:  # fmt: skip
    """Network, loss, optimizer and EMAs, restored from the newest training state if there is one;
    returns the run and its image count (0 for a new run)."""
    encoder, net = _build_network(
        plan.dataset, encoder_kwargs, network_kwargs, precision, plan.batch_gpu, device, env.rank
    )
    print0("Setting up training state...")
    ddp, model = _wrap_model(net, env.world_size, device, channels_last, compile, fast)
    loss_fn = EDM2Loss(**(loss_kwargs or {}))
    fused = fast and device.type == "cuda"
    optimizer = make_optimizer(net, fused=fused)
    ema = PowerFunctionEMA(net, stds=[float(s) for s in ema_stds])
    cur_nimg, elapsed_before = restore_latest(run_dir, net, optimizer, ema, loss_fn)
    match_optimizer_implementation(optimizer, fused)  # a state saved by the other implementation
    run = _Run(
        run_dir=run_dir,
        rank=env.rank,
        world_size=env.world_size,
        device=device,
        seed=seed,
        batch_size=batch_size,
        plan=plan,
        encoder=encoder,
        net=net,
        ddp=ddp,
        model=model,
        loss_fn=loss_fn,
        optimizer=optimizer,
        ema=ema,
        start_time=start_time,
        elapsed_before=elapsed_before,
    )
    return run, cur_nimg


def _stop_requested(stop, run: _Run, result: TrainingResult) -> bool:
    """Whether any rank got SIGTERM/SIGUSR1 (then `result.signal` is set and a message printed)."""
    if not all_ranks_agree(stop.requested, run.device):
        return False
    result.signal = stop.signum or signal.SIGTERM
    name = signal.Signals(result.signal).name
    if result.cur_nimg != result.start_nimg:
        print0(f"Received {name}: stopping after {result.cur_nimg} images; writing a training state.")
    else:
        print0(f"Received {name} before the first step: stopping; nothing to save.")
    return True


def _maintenance(run: _Run, result, status, intervals, snapshot_meta, done) -> None:
    """Status line, EMA snapshots and training state due at `result.cur_nimg`, in the official
    order (training/training_loop.py): status, snapshot (rank 0, not forced at the end), then the
    training state (at the interval, at the end, and when a signal stops the run)."""
    cur, start = result.cur_nimg, result.start_nimg
    status_nimg, snapshot_nimg, checkpoint_nimg = intervals
    resumed_here = cur == start and start != 0  # what a resumed run wrote already
    if status_nimg and (done or cur % status_nimg == 0) and not resumed_here:
        status.report(cur)
    if snapshot_nimg and cur % snapshot_nimg == 0 and not resumed_here and run.rank == 0:
        for path in ckpt.write_snapshots(
            run.run_dir, cur, run.ema, run.net.init_kwargs, run.encoder.config(), snapshot_meta
        ):
            print0(f"Saved {path.name}")
    at_interval = checkpoint_nimg and (done or cur % checkpoint_nimg == 0)
    if (at_interval or result.signal is not None) and cur != start:
        elapsed = run.elapsed_before + time.time() - run.start_time
        save_training_state(
            run.run_dir, cur, elapsed, run.net, run.loss_fn, run.optimizer, run.ema, run.rank, run.device
        )


def _optimizer_step(run: _Run, batches, stats, cur_nimg, loss_scaling, lr_kwargs, force_finite) -> float:
    """One optimizer step from `cur_nimg` (seeded from (seed, rank, cur_nimg)); returns its lr."""
    set_random_seed(run.seed, run.rank, cur_nimg)
    run.optimizer.zero_grad(set_to_none=True)
    plan = run.plan
    accumulate_gradients(
        run.model,
        run.loss_fn,
        run.encoder,
        batches,
        plan.rounds,
        plan.batch_gpu_total,
        loss_scaling,
        run.device,
        stats=stats,
        ddp=run.ddp if run.world_size > 1 else None,
    )
    lr = float(learning_rate_schedule(cur_nimg=cur_nimg, batch_size=run.batch_size, **(lr_kwargs or {})))
    stats.report("Loss/learning_rate", lr)
    apply_gradients(run.net, run.optimizer, lr, force_finite)
    return lr


def _progress_bar(progress, rank, total):
    """tqdm on rank 0 (None elsewhere, or when `progress` is false; None = when stderr is a terminal)."""
    if progress is None:
        progress = bool(getattr(sys.__stderr__, "isatty", lambda: False)())
    if rank != 0 or not progress:
        return None

    return tqdm(total=total, unit="img", unit_scale=True, file=sys.__stderr__)


def _train(run: _Run, result, stop, intervals, snapshot_meta, num_workers, progress, step_kwargs, step_hook):
    """The iterations of one invocation: maintenance, exit if done, one step, then the EMA update."""
    sampler = InfiniteSampler(
        len(run.plan.dataset), rank=run.rank, num_replicas=run.world_size, seed=run.seed, start_idx=result.cur_nimg
    )
    batches = make_batch_iterator(run.plan.dataset, sampler, run.plan.batch_gpu, num_workers, run.device)
    bar = _progress_bar(progress, run.rank, result.stop_at_nimg - result.start_nimg)
    status = StatusReporter(
        run.run_dir,
        StatsCollector(run.device),
        run.device,
        result.cur_nimg,
        run.elapsed_before,
        run.start_time,
        run.rank,
        write_line=bar.write if bar is not None else print,
        bar=bar,
    )
    try:
        while True:
            done = result.cur_nimg >= result.stop_at_nimg
            if not done and _stop_requested(stop, run, result):
                done = True
            _maintenance(run, result, status, intervals, snapshot_meta, done)
            if done:
                break
            step_start = time.time()
            lr = _optimizer_step(run, batches, status.stats, result.cur_nimg, **step_kwargs)
            result.cur_nimg += run.batch_size
            run.ema.update(cur_nimg=result.cur_nimg, batch_size=run.batch_size)
            status.training_time += time.time() - step_start
            if bar is not None:
                bar.update(run.batch_size)
            if step_hook is not None:
                step_hook(cur_nimg=result.cur_nimg, net=run.net, optimizer=run.optimizer, ema=run.ema, lr=lr)
    finally:
        if bar is not None:
            bar.close()


def training_loop(
    run_dir,  # Output directory: snapshots, training states, stats.jsonl.
    dataset_kwargs: dict,  # ImageFolderDataset arguments: path, use_labels, ...
    network_kwargs: dict,  # Precond arguments other than the interface sizes (model_channels, dropout, ...).
    loss_kwargs: dict | None = None,  # EDM2Loss arguments: P_mean, P_std, sigma_data.
    lr_kwargs: dict | None = None,  # learning_rate_schedule arguments: ref_lr, ref_batches, rampup_Mimg.
    ema_stds=(0.050, 0.100),  # Relative stds of the power-function EMAs to track and snapshot.
    encoder_kwargs: dict | None = None,  # StabilityVAEEncoder arguments for 8-channel (latent) datasets.
    seed: int = 0,  # Global random seed.
    batch_size: int = 2048,  # Total batch size for one optimizer step, in images.
    batch_gpu: int | None = None,  # Per-process micro-batch limit; None = batch_size / world_size.
    total_nimg: int = 8 << 30,  # Train for a total of N training images.
    slice_nimg: int | None = None,  # Train at most N images in this invocation (rounded down to a checkpoint).
    status_nimg: int | None = 128 << 10,  # Status line and stats.jsonl every N images; None = never.
    snapshot_nimg: int | None = 8 << 20,  # EMA snapshots every N images; None = never.
    checkpoint_nimg: int | None = 128 << 20,  # Training state every N images and at the end; None = only on a signal.
    loss_scaling: float = 1,  # Multiplier of the loss before backprop (never divided back out, as officially).
    force_finite: bool = True,  # Replace NaN/Inf gradient entries by 0.
    cudnn_benchmark: bool = True,  # torch.backends.cudnn.benchmark.
    precision: str = "fp16",  # 'fp32', or mixed precision 'fp16'/'bf16' for the main path (CUDA only).
    num_workers: int = 2,  # DataLoader worker processes; 0 reads (and caches small datasets) in-process.
    channels_last: bool = False,  # Feed the network channels-last images (faster convolutions on CPU, not bit-identical).
    compile: bool = False,  # torch.compile the network (minutes to compile; equal up to float rounding).
    fast: bool = False,  # compile + channels-last + fused attention (+ fused Adam on CUDA); equal up to float rounding.
    device: str | None = None,  # 'cuda' or 'cpu'; None picks CUDA when available.
    snapshot_extra: dict | None = None,  # More JSON for the snapshot metadata 'extra' (the training options).
    step_hook=None,  # Called on every rank after each step: step_hook(cur_nimg=, net=, optimizer=, ema=, lr=).
    progress: bool | None = None,  # tqdm progress bar on rank 0; None = when stderr is a terminal.
    stop: StopSignal | None = None,  # A signal flag the caller installed earlier (edm2 train does, at start-up).
    plan: TrainingPlan | None = None,  # The checked options and open dataset (default: plan_training here).
) -> TrainingResult:
    """Train (or resume training) an EDM2 network; returns what this invocation did.

    The official training loop (training/training_loop.py of NVlabs/edm2; EDM2 paper, arXiv
    2312.02696, Sec. 2 and Appendix B; docs/method.md "Training"). Stops at the end of the slice
    or the duration, or after the current step when SIGTERM or SIGUSR1 arrives (then with a
    training state written and `result.signal` set). Raises ConfigError/DataError for options or
    data that cannot work, before any compute.
    """
    start_time = time.time()
    intervals = [v or None for v in (slice_nimg, status_nimg, snapshot_nimg, checkpoint_nimg)]
    slice_nimg, intervals = intervals[0], intervals[1:]
    env, device = init_distributed(device)
    if plan is None:
        print0("Loading dataset...")
        plan = plan_training(
            dataset_kwargs, precision, batch_size, batch_gpu, env.world_size, total_nimg, slice_nimg, *intervals
        )
    run_dir = Path(run_dir)
    if env.rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.nullcontext(stop) if stop is not None else StopSignal() as stop:  # a signal only sets a flag
        set_random_seed(seed, env.rank)
        torch.backends.cudnn.benchmark = cudnn_benchmark
        _disable_tf32()
        run, cur_nimg = _make_run(
            run_dir, env, device, seed, batch_size, plan, start_time, encoder_kwargs, network_kwargs, precision,
            channels_last, compile, loss_kwargs, ema_stds, fast,
        )  # fmt: skip
        stop_at_nimg = slice_end(cur_nimg, total_nimg, slice_nimg, batch_size, intervals[1], intervals[2])
        result = TrainingResult(
            cur_nimg=cur_nimg, start_nimg=cur_nimg, stop_at_nimg=stop_at_nimg, total_nimg=total_nimg
        )
        if announce_start(cur_nimg, stop_at_nimg, total_nimg, intervals[1]):
            snapshot_meta = dict(
                dataset_kwargs={k: (str(v) if isinstance(v, Path) else v) for k, v in dataset_kwargs.items()},
                loss_kwargs=run.loss_fn.kwargs(),
                precision=precision,
                **(snapshot_extra or {}),
            )
            step_kwargs = dict(loss_scaling=loss_scaling, lr_kwargs=lr_kwargs, force_finite=force_finite)
            _train(run, result, stop, intervals, snapshot_meta, num_workers, progress, step_kwargs, step_hook)
            print_summary(run_dir, result, time.time() - start_time)
    if result.cur_nimg >= total_nimg and env.rank == 0:
        ckpt.write_done(run_dir, result.cur_nimg)
    barrier()
    return result


def save_training_state(run_dir, cur_nimg, elapsed, net, loss_fn, optimizer, ema, rank, device) -> None:
    """Rank 0 writes `training-state-{kimg}.pt` atomically; then every rank checks it matches rank 0 (docs/method.md#training)."""
    path = ckpt.state_path(run_dir, cur_nimg)
    if rank == 0:
        data = dict(
            state=dict(cur_nimg=cur_nimg, total_elapsed_time=elapsed),
            net=net.state_dict(),
            loss_fn=loss_fn.kwargs(),
            optimizer=optimizer.state_dict(),
            ema=ema.state_dict(),
        )
        ckpt.write_training_state(path, data)
        print0(f"Saved {path.name}")
    check_ddp_consistency(net, device)
    barrier()
