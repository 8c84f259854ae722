"""Benchmark of `edm2 phema` (post-hoc EMA reconstruction) against its lower bounds.

Builds N synthetic snapshots (default: 64 snapshot times x 2 stds = 128 snapshots of a
22.7M-parameter Precond: img_resolution 32, 4 channels, 10 classes, model_channels 56), then
reconstructs 49 outputs (0.010,0.015,...,0.250) in a child process and prints, all measured in
the same run on this machine:

    wall time and peak RSS of the reconstruction (the child's own rusage),
    bytes read, the time to read the same inputs once, and the time of the bare coefficient
    matrix product (inputs x outputs over all parameters, float32, same chunking).

The goal (issue 5) is a wall time within about 2x of max(read-once, matrix product) and a
peak RSS under 1 GiB. For scale, the official reconstruct_phema.py took 94 s / 0.96 GiB on
this workload on the 2-core development machine.

    python benchmarks/phema.py                 # the full workload (needs ~8 GB of disk)
    python benchmarks/phema.py --quick         # a small model, seconds
    python benchmarks/phema.py --workdir /scratch/bench --keep
    python benchmarks/phema.py --official      # also the same inputs as official pickles
    python benchmarks/phema.py --quick --sweeps   # also Fig. 5b/5c workloads: one pass vs one per output set

With --sweeps (issue 23) it also times, in the same run, the per-tensor variants and training
lengths of Fig. 5b/5c: 8 variants (4 tensors x 2 EMA lengths, the rest at 0.100) and the grid at
3 training lengths, each written in one pass (`--tensor-std` repeated, `--outkimg K1,K2,K3`)
and, for comparison, one pass per variant and per length; it prints the read passes, bytes
read and wall times of both, and the time of the certificates (solve, profile errors, band).

With --official the same weights are also written as official-format network pickles (the
tests' stand-in of NVIDIA's persistence machinery, tests/io/official_pickles.py) and the
reconstruction runs on both folders in the same run: the goal (issue 12) is official-pickle
inputs within 1.3x of the safetensors inputs, with peak RSS under 1 GiB.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

CHILD = """
import json, sys, time, torch
t0 = time.perf_counter()
from edm2.ema.phema import reconstruct_phema
args = json.loads(sys.argv[1])
r = reconstruct_phema(args["indir"], args["outdir"], args["outstd"], max_memory=args["max_memory"],
                      dtype=getattr(torch, args["dtype"]), tensor_std=args.get("tensor_std"),
                      outkimg=args.get("outkimg"))
print(json.dumps({k: r[k] for k in ("bytes_read", "read_s", "compute_s", "write_s", "wait_write_s", "wall_s",
                                    "chunk_elements", "working_bytes", "workers", "out_nimg")}
                 | {"outputs": [str(p) for p in r["outputs"]], "coefficients": r["coefficients"].tolist(),
                    "inputs": [p.path.name for p in r["inputs"]], "process_s": time.perf_counter() - t0}))
"""


def build_snapshots(folder: Path, network_kwargs: dict, times: int, stds: list, interval_nimg: int, seed: int = 0):
    """Write `times x len(stds)` snapshots with distinct, finite fp16 weights."""
    from edm2.io.snapshot import build_network, save_snapshot

    torch.manual_seed(seed)
    base = {k: v.to(torch.float16) for k, v in build_network(network_kwargs, "cpu").state_dict().items()}
    for k in range(1, times + 1):
        nimg = k * interval_nimg
        for s, std in enumerate(stds):
            shift = 0.001 * (k * len(stds) + s)
            state = {name: (v + shift) if not name.endswith((".freqs", ".phases")) else v for name, v in base.items()}
            path = folder / f"network-snapshot-{nimg // 1000:07d}-{std:.3f}.safetensors"
            save_snapshot(path, state, network_kwargs, {"class": "StandardRGBEncoder"}, nimg, std, dtype=None)
    return base


PICKLER = """
import json, pickle, sys, torch
from safetensors.torch import load_file
import dnnlib
from training import encoders, networks_edm2, training_loop
args = json.loads(sys.argv[1])
net = networks_edm2.Precond(**args["network_kwargs"]).eval().requires_grad_(False).to(torch.float16)
for src, dest in args["pairs"]:
    net.load_state_dict(load_file(src))
    data = dnnlib.EasyDict(encoder=encoders.StandardRGBEncoder(), loss_fn=training_loop.EDM2Loss(),
                           dataset_kwargs=dnnlib.EasyDict(class_name="training.dataset.ImageFolderDataset"))
    for t in [*net.parameters(), *net.buffers()]:  # new storages per file (their keys are addresses), as
        t.data = t.data.clone()  # the official training loop's copy.deepcopy(ema) gives
    data.ema = net
    with open(dest, "wb") as f:
        pickle.dump(data, f)
