"""The three metric modes (docs/method.md#metrics) as plain functions; `edm2 metrics` wraps them.

    reference_stats(data, dest)                statistics of every image of a dataset
    calc_metrics(images, ref, num=50000)       FDs of a random subset of an image folder/ZIP
    gen_metrics(net, ref, num=50000)           FDs of images generated on the fly

Batches are split across ranks as docs/method.md#sampling; features are summed in float64 and all-reduced
(docs/method.md#metrics); FDs are computed from the summed statistics (docs/method.md#metrics). Results are returned as the dict
of the results JSON (docs/HELPERS.md) and written by rank 0 when a path is given.
"""

import json
import math

import numpy as np
import torch
from tqdm import tqdm

from edm2.data.dataset import ImageFolderDataset
from edm2.distributed import barrier, default_device, get_rank, get_world_size, init_distributed
from edm2.errors import ConfigError, DataError
from edm2.io.atomic import atomic_write_text
from edm2.metrics.detectors import METRICS, load_detector, parse_metrics
from edm2.metrics.frechet import frechet_distance
from edm2.metrics.stats import FeatureStats, load_stats, save_stats
from edm2.sample.generate import (
    generate_batches,
    load_networks_rank0_first,
    rank_batches,
    resolve_networks,
    sampler_kwargs,
)
from edm2.sample.sampler import guide_evaluations, interval_steps

DEFAULT_METRICS = ("fid", "fd_dinov2")


def load_detectors(metrics, locations: dict | None = None, device=None) -> dict:
    """Detectors by metric name, built rank 0 first (it fills the caches), then the others (docs/method.md#distributed)."""
    locations = locations or {}
    device = torch.device(device) if device is not None else default_device()
    if get_rank() != 0:
        barrier()
    detectors = {m: load_detector(m, locations.get(m), device) for m in metrics}
    if get_rank() == 0:
        barrier()
    return detectors


def accumulate(batches, detectors: dict, check_resolution=None) -> dict:
    """Feed uint8 image batches (None = empty batch) to every detector; return summed,
    all-reduced `FeatureStats` by metric. `check_resolution([H, W])`, if given, is called with
    the first batch's image size before any feature is computed (it raises to stop)."""
    acc = {name: FeatureStats() for name in detectors}
    resolution = None
    for images in batches:
        if images is None or len(images) == 0:
            continue
        if resolution is None:
            resolution = [int(images.shape[-2]), int(images.shape[-1])]
            if check_resolution is not None:
                check_resolution(resolution)
        for name, detector in detectors.items():
            acc[name].append(detector(images))
    for s in acc.values():
        s.all_reduce()
    return {"features": acc, "resolution": resolution, "detectors": detectors}


def finalize(acc: dict) -> dict:
    """The result of `accumulate` -> stats dict {'num_images': n, 'resolution': [H, W],
    metric: {'mu', 'sigma', 'detector'}}."""
    stats = {}
    for name, s in acc["features"].items():
        if "num_images" in stats and stats["num_images"] != s.n:
            raise DataError(f"metric {name} saw {s.n} images, others {stats['num_images']}")
        stats["num_images"] = s.n
        mu, sigma = s.mean_cov()
        stats[name] = {"mu": mu, "sigma": sigma, "detector": acc["detectors"][name].record()}
    stats["resolution"] = acc["resolution"]
    return stats


def check_same_detectors(ref: dict, detectors: dict, ref_path) -> None:
    """Raise `ConfigError` if the reference statistics were made by other detector weights than
    `detectors` (compared by the SHA-256 of the weights, so a copy elsewhere still matches).
    References that record no detector (official files, older edm2 files) are accepted."""
    for metric, detector in detectors.items():
        made_by = (ref.get(metric) or {}).get("detector")
        if made_by and made_by.get("sha256") and made_by["sha256"] != detector.sha256:
            raise ConfigError(
                f"reference {ref_path} was made with the {metric} detector {made_by.get('location')} "
                f"(weights sha256 {made_by['sha256'][:16]}...), this run uses {detector.location} "
                f"(sha256 {detector.sha256[:16]}...); use the same detector or recompute the reference"
            )


