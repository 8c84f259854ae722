"""Training throughput of `edm2.train.training_loop` next to an official-style loop and this machine's peak.

    .venv/bin/python benchmarks/train.py                       # demo and img64-xs models, default threads
    .venv/bin/python benchmarks/train.py --models demo --steps 30 --threads 1 --repeats 3

For each model it prints images/s of
  * `official-style`: the official loop's per-step machinery rebuilt from this package's pieces
    (DDP even for one process, a DataLoader with 2 spawned workers, per-tensor Adam), as a
    baseline measured side by side on the same machine;
  * `edm2`: `training_loop` as `edm2 train --workers 0` runs it (no DDP for one process, the
    dataset cached in memory, multi-tensor Adam: bit-identical numbers);
  * `edm2 --channels-last`: the same with channels-last convolutions (equal up to float rounding),
  * `edm2 --compile` (opt-in mode, minutes of compiling first): torch.compile'd network, forced
    weight normalisation kept eager (equal up to float rounding),
  * `edm2-monitor`, `edm2-monitor-dense`: `edm2` with the training monitor (magnitudes, loss per
    sigma band, gradient norm, TensorBoard) at the default and at dense intervals, and its
    overhead as the ratio to `edm2` measured in the same run,
and the achieved FLOP/s = count_flops (per sample, official convention: one multiply-add = one
FLOP) x 3 (forward + backward) x images/s, as a fraction of the peak fp32 matmul rate measured in
the same run in the same convention (model FLOP utilisation, MFU). Wall-clock figures: on a
shared machine run with --repeats and read the medians.
"""

import argparse
import contextlib
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import PIL.Image
import torch

MODELS = {
    # 16x16x3, 10 classes, model_channels 32, channel_mult [1,2], 2 blocks, attention at 8: 1.01M parameters.
    "demo": dict(resolution=16, classes=10, batch=64, net=dict(model_channels=32, channel_mult=[1, 2], num_blocks=2, attn_resolutions=[8])),
    # edm2-img64-xs shape: 64x64x3, 1000 classes, model_channels 128, UNet defaults otherwise.
    "img64-xs": dict(resolution=64, classes=1000, batch=4, net=dict(model_channels=128)),
}  # fmt: skip


def cpu_seconds() -> float:
    """CPU time of this process and its live children (DataLoader workers), user + system."""
    try:
        import psutil
    except ImportError:
        return time.process_time()
    proc = psutil.Process()
    return sum(sum(p.cpu_times()[:2]) for p in [proc, *proc.children(recursive=True)])


def stamp(stamps):
    stamps.append((time.perf_counter(), cpu_seconds()))


def rates(stamps, warmup, images):
    """(images per wall second, images per CPU second) over the timed steps."""
    (w0, c0), (w1, c1) = stamps[warmup - 1], stamps[-1]
    return images / (w1 - w0), images / max(c1 - c0, 1e-9)


def make_dataset(root: Path, resolution: int, classes: int, count: int) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    labels = []
    for i in range(count):
        name = f"img{i:06d}.png"
        PIL.Image.fromarray(rng.integers(0, 256, (resolution, resolution, 3), dtype=np.uint8)).save(root / name)
        labels.append([name, classes - 1 if i == 0 else int(rng.integers(classes))])  # label_dim = classes
    (root / "dataset.json").write_text(json.dumps({"labels": labels}))
    return root


