"""The EDM2 training loop (EDM2-SPEC §5): one function with plain arguments.

Per iteration (spec §5.7): status -> snapshot (rank 0) -> checkpoint -> exit if done -> one
optimizer step (spec §5.2) -> EMA update. A run is a pure function of its options: every random
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

from edm2.distributed import all_ranks_agree, barrier, check_ddp_consistency, init_distributed, print0
from edm2.ema import PowerFunctionEMA
from edm2.errors import ConfigError, DataError
from edm2.signals import StopSignal
from edm2.train import checkpoint as ckpt
from edm2.train.data import InfiniteSampler, make_batch_iterator
from edm2.train.loss import EDM2Loss
from edm2.train.schedule import learning_rate_schedule
from edm2.train.stats import StatsCollector
from edm2.train.status import StatusReporter

PRECISIONS = ("fp32", "fp16", "bf16")


def set_random_seed(*args) -> None:
    """Seed torch (all devices) and NumPy's global RNG with hash(args) mod 2^31 (spec §5.5, §14.17)."""
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
    """The divisibility rules of spec §5.7; None (or 0) disables an interval."""
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
                "spec §5.7); use e.g. 8Mi or 1Ki"
            )
    if slice_nimg is not None and not checkpoint_nimg:
        raise ConfigError("--slice needs checkpoints to resume from; set --checkpoint (e.g. 128Mi)")


def resolve_batch(batch_size: int, batch_gpu: int | None, world_size: int) -> tuple[int, int, int]:
    """(batch_gpu_total, batch_gpu, rounds) with batch = batch_gpu * rounds * world (spec §5.2)."""
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
    """The training dataset, checked against the options (spec §6): 3 or 8 channels, labels if cond."""
    from edm2.data.dataset import ImageFolderDataset

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
    """StandardRGBEncoder for 3-channel pixels, StabilityVAEEncoder for 8-channel latents (spec §6)."""
    from edm2.data.encoders import StabilityVAEEncoder, StandardRGBEncoder

    if num_channels == 3:
        return StandardRGBEncoder()
    return StabilityVAEEncoder(**{"batch_size": 8, **(encoder_kwargs or {})})  # micro-batch 8 in training (§14.26)


# ---- the step ------------------------------------------------------------------------------------


def accumulate_gradients(
    model, loss_fn, encoder, batches, rounds, batch_gpu_total, loss_scaling, device, stats=None, ddp=None
):
    """Forward and backward over `rounds` micro-batches (spec §5.2).

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
    """Set the step's lr in every param group, zero non-finite gradients, step (spec §5.2, §14.16)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    if force_finite:
        for param in net.parameters():
            if param.grad is not None:
                torch.nan_to_num(param.grad, nan=0, posinf=0, neginf=0, out=param.grad)
    optimizer.step()


def make_optimizer(net):
    """Adam, betas (0.9, 0.99), eps 1e-8, no weight decay (spec §5.4).

    The multi-tensor ('foreach') implementation is what CUDA uses by default; on CPU it gives
    bit-identical results to the per-tensor loop, with less Python overhead per step.
    """
    return torch.optim.Adam(net.parameters(), lr=0.0, betas=(0.9, 0.99), eps=1e-8, foreach=True)


# ---- helpers -------------------------------------------------------------------------------------


def build_network(ref_image, ref_label, network_kwargs, precision, device):
    """Precond sized from one encoded sample (spec §6), in training mode on `device`."""
    from edm2.nn import Precond

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
    touches, exactly as the official module summary does before DDP is built (spec §5.5).
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


class ChannelsLast(torch.nn.Module):
    """Calls `net` with its image input in channels-last memory layout (a speed option on CPU).

    The layout changes only the order of some floating-point reductions inside convolutions, not
    the random draws: the loss draws its noise before the call, in the default layout.
    """

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x, *args, **kwargs):
        return self.net(x.contiguous(memory_format=torch.channels_last), *args, **kwargs)


class CompiledForward:
    """`torch.compile` of the network, with MPConv's forced weight normalisation done eagerly.

    A compiled graph does not reproduce MPConv's in-place overwrite of its own parameter inside
    the forward (spec §14.2), so the MPConv layers run in eval mode inside the graph (normalise
    and scale only) and every call first applies the forced normalisation `weight <-
    normalize(weight)` to all of them, as the eager training-mode forward does: the weights stay
    bit-identical; activations and gradients equal the eager ones up to float rounding (fusion).
    Every MPConv must take part in each forward, which holds for the training loss of Precond.
    """

    def __init__(self, model, net):
        from edm2.nn.layers import MPConv

        self.convs = [m for m in net.modules() if isinstance(m, MPConv)]
        for conv in self.convs:
            conv.train(False)
        # dynamic=False: one graph per input shape (training has one); automatic dynamic shapes
        # would otherwise kick in when another model reuses the same forward code in this process.
        self.model = torch.compile(model, dynamic=False)

    def __call__(self, *args, **kwargs):
        from edm2.nn.layers import normalize

        with torch.no_grad():
            for conv in self.convs:
                w = conv.weight.to(torch.float64 if conv.weight.dtype == torch.float64 else torch.float32)
                conv.weight.copy_(normalize(w))
        return self.model(*args, **kwargs)


