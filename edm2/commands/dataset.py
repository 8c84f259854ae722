"""`edm2 dataset convert|encode|digits`: thin click wrappers over edm2.data (docs/method.md#datasets)."""

import os
import signal
import sys

import click

from edm2.commands.paths import OutputFileOrDir
from edm2.errors import EDM2Error

TRANSFORM_CHOICES = ["none", "center-crop", "center-crop-wide", "center-crop-dhariwal"]


def _run(fn, *args, **kwargs):
    """Run `fn` as a dataset command: refuse multi-rank launches (the reference refuses WORLD_SIZE
    != 1, docs/method.md#datasets); while it runs, SIGTERM is a normal exit (so temporary outputs are removed when a
    scheduler kills the job); errors about the input become one-line messages."""
    if int(os.environ.get("WORLD_SIZE", "1")) != 1:
        raise click.ClickException("dataset commands run in one process; launch them without torchrun (WORLD_SIZE=1)")
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        return fn(*args, **kwargs)
    except EDM2Error as e:
        raise click.ClickException(str(e)) from None
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


# The destination of convert and encode (checked before any work, see edm2.commands.paths).
dataset_dest = click.option(
    "--dest",
    required=True,
    type=OutputFileOrDir("dataset"),
    metavar="ZIP|DIR",
    help="Output .zip, or a folder that is absent or empty.",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def dataset():
    """Make datasets in the official EDM2 format (ZIP or folder of PNG/NPY plus dataset.json).

    \b
    Examples:
      edm2 dataset digits --dest data/digits-png --resolution 16
      edm2 dataset convert --source data/digits-png --dest data/digits.zip

    \b
    At paper scale (GPUs, ImageNet or downloads; the tests check their options only):
      edm2 dataset convert --source ~/imagenet/train --dest data/img64.zip \\
          --resolution 64x64 --transform center-crop-dhariwal
      edm2 dataset encode --source data/img512.zip --dest data/img512-sd.zip
    """


@dataset.command()
@click.option("--source", required=True, metavar="DIR|ZIP", help="Input folder (searched recursively) or ZIP.")
@dataset_dest
@click.option("--resolution", metavar="WxH", help="Output size, WxH or W,H (e.g. 64x64); default: keep the size.")
@click.option(
    "--transform", type=click.Choice(TRANSFORM_CHOICES), default="none", show_default=True, help="Crop/resize recipe."
)
@click.option("--max-images", type=click.IntRange(min=1), help="Convert only the first N input images.")
@click.option("--workers", type=click.IntRange(min=1), help="Worker processes  [default: all cores]")
@click.option(
    "--on-error",
    type=click.Choice(["fail", "skip"]),
    default="fail",
    show_default=True,
    help="Bad image: stop with an error, or leave it out and list it at the end.",
)
@click.option(
    "--upscale/--no-upscale",
    default=True,
    show_default=True,
    help="Enlarge images smaller than the output (as the reference does); --no-upscale treats them as bad input.",
)
@click.option(
    "--max-pixels",
    type=click.IntRange(min=1),
    default=1 << 27,
    show_default=True,
    help="Refuse input images larger than this (width x height), from their header, before decoding.",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def convert(source, dest, resolution, transform, max_images, workers, on_error, upscale, max_pixels, quiet):
    """Convert a folder or ZIP of images into a dataset (docs/method.md#datasets).

    Every image is converted to RGB, transformed, and written as an uncompressed PNG
    `00000/img00000000.png` ... (numbered by input image) with labels in dataset.json, taken
    from the source's dataset.json or from its top-level folder names. The output appears at
    --dest only when complete.

    \b
    Examples:
      edm2 dataset convert --source data/digits-png --dest data/digits.zip
      edm2 dataset convert --source data/digits.zip --dest data/digits8 --resolution 8,8 \\
          --transform center-crop --on-error skip --workers 2

    \b
    At paper scale (GPUs, ImageNet or downloads; the tests check their options only):
      edm2 dataset convert --source ~/imagenet/train --dest data/img512.zip \\
          --resolution 512x512 --transform center-crop-dhariwal
    """
    from edm2.data.convert import convert_dataset

    report = _run(
        convert_dataset,
        source,
        dest,
        resolution=resolution,
        transform=transform,
        max_images=max_images,
        workers=workers,
        on_error=on_error,
        upscale=upscale,
        progress=not quiet,
        max_pixels=max_pixels,
    )
    click.echo(report.summary())


@dataset.command()
@click.option("--source", required=True, metavar="ZIP|DIR", help="Pixel dataset, e.g. the output of convert.")
@dataset_dest
@click.option(
    "--vae",
    default="stabilityai/sd-vae-ft-mse",
    show_default=True,
    metavar="HUB_ID|PATH",
    help="diffusers AutoencoderKL: Hugging Face hub id or local folder.",
)
@click.option(
    "--batch", type=click.IntRange(min=1), default=8, show_default=True, help="Images per VAE call (reference: 1)."
)
@click.option("--device", default="auto", show_default=True, metavar="auto|cpu|cuda", help="Where the VAE runs.")
@click.option("--max-images", type=click.IntRange(min=1), help="Encode only the first N images.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def encode(source, dest, vae, batch, device, max_images, quiet):
    """Encode a pixel dataset into Stable Diffusion VAE latents (docs/method.md#datasets).

    Writes per image an 8-channel float32 array (posterior mean, then std, at 1/8 resolution)
    as `00000/img-mean-std-00000000.npy` ..., and carries the labels over.

    \b
    At paper scale (GPUs, ImageNet or downloads; the tests check their options only):
      edm2 dataset encode --source data/img512.zip --dest data/img512-sd.zip
      edm2 dataset encode --source data/img512.zip --dest data/img512-sd.zip \\
          --vae ~/models/sd-vae-ft-mse --batch 16 --device cuda
    """
    from edm2.data.encode import encode_dataset

    report = _run(
        encode_dataset,
        source,
        dest,
        vae=vae,
        batch=batch,
        device=device,
        max_images=max_images,
        progress=not quiet,
    )
    click.echo(report.summary())


@dataset.command()
@click.option(
    "--dest",
    required=True,
    type=OutputFileOrDir("dataset"),
    metavar="DIR|ZIP",
    help="Output folder (absent or empty) or .zip.",
)
@click.option(
    "--resolution", type=int, default=16, show_default=True, help="Image side, a power of two >= 8 (scans are 8x8)."
)
def digits(dest, resolution):
    """Write the demo dataset: scikit-learn's 1,797 handwritten digit scans (10 classes).

    One folder per class (0..9) plus dataset.json, RGB PNGs upscaled from 8x8 with bicubic
    filtering; ready for `edm2 dataset convert`. Needs no network.

    \b
    Examples:
      edm2 dataset digits --dest data/digits-png --resolution 16
      edm2 dataset digits --dest data/digits32-png --resolution 32
      edm2 dataset convert --source data/digits-png --dest data/digits.zip
    """
    from edm2.data.digits import write_digits

    n = _run(write_digits, dest, resolution)
    click.echo(f"wrote {n} digit images ({resolution}x{resolution}, 10 classes) to {dest}")