def same_resolution_check(ref: dict, ref_path):
    """A `check_resolution` for `accumulate`: raise `ConfigError` at the first batch if the
    reference records another image resolution (references that record none accept any)."""

    def check(resolution):
        check_same_resolution(ref, {"resolution": resolution}, ref_path)

    return check


def check_same_resolution(ref: dict, stats: dict, ref_path) -> None:
    """Raise `ConfigError` if the reference records another image resolution than `stats`."""
    a, b = ref.get("resolution"), stats.get("resolution")
    if a and b and list(a) != list(b):
        raise ConfigError(
            f"reference {ref_path} holds statistics of {a[0]}x{a[1]} images, these are {b[0]}x{b[1]}; "
            "compare images of the reference's resolution or recompute the reference"
        )


def dataset_stats(
    path,  # Dataset or image folder/ZIP (PNG etc.; not latents).
    metrics=DEFAULT_METRICS,  # Metric names.
    locations: dict | None = None,  # Detector locations by metric (default weights otherwise).
    num: int | None = None,  # Random subset of this many images (None = all); fewer is an error.
    seed: int = 0,  # Seed of the subset (docs/method.md#official-details: shuffle with RandomState(seed), keep first n, sort).
    batch: int = 64,  # Images per batch per rank.
    workers: int = 2,  # DataLoader worker processes.
    device=None,
    progress: bool = True,
    check_resolution=None,  # Called with the first batch's [H, W] (see accumulate).
) -> dict:
    """Statistics of a dataset's images (all of them, or a random subset of `num`)."""
    init_distributed()
    metrics = parse_metrics(metrics)
    detectors = load_detectors(metrics, locations, device)
    rank, world = get_rank(), get_world_size()
    if rank != 0:  # dataset listing rank 0 first (docs/method.md#distributed)
        barrier()
    dataset = ImageFolderDataset(path, use_labels=False, max_size=num, random_seed=seed)
    if rank == 0:
        barrier()
    if num is not None and len(dataset) < num:
        raise DataError(f"{path} has {len(dataset)} images, fewer than the {num} requested; lower --num")
    if len(dataset) < 2:
        raise DataError(f"{path} has {len(dataset)} image(s); statistics need at least 2")
    first, _ = dataset[0]
    if first.dtype != np.uint8:
        raise DataError(f"{path} holds {first.dtype} arrays (latents?); metrics need uint8 pixel images")
    chunks = [c.tolist() for c in rank_batches(len(dataset), batch, rank, world) if len(c)]
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=chunks, num_workers=workers)

    def batches():
        for images, _labels in tqdm(loader, desc="features", unit="batch", disable=not (progress and rank == 0)):
            yield images

    return finalize(accumulate(batches(), detectors, check_resolution))


def generator_stats(
    net,  # LoadedNetwork (or Precond).
    metrics,  # Metric names.
    seeds,  # Seeds of the images.
    gnet=None,  # Guiding network, used when guidance != 1.
    locations: dict | None = None,
    max_batch: int = 32,
    device=None,
    progress: bool = True,
    detectors: dict | None = None,
    fast: bool | None = None,  # Compiled denoisers (edm2.sample.fast); None: on CUDA only.
    check_resolution=None,  # Called with the first batch's [H, W] (see accumulate).
    **sampler,  # edm_sampler options (num_steps, guidance, ...).
) -> dict:
    """Statistics of freshly generated images, fed to the detectors without saving them."""
    init_distributed()
    if detectors is None:
        detectors = load_detectors(parse_metrics(metrics), locations, device)
    gen = generate_batches(net, seeds=seeds, gnet=gnet, max_batch=max_batch, progress=progress, fast=fast, **sampler)
    return finalize(accumulate((b.images for b in gen), detectors, check_resolution))