def _disable_tf32() -> None:
    """Training computes in true fp32 (spec §5.7, §14.30)."""
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = False


def restore_latest(run_dir, net, optimizer, ema, loss_fn) -> tuple[int, float]:
    """Load the newest readable training state into the objects (spec §5.8); (cur_nimg, elapsed s)."""
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
    """Where this invocation stops: the duration, or the slice rounded down to a checkpoint (spec §5.8)."""
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
    loss_scaling: float = 1,  # Multiplier of the loss before backprop (never divided back out, spec §5.2).
    force_finite: bool = True,  # Replace NaN/Inf gradient entries by 0.
    cudnn_benchmark: bool = True,  # torch.backends.cudnn.benchmark.
    precision: str = "fp16",  # 'fp32', or mixed precision 'fp16'/'bf16' for the main path (CUDA only).
    num_workers: int = 2,  # DataLoader worker processes; 0 reads (and caches small datasets) in-process.
    channels_last: bool = False,  # Feed the network channels-last images (faster convolutions on CPU, not bit-identical).
    compile: bool = False,  # torch.compile the network (minutes to compile; equal up to float rounding).
    device: str | None = None,  # 'cuda' or 'cpu'; None picks CUDA when available.
    snapshot_extra: dict | None = None,  # More JSON for the snapshot metadata 'extra' (the training options).
    step_hook=None,  # Called on every rank after each step: step_hook(cur_nimg=, net=, optimizer=, ema=, lr=).
    progress: bool | None = None,  # tqdm progress bar on rank 0; None = when stderr is a terminal.
    stop: StopSignal | None = None,  # A signal flag the caller installed earlier (edm2 train does, at start-up).
) -> TrainingResult:
    """Train (or resume training) an EDM2 network per spec §5; returns what this invocation did.

    Stops at the end of the slice or the duration, or after the current step when SIGTERM or
    SIGUSR1 arrives (then with a training state written and `result.signal` set).
    """
    start_time = time.time()
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    slice_nimg, status_nimg, snapshot_nimg, checkpoint_nimg = (
        v or None for v in (slice_nimg, status_nimg, snapshot_nimg, checkpoint_nimg)
    )
    check_intervals(batch_size, total_nimg, slice_nimg, status_nimg, snapshot_nimg, checkpoint_nimg)
    env, device = init_distributed(device)
    rank, world_size = env.rank, env.world_size
    batch_gpu_total, batch_gpu, rounds = resolve_batch(batch_size, batch_gpu, world_size)
    run_dir = Path(run_dir)
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.nullcontext(stop) if stop is not None else StopSignal() as stop:  # a signal only sets a flag
        set_random_seed(seed, rank)
        torch.backends.cudnn.benchmark = cudnn_benchmark
        _disable_tf32()

        # Dataset, encoder, network (spec §5.5: nothing draws from the CPU generator before the net).
        print0("Loading dataset...")
        dataset = open_dataset(dataset_kwargs)
        encoder = make_training_encoder(dataset.num_channels, encoder_kwargs)
        ref_image, ref_label = dataset[0]
        with torch.random.fork_rng(devices=[]):  # VAE sampling of the reference item leaves the CPU RNG alone
            ref_image = encoder.encode_latents(torch.as_tensor(ref_image).to(device).unsqueeze(0))
        print0("Constructing network...")
        net = build_network(ref_image, ref_label, network_kwargs, precision, device)
        if rank == 0:  # the official module summary; it also normalises the weights in place (spec §5.5)
            R, C, L = net.img_resolution, net.img_channels, net.label_dim
            inputs = [torch.zeros([batch_gpu, C, R, R]), torch.ones([batch_gpu]), torch.zeros([batch_gpu, L])]
            print_network_summary(net, [t.to(device) for t in inputs])

        # Training state; DDP broadcasts rank 0's parameters and buffers (spec §14.31).
        print0("Setting up training state...")
        ddp = net
        if world_size > 1:
            ddp = DistributedDataParallel(net, device_ids=[device] if device.type == "cuda" else None)
        model = ChannelsLast(ddp) if channels_last else ddp
        if compile:
            model = CompiledForward(model, net)
        loss_fn = EDM2Loss(**(loss_kwargs or {}))
        optimizer = make_optimizer(net)
        ema = PowerFunctionEMA(net, stds=[float(s) for s in ema_stds])
        cur_nimg, elapsed_before = restore_latest(run_dir, net, optimizer, ema, loss_fn)
        start_nimg = cur_nimg
        stop_at_nimg = slice_end(cur_nimg, total_nimg, slice_nimg, batch_size, snapshot_nimg, checkpoint_nimg)
        result = TrainingResult(
            cur_nimg=cur_nimg, start_nimg=start_nimg, stop_at_nimg=stop_at_nimg, total_nimg=total_nimg
        )
        if cur_nimg >= total_nimg:
            print0(
                f"Training already reached {cur_nimg // 1000} kimg (duration {total_nimg // 1000} kimg); nothing to do."
            )
        else:
            print0(f"Training from {cur_nimg // 1000} kimg to {stop_at_nimg // 1000} kimg:")
            print0()
            sampler = InfiniteSampler(len(dataset), rank=rank, num_replicas=world_size, seed=seed, start_idx=cur_nimg)
            batches = make_batch_iterator(dataset, sampler, batch_gpu, num_workers, device)
            snapshot_meta = dict(
                dataset_kwargs={k: (str(v) if isinstance(v, Path) else v) for k, v in dataset_kwargs.items()},
                loss_kwargs=loss_fn.kwargs(),
                precision=precision,
                **(snapshot_extra or {}),
            )
            if progress is None:
                progress = bool(getattr(sys.__stderr__, "isatty", lambda: False)())
            bar = None
            if rank == 0 and progress:
                from tqdm import tqdm

                bar = tqdm(total=stop_at_nimg - start_nimg, unit="img", unit_scale=True, file=sys.__stderr__)
            status = StatusReporter(
                run_dir,
                StatsCollector(device),
                device,
                cur_nimg,
                elapsed_before,
                start_time,
                rank,
                write_line=bar.write if bar is not None else print,
            )
            try:
                while True:
                    done = cur_nimg >= stop_at_nimg
                    if all_ranks_agree(stop.requested, device) and not done:
                        done = True
                        result.signal = stop.signum or signal.SIGTERM
                        name = signal.Signals(result.signal).name
                        if cur_nimg != start_nimg:
                            print0(f"Received {name}: stopping after {cur_nimg} images; writing a training state.")
                        else:
                            print0(f"Received {name} before the first step: stopping; nothing to save.")

                    # Status line and statistics (spec §5.7 step 2, §5.9).
                    if (
                        status_nimg
                        and (done or cur_nimg % status_nimg == 0)
                        and (cur_nimg != start_nimg or start_nimg == 0)
                    ):
                        status.report(cur_nimg)

                    # EMA snapshots: rank 0, not forced at the end (spec §5.7 step 3, §14.20).
                    if (
                        snapshot_nimg
                        and cur_nimg % snapshot_nimg == 0
                        and (cur_nimg != start_nimg or start_nimg == 0)
                        and rank == 0
                    ):
                        for path in ckpt.write_snapshots(
                            run_dir, cur_nimg, ema, net.init_kwargs, encoder.config(), snapshot_meta
                        ):
                            print0(f"Saved {path.name}")

                    # Training state: at the interval, at the end, and when a signal stops the run.
                    at_interval = checkpoint_nimg and (done or cur_nimg % checkpoint_nimg == 0)
                    if (at_interval or result.signal is not None) and cur_nimg != start_nimg:
                        elapsed = elapsed_before + time.time() - start_time
                        save_training_state(run_dir, cur_nimg, elapsed, net, loss_fn, optimizer, ema, rank, device)

                    if done:
                        break

                    # One optimizer step (spec §5.2), then the EMA update (spec §7.2).
                    step_start = time.time()
                    set_random_seed(seed, rank, cur_nimg)
                    optimizer.zero_grad(set_to_none=True)
                    accumulate_gradients(
                        model,
                        loss_fn,
                        encoder,
                        batches,
                        rounds,
                        batch_gpu_total,
                        loss_scaling,
                        device,
                        stats=status.stats,
                        ddp=ddp if world_size > 1 else None,
                    )
                    lr = float(learning_rate_schedule(cur_nimg=cur_nimg, batch_size=batch_size, **(lr_kwargs or {})))
                    status.stats.report("Loss/learning_rate", lr)
                    apply_gradients(net, optimizer, lr, force_finite)
                    cur_nimg += batch_size
                    ema.update(cur_nimg=cur_nimg, batch_size=batch_size)
                    status.training_time += time.time() - step_start
                    result.cur_nimg = cur_nimg
                    if bar is not None:
                        bar.update(batch_size)
                    if step_hook is not None:
                        step_hook(cur_nimg=cur_nimg, net=net, optimizer=optimizer, ema=ema, lr=lr)
            finally:
                if bar is not None:
                    bar.close()

    if cur_nimg >= total_nimg and rank == 0:
        ckpt.write_done(run_dir, cur_nimg)
    barrier()
    return result


def save_training_state(run_dir, cur_nimg, elapsed, net, loss_fn, optimizer, ema, rank, device) -> None:
    """Rank 0 writes `training-state-{kimg}.pt` atomically; then every rank checks it matches rank 0 (spec §5.7 step 4)."""
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
