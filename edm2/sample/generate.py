"""Image generation: networks from files, URLs or presets, per-seed randomness, seeds split
across ranks, and PNG output (docs/method.md#sampling, #distributed).

    generate_images(net='edm2-img512-s-guid-dino', outdir='out', seeds=range(16, 20))

`generate_batches` is the reusable core (metrics feed its decoded images straight to the
feature detectors). Under `torchrun` every function here works on the calling rank's share of
the seeds; a single process works without any process group.
"""

import collections.abc
import dataclasses
import math
import operator
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import PIL.Image
import torch
from tqdm import tqdm

from edm2.data.encoders import StandardRGBEncoder, make_encoder
from edm2.distributed import barrier, default_device, get_rank, get_world_size, init_distributed
from edm2.errors import ConfigError, FormatError
from edm2.io.atomic import atomic_path
from edm2.io.download import is_url, resolve_path
from edm2.io.official import load_official_pickle
from edm2.io.snapshot import load_snapshot
from edm2.naming import parse_snapshot_name
from edm2.presets import GENERATION_PRESETS, get_generation_preset
from edm2.sample.fast import FastDenoiser, fast_by_default
from edm2.sample.options import (
    DEFAULTS,
    INTERVAL_FIELDS,
    SamplerOptions,
    guide_weights,
    preset_interval,
    total_guidance,
)
from edm2.sample.sampler import StackedRandomGenerator, describe_interval, edm_sampler
from edm2.utils import MAX_INT, IntRanges, kimg_to_nimg

# ---- seeds and ranks (docs/method.md#sampling) ----------------------------------------------------------------


