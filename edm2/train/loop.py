"""The EDM2 training loop (EDM2, arXiv 2312.02696, Sec. 2 and Appendix B; the official
training/training_loop.py): one function of one `TrainOptions`.

    result = training_loop(opts)          resumes from the newest training state in opts.outdir

Each iteration, in the official order: status, snapshot (rank 0), training state, stop if done,
accumulate the gradients of the loss, one Adam step with the scheduled learning rate, update the
EMAs. A run is a pure function of its options: every random draw is seeded from (seed, rank,
cur_nimg) and the data stream resumes at cur_nimg. The checks come before (edm2.train.plan), the
objects are built in one place (`build_training`), the files are written by
edm2.train.checkpoint and the lines printed by edm2.train.status.
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

from edm2.distributed import all_ranks_agree, barrier, init_distributed, print0
from edm2.ema import HalfLifeEMA, PowerFunctionEMA
from edm2.nn import Precond
from edm2.nn.unet import precision_kwargs
from edm2.signals import StopSignal
from edm2.train import checkpoint as ckpt
from edm2.train.data import InfiniteSampler, make_batch_iterator, make_training_encoder
from edm2.train.finite import FiniteGuard
from edm2.train.loss import EDM2Loss, make_loss
from edm2.train.monitor import TrainingMonitor, report_loss_by_sigma
from edm2.train.options import TrainOptions
from edm2.train.plan import TrainingPlan, plan_training
from edm2.train.schedule import learning_rate_schedule
from edm2.train.speed import ChannelsLast, CompiledForward, match_optimizer_implementation
from edm2.train.stats import StatsCollector
from edm2.train.status import StatusReporter, announce_start, print_network_summary, print_summary


def set_random_seed(*args) -> None:
    """Seed torch (all devices) and NumPy's global RNG with hash(args) mod 2^31, as the official
    misc.set_random_seed (docs/method.md#training, #official-details)."""
    seed = hash(args) % (1 << 31)
    torch.manual_seed(seed)
    np.random.seed(seed)


def disable_tf32() -> None:
    """Training computes in true fp32, as the official loop sets it (docs/method.md#official-details)."""
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = False


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


# ---- the step ------------------------------------------------------------------------------------


def accumulate_gradients(
    model, loss_fn, encoder, batches, rounds, batch_gpu_total, loss_scaling, device, stats=None, ddp=None,
    loss_by_sigma=False,
):  # fmt: skip
    """Forward and backward over `rounds` micro-batches of (images [B, C, H, W], labels [B, L]).

    Backpropagates `sum(loss) * loss_scaling / batch_gpu_total` per round: the per-element loss
    of EDM2Loss (EDM2 Eq. 13-16, 21) summed over the micro-batch, so the rounds and the ranks
    together give the mean over the batch. `model` is what the loss calls (the DDP wrapper,
    possibly wrapped again by a speed option); `ddp` (default: `model` if it is one) has its
    gradient synchronisation suppressed for all rounds but the last. Returns the step's summed
    loss over the rounds ([] tensor on `device`, detached; edm2.train.finite checks it).
    """
    if ddp is None and isinstance(model, DistributedDataParallel):
        ddp = model
    total = None
    for round_idx in range(rounds):
        last = round_idx == rounds - 1
        with contextlib.nullcontext() if last or ddp is None else ddp.no_sync():
            images, labels = next(batches)
            images = encoder.encode_latents(images.to(device, non_blocking=True))
            loss = loss_fn(model, images, labels.to(device, non_blocking=True))  # EDM2Loss or config A's EDMLoss
            if stats is not None:
                stats.report("Loss/loss", loss)
                if loss_by_sigma:
                    report_loss_by_sigma(stats, loss, loss_fn.last_sigma)
            loss_sum = loss.sum()
            total = loss_sum.detach() if total is None else total + loss_sum.detach()
            loss_sum.mul(loss_scaling / batch_gpu_total).backward()
    return total


def apply_gradients(net, optimizer, lr: float, force_finite: bool = True, inf_gradient: float = 0.0) -> None:
    """Set the step's lr in every param group, make the gradients finite, step
    (docs/method.md#training, #official-details): NaN -> 0 and +-Inf -> +-`inf_gradient`, i.e. 0
    as EDM2's force_finite (B-G, Appendix D.2) or 1e5 as EDM's `nan_to_num` (config A)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    if force_finite:
        for param in net.parameters():
            if param.grad is not None:
                torch.nan_to_num(param.grad, nan=0, posinf=inf_gradient, neginf=-inf_gradient, out=param.grad)
    optimizer.step()


def make_optimizer(net, fused: bool = False, betas=(0.9, 0.99)):
    """Adam, betas (0.9, 0.99) (config A: EDM's (0.9, 0.999)), eps 1e-8, no weight decay (EDM2
    Appendix B, Figs. 16-22; docs/method.md#training).

    The multi-tensor ('foreach') implementation is what CUDA uses by default; on CPU it gives
    bit-identical results to the per-tensor loop, with less Python overhead per step. `fused`
    (`edm2 train --fast` on CUDA): the single-kernel implementation, the same update up to float
    rounding.
    """
    if fused:
        return torch.optim.Adam(net.parameters(), lr=0.0, betas=tuple(betas), eps=1e-8, fused=True)
    return torch.optim.Adam(net.parameters(), lr=0.0, betas=tuple(betas), eps=1e-8, foreach=True)


def make_ema(net, opts: TrainOptions):
    """The EMA of the options' config: power-function EMAs of `opts.ema_stds` (B-G, EDM2 Sec. 3),
    or config A's traditional EMA with EDM's half-life and ramp-up (`opts.ema_stds` unused)."""
    settings = opts.training()
    if settings.ema == "traditional":
        return HalfLifeEMA(net, halflife_nimg=settings.ema_halflife_nimg, rampup_ratio=settings.ema_rampup_ratio)
    return PowerFunctionEMA(net, stds=[float(s) for s in opts.ema_stds])


# ---- set-up --------------------------------------------------------------------------------------


@dataclasses.dataclass
class Training:
    """The objects one run trains with, built once by `build_training`."""

    rank: int
    world_size: int
    device: torch.device
    encoder: object  # StandardRGBEncoder or StabilityVAEEncoder (edm2.train.data.make_training_encoder)
    net: Precond  # What the optimizer, EMA and snapshots see.
    ddp: torch.nn.Module  # net, or its DistributedDataParallel wrapper with several processes.
    model: object  # What the loss calls: ddp, possibly wrapped by speed options (edm2.train.speed).
    loss_fn: EDM2Loss  # or its subclass EDMLoss (config A)
    optimizer: torch.optim.Optimizer
    ema: PowerFunctionEMA | HalfLifeEMA
    cur_nimg: int  # Images trained by earlier invocations (0 for a new run).
    elapsed_before: float  # Seconds trained by earlier invocations.


def build_network(ref_image, ref_label, opts: TrainOptions, device):
    """Precond sized from one encoded sample (image [1, C, R, R], label [L]), with the options'
    architecture, precision (fp16 or bf16 main path, recorded as `amp_dtype`) and attention
    (fused with --fast, recorded as `fused_attention`), in training mode on `device`."""
    net = Precond(
        img_resolution=ref_image.shape[-1],
        img_channels=ref_image.shape[1],
        label_dim=ref_label.shape[-1],
        **precision_kwargs(opts.precision),
        **opts.network_kwargs(),
    )
    return net.train().requires_grad_(True).to(device)


def build_training(opts: TrainOptions, plan: TrainingPlan, env, device) -> Training:
    """Encoder, network (with the official module summary on rank 0), DDP and speed wrappers,
    loss, Adam and EMAs, restored from the newest training state of `opts.outdir` if there is one.

    Nothing draws from the CPU generator before the network's initialisation (the official
    training_loop builds the network right after `set_random_seed`), so the reference item's VAE
    sampling runs under a forked RNG. The summary's forward also normalises the MPConv weights in
    place, as the official one does.
    """
    encoder = make_training_encoder(plan.dataset.num_channels)
    ref_image, ref_label = plan.dataset[0]
    with torch.random.fork_rng(devices=[]):
        ref_image = encoder.encode_latents(torch.as_tensor(ref_image).to(device).unsqueeze(0))
    print0("Constructing network...")
    net = build_network(ref_image, ref_label, opts, device)
    if env.rank == 0:
        R, C, L, B = net.img_resolution, net.img_channels, net.label_dim, plan.batch_gpu
        inputs = [torch.zeros([B, C, R, R]), torch.ones([B]), torch.zeros([B, L])]
        print_network_summary(net, [t.to(device) for t in inputs])

    print0("Setting up training state...")
    ddp = net
    if env.world_size > 1:  # DDP broadcasts rank 0's parameters and buffers
        ddp = DistributedDataParallel(net, device_ids=[device] if device.type == "cuda" else None)
    model = ChannelsLast(ddp) if opts.channels_last or opts.fast else ddp
    if opts.compile or opts.fast:
        model = CompiledForward(model, net)
    settings = opts.training()  # the config's loss, Adam betas and EMA (edm2.train.configs)
    loss_fn = make_loss(settings.loss, **opts.loss_kwargs())
    fused = opts.fast and device.type == "cuda"
    optimizer = make_optimizer(net, fused=fused, betas=settings.adam_betas)
    ema = make_ema(net, opts)
    cur_nimg, elapsed = ckpt.restore_training_state(
        opts.outdir, net=net, optimizer=optimizer, ema=ema, loss_fn=loss_fn, log=print0
    )
    match_optimizer_implementation(optimizer, fused)  # a state saved by the other implementation
    return Training(
        rank=env.rank,
        world_size=env.world_size,
        device=device,
        encoder=encoder,
        net=net,
        ddp=ddp,
        model=model,
        loss_fn=loss_fn,
        optimizer=optimizer,
        ema=ema,
        cur_nimg=cur_nimg,
        elapsed_before=elapsed,
    )


# ---- the loop ------------------------------------------------------------------------------------


def training_loop(
    opts: TrainOptions,  # The run's options (edm2.train.options); None fields are filled from the preset.
    *,
    device: str | None = None,  # 'cuda' or 'cpu'; None picks CUDA when available.
    progress: bool | None = None,  # tqdm progress bar on rank 0; None = when stderr is a terminal.
    stop: StopSignal | None = None,  # A signal flag the caller installed earlier (edm2 train does, at start-up).
    plan: TrainingPlan | None = None,  # The checked options and open dataset (default: plan_training here).
    step_hook=None,  # Called on every rank after each step: step_hook(cur_nimg=, net=, optimizer=, ema=, lr=).
    lr_kwargs: dict | None = None,  # learning_rate_schedule arguments instead of the options' (tests: a short warm-up).
) -> TrainingResult:
    """Train (or resume training) an EDM2 network; returns what this invocation did.

    Stops at the end of the slice or the duration, or after the current step when SIGTERM or
    SIGUSR1 arrives (then with a training state written and `result.signal` set). Writes
    `training-done.json` once the duration is reached. Raises ConfigError/DataError for options
    or data that cannot work, before any compute.
    """
    start_time = time.time()
    opts = opts.resolved()
    env, device = init_distributed(device)
    if plan is None:
        print0("Loading dataset...")
        plan = plan_training(opts, env.world_size)
    if env.rank == 0:
        Path(opts.outdir).mkdir(parents=True, exist_ok=True)
    with contextlib.nullcontext(stop) if stop is not None else StopSignal() as stop:  # a signal only sets a flag
        set_random_seed(opts.seed, env.rank)
        torch.backends.cudnn.benchmark = opts.bench
        disable_tf32()
        run = build_training(opts, plan, env, device)
        stop_at = plan.intervals.stop_at(run.cur_nimg, plan.total_nimg, plan.batch_size)
        result = TrainingResult(run.cur_nimg, run.cur_nimg, stop_at, plan.total_nimg)
        if announce_start(run.cur_nimg, stop_at, plan.total_nimg, plan.intervals.snapshot):
            lr_kwargs = lr_kwargs or opts.lr_kwargs()
            _iterate(
                opts,
                plan,
                run,
                result,
                stop=stop,
                progress=progress,
                lr_kwargs=lr_kwargs,
                step_hook=step_hook,
                start_time=start_time,
            )
            print_summary(opts.outdir, result, time.time() - start_time)
    if result.finished and env.rank == 0:
        ckpt.write_done(opts.outdir, result.cur_nimg)
    barrier()
    return result


def _iterate(opts, plan, run: Training, result, *, stop, progress, lr_kwargs, step_hook, start_time) -> None:
    """The iterations of one invocation, in the order of the official training_loop.py: status,
    snapshots, training state, done?, accumulate gradients, optimizer step, EMA update."""
    every = plan.intervals
    sampler = InfiniteSampler(
        len(plan.dataset), rank=run.rank, num_replicas=run.world_size, seed=opts.seed, start_idx=result.cur_nimg
    )
    batches = make_batch_iterator(plan.dataset, sampler, plan.batch_gpu, opts.workers, run.device)
    bar = _progress_bar(progress, run.rank, result.stop_at_nimg - result.start_nimg)
    monitor = TrainingMonitor(opts, plan, run, result.start_nimg)  # magnitudes, loss per sigma, TensorBoard
    status = StatusReporter(
        opts.outdir,
        StatsCollector(run.device),
        run.device,
        result.cur_nimg,
        run.elapsed_before,
        start_time,
        run.rank,
        write_line=bar.write if bar is not None else print,
        bar=bar,
        on_report=monitor.after_status,
    )
    snapshot_meta = dict(
        dataset_kwargs=opts.dataset_kwargs(),
        loss_kwargs=run.loss_fn.kwargs(),
        precision=opts.precision,
        ema_kind=opts.training().ema,
        training_options=opts.record(),
    )
    guard = FiniteGuard(run.device)  # stops the run when the loss or the weights stay non-finite
    try:
        while True:
            cur = result.cur_nimg
            done = cur >= result.stop_at_nimg or _stop_requested(stop, run, result)
            resumed_here = cur == result.start_nimg != 0  # what the resumed run wrote already

            # Stop with NumericError before anything of non-finite weights is printed or written.
            due = (every.status, every.snapshot, every.checkpoint)
            if cur != result.start_nimg and (done or any(n and cur % n == 0 for n in due)):
                guard.check(run.net, cur)

            # Activation magnitudes of the EMA network on the fixed probe batch (rank 0; edm2.train.monitor).
            if monitor.probe_due(cur) and not resumed_here:
                monitor.probe(status.stats)

            # Report status (with the EMA network's weight magnitudes).
            if every.status and (done or cur % every.status == 0) and not resumed_here:
                monitor.before_status(status.stats)
                status.report(cur)

            # Save network snapshots: every EMA, fp16 (rank 0; not forced at the end, as officially).
            if every.snapshot and cur % every.snapshot == 0 and not resumed_here and run.rank == 0:
                for path in ckpt.write_snapshots(
                    opts.outdir, cur, run.ema, run.net.init_kwargs, run.encoder.config(), snapshot_meta
                ):
                    print0(f"Saved {path.name}")
                monitor.at_snapshot(cur)  # a sample grid into TensorBoard

            # Save the training state: at the interval, at the end and when a signal stops the run.
            at_interval = every.checkpoint and (done or cur % every.checkpoint == 0)
            if (at_interval or result.signal is not None) and cur != result.start_nimg:
                elapsed = run.elapsed_before + time.time() - start_time
                ckpt.save_training_state(
                    opts.outdir, cur, elapsed, net=run.net, loss_fn=run.loss_fn, optimizer=run.optimizer,
                    ema=run.ema, rank=run.rank, device=run.device,
                )  # fmt: skip

            # Done?
            if done:
                break

            # Evaluate the loss (EDM2 Eq. 13-16, 21) and accumulate gradients, seeded from (seed, rank, cur_nimg).
            step_start = time.time()
            set_random_seed(opts.seed, run.rank, cur)
            run.optimizer.zero_grad(set_to_none=True)
            step_loss = accumulate_gradients(
                run.model, run.loss_fn, run.encoder, batches, plan.rounds, plan.batch_gpu_total, opts.loss_scaling,
                run.device, stats=status.stats, ddp=run.ddp if run.world_size > 1 else None,
                loss_by_sigma=monitor.enabled,
            )  # fmt: skip
            monitor.after_backward(status.stats, opts.loss_scaling)  # the gradient norm

            # Adam step with the learning rate of the step that starts at `cur`: inverse square root
            # decay alpha_ref / sqrt(max(t / t_ref, 1)) (EDM2 Sec. 2.3) after a linear warm-up over
            # --rampup images (the paper's 10 Mimg by default; t_ref 0: no decay, configs A-D).
            lr = float(learning_rate_schedule(cur_nimg=cur, batch_size=plan.batch_size, **lr_kwargs))
            status.stats.report("Loss/learning_rate", lr)
            apply_gradients(run.net, run.optimizer, lr, inf_gradient=opts.training().inf_gradient)
            guard.after_step(step_loss)

            # Update the EMAs: power-function averages, beta = (1 - 1/t)^(gamma + 1) (EDM2 Eq. 2);
            # config A: one traditional EMA with a half-life (HalfLifeEMA).
            result.cur_nimg += plan.batch_size
            run.ema.update(cur_nimg=result.cur_nimg, batch_size=plan.batch_size)
            status.training_time += time.time() - step_start
            if bar is not None:
                bar.update(plan.batch_size)
            if step_hook is not None:
                step_hook(cur_nimg=result.cur_nimg, net=run.net, optimizer=run.optimizer, ema=run.ema, lr=lr)
    finally:
        monitor.close()
        if bar is not None:
            bar.close()


def _stop_requested(stop, run: Training, result: TrainingResult) -> bool:
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


def _progress_bar(progress, rank, total):
    """tqdm on rank 0 (None elsewhere, or when `progress` is false; None = when stderr is a terminal)."""
    if progress is None:
        progress = bool(getattr(sys.__stderr__, "isatty", lambda: False)())
    if rank != 0 or not progress:
        return None
    return tqdm(total=total, unit="img", unit_scale=True, file=sys.__stderr__)
