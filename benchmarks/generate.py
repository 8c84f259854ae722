"""Benchmark of generation and feature extraction (issue 6), with random weights.

Sampler (the real `generate_batches` path: per-seed noise, Heun sampler, decode to uint8):
    demo model     16x16x3, 10 classes, model_channels 32, channel_mult [1,2], 2 blocks,
                   attention at 8x8; batch 64, 32 steps (63 denoiser evaluations)
    img64-xs shape 64x64x3, 1000 classes, model_channels 128, channel_mult [1,2,3,4], 3 blocks,
                   attention at 16 and 8; batch 8. A full 32-step run takes minutes on a CPU,
                   so by default it runs --xs-steps 2 (3 evaluations) and the images/s for
                   32 steps is extrapolated from the measured evaluations/s.
Detectors (uint8 images -> features, including their resizing):
    fid        Inception-v3 (TF 2015-12-05 layout), 299x299
    fd_dinov2  ViT-L/14 shaped Dinov2Model (24 layers, width 1024), 224x224
    fd_cnn     the small CNN of `edm2 metrics train-detector`, 16x16 input

Prints images/s and network evaluations/s ("evals/s" = batched denoiser calls per second;
"sample-evals/s" = that times the batch), and the process CPU time of the sampler run: on a
machine shared with other jobs, the CPU time of a `--threads 1` run is the steadier figure. For scale, the official sampler on the 2-core
development machine makes about 11 images/s with the demo model (batch 64, 32 steps).

    .venv/bin/python benchmarks/generate.py                 # everything
    .venv/bin/python benchmarks/generate.py --only demo     # one part: demo, xs, fid, dinov2, cnn
    .venv/bin/python benchmarks/generate.py --threads 1     # torch intra-op threads
"""

import argparse
import time

import torch

from edm2.nn import Precond
from edm2.sample.generate import generate_batches

DEMO = dict(img_resolution=16, img_channels=3, label_dim=10, model_channels=32, channel_mult=[1, 2], num_blocks=2,
            attn_resolutions=[8])  # fmt: skip
IMG64_XS = dict(img_resolution=64, img_channels=3, label_dim=1000, model_channels=128, channel_mult=[1, 2, 3, 4],
                num_blocks=3, attn_resolutions=[16, 8])  # fmt: skip


def random_net(kwargs, seed=0):
    torch.manual_seed(seed)
    net = Precond(**kwargs)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("gain"):
                p.fill_(1.0)  # a non-trivial network (the gains start at 0)
    return net.eval().requires_grad_(False)


def bench_sampler(name, kwargs, batch, steps, repeats, device):
    net = random_net(kwargs).to(device)
    list(generate_batches(net, seeds=range(batch), max_batch=batch, num_steps=2, device=device))  # warm-up
    best = best_cpu = float("inf")
    for r in range(repeats):
        seeds = range(r * batch, (r + 1) * batch)
        t0, c0 = time.perf_counter(), time.process_time()
        list(generate_batches(net, seeds=seeds, max_batch=batch, num_steps=steps, device=device))
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
        best_cpu = min(best_cpu, time.process_time() - c0)
    nfe = 2 * steps - 1
    evals = nfe / best
    img_s = batch / best
    img_s_32 = evals / 63 * batch  # images/s of a 32-step run at this evaluation rate
    note = "" if steps == 32 else f"  (measured {steps} steps; 32-step images/s extrapolated)"
    rate = img_s if steps == 32 else img_s_32
    print(f"{name:<12} batch {batch:3d}  {steps:2d} steps  {best:8.2f} s  {rate:8.3g} images/s  {evals:7.3g} evals/s"
          f"  {evals * batch:8.4g} sample-evals/s  (CPU time {best_cpu:.2f} s){note}")  # fmt: skip


def bench_detector(name, make, images, repeats):
    det = make()
    with torch.no_grad():
        det(images[:2])  # warm-up
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            feats = det(images)
            best = min(best, time.perf_counter() - t0)
    print(f"{name:<12} batch {len(images):3d}  {tuple(images.shape[1:])} -> {feats.shape[1]}-d  {best:8.2f} s  "
          f"{len(images) / best:8.3g} images/s")  # fmt: skip


def make_fid(device):
    from edm2.metrics.detectors import Detector
    from edm2.metrics.inception import FIDInceptionV3

    torch.manual_seed(0)
    return Detector("fid", "random", 2048, FIDInceptionV3().eval().requires_grad_(False).to(device), device, True)


def make_dinov2(device):
    from transformers import Dinov2Config, Dinov2Model

    from edm2.metrics.detectors import Detector
    from edm2.metrics.dinov2 import DINOv2Detector, _hub_interpolate_pos_encoding

    torch.manual_seed(0)
    config = Dinov2Config(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                          patch_size=14, image_size=518, layerscale_value=1.0)  # fmt: skip
    model = Dinov2Model(config).eval().requires_grad_(False)
    model.embeddings.interpolate_pos_encoding = _hub_interpolate_pos_encoding.__get__(model.embeddings)
    det = DINOv2Detector(model).to(device)
    return Detector("fd_dinov2", "random", 1024, det, device, True)


def make_cnn(device):
    from edm2.metrics.cnn import CNNClassifier
    from edm2.metrics.detectors import Detector

    torch.manual_seed(0)
    model = CNNClassifier(in_channels=3, resolution=16, num_classes=10).eval().requires_grad_(False).to(device)
    return Detector("fd_cnn", "random", model.feature_dim, model, device, False)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=["demo", "xs", "fid", "dinov2", "cnn"], action="append")
    parser.add_argument("--xs-steps", type=int, default=2, help="sampling steps for the img64-xs model")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (the best is reported)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    parts = args.only or ["demo", "xs", "fid", "dinov2", "cnn"]
    print(f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads")
    if "demo" in parts:
        bench_sampler("demo", DEMO, 64, 32, args.repeats, device)
    if "xs" in parts:
        bench_sampler("img64-xs", IMG64_XS, 8, args.xs_steps, max(1, args.repeats - 1), device)
    gen = torch.Generator().manual_seed(0)
    if "fid" in parts:
        images = torch.randint(0, 256, [16, 3, 64, 64], dtype=torch.uint8, generator=gen).to(device)
        bench_detector("fid", lambda: make_fid(device), images, args.repeats)
    if "dinov2" in parts:
        images = torch.randint(0, 256, [8, 3, 64, 64], dtype=torch.uint8, generator=gen).to(device)
        bench_detector("fd_dinov2", lambda: make_dinov2(device), images, max(1, args.repeats - 1))
    if "cnn" in parts:
        images = torch.randint(0, 256, [256, 3, 16, 16], dtype=torch.uint8, generator=gen).to(device)
        bench_detector("fd_cnn", lambda: make_cnn(device), images, args.repeats)


if __name__ == "__main__":
    main()
