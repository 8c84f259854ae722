"""GPU fast paths against eager (issue 13): training and sampling speed, compile time, peak
memory and numeric agreement, for the img512-xs and img512-m network shapes, random weights.

    python benchmarks/gpu.py --json gpu.json                 # one CUDA GPU, about 6 minutes at most
    python benchmarks/gpu.py --tiny --backend aot_eager      # tiny shapes on CPU (what the test runs)

Training (one optimizer step: EDM2 loss forward + backward, non-finite gradients zeroed, Adam,
power-function EMAs; TF32 off as in `edm2 train`): img/s at batch-gpu 64 and 128 for eager fp16
(the official numerics), `--fast` fp16 and `--fast` bf16 (edm2.train.speed: compiled network with
the forced weight normalisation outside the graph, channels-last, fused attention, fused Adam),
peak memory, compile time (first step), and the agreement of one step's loss and gradients with
eager fp16 on the same weights and noise (relative L2 error).

Sampling (the Heun sampler, 32 steps = 63 denoiser evaluations, per-seed noise; decoding not
timed): img/s at batch 8, 32 and 64, without and with a guiding network (same shape, guidance
2, so 126 network evaluations per image), eager against the fast path (edm2.sample.fast: CUDA
graphs), warm-up/capture time, and the largest difference of the latents from eager (relative
to their RMS).

A time budget (`--budget`, default 330 s) bounds the run: measurements run most important first
(sampling, then training at batch 128, then 64) and those left when it is spent are listed as
skipped in the output. Compiling dominates the first run; the inductor cache (on by default, in
/tmp/torchinductor_$USER) makes a second run on the same machine start much faster.
"""

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import edm2.sample.fast as sample_fast  # noqa: E402
import edm2.train.speed as train_speed  # noqa: E402
from edm2.ema.tracking import PowerFunctionEMA  # noqa: E402
from edm2.nn import Precond  # noqa: E402
from edm2.nn.unet import precision_kwargs  # noqa: E402
from edm2.sample.fast import FastDenoiser  # noqa: E402
from edm2.sample.sampler import StackedRandomGenerator, edm_sampler  # noqa: E402
from edm2.train.loop import apply_gradients, disable_tf32, make_optimizer  # noqa: E402
from edm2.train.loss import EDM2Loss  # noqa: E402
from edm2.train.speed import ChannelsLast, CompiledForward  # noqa: E402

IMG512 = dict(img_resolution=64, img_channels=4, label_dim=1000, channel_mult=[1, 2, 3, 4], num_blocks=3,
              attn_resolutions=[16, 8])  # fmt: skip
SHAPES = {  # EDM2 presets (edm2.presets): model_channels and dropout
    "img512-xs": dict(IMG512, model_channels=128, dropout=0.0),
    "img512-m": dict(IMG512, model_channels=256, dropout=0.10),
}
TINY = {
    "tiny": dict(
        img_resolution=8,
        img_channels=3,
        label_dim=4,
        model_channels=8,
        channel_mult=[1, 2],
        num_blocks=1,
        attn_resolutions=[4],
        dropout=0.0,
    ),  # fmt: skip
}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def random_net(kwargs, device, precision="fp16", seed=0, fused_attention=False):
    torch.manual_seed(seed)
    attention = dict(fused_attention=True) if fused_attention else {}
    net = Precond(**kwargs, **precision_kwargs(precision), **attention)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("gain"):
                p.fill_(1.0)  # a non-trivial network (the gains start at 0)
    return net.to(device)


# ---- training ---------------------------------------------------------------------------------------------------


