"""`edm2 metrics ref|calc|gen|train-detector`: feature statistics and Fréchet distances
(docs/method.md#metrics)."""

import click

from edm2.commands.paths import OutputFile
from edm2.commands.sampling import fast_option, guidance_options, sampler_options

CTX = {"help_option_names": ["-h", "--help"]}


def detector_options(fn):
    """--inception, --dinov2, --cnn-detector: where each metric's detector comes from."""
    fn = click.option(
        "--cnn-detector", metavar="PATH|URL", help="fd_cnn detector file from `edm2 metrics train-detector`."
    )(fn)
    fn = click.option("--dinov2", metavar="HUBID|DIR", help="fd_dinov2 model  [default: facebook/dinov2-large]")(fn)
    fn = click.option(
        "--inception", metavar="PATH|URL", help="fid weights pt_inception-2015-12-05-6726825d.pth  [default: its URL]"
    )(fn)
    return fn


def _locations(inception, dinov2, cnn_detector) -> dict:
    return {k: v for k, v in (("fid", inception), ("fd_dinov2", dinov2), ("fd_cnn", cnn_detector)) if v is not None}


def _run(fn, *args, **kwargs):
    """Call `fn`; return (its result, this process's rank). The CLI leaves the process group
    after the command (edm2.distributed.shutdown_distributed)."""
    from edm2.distributed import get_rank

    return fn(*args, **kwargs), get_rank()


def _print_result(result: dict, rank: int) -> None:
    if rank != 0:
        return
    for name, m in result["metrics"].items():
        if len(m["values"]) == 1:
            click.echo(f"{name}: {m['values'][0]:.4f}")
        else:
            values = ", ".join(f"{v:.4f}" for v in m["values"])
            click.echo(f"{name}: min {m['min']:.4f}, mean {m['mean']:.4f}, std {m['std']:.4f} ({values})")


@click.group(context_settings=CTX)
def metrics():
    """Reference statistics and Fréchet distances: FID (Inception-v3), FD_DINOv2, FD_CNN.

    \b
    Examples (FD_CNN with a detector trained on the digits; needs no download):
      edm2 metrics train-detector --data data/digits.zip --dest refs/digits-cnn.safetensors --epochs 2
      edm2 metrics ref  --data data/digits.zip --dest refs/digits.npz --metrics fd_cnn \\
          --cnn-detector refs/digits-cnn.safetensors
      edm2 metrics calc --images out --ref refs/digits.npz --num 16 --cnn-detector refs/digits-cnn.safetensors
      edm2 metrics gen  --net runs/demo/phema/phema-0000002-0.100.safetensors --ref refs/digits.npz \\
          --num 16 --steps 8 --seeds-ranges 2 --cnn-detector refs/digits-cnn.safetensors \\
          --json scores/demo/noguid/ema-0.100.json
      edm2 metrics gen  --net runs/demo/phema/phema-0000002-0.050.safetensors --ref refs/digits.npz \\
          --num 16 --steps 8 --seeds-ranges 2 --cnn-detector refs/digits-cnn.safetensors \\
          --json scores/demo/noguid/ema-0.050.json

    \b
    At paper scale (GPUs, ImageNet or downloads; the tests check their options only):
      edm2 metrics ref  --data data/img512.zip --dest refs/img512.npz
      edm2 metrics calc --images out --ref refs/img512.npz --num 50000
      edm2 metrics gen  --net phema-2147483-0.100.safetensors --ref refs/img512.npz --seeds-ranges 3
    Under torchrun the images are split across the ranks.
    """


@metrics.command(context_settings=CTX)
@click.option("--data", required=True, metavar="ZIP|DIR", help="Dataset of pixel images.")
@click.option(
    "--dest", required=True, type=OutputFile("statistics"), metavar="STATS.npz", help="Where to save the statistics."
)
@click.option("--metrics", "metric_list", default="fid,fd_dinov2", show_default=True, help="Comma-separated metrics.")
@detector_options
@click.option("--batch", type=click.IntRange(min=1), default=64, show_default=True, help="Images per batch per rank.")
@click.option("--workers", type=click.IntRange(min=0), default=2, show_default=True, help="Data loader processes.")
@click.option("--device", metavar="DEVICE", help="Torch device  [default: cuda if available, else cpu]")
def ref(data, dest, metric_list, inception, dinov2, cnn_detector, batch, workers, device):
    """Compute reference statistics over all images of a dataset."""
    from edm2.distributed import get_rank
    from edm2.metrics.evaluate import reference_stats

    stats = reference_stats(
        data, dest, metric_list, _locations(inception, dinov2, cnn_detector), batch, workers, device
    )
    if get_rank() == 0:
        names = ", ".join(k for k, v in stats.items() if isinstance(v, dict))
        click.echo(f"Saved statistics of {stats['num_images']} images ({names}) to {dest}")