def choose_metrics(requested, ref: dict, ref_path) -> list[str]:
    """The metrics to compute: the requested ones (each must be in the reference), else every
    metric the reference has statistics for."""
    available = [m for m in METRICS if m in ref]
    if requested is None:
        if not available:
            raise DataError(f"reference {ref_path} has statistics for none of {', '.join(METRICS)}")
        return available
    metrics = parse_metrics(requested)
    missing = [m for m in metrics if m not in ref]
    if missing:
        raise ConfigError(
            f"reference {ref_path} has no statistics for {', '.join(missing)} (it has {', '.join(available) or 'none'}); "
            "recompute it with `edm2 metrics ref --metrics ...` or drop those metrics"
        )
    return metrics


def frechet_distances(stats: dict, ref: dict, metrics) -> dict:
    """FD per metric between generated/test statistics and the reference (docs/method.md#metrics)."""
    return {m: frechet_distance(stats[m]["mu"], stats[m]["sigma"], ref[m]["mu"], ref[m]["sigma"]) for m in metrics}


def summarize(values: list) -> dict:
    """{'values': [...], 'min', 'mean', 'std'} (std over ranges, population formula: 0 for one)."""
    v = np.asarray(values, dtype=np.float64)
    return {"values": [float(x) for x in v], "min": float(v.min()), "mean": float(v.mean()), "std": float(v.std())}


def write_json(path, result: dict) -> None:
    if path is not None and get_rank() == 0:
        atomic_write_text(path, json.dumps(result, indent=2) + "\n")


def reference_stats(
    data, dest=None, metrics=DEFAULT_METRICS, locations=None, batch=64, workers=2, device=None, progress=True
):
    """`ref`: statistics over all images of `data`, saved (rank 0) to `dest` (.npz) if given."""
    stats = dataset_stats(data, metrics, locations, None, 0, batch, workers, device, progress)
    if dest is not None and get_rank() == 0:
        save_stats(dest, stats)
    return stats


def calc_metrics(
    images,  # Folder or ZIP of images to evaluate.
    ref,  # Reference statistics (.npz, official .pkl, or URL).
    metrics=None,  # Metric names; default: every metric in the reference.
    num: int = 50000,  # Random subset of this many images (fewer is an error).
    seed: int = 0,  # Seed of the subset.
    locations=None,
    batch: int = 64,
    workers: int = 2,
    device=None,
    json_path=None,
    dest=None,  # Also save the statistics of the images here (.npz).
    progress: bool = True,
) -> dict:
    """`calc`: FDs of `num` randomly chosen images of a folder/ZIP against a reference."""
    ref_stats = load_stats(ref)
    metrics = choose_metrics(metrics, ref_stats, ref)
    init_distributed()
    detectors = load_detectors(metrics, locations, device)
    check_same_detectors(ref_stats, detectors, ref)  # before any image is read
    stats = dataset_stats(
        images, metrics, locations, num, seed, batch, workers, device, progress, same_resolution_check(ref_stats, ref)
    )
    if dest is not None and get_rank() == 0:
        save_stats(dest, stats)
    fds = frechet_distances(stats, ref_stats, metrics)
    result = {
        "metrics": {m: summarize([v]) for m, v in fds.items()},
        "images": str(images),
        "num_images": stats["num_images"],
        "seed": seed,
        "ref": str(ref),
        "detectors": {m: detectors[m].location for m in metrics},
    }
    write_json(json_path, result)
    return result