class Trainer:
    """One network with the training loop's step (edm2.train.loop), eager or fast."""

    def __init__(self, kwargs, batch, precision, fast, device):
        self.net = random_net(kwargs, device, precision, fused_attention=fast).train()
        self.model = self.net
        if fast:
            self.model = CompiledForward(ChannelsLast(self.net), self.net)
        self.optimizer = make_optimizer(self.net, fused=fast and device.type == "cuda")
        self.ema = PowerFunctionEMA(self.net, stds=[0.050, 0.100])
        self.loss_fn = EDM2Loss()
        self.batch, self.device, self.nimg = batch, device, 0
        gen = torch.Generator(device).manual_seed(1)
        R, C, L = self.net.img_resolution, self.net.img_channels, self.net.label_dim
        self.images = torch.randn([batch, C, R, R], device=device, generator=gen)
        self.labels = torch.eye(L, device=device)[torch.randint(L, [batch], device=device, generator=gen)]

    def loss_and_grads(self, seed=2):
        """Loss and gradients of one batch with fixed noise (no optimizer step)."""
        torch.manual_seed(seed)
        self.net.zero_grad(set_to_none=True)
        loss = self.loss_fn(self.model, self.images, self.labels)
        loss.sum().mul(1 / self.batch).backward()
        return loss.detach().float(), [p.grad.detach().float().clone() for p in self.net.parameters()]

    def step(self):
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss_fn(self.model, self.images, self.labels)
        loss.sum().mul(1 / self.batch).backward()
        apply_gradients(self.net, self.optimizer, lr=1e-4)
        self.nimg += self.batch
        self.ema.update(cur_nimg=self.nimg, batch_size=self.batch)