class Chunks(collections.abc.Sequence):
    """`count` nearly equal contiguous chunks of `range(num_items)`, as `np.array_split` makes
    them (the first `num_items % count` one longer), every `step`-th from `first`: a lazy
    sequence of `range`s, so that billions of seeds cost nothing up front."""

    def __init__(self, num_items: int, count: int, first: int = 0, step: int = 1):
        self.num_items, self.count, self.first, self.step = num_items, count, first, step

    def _start(self, i: int) -> int:
        size, extra = divmod(self.num_items, self.count)
        return i * size + min(i, extra)

    def __len__(self) -> int:
        return max(0, -(-(self.count - self.first) // self.step))

    def __getitem__(self, k: int) -> range:
        if k < 0:
            k += len(self)
        if not 0 <= k < len(self):
            raise IndexError("chunk index out of range")
        i = self.first + k * self.step
        return range(self._start(i), self._start(i + 1))


def split_chunks(num_items: int, max_batch: int, world_size: int = 1) -> Chunks:
    """All chunks of item indices: `max(ceil(n / (B W)), 1) W` nearly equal contiguous chunks."""
    if max_batch < 1:
        raise ConfigError(f"batch size must be at least 1, got {max_batch}")
    return Chunks(num_items, max(math.ceil(num_items / (max_batch * world_size)), 1) * world_size)


def rank_chunks(num_items: int, max_batch: int, rank: int = 0, world_size: int = 1) -> Chunks:
    """The chunks (`range`s) that rank `rank` processes: r, r + W, r + 2W, ... (docs/method.md#sampling)."""
    whole = split_chunks(num_items, max_batch, world_size)
    return Chunks(num_items, whole.count, rank, world_size)


def split_indices(num_items: int, max_batch: int, world_size: int = 1) -> list[np.ndarray]:
    """`split_chunks` as index arrays (materialised: for modest `num_items`)."""
    return [np.arange(c.start, c.stop) for c in split_chunks(num_items, max_batch, world_size)]


def rank_batches(num_items: int, max_batch: int, rank: int = 0, world_size: int = 1) -> list[np.ndarray]:
    """`rank_chunks` as index arrays (materialised: for modest `num_items`)."""
    return [np.arange(c.start, c.stop) for c in rank_chunks(num_items, max_batch, rank, world_size)]


def as_seeds(seeds) -> collections.abc.Sequence:
    """`seeds` as a sequence that is not expanded: ranges and `IntRanges` (what `--seeds`
    parses to) stay as they are, other iterables become a list. Raises ConfigError for a seed
    that is not an integer in [0, 2^63 - 1]."""
    if isinstance(seeds, (range, IntRanges)):
        parts = seeds.ranges if isinstance(seeds, IntRanges) else [seeds]
        ends = [v for r in parts if len(r) for v in (r[0], r[-1])]
    else:
        seeds = ends = [operator.index(s) for s in seeds]
    if ends and (min(ends) < 0 or max(ends) > MAX_INT):
        raise ConfigError(f"seeds must lie in [0, {MAX_INT}]")
    return seeds


# ---- networks -----------------------------------------------------------------------------------


@dataclasses.dataclass
class LoadedNetwork:
    """A network ready to sample from, with where it came from."""

    net: torch.nn.Module  # eval-mode Precond
    encoder: object  # StandardRGBEncoder or StabilityVAEEncoder
    source: str  # what the user gave: path, URL or preset name
    path: str  # local file it was read from
    nimg: int | None = None
    ema_std: float | None = None

    @property
    def kimg(self) -> int | None:
        return None if self.nimg is None else self.nimg // 1000


@dataclasses.dataclass
class NetworkChoice:
    """Which networks and guidance to use, after presets are resolved (docs/method.md#sampling).

    gnets/weights: the guides whose weight is not 1 and their weights w_i (arXiv 2406.02507,
    App. B.2, Eq. 6); `gnet`/`guidance` describe them as before: the one guide's path and weight
    (None and 1 without guidance), or for several guides the list of paths and the total weight
    w = 1 + sum_i (w_i - 1)."""

    net: str
    gnets: tuple = ()
    weights: tuple = ()
    sampler: dict = dataclasses.field(default_factory=dict)  # the preset's sampler options (guidance interval)
    mix: float | None = None  # --guidance-mix, when the weights came from it

    @property
    def gnet(self):
        return None if not self.gnets else self.gnets[0] if len(self.gnets) == 1 else list(self.gnets)

    @property
    def guidance(self) -> float:
        return total_guidance(self.weights) if self.weights else 1.0

    @property
    def sampler_guidance(self):
        """`edm_sampler`'s `guidance`: one weight for one guide (or none), else one per guide."""
        return self.weights[0] if len(self.weights) == 1 else tuple(self.weights) if self.weights else 1.0


def _sources(gnet) -> tuple:
    """--gnet as a tuple: None or () -> (), one source -> (source,), a sequence -> its items."""
    if gnet is None:
        return ()
    if isinstance(gnet, (list, tuple)):
        return tuple(gnet)
    return (gnet,)


def resolve_networks(preset=None, net=None, gnet=None, guidance=None, guidance_mix=None) -> NetworkChoice:
    """Fill unset options from a generation preset; a preset name given as --net/--gnet means its
    main network. Guidance unset -> 1 (and the guide ignored); guidance != 1 needs a guide.
    Several guides (`gnet` a sequence): one weight each, or one total weight and `guidance_mix`
    alpha (`edm2.sample.options.guide_weights`); the guides whose weight is 1 are dropped.
    The preset's guidance interval, if it has one, is in `sampler` (see `preset_interval`)."""
    sampler = {}
    gnets = _sources(gnet)
    if isinstance(guidance, (list, tuple)) and not guidance:
        guidance = None
    if preset is not None:
        p = get_generation_preset(preset)
        net = p.net if net is None else net
        gnets = gnets or _sources(p.gnet)
        guidance = p.guidance if guidance is None else guidance
        sampler = p.sampler
    if net is None:
        raise ConfigError("no network given; pass --net FILE|URL|PRESET or --preset NAME")
    net = GENERATION_PRESETS[net].net if str(net) in GENERATION_PRESETS else str(net)
    gnets = tuple(GENERATION_PRESETS[g].net if str(g) in GENERATION_PRESETS else str(g) for g in gnets)
    weights = guide_weights(1.0 if guidance is None else guidance, len(gnets), guidance_mix)
    # docs/method.md#sampling: a guide at weight 1 is ignored (never loaded nor evaluated)
    kept = [(g, w) for g, w in zip(gnets, weights) if w != 1]
    return NetworkChoice(
        net=net,
        gnets=tuple(g for g, _ in kept),
        weights=tuple(w for _, w in kept),
        sampler=sampler,
        mix=None if guidance_mix is None else float(guidance_mix),
    )


def load_network(source, device=None, dtype: torch.dtype = torch.float32) -> LoadedNetwork:
    """Load a network from our `.safetensors` snapshot, an official `.pkl` (read safely), an
    http(s)/file URL of either (downloaded into the cache) or a generation preset name."""
    device = torch.device(device) if device is not None else default_device()
    source = str(source)
    target = GENERATION_PRESETS[source].net if source in GENERATION_PRESETS else source
    suffix = Path(urllib_path(target)).suffix.lower()
    if suffix not in (".safetensors", ".pkl"):
        if not (is_url(target) or Path(target).exists() or Path(target).suffix or "/" in target):
            get_generation_preset(target)  # not a file: report it as an unknown preset name
        raise FormatError(f"network {source}: expected an edm2 .safetensors snapshot or an official EDM2 .pkl")
    path = resolve_path(target, what="network")
    nimg = ema_std = None
    if suffix == ".safetensors":
        net, info = load_snapshot(path, device=device, dtype=dtype)
        encoder_config, nimg, ema_std = info.encoder, info.nimg, info.ema_std
    else:
        data = load_official_pickle(path, dtype=dtype)
        net = data["ema"].to(device).eval().requires_grad_(False)
        encoder_config = data["encoder"]
        parsed = parse_snapshot_name(Path(urllib_path(target)).name, ext="pkl")
        if parsed is not None:
            nimg, ema_std = kimg_to_nimg(parsed.kimg), parsed.std
    encoder = make_encoder(encoder_config) if encoder_config else StandardRGBEncoder()
    if hasattr(encoder, "batch_size"):
        encoder.batch_size = 4  # docs/method.md#sampling, #official-details: generation decodes 4 images at a time
    return LoadedNetwork(net=net, encoder=encoder, source=source, path=str(path), nimg=nimg, ema_std=ema_std)


def urllib_path(text: str) -> str:
    """The path part of a URL (file name and suffix), or `text` itself for a local path."""
    return unquote(urlparse(text).path) if is_url(text) else text


def load_networks_rank0_first(choice: NetworkChoice, device=None):
    """Load the main and guiding networks, rank 0 first (it fills the download cache) while the
    other ranks wait at a barrier, then the others from the cache (docs/method.md#sampling, #distributed).
    Returns (main, guide): the guide a LoadedNetwork, a list of them (several guides) or None."""
    if get_rank() != 0:
        barrier()
    main = load_network(choice.net, device)
    guides = [load_network(g, device) for g in choice.gnets]
    main.encoder.init(next(main.net.parameters()).device)  # e.g. the VAE decoder: downloads too
    if get_rank() == 0:
        barrier()
    return main, (guides[0] if len(guides) == 1 else guides or None)


# ---- generation ---------------------------------------------------------------------------------


@dataclasses.dataclass
class GeneratedBatch:
    """One batch of a rank's share: seeds, decoded uint8 images [N, C, H, W], one-hot labels."""

    seeds: list
    images: torch.Tensor | None  # None for an empty batch (more ranks x batches than seeds)
    labels: torch.Tensor | None
    index: int  # batch number on this rank
    num_batches: int  # batches on this rank


def sampler_kwargs(guidance=1, **options) -> dict:
    """The keyword arguments of `edm_sampler`: SamplerOptions' defaults, `options` and `guidance`
    (ConfigError for values outside the bounds of `edm2.sample.options.SAMPLER_FIELDS`)."""
    return SamplerOptions(**options).kwargs(guidance)


def generate_batches(
    net,  # Main network (Precond) or LoadedNetwork.
    encoder=None,  # Decoder of latents to uint8 pixels; default: the LoadedNetwork's, else RGB.
    seeds=range(16, 24),  # All seeds (this rank processes its share).
    gnet=None,  # Guiding network (Precond or LoadedNetwork) used when guidance != 1, or a list (one per weight).
    class_idx: int | None = None,  # Force this class for every image (drawn classes still drawn).
    max_batch: int = 32,  # Images per batch per rank.
    device=None,  # Sampling device; default: the network's.
    rank: int | None = None,  # Default: this process's rank.
    world_size: int | None = None,  # Default: the process group's size.
    progress: bool = False,  # tqdm bar on rank 0.
    fast: bool | None = None,  # Compiled/captured denoisers (edm2.sample.fast); None: on CUDA only.
    **kwargs,  # edm_sampler options: num_steps, sigma_min, sigma_max, rho, guidance, S_churn, ..., sigma_lo, ...
):
    """Yield `GeneratedBatch`es for this rank's share of `seeds` (docs/method.md#sampling).

    Per seed: a generator seeded with `seed mod 2^32` draws the initial noise, then (conditional
    nets) one class; churn noise comes later from the same generator. So an image depends only
    on its seed, not on the batch it lands in or the number of ranks. All ranks run the same
    number of batches and meet at a barrier after each.

    fast: run the networks through `FastDenoiser` (one graph for all of this rank's batches,
    smaller ones padded); equal to the eager networks up to float rounding, not bit for bit.
    """
    if isinstance(net, LoadedNetwork):
        encoder = encoder if encoder is not None else net.encoder
        net = net.net
    several = isinstance(gnet, (list, tuple))
    gnets = [g.net if isinstance(g, LoadedNetwork) else g for g in (gnet if several else [gnet])]
    encoder = encoder if encoder is not None else StandardRGBEncoder()
    opts = sampler_kwargs(**kwargs)
    weights = opts["guidance"] if isinstance(opts["guidance"], tuple) else (opts["guidance"],)
    if len(weights) != len(gnets):
        raise ConfigError(f"{len(gnets)} guiding networks (gnet) but {len(weights)} guidance weights")
    for g, w in zip(gnets, weights):
        if w != 1 and g is None:
            raise ConfigError(f"guidance {w:g} needs a guiding network (gnet)")
    label_dim = int(getattr(net, "label_dim", 0))
    if class_idx is not None:
        if label_dim == 0:
            raise ConfigError(f"--class {class_idx} given, but the network is unconditional")
        if not 0 <= class_idx < label_dim:
            raise ConfigError(f"--class {class_idx} is out of range; the network has classes 0..{label_dim - 1}")
    if device is None:
        device = next(net.parameters()).device
    device = torch.device(device)
    rank = get_rank() if rank is None else rank
    world_size = get_world_size() if world_size is None else world_size
    seeds = as_seeds(seeds)
    batches = rank_chunks(len(seeds), max_batch, rank, world_size)
    if (
        progress
        and rank == 0
        and any(w != 1 for w in weights)
        and any(opts[k] != getattr(DEFAULTS, k) for k in INTERVAL_FIELDS)
    ):
        print(f"Guidance interval: {describe_interval(**opts)}")
    encoder.init(device)
    fast = fast_by_default(device) if fast is None else bool(fast)
    denoiser, guides = net, list(gnets)
    if fast:
        graph_batch = len(batches[0]) if len(batches) else 0  # the first chunk is the longest
        log = print if progress and rank == 0 else None
        denoiser = FastDenoiser(net, batch=graph_batch, log=log)
        guides = [FastDenoiser(g, batch=graph_batch, log=log) if w != 1 else g for g, w in zip(gnets, weights)]
    guide = guides if several else guides[0]

    bar = None
    if progress and rank == 0:
        # Images of all ranks: every rank runs the same number of batches, so after batch i all
        # ranks together have made the images of their first i + 1 batches.
        whole = split_chunks(len(seeds), max_batch, world_size)
        bar = tqdm(total=len(seeds), unit="img", desc="generate", dynamic_ncols=True)
    for index, indices in enumerate(batches):
        batch_seeds = [int(s) for s in seeds[indices.start : indices.stop]]
        images = labels = None
        if batch_seeds:
            with torch.no_grad():
                rnd = StackedRandomGenerator(device, batch_seeds)
                shape = [len(batch_seeds), net.img_channels, net.img_resolution, net.img_resolution]
                noise = rnd.randn(shape, device=device)  # (1) noise first (docs/method.md#sampling)
                if label_dim > 0:  # (2) then the class, even when --class overrides it
                    classes = rnd.randint(label_dim, size=[len(batch_seeds)], device=device)
                    labels = torch.eye(label_dim, device=device)[classes]
                    if class_idx is not None:
                        labels[:, :] = 0
                        labels[:, class_idx] = 1
                latents = edm_sampler(denoiser, noise, labels, gnet=guide, randn_like=rnd.randn_like, **opts)
                images = encoder.decode(latents)
        yield GeneratedBatch(seeds=batch_seeds, images=images, labels=labels, index=index, num_batches=len(batches))
        barrier()
        if bar is not None:
            first, last = whole[index * world_size], whole[index * world_size + world_size - 1]
            bar.update(last.stop - first.start)
    if bar is not None:
        bar.close()


def image_path(outdir, seed: int, subdirs: bool = False) -> Path:
    """`{outdir}/[{seed//1000*1000:06d}/]{seed:06d}.png` (docs/method.md#sampling)."""
    outdir = Path(outdir)
    if subdirs:
        outdir = outdir / f"{seed // 1000 * 1000:06d}"
    return outdir / f"{seed:06d}.png"


def save_png(image: np.ndarray, path) -> None:
    """Write a CHW uint8 image (1 or 3 channels) as PNG, atomically."""
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise FormatError(f"cannot save an image of shape {list(image.shape)} as PNG; need 1 or 3 channels")
    hwc = np.ascontiguousarray(image.transpose(1, 2, 0))
    pil = PIL.Image.fromarray(hwc[:, :, 0], "L") if hwc.shape[2] == 1 else PIL.Image.fromarray(hwc, "RGB")
    with atomic_path(path, suffix=".png") as tmp:
        pil.save(tmp, format="PNG")


def generate_images(
    outdir,  # Where to save the PNGs.
    net=None,  # Network: .safetensors, official .pkl, URL or preset name (or a loaded network).
    gnet=None,  # Guiding network, same forms; used only when guidance != 1. A list: several guides.
    preset: str | None = None,  # Generation preset: fills net, gnet and guidance when unset.
    seeds=range(16, 24),  # Seeds of the images (docs/method.md#official-details: the function default is 16..23).
    class_idx: int | None = None,  # Class of every image; None = random (per seed).
    max_batch: int = 32,  # Images per batch per rank.
    subdirs: bool = False,  # Put seed s in a subfolder {s//1000*1000:06d}.
    guidance: float | None = None,  # Guidance strength; None = the preset's, else 1. A list: one per guide.
    guidance_mix: float | None = None,  # Two guides: alpha splitting the total `guidance` (mix_weights).
    device=None,  # Default: CUDA if available, else CPU.
    progress: bool = True,  # Progress bar and messages on rank 0.
    fast: bool | None = None,  # Compiled/captured denoisers; None: on CUDA only (edm2.sample.fast).
    **kwargs,  # Sampler options (SamplerOptions fields: num_steps, ..., S_noise, the guidance interval).
) -> list[Path]:
    """Generate one PNG per seed; returns the paths written by this rank. A preset with a
    guidance interval sets it unless an interval option is given."""
    init_distributed()
    rank = get_rank()
    loaded = isinstance(net, LoadedNetwork) or isinstance(net, torch.nn.Module)
    if loaded:
        main, guide = net, gnet
        several = isinstance(gnet, (list, tuple))
        weights = guide_weights(1.0 if guidance is None else guidance, len(gnet) if several else 1, guidance_mix)
        guidance = weights if several else weights[0]
        if not several and guidance != 1 and guide is None:
            raise ConfigError(f"--guidance {guidance:g} needs a guiding network; pass gnet")
    else:
        choice = resolve_networks(preset, net, gnet, guidance, guidance_mix)
        guidance = choice.sampler_guidance
        kwargs = preset_interval(kwargs, choice.sampler)
    sampler_kwargs(guidance, **kwargs)  # bad sampler options fail here, before anything is loaded
    if not loaded:
        if progress and rank == 0:
            guides = (
                f" and guide{'s' if len(choice.gnets) > 1 else ''} {', '.join(choice.gnets)}" if choice.gnets else ""
            )
            print(f"Loading network {choice.net}{guides}")
        main, guide = load_networks_rank0_first(choice, device)
    seeds = as_seeds(seeds)
    if progress and rank == 0:
        print(f"Generating {len(seeds)} images to {outdir} ...")
    written = []
    for batch in generate_batches(
        main,
        seeds=seeds,
        gnet=guide,
        class_idx=class_idx,
        max_batch=max_batch,
        progress=progress,
        guidance=guidance,
        fast=fast,
        **kwargs,
    ):
        if batch.images is None:
            continue
        images = batch.images.cpu().numpy()
        for seed, image in zip(batch.seeds, images):
            path = image_path(outdir, seed, subdirs)
            save_png(image, path)
            written.append(path)
    if progress and rank == 0:
        print(f"Wrote {len(seeds)} images to {outdir}")
    return written
