"""`edm2 generate`: images from a network, a URL or a released preset (docs/method.md#sampling)."""

import click

from edm2.commands.paths import OutputDir
from edm2.commands.sampling import fast_option, guidance_options, sampler_options


def _parse_seeds(ctx, param, value):
    from edm2.errors import ConfigError
    from edm2.utils import parse_int_ranges

    try:
        return parse_int_ranges(value)  # lazy: --seeds 0-4294967295 is not expanded
    except ConfigError as e:
        raise click.BadParameter(str(e)) from None


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--preset",
    metavar="NAME",
    help="Generation preset (docs/method.md#sampling); fills --net, --gnet, --guidance (and a guidance interval) when unset.",
)
@click.option(
    "--net", metavar="FILE|URL|PRESET", help="Main network: .safetensors snapshot, official .pkl, URL or preset."
)
@guidance_options("1 (no guidance)")
@click.option(
    "--outdir", required=True, type=OutputDir("image folder"), metavar="DIR", help="Where to save the output images."
)
@click.option("--subdirs", is_flag=True, help="Put seed s into the subfolder {s//1000*1000:06d}/.")
@click.option(
    "--seeds", default="16-19", show_default=True, callback=_parse_seeds, metavar="LIST", help="Seeds, e.g. 0,5,10-19."
)
@click.option("--class", "class_idx", type=click.IntRange(min=0), metavar="INT", help="Class label  [default: random]")
@click.option(
    "--batch",
    "max_batch",
    type=click.IntRange(min=1),
    default=32,
    show_default=True,
    help="Maximum batch size per rank.",
)
@sampler_options
@fast_option
@click.option("--device", metavar="DEVICE", help="Torch device  [default: cuda if available, else cpu]")
def generate(
    preset, net, gnet, guidance, guidance_mix, outdir, subdirs, seeds, class_idx, max_batch, device, fast, **sampler
):
    """Generate images with the EDM sampler, one PNG per seed ({outdir}/{seed:06d}.png).

    The network may be an edm2 snapshot, an official EDM2 pickle (read without executing it), an
    http(s):// URL of either (cached under $EDM2_CACHE_DIR, else $XDG_CACHE_HOME/edm2, else
    ~/.cache/edm2; file:// URLs are read in place) or the name of
    a released preset. Under torchrun the seeds are split across the ranks; an image depends only
    on its seed, not on --batch or the number of ranks. On CUDA the networks run as compiled CUDA
graphs (compiling takes a minute or two; equal to --eager up to float rounding).

    Guidance (--gnet, --guidance) may be limited to an interval of noise levels (--sigma_lo,
    --sigma_hi) or of steps (--guidance_start, --guidance_stop): Kynkäänniemi et al. 2024,
    docs/evaluation.md#guidance. Two guides, e.g. classifier-free guidance (an unconditional net)
    and autoguidance (a smaller, shorter-trained net) together: --gnet twice with one total
    --guidance W and --guidance-mix ALPHA (0: the first guide only, 1: the second only), or one
    --guidance per --gnet (Karras et al. 2024, arXiv 2406.02507, App. B.2, Eq. 6).

    \b
    Examples:
      edm2 generate --net runs/demo/phema/phema-0000002-0.100.safetensors --outdir out --seeds 0-15
      edm2 generate --net runs/demo/phema/phema-0000002-0.050.safetensors --outdir out-class3 \\
          --seeds 0-7 --class 3 --steps 16
      edm2 generate --net runs/demo/phema/phema-0000002-0.100.safetensors \\
          --gnet runs/demo/phema/phema-0000002-0.050.safetensors --guidance 2 \\
          --sigma_lo 0.3 --sigma_hi 5 --outdir out-interval --seeds 0-3 --steps 8
      edm2 generate --net runs/demo/phema/phema-0000002-0.100.safetensors \\
          --gnet runs/demo/phema/phema-0000002-0.050.safetensors \\
          --gnet runs/demo/phema-1k/phema-0000001-0.050.safetensors --guidance 2 --guidance-mix 0.25 \\
          --outdir out-two-guides --seeds 0-3 --steps 8

    \b
    At paper scale (GPUs, ImageNet or downloads; the tests check their options only):
      edm2 generate --preset edm2-img512-s-guid-dino --outdir out
      edm2 generate --preset edm2-img512-xxl-interval-fid --outdir out-interval
      torchrun --standalone --nproc_per_node=8 -m edm2 generate --preset edm2-img512-xxl-guid-fid \\
          --outdir out --subdirs --seeds 0-49999
    """
    from edm2.sample.generate import generate_images

    generate_images(
        outdir=outdir,
        net=net,
        gnet=gnet,
        guidance=guidance,
        guidance_mix=guidance_mix,
        preset=preset,
        seeds=seeds,
        class_idx=class_idx,
        max_batch=max_batch,
        subdirs=subdirs,
        device=device,
        fast=fast,
        **sampler,
    )