def peak_matmul_flops(n: int = 1024, repeats: int = 7) -> float:
    """Best fp32 matmul rate in multiply-adds per second (the FLOP counter's convention)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return n**3 / best


def flops_per_sample(spec: dict) -> float | None:
    try:
        from edm2.metrics.flops import count_flops
    except ImportError as e:
        print(f"(FLOP counter unavailable: {e}; reporting images/s only)", file=sys.stderr)
        return None
    from edm2.nn import Precond

    with torch.device("meta"):
        net = Precond(spec["resolution"], 3, spec["classes"], use_fp16=False, **spec["net"])
    return float(count_flops(net).total_flops)


# "edm2" and the speed modes run without the training monitor (edm2.train.monitor: --probe 0, no
# TensorBoard), as before it existed; the monitor modes add it: at the default intervals (status
# 128Ki, snapshot = probe 8Mi: within a short benchmark only its per-step work, the loss per sigma
# band and the gradient norm) and at dense intervals (a status every 4 steps with weight magnitudes
# and TensorBoard scalars, an activation probe and a TensorBoard sample grid every 16 steps).
NO_MONITOR = dict(probe=0, tensorboard=False)
EDM2_MODES = {
    "edm2": {},
    "edm2-monitor": dict(probe=None, tensorboard=True, status=128 << 10, snapshot=8 << 20),
    "edm2-monitor-dense": dict(probe=None, tensorboard=True, status=4, snapshot=16),  # x batch, see time_edm2
    "edm2-channels-last": dict(channels_last=True),
    "edm2-compile": dict(compile=True),
    "edm2-compile-channels-last": dict(compile=True, channels_last=True),
}


def time_edm2(spec, data, steps, warmup, **flags) -> float:
    from edm2.train.loop import training_loop
    from edm2.train.options import TrainOptions

    stamps = []
    batch = spec["batch"]
    if flags.get("compile"):
        torch._dynamo.reset()  # start from nothing, as a fresh `edm2 train --compile` process does
    flags = {**NO_MONITOR, **flags}
    if flags.get("status") == 4:  # the dense monitor mode: intervals in steps
        flags.update(status=4 * batch, snapshot=16 * batch)
    intervals = dict(status=0, snapshot=0, checkpoint=0)
    intervals.update({k: flags.pop(k) for k in list(flags) if k in intervals})
    with tempfile.TemporaryDirectory() as run_dir, contextlib.redirect_stdout(io.StringIO()):
        net = spec["net"]
        opts = TrainOptions(
            outdir=run_dir,
            data=str(data),
            channels=net["model_channels"],
            channel_mult=net.get("channel_mult"),
            num_blocks=net.get("num_blocks"),
            attn_resolutions=net.get("attn_resolutions"),
            dropout=0.0,
            P_mean=-0.8,
            P_std=1.6,
            lr=0.012,
            decay=35000,
            batch=batch,
            duration=(warmup + steps) * batch,
            **intervals,
            precision="fp32",
            workers=0,
            **flags,
        )
        training_loop(opts, device="cpu", step_hook=lambda **_: stamp(stamps), progress=False)
    return rates(stamps, warmup, steps * batch)


def time_official_style(spec, data, steps, warmup) -> float:
    """The official loop's per-step work: DDP (world 1), DataLoader with 2 spawned workers, per-tensor Adam."""
    import torch.distributed as tdist

    from edm2.data.dataset import ImageFolderDataset
    from edm2.data.encoders import StandardRGBEncoder
    from edm2.distributed import resolve_env
    from edm2.ema import PowerFunctionEMA
    from edm2.nn import Precond
    from edm2.train.data import InfiniteSampler
    from edm2.train.loop import accumulate_gradients, set_random_seed
    from edm2.train.loss import EDM2Loss
    from edm2.train.schedule import learning_rate_schedule
    from edm2.train.stats import StatsCollector

    # The official loop wraps even one process in DDP, which needs a process group of one.
    tdist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{resolve_env({}).master_port}", rank=0, world_size=1)
    batch = spec["batch"]
    set_random_seed(0, 0)
    dataset = ImageFolderDataset(str(data), use_labels=True)
    net = Precond(spec["resolution"], 3, dataset.label_dim, use_fp16=False, dropout=0.0, **spec["net"]).train()
    ddp = torch.nn.parallel.DistributedDataParallel(net)
    optimizer = torch.optim.Adam(net.parameters(), lr=0, betas=(0.9, 0.99), eps=1e-8)
    ema = PowerFunctionEMA(net)
    loss_fn, encoder, stats = EDM2Loss(P_mean=-0.8, P_std=1.6), StandardRGBEncoder(), StatsCollector("cpu")
    loader = torch.utils.data.DataLoader(
        dataset, sampler=InfiniteSampler(len(dataset)), batch_size=batch, num_workers=2, prefetch_factor=2,
        multiprocessing_context="spawn",
    )  # fmt: skip
    batches = iter(loader)
    stamps = []
    for step in range(warmup + steps):
        cur_nimg = step * batch
        set_random_seed(0, 0, cur_nimg)
        optimizer.zero_grad(set_to_none=True)
        accumulate_gradients(ddp, loss_fn, encoder, batches, 1, batch, 1.0, "cpu", stats)
        lr = learning_rate_schedule(cur_nimg=cur_nimg, batch_size=batch, ref_lr=0.012, ref_batches=35000)
        stats.report("Loss/learning_rate", lr)
        for group in optimizer.param_groups:
            group["lr"] = lr
        for param in net.parameters():
            if param.grad is not None:
                torch.nan_to_num(param.grad, nan=0, posinf=0, neginf=0, out=param.grad)
        optimizer.step()
        ema.update(cur_nimg=cur_nimg + batch, batch_size=batch)
        stamp(stamps)
    del batches, loader
    return rates(stamps, warmup, steps * batch)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="demo,img64-xs", help="comma-separated: demo, img64-xs")
    parser.add_argument("--steps", type=int, default=None, help="measured steps (default: 20 demo, 4 img64-xs)")
    parser.add_argument("--warmup", type=int, default=2, help="steps before timing starts")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    parser.add_argument("--repeats", type=int, default=1, help="repeat every measurement and report medians")
    parser.add_argument(
        "--modes",
        default="official-style,edm2,edm2-channels-last,edm2-monitor,edm2-monitor-dense",
        help="comma-separated: official-style, " + ", ".join(EDM2_MODES) + " (compiling takes minutes)",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    modes = args.modes.split(",")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    peak = statistics.median(peak_matmul_flops() for _ in range(3))
    print(
        f"peak fp32 matmul (1024^3): {peak / 1e9:.1f} G multiply-adds/s (MFU uses the peak measured next to each run)"
    )
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            spec = MODELS[name]
            steps = args.steps or (20 if name == "demo" else 4)
            data = make_dataset(Path(tmp) / name, spec["resolution"], spec["classes"], 256 if name == "demo" else 32)
            with contextlib.redirect_stdout(io.StringIO()):
                flops = flops_per_sample(spec)
            measured = {mode: [] for mode in modes}
            peaks = {mode: [] for mode in modes}
            for _ in range(args.repeats):  # interleaved, so that load changes hit every mode alike
                for mode in modes:
                    peaks[mode].append(peak_matmul_flops())  # next to each run: the machine may be shared
                    if mode == "official-style":
                        measured[mode].append(time_official_style(spec, data, steps, args.warmup))
                    else:
                        measured[mode].append(time_edm2(spec, data, steps, args.warmup, **EDM2_MODES[mode]))
            head = f"{name}: batch {spec['batch']}, {steps} timed steps x {args.repeats}"
            print(f"\n{head}" + (f", {flops / 1e9:.4f} Gflops/sample (forward)" if flops else ""))
            best_peak = max([peak] + [p for values in peaks.values() for p in values])  # the machine's own peak
            print(f"  peak fp32 matmul, best seen: {best_peak / 1e9:.1f} G multiply-adds/s (the MFU denominator)")
            wall = {mode: statistics.median(v[0] for v in values) for mode, values in measured.items()}
            cpu = {mode: statistics.median(v[1] for v in values) for mode, values in measured.items()}
            base = "official-style" if "official-style" in modes else None
            for mode in modes:
                line = f"  {mode:<27s} {wall[mode]:8.2f} img/s"
                if flops:
                    achieved = 3 * flops * wall[mode]
                    line += f"  {achieved / 1e9:7.2f} GFLOP/s  MFU {achieved / best_peak:6.1%}"
                line += f"  | {cpu[mode]:7.2f} img per CPU-s"
                if base:
                    line += f"  | x{wall[mode] / wall[base]:.2f} wall, x{cpu[mode] / cpu[base]:.2f} CPU vs {base}"
                if len(measured[mode]) > 1:
                    line += "  (img/s per run: " + ", ".join(f"{w:.1f}" for w, _c in measured[mode]) + ")"
                print(line)
            for mode in ("edm2-monitor", "edm2-monitor-dense"):
                if mode in wall and "edm2" in wall:  # the same run, the same machine, interleaved
                    line = f"  training monitor, {mode}: {wall['edm2'] / wall[mode] - 1:+.1%} wall time per image"
                    print(line + f", {cpu['edm2'] / cpu[mode] - 1:+.1%} CPU time per image vs edm2 without it")
            results[name] = dict(wall=wall, cpu=cpu)
    return results


if __name__ == "__main__":
    main()