def rel_error(a, b):
    if isinstance(a, list):
        num = sum(float((x - y).square().sum()) for x, y in zip(a, b))
        den = sum(float(y.square().sum()) for y in b)
        return (num / max(den, 1e-30)) ** 0.5
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def bench_training(kwargs, batch, precision, fast, device, steps):
    trainer = Trainer(kwargs, batch, precision, fast, device)
    out = dict(batch=batch, precision=precision, fast=fast)
    sync(device)
    start = time.perf_counter()
    loss, grads = trainer.loss_and_grads()  # first forward + backward: compiles (fast), autotunes (eager)
    sync(device)
    out["compile_s" if fast else "first_pass_s"] = time.perf_counter() - start
    if fast:  # agreement with eager fp16 on the same weights and noise (both start from seed 0)
        reference = Trainer(kwargs, batch, "fp16", False, device)  # the same initial weights and data
        ref_loss, ref_grads = reference.loss_and_grads()
        out["loss_rel_error"] = rel_error(loss, ref_loss)
        out["grad_rel_error"] = rel_error(grads, ref_grads)
        if kwargs.get("dropout"):
            out["agreement_note"] = "dropout masks differ (compiled graphs draw their own random numbers)"
        del reference
    del loss, grads
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    trainer.step()
    trainer.step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        trainer.step()
    sync(device)
    out["img_per_s"] = steps * batch / (time.perf_counter() - start)
    if device.type == "cuda":
        out["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return out


# ---- sampling ---------------------------------------------------------------------------------------------------


def sample_latents(net, gnet, seeds, num_steps, device, fast, batch):
    rnd = StackedRandomGenerator(device, seeds)
    R, C, L = net.img_resolution, net.img_channels, net.label_dim
    noise = rnd.randn([len(seeds), C, R, R], device=device)
    labels = torch.eye(L, device=device)[rnd.randint(L, size=[len(seeds)], device=device)]
    guidance = 2.0 if gnet is not None else 1.0
    return edm_sampler(net, noise, labels, gnet=gnet, guidance=guidance, num_steps=num_steps, randn_like=rnd.randn_like)


def bench_sampling(kwargs, batch, guided, device, num_steps, repeats, log):
    net = random_net(kwargs, device).eval().requires_grad_(False)
    gnet = random_net(kwargs, device, seed=1).eval().requires_grad_(False) if guided else None
    out = dict(batch=batch, guided=guided, num_steps=num_steps)
    seeds = list(range(batch))
    with torch.no_grad():
        results = {}
        for fast in (False, True):
            d = FastDenoiser(net, batch=batch, log=log) if fast else net
            g = (FastDenoiser(gnet, batch=batch, log=log) if fast else gnet) if guided else None
            sync(device)
            start = time.perf_counter()
            results[fast] = sample_latents(d, g, seeds, num_steps, device, fast, batch)  # warm-up (and capture)
            sync(device)
            first = time.perf_counter() - start
            best = float("inf")
            for _ in range(repeats):
                start = time.perf_counter()
                sample_latents(d, g, seeds, num_steps, device, fast, batch)
                sync(device)
                best = min(best, time.perf_counter() - start)
            key = "fast" if fast else "eager"
            out[f"{key}_img_per_s"] = batch / best
            out[f"{key}_first_run_s"] = first
        out["speedup"] = out["fast_img_per_s"] / out["eager_img_per_s"]
        rms = results[False].square().mean().sqrt()
        out["max_diff_over_rms"] = float((results[True] - results[False]).abs().max() / rms)
    return out


# ---- driver -----------------------------------------------------------------------------------------------------


def plan(shapes, tiny):
    """(kind, shape name, settings) in order of importance."""
    sampling_batches = [2] if tiny else [8, 32, 64]
    training_batches = [4] if tiny else [128, 64]
    jobs = []
    for name in shapes:
        for batch in sampling_batches:
            for guided in (False, True):
                jobs.append(("sampling", name, dict(batch=batch, guided=guided)))
    for batch in training_batches:
        for name in shapes:
            for precision, fast in (("fp16", False), ("fp16", True), ("bf16", True)):
                jobs.append(("training", name, dict(batch=batch, precision=precision, fast=fast)))
    return jobs


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny shapes (automatic without CUDA)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--budget", type=float, default=330.0, help="seconds; later measurements are skipped")
    parser.add_argument("--backend", default="inductor", help="torch.compile backend (aot_eager: quick CPU tests)")
    parser.add_argument("--shapes", default=None, help="comma-separated subset of img512-xs,img512-m")
    args = parser.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tiny = args.tiny or device.type != "cuda"
    shapes = TINY if tiny else SHAPES
    if args.shapes:
        shapes = {k: shapes[k] for k in args.shapes.split(",")}
    train_speed.COMPILE_BACKEND = sample_fast.DEFAULT_BACKEND = args.backend
    disable_tf32()  # as `edm2 train` (sampling keeps it off too: a like-for-like comparison)
    torch.backends.cudnn.benchmark = True
    num_steps, repeats, train_steps = (3, 1, 2) if tiny else (32, 2, 10)

    report = dict(
        device=torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        torch=torch.__version__,
        backend=args.backend,
        tiny=tiny,
        sampling=[],
        training=[],
        skipped=[],
    )
    print(f"# {report['device']}, torch {torch.__version__}, backend {args.backend}, budget {args.budget:.0f} s")
    started = time.perf_counter()
    for kind, name, settings in plan(list(shapes), tiny):
        label = f"{kind} {name} " + " ".join(f"{k}={v}" for k, v in settings.items())
        if time.perf_counter() - started > args.budget:
            report["skipped"].append(label)
            print(f"skipped (time budget): {label}")
            continue
        torch._dynamo.reset()
        kwargs = dict(shapes[name])
        if kind == "sampling":
            kwargs.pop("dropout")
            result = bench_sampling(kwargs, settings["batch"], settings["guided"], device, num_steps, repeats, print)
            print(f"sampling {name:<10} batch {settings['batch']:3d} guide {'yes' if settings['guided'] else 'no ':3s} "
                  f"eager {result['eager_img_per_s']:8.2f} img/s  fast {result['fast_img_per_s']:8.2f} img/s  "
                  f"x{result['speedup']:.2f}  max|diff|/rms {result['max_diff_over_rms']:.1e}")  # fmt: skip
            report["sampling"].append(dict(shape=name, **result))
        else:
            result = bench_training(kwargs, **settings, device=device, steps=train_steps)
            extra = ""
            if "grad_rel_error" in result:
                extra = f"  compile {result['compile_s']:.1f} s  loss err {result['loss_rel_error']:.1e}  grad err {result['grad_rel_error']:.1e}"  # fmt: skip
            mem = f"  peak {result['peak_memory_gib']:.1f} GiB" if "peak_memory_gib" in result else ""
            print(f"training {name:<10} batch {settings['batch']:3d} {settings['precision']} "
                  f"{'fast ' if settings['fast'] else 'eager'} {result['img_per_s']:8.1f} img/s{mem}{extra}")  # fmt: skip
            report["training"].append(dict(shape=name, **result))
        if device.type == "cuda":
            torch.cuda.empty_cache()
    for entry in report["training"]:  # ratios within this run
        if entry["fast"]:
            base = [e for e in report["training"] if e["shape"] == entry["shape"] and e["batch"] == entry["batch"]
                    and not e["fast"]]  # fmt: skip
            if base:
                entry["speedup"] = entry["img_per_s"] / base[0]["img_per_s"]
    report["wall_s"] = time.perf_counter() - started
    print(f"# {report['wall_s']:.0f} s, {len(report['skipped'])} measurements skipped")
    if args.json:
        tmp = args.json.with_name(args.json.name + ".tmp")
        tmp.write_text(json.dumps(report, indent=1))
        tmp.replace(args.json)
    return report


if __name__ == "__main__":
    main()