"""


def build_official_pickles(indir: Path, outdir: Path, network_kwargs: dict, work: Path):
    """The snapshots of `indir` as official-format pickles `outdir/*.pkl` (same fp16 weights)."""
    sys.path[:0] = [str(Path(__file__).parents[1] / "tests"), str(Path(__file__).parents[1] / "tests" / "io")]
    from official_pickles import write_official_packages

    pkgs = write_official_packages(work)
    outdir.mkdir(parents=True, exist_ok=True)
    pairs = [(str(p), str(outdir / p.with_suffix(".pkl").name)) for p in sorted(indir.glob("*.safetensors"))]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(pkgs), os.environ.get("PYTHONPATH", "")]))
    payload = json.dumps({"network_kwargs": network_kwargs, "pairs": pairs})
    subprocess.run([sys.executable, "-c", PICKLER, payload], env=env, check=True)


def time_layouts(pkldir: Path) -> str:
    """How long locating the tensors of the pickles takes: one full parse, then the others
    checked against it (edm2.io.official.OfficialLayouts, as `edm2 phema` reads them)."""
    from edm2.io.official import OfficialLayouts, official_pickle_layout

    paths = sorted(pkldir.glob("*.pkl"))
    t0 = time.perf_counter()
    official_pickle_layout(paths[0], check=False)
    t1 = time.perf_counter()
    layouts = OfficialLayouts(check=False)
    for path in paths:
        layouts(path)
    t2 = time.perf_counter()
    return (
        f"tensor layouts of the pickles   {t2 - t1:8.3f} s   (one full parse {(t1 - t0) * 1e3:.1f} ms; "
        f"{len(paths)} files, {len(layouts.templates)} distinct structure(s))"
    )


def run_child(indir: Path, outdir: Path, args, **more) -> tuple[dict, float, int]:
    """Reconstruct in a child process: `(its result, wall time incl. start-up, peak RSS bytes)`.
    `more`: other arguments of reconstruct_phema (outstd, tensor_std, outkimg)."""
    child_args = dict(
        indir=str(indir), outdir=str(outdir), outstd=args.outstd, max_memory=args.max_memory, dtype=args.dtype
    )
    child_args.update(more)
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(child_args)], stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    child_wall = time.perf_counter() - t0
    if status != 0:
        raise SystemExit(f"reconstruction failed (status {status})")
    return json.loads(out), child_wall, usage.ru_maxrss * 1024


def same_outputs(a: dict, b: dict) -> bool:
    """Whether two reconstructions wrote identical tensors."""
    from safetensors.torch import load_file

    for pa, pb in zip(a["outputs"], b["outputs"]):
        ta, tb = load_file(pa), load_file(pb)
        if ta.keys() != tb.keys() or not all(torch.equal(ta[k], tb[k]) for k in ta):
            return False
    return len(a["outputs"]) == len(b["outputs"])


def time_read_once(folder: Path) -> tuple[float, int]:
    """Read every input file once, front to back, into a reused buffer."""
    buf = bytearray(8 << 20)
    view = memoryview(buf)
    total, t0 = 0, time.perf_counter()
    for path in sorted(folder.glob("*.safetensors")):
        fd = os.open(path, os.O_RDONLY)
        try:
            while True:
                got = os.readv(fd, [view])
                if got == 0:
                    break
                total += got
        finally:
            os.close(fd)
    return time.perf_counter() - t0, total


def time_matmul(n_in: int, n_out: int, numel: int, chunk: int, workers: int) -> tuple[float, float]:
    """The bare coefficient product over all parameters, float32 [n_out, n_in] @ [n_in, chunk]:
    `(seconds with torch's intra-op threads, seconds with `workers` single-threaded threads on
    separate chunks)` -- the second is how the reconstruction runs it."""
    import threading

    C = torch.randn(n_out, n_in)
    bufs = [(torch.randn(n_in, chunk), torch.empty(n_out, chunk)) for _ in range(workers)]
    starts = list(range(0, numel, chunk))

    def run(k, mine):
        W, Y = bufs[k]
        for a in mine:
            n = min(chunk, numel - a)
            torch.mm(C, W[:, :n], out=Y[:, :n])

    run(0, starts[:1])  # warm-up
    t0 = time.perf_counter()
    run(0, starts)
    intra_op = time.perf_counter() - t0
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pool = [threading.Thread(target=run, args=(k, starts[k::workers])) for k in range(workers)]
        t0 = time.perf_counter()
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        threaded = time.perf_counter() - t0
    finally:
        torch.set_num_threads(threads)
    return intra_op, threaded


SWEEP_TENSORS = ["enc-32x32-block0-affine", "enc-32x32-block0-conv0", "map-label", "map-layer0"]


def time_sweeps(indir: Path, work: Path, args, times: int, interval_nimg: int) -> None:
    """Fig. 5b/5c workloads in one pass each, against one pass per variant / training length."""
    import statistics

    from edm2.ema.certificate import certificates
    from edm2.ema.phema import find_inputs, plan_coefficients
    from edm2.utils import parse_std_list

    variants = [{t: s} for t in SWEEP_TENSORS for s in (0.050, 0.150)]
    kimgs = [times // 4 * interval_nimg // 1000, times // 2 * interval_nimg // 1000, times * interval_nimg // 1000]
    print(f"\nsweeps: load average {os.getloadavg()[0]:.2f}")
    for label, shared, separate in [
        (f"{len(variants)} per-tensor variants", dict(outstd="0.100", tensor_std=variants),
         [dict(outstd="0.100", tensor_std=[v]) for v in variants]),
        (f"grid of {len(parse_std_list(args.outstd))} at {len(kimgs)} training lengths", dict(outkimg=kimgs),
         [dict(outkimg=k) for k in kimgs]),
    ]:  # fmt: skip
        shutil.rmtree(work / "sweep", ignore_errors=True)
        os.sync()
        one, _, rss = run_child(indir, work / "sweep", args, **shared)
        walls, read = [], 0
        for more in separate:
            shutil.rmtree(work / "sweep", ignore_errors=True)
            os.sync()
            r, _, _ = run_child(indir, work / "sweep", args, **more)
            walls.append(r["wall_s"])
            read += r["bytes_read"]
        shutil.rmtree(work / "sweep", ignore_errors=True)
        print(
            f"{label}: one pass {one['wall_s']:.2f} s, {one['bytes_read'] / 2**30:.3f} GiB read, "
            f"{len(one['outputs'])} outputs, peak RSS {rss / 2**30:.3f} GiB; {len(separate)} passes "
            f"{sum(walls):.2f} s (median {statistics.median(walls):.2f} s each), {read / 2**30:.3f} GiB read; "
            f"ratio separate / one {sum(walls) / one['wall_s']:.2f}"
        )
    inputs = find_inputs(indir)
    t0 = time.perf_counter()
    used, out_nimg, X = plan_coefficients(inputs, parse_std_list(args.outstd))
    t1 = time.perf_counter()
    certificates(used, X, parse_std_list(args.outstd), out_nimg)
    t2 = time.perf_counter()
    print(
        f"certificates of {X.shape[1]} outputs from {len(used)} inputs: {t2 - t1:.2f} s "
        f"(the solve alone {t1 - t0:.2f} s); load average {os.getloadavg()[0]:.2f}"
    )


def verify(result: dict, base: dict, stds: list, interval_nimg: int):
    """Spot-check the first output against the naive sum sum_i c_i * w_i (float64)."""
    from safetensors import safe_open

    X = np.array(result["coefficients"])
    shifts = []
    for name in result["inputs"]:
        kimg, std = name.split("-")[2], float(name.split("-")[3].removesuffix(".safetensors"))
        k = (int(kimg) * 1000 + 999) // 1024 * 1024 // interval_nimg
        shifts.append(0.001 * (k * len(stds) + stds.index(std)))
    worst = 0.0
    with safe_open(result["outputs"][0], framework="pt") as f:
        for name in ["unet.out_gain", "unet.enc.32x32_conv.weight", "logvar_linear.weight"]:
            out = f.get_tensor(name).double()
            naive = sum(
                X[i, 0] * (base[name] + torch.tensor(s, dtype=torch.float16)).double() for i, s in enumerate(shifts)
            )
            worst = max(worst, ((out - naive).abs() / (naive.abs() + 1e-3)).max().item())
    return worst


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small model and few snapshots (seconds)")
    parser.add_argument("--times", type=int, default=None, help="snapshot times [64; quick 8]")
    parser.add_argument("--stds", default="0.050,0.100", help="input EMA stds [0.050,0.100]")
    parser.add_argument("--model-channels", type=int, default=None, help="model_channels [56; quick 16]")
    parser.add_argument("--outstd", default="0.010,0.015,...,0.250", help="output stds [0.010,0.015,...,0.250]")
    parser.add_argument("--max-memory", default="2GiB", help="--max-memory of the reconstruction [2GiB]")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--workdir", default=None, help="where to put the snapshots [a temporary folder]")
    parser.add_argument("--keep", action="store_true", help="keep the snapshots and outputs")
    parser.add_argument("--official", action="store_true", help="also time the same inputs as official pickles")
    parser.add_argument("--sweeps", action="store_true", help="also time per-tensor variants and training lengths")
    args = parser.parse_args()

    times = args.times or (8 if args.quick else 64)
    mc = args.model_channels or (16 if args.quick else 56)
    stds = [float(s) for s in args.stds.split(",")]
    network_kwargs = dict(img_resolution=32, img_channels=4, label_dim=10, model_channels=mc)
    interval_nimg = 8 << 20  # one snapshot every 8Mi images, as in training
    work = Path(args.workdir or tempfile.mkdtemp(prefix="phema-bench-"))
    indir, outdir = work / "snapshots", work / "phema"
    indir.mkdir(parents=True, exist_ok=True)
    try:
        from edm2.ema import parse_std_list
        from edm2.io.snapshot import build_network

        numel = sum(p.numel() for p in build_network(network_kwargs, "cpu").parameters())
        n_in, n_out = times * len(stds), len(parse_std_list(args.outstd))
        print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads")
        print(f"load average at start: {os.getloadavg()[0]:.2f} (other processes share the CPUs)")
        print(
            f"workload: {n_in} snapshots ({times} times x {len(stds)} stds) of {numel / 1e6:.2f}M parameters -> {n_out} outputs"
        )

        t0 = time.perf_counter()
        base = build_snapshots(indir, network_kwargs, times, stds, interval_nimg)
        print(f"built snapshots in {time.perf_counter() - t0:.1f} s")
        t0 = time.perf_counter()
        os.sync()  # flush them, so their write-back does not throttle the outputs' writes
        print(f"flushed them to disk in {time.perf_counter() - t0:.1f} s")

        read_s, read_bytes = time_read_once(indir)
        read_s2, _ = time_read_once(indir)
        read_s = min(read_s, read_s2)

        result, child_wall, peak_rss = run_child(indir, outdir, args)

        mm_intra, mm_threads = time_matmul(n_in, n_out, numel, result["chunk_elements"], result["workers"])
        mm_s = min(mm_intra, mm_threads)
        err = verify(result, base, stds, interval_nimg)

        bound = max(read_s, mm_s)
        print()
        print(
            f"reconstruction wall time      {result['wall_s']:8.2f} s   (process incl. Python/torch start-up: {child_wall:.2f} s)"
        )
        print(
            f"  busy time summed over threads: read {result['read_s']:.2f}, compute {result['compute_s']:.2f}, "
            f"write {result['write_s']:.2f} s; compute waiting for the writer {result['wait_write_s']:.2f} s"
        )
        print(
            f"peak RSS of the reconstruction {peak_rss / 2**30:8.3f} GiB (working buffers {result['working_bytes'] / 2**20:.0f} MiB, chunk {result['chunk_elements']} elements, {result['workers']} workers)"
        )
        print(
            f"bytes read                     {result['bytes_read'] / 2**30:8.3f} GiB ({result['bytes_read'] / read_bytes:.3f} x the input files)"
        )
        print(f"read the inputs once           {read_s:8.2f} s   ({read_bytes / 2**30:.3f} GiB, page cache warm)")
        print(
            f"bare coefficient matmul        {mm_s:8.2f} s   ({2 * n_in * n_out * numel / mm_s / 1e9:.1f} GFLOP/s; "
            f"best of {mm_intra:.2f} s with {torch.get_num_threads()} intra-op threads and "
            f"{mm_threads:.2f} s with {result['workers']} single-threaded workers)"
        )
        print(f"ratio wall / max(read, matmul) {result['wall_s'] / bound:8.2f}     (goal: about 2 or less)")
        print(f"max relative error of a spot check against the naive sum: {err:.2e}")
        if args.official:
            pkldir = work / "pickles"
            t0 = time.perf_counter()
            build_official_pickles(indir, pkldir, network_kwargs, work)
            os.sync()
            print(f"\nwrote the same snapshots as official pickles in {time.perf_counter() - t0:.1f} s")
            # Alternate the two input kinds, best of 2 each, so machine load hits both alike.
            walls = {"safetensors": [result["wall_s"]], "pickle": []}
            rss = {"safetensors": peak_rss, "pickle": 0}
            for kind, folder in [("pickle", pkldir), ("safetensors", indir), ("pickle", pkldir)]:
                shutil.rmtree(work / f"out-{kind}", ignore_errors=True)
                os.sync()  # the previous run's outputs written back first, not during this run
                r, _, peak = run_child(folder, work / f"out-{kind}", args)
                walls[kind].append(r["wall_s"])
                rss[kind] = max(rss[kind], peak)
                if kind == "pickle":
                    pickle_result = r
            ratio = min(walls["pickle"]) / min(walls["safetensors"])
            print(
                f"official-pickle inputs         {min(walls['pickle']):8.2f} s   (runs: {', '.join(f'{w:.2f}' for w in walls['pickle'])})"
            )
            print(
                f"safetensors inputs             {min(walls['safetensors']):8.2f} s   (runs: {', '.join(f'{w:.2f}' for w in walls['safetensors'])})"
            )
            print(f"ratio pickle / safetensors     {ratio:8.2f}     (goal: 1.3 or less)")
            print(f"peak RSS, pickle inputs        {rss['pickle'] / 2**30:8.3f} GiB (goal: under 1 GiB)")
            print(f"identical outputs from both    {same_outputs(pickle_result, result)}")
            print(time_layouts(pkldir))
        if args.sweeps:
            time_sweeps(indir, work, args, times, interval_nimg)
        print(f"load average at end: {os.getloadavg()[0]:.2f}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