@metrics.command(context_settings=CTX)
@click.option("--images", required=True, metavar="DIR|ZIP", help="Images to evaluate.")
@click.option(
    "--ref", "ref_path", required=True, metavar="STATS|URL", help="Reference statistics (.npz or official .pkl)."
)
@click.option("--metrics", "metric_list", metavar="LIST", help="Comma-separated metrics  [default: all in --ref]")
@click.option("--num", type=click.IntRange(min=2), default=50000, show_default=True, help="Number of images to use.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random subset.")
@detector_options
@click.option("--batch", type=click.IntRange(min=1), default=64, show_default=True, help="Images per batch per rank.")
@click.option("--workers", type=click.IntRange(min=0), default=2, show_default=True, help="Data loader processes.")
@click.option("--device", metavar="DEVICE", help="Torch device  [default: cuda if available, else cpu]")
@click.option(
    "--json", "json_path", type=OutputFile("results"), metavar="OUT.json", help="Also write the results as JSON."
)
@click.option(
    "--dest", type=OutputFile("statistics"), metavar="STATS.npz", help="Also save the statistics of the images."
)
def calc(
    images, ref_path, metric_list, num, seed, inception, dinov2, cnn_detector, batch, workers, device, json_path, dest
):
    """Fréchet distances of a random subset of --num images from a folder or ZIP."""
    from edm2.metrics.evaluate import calc_metrics

    result, rank = _run(
        calc_metrics,
        images,
        ref_path,
        metric_list,
        num,
        seed,
        _locations(inception, dinov2, cnn_detector),
        batch,
        workers,
        device,
        json_path,
        dest,
    )
    _print_result(result, rank)


@metrics.command(context_settings=CTX)
@click.option("--net", required=True, metavar="FILE|URL|PRESET", help="Network to evaluate.")
@click.option(
    "--ref", "ref_path", required=True, metavar="STATS|URL", help="Reference statistics (.npz or official .pkl)."
)
@guidance_options("1, as the paper's gen")
@click.option("--metrics", "metric_list", metavar="LIST", help="Comma-separated metrics  [default: all in --ref]")
@click.option("--num", type=click.IntRange(min=2), default=50000, show_default=True, help="Images per seed range.")
@click.option("--seed", type=int, default=0, show_default=True, help="First seed.")
@click.option(
    "--seeds-ranges",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Evaluate K disjoint seed ranges (seed+k*num ...) and report min, mean and std.",
)
@click.option(
    "--batch", "max_batch", type=click.IntRange(min=1), default=32, show_default=True, help="Images per batch per rank."
)
@sampler_options
@fast_option
@detector_options
@click.option("--device", metavar="DEVICE", help="Torch device  [default: cuda if available, else cpu]")
@click.option(
    "--json", "json_path", type=OutputFile("results"), metavar="OUT.json", help="Also write the results as JSON."
)
def gen(
    net,
    ref_path,
    gnet,
    guidance,
    guidance_mix,
    metric_list,
    num,
    seed,
    seeds_ranges,
    max_batch,
    inception,
    dinov2,
    cnn_detector,
    device,
    json_path,
    **sampler,
):
    """Fréchet distances of images generated on the fly (nothing is written but the results)."""
    from edm2.metrics.evaluate import gen_metrics

    result, rank = _run(
        gen_metrics,
        net,
        ref_path,
        metric_list,
        gnet,
        guidance,
        num,
        seed,
        seeds_ranges,
        max_batch,
        _locations(inception, dinov2, cnn_detector),
        device,
        json_path,
        guidance_mix=guidance_mix,
        **sampler,
    )
    _print_result(result, rank)


@metrics.command("train-detector", context_settings=CTX)
@click.option("--data", required=True, metavar="ZIP|DIR", help="Labelled dataset (dataset.json with class labels).")
@click.option(
    "--dest", required=True, type=OutputFile("detector"), metavar="FILE.safetensors", help="Where to save the detector."
)
@click.option("--epochs", type=click.IntRange(min=1), default=10, show_default=True, help="Training epochs.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the split, initialisation and order.")
@click.option("--batch", type=click.IntRange(min=1), default=128, show_default=True, help="Minibatch size.")
@click.option(
    "--lr", type=click.FloatRange(min=0, min_open=True), default=2e-3, show_default=True, help="Adam learning rate."
)
@click.option(
    "--heldout",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=0.1,
    show_default=True,
    help="Fraction held out to measure the accuracy.",
)
def train_detector(data, dest, epochs, seed, batch, lr, heldout):
    """Train the small CNN classifier whose features give fd_cnn (for tiny datasets, e.g. digits).

    The held-out accuracy is printed and stored in the file's metadata.
    """
    from edm2.metrics.cnn import train_detector as train

    r = train(data, dest, epochs=epochs, seed=seed, batch=batch, lr=lr, heldout=heldout)
    click.echo(
        f"Held-out accuracy {r.heldout_accuracy:.4f} on {r.num_heldout} images "
        f"(train accuracy {r.train_accuracy:.4f} on {r.num_train}); saved {dest}"
    )