def gen_metrics(
    net,  # Network: .safetensors, official .pkl, URL or preset name.
    ref,  # Reference statistics (.npz, official .pkl, or URL).
    metrics=None,  # Metric names; default: every metric in the reference.
    gnet=None,  # Guiding network (used when guidance != 1), or a sequence of guides.
    guidance: float | None = None,  # Guidance strength; default 1 (docs/method.md#metrics: gen uses no guidance).
    num: int = 50000,  # Images per seed range.
    seed: int = 0,  # First seed.
    seeds_ranges: int = 1,  # Evaluate K disjoint ranges seed + k num ... seed + (k+1) num - 1.
    max_batch: int = 32,
    locations=None,
    device=None,
    json_path=None,
    progress: bool = True,
    fast: bool | None = None,  # Compiled denoisers (edm2.sample.fast); None: on CUDA only.
    guidance_mix: float | None = None,  # Two guides: alpha splitting the total `guidance` (mix_weights).
    **sampler,  # num_steps, sigma_min, sigma_max, rho, S_churn, S_min, S_max, S_noise.
) -> dict:
    """`gen`: FDs of images generated with consecutive seeds, for one or more seed ranges.

    Several guides (arXiv 2406.02507, App. B.2, Eq. 6): `gnet` a sequence, `guidance` one weight
    per guide or the total with `guidance_mix`; the JSON then holds `gnet` as the list of the
    guides evaluated, `guidance` as the total w, and `guides` [{gnet, guidance}] with each w_i."""
    if num < 2:
        raise ConfigError(f"--num must be at least 2 (a covariance needs 2 images), got {num}")
    if seeds_ranges < 1:
        raise ConfigError(f"--seeds-ranges must be at least 1, got {seeds_ranges}")
    choice = resolve_networks(None, net, gnet, guidance, guidance_mix)
    opts = sampler_kwargs(guidance=choice.sampler_guidance, **sampler)  # bad options fail before loading
    init_distributed()
    ref_stats = load_stats(ref)
    metrics = choose_metrics(metrics, ref_stats, ref)
    main, guide = load_networks_rank0_first(choice, device)
    detectors = load_detectors(metrics, locations, device)
    check_same_detectors(ref_stats, detectors, ref)  # before any image is generated
    values = {m: [] for m in metrics}
    ranges = []
    for k in range(seeds_ranges):
        lo = seed + k * num
        ranges.append([lo, lo + num - 1])
        stats = generator_stats(
            main,
            metrics,
            range(lo, lo + num),
            gnet=guide,
            max_batch=max_batch,
            device=device,
            progress=progress,
            detectors=detectors,
            fast=fast,
            check_resolution=same_resolution_check(ref_stats, ref),  # at the first batch
            **opts,
        )
        for m, v in frechet_distances(stats, ref_stats, metrics).items():
            values[m].append(v)
        if progress and get_rank() == 0:
            print(f"seeds {lo}-{lo + num - 1}: " + ", ".join(f"{m} {values[m][-1]:.4f}" for m in metrics))
    nfe = 2 * opts["num_steps"] - 1  # denoiser evaluations per image (docs/method.md#sampling)
    guided = interval_steps(**opts)  # the steps that evaluate the guide too (all, with no interval)
    result = {
        "metrics": {m: summarize(v) for m, v in values.items()},
        "network": choice.net,
        "gnet": choice.gnet,
        "guidance": choice.guidance,
        "ema_std": main.ema_std,
        "kimg": main.kimg,
        "nimg": main.nimg,
        "num_steps": opts["num_steps"],
        "nfe": nfe,
        "network_evaluations": nfe + guide_evaluations(guided, opts["num_steps"], len(choice.gnets)),
        "sampler": {k: (None if isinstance(v, float) and math.isinf(v) else v) for k, v in opts.items()},
        "guided_steps": guided,
        "guides": [{"gnet": g, "guidance": w} for g, w in zip(choice.gnets, choice.weights)],
        "guidance_mix": choice.mix,
        "seeds": ranges,
        "num_images": num,
        "detectors": {m: detectors[m].location for m in metrics},
        "ref": str(ref),
    }
    write_json(json_path, result)
    return result
