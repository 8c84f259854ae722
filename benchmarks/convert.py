"""Benchmark `edm2 dataset convert`: the parallel converter against a plain single-process loop.

Makes synthetic photo-sized JPEGs (500x375 by default) in a temporary folder, converts them to
64x64 with center-crop-dhariwal both ways in the same run, checks that both give the same
pixels, and prints images/s and the ratio. One untimed warm-up of each, then `--repeats`
interleaved timings of each (so both see the same machine load); the medians are compared.

    .venv/bin/python benchmarks/convert.py [--num-images 500] [--workers N] [--repeats 5]
"""

import argparse
import io
import os
import resource
import statistics
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import PIL.Image

from edm2.data import make_transform
from edm2.data.convert import convert_dataset, default_workers


def make_jpegs(root: Path, n: int, width: int, height: int, seed: int = 0):
    """Photo-like content: smooth colour gradients and blobs (drawn at 1/4 size, bicubic-enlarged)
    plus sensor noise, saved as JPEG quality 90 into 10 class folders."""
    rng = np.random.default_rng(seed)
    w4, h4 = max(width // 4, 1), max(height // 4, 1)
    yy, xx = np.mgrid[0:h4, 0:w4].astype(np.float32)
    for i in range(n):
        img = np.zeros((h4, w4, 3), np.float32)
        for c in range(3):
            a, b, p = rng.uniform(-1, 1, 3)
            img[..., c] = 128 + 60 * np.sin(a * xx / 10 + b * yy / 8 + 6 * p)
        for _ in range(3):
            cx, cy, r = rng.uniform(0, w4), rng.uniform(0, h4), rng.uniform(5, 30)
            img += rng.uniform(-80, 80, 3) * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / r**2)[..., None]
        small = PIL.Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
        big = np.asarray(small.resize((width, height), PIL.Image.Resampling.BICUBIC)).astype(np.int16)
        big = np.clip(big + rng.integers(-8, 9, big.shape, dtype=np.int16), 0, 255).astype(np.uint8)
        sub = root / f"{i % 10:02d}"
        sub.mkdir(exist_ok=True)
        PIL.Image.fromarray(big).save(sub / f"photo{i:05d}.jpg", quality=90)


def plain_loop(src: Path, dest: Path, size: int):
    """What a one-process converter does: open, RGB, transform, PNG, write, one image at a time."""
    transform = make_transform("center-crop-dhariwal", size, size)
    files = sorted(str(p) for p in src.rglob("*.jpg"))
    with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_STORED) as z:
        for idx, fname in enumerate(files):
            img = transform(np.array(PIL.Image.open(fname).convert("RGB")))
            buf = io.BytesIO()
            PIL.Image.fromarray(img).save(buf, format="png", compress_level=0, optimize=False)
            s = f"{idx:08d}"
            z.writestr(f"{s[:5]}/img{s}.png", buf.getvalue())
    return len(files)


def cpu_seconds():
    """CPU time used so far by this process and by its finished children."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def png_pixels(path: Path) -> dict:
    with zipfile.ZipFile(path) as z:
        return {n: np.array(PIL.Image.open(io.BytesIO(z.read(n)))) for n in z.namelist() if n.endswith(".png")}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-images", type=int, default=500)
    parser.add_argument("--size", default="500x375", help="Input JPEG size WxH")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument("--repeats", type=int, default=5, help="Timed runs of each method (median reported)")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        src = tmp / "photos"
        src.mkdir()
        t0 = time.perf_counter()
        make_jpegs(src, args.num_images, width, height)
        print(f"made {args.num_images} JPEGs of {width}x{height} in {time.perf_counter() - t0:.1f} s")
        load_before = os.getloadavg()[0]
        res = f"{args.resolution}x{args.resolution}"
        walls, cpus = {"plain": [], "parallel": []}, {"plain": [], "parallel": []}
        for rep in range(args.repeats + 1):  # run 0 warms the page cache and the allocator; untimed
            for method in ("plain", "parallel"):
                dest = tmp / f"{method}{rep}.zip"
                t0, c0 = time.perf_counter(), cpu_seconds()
                if method == "plain":
                    plain_loop(src, dest, args.resolution)
                else:
                    convert_dataset(src, dest, res, "center-crop-dhariwal", workers=args.workers, progress=False)
                if rep > 0:
                    walls[method].append(time.perf_counter() - t0)
                    cpus[method].append(cpu_seconds() - c0)
        a, b = png_pixels(tmp / "plain0.zip"), png_pixels(tmp / "parallel0.zip")
        same = a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)

    plain_wall, parallel_wall = statistics.median(walls["plain"]), statistics.median(walls["parallel"])
    plain_cpu, parallel_cpu = statistics.median(cpus["plain"]), statistics.median(cpus["parallel"])
    ratios = sorted(p / q for p, q in zip(walls["plain"], walls["parallel"]))
    n = args.num_images
    print(f"cores available: {default_workers()} (os.cpu_count() = {os.cpu_count()}), workers: {args.workers}")
    print(
        f"1-min load average before / after: {load_before:.1f} / {os.getloadavg()[0]:.1f} (other processes slow both)"
    )
    print(f"plain single-process loop: {n / plain_wall:8.1f} images/s  ({plain_wall:.2f} s, median of {args.repeats})")
    print(
        f"parallel converter:        {n / parallel_wall:8.1f} images/s  ({parallel_wall:.2f} s, median of {args.repeats})"
    )
    print(
        f"speed-up: {plain_wall / parallel_wall:.2f}x (per-pair ratios {ratios[0]:.2f}-{ratios[-1]:.2f})   "
        f"same pixels: {'yes' if same else 'NO'}"
    )
    print(
        f"CPU time per image: plain {1e3 * plain_cpu / n:.2f} ms, parallel (all processes) "
        f"{1e3 * parallel_cpu / n:.2f} ms; speed-up bound on an idle machine: "
        f"{min(args.workers, default_workers()) * plain_cpu / parallel_cpu:.2f}x"
    )


if __name__ == "__main__":
    main()
