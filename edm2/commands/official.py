"""`edm2 convert-official`: an official EDM2 network pickle -> our safetensors snapshot."""

import click

from edm2.commands.paths import OutputFile


@click.command("convert-official")
@click.argument("src", type=click.Path(exists=True, dir_okay=False))
@click.argument("dest", type=OutputFile("snapshot"))
@click.option(
    "--kimg",
    type=int,
    default=None,
    help="Training kimg of the weights [default: from the file name *-<kimg>-<std>.pkl]",
)
@click.option("--std", "ema_std", type=float, default=None, help="Relative EMA std [default: from the file name]")
def convert_official(src, dest, kimg, ema_std):
    """Convert an official EDM2 pickle SRC into a snapshot DEST (.safetensors), safely.

    Nothing stored in the pickle is executed: only the known EDM2 classes, tensors and arrays
    are accepted (see docs/phema.md). The training image count and EMA std are parsed from
    names like edm2-img512-xs-2147483-0.135.pkl unless --kimg/--std are given.

    \b
    At paper scale (GPUs, ImageNet or downloads; the tests check their options only):
      edm2 convert-official edm2-img512-xs-2147483-0.135.pkl edm2-img512-xs-2147483-0.135.safetensors
      edm2 convert-official network-snapshot-0524288-0.100.pkl net.safetensors
    """
    from edm2.io.official import convert_official_pickle
    from edm2.utils import kimg_to_nimg

    nimg = kimg_to_nimg(kimg) if kimg is not None else None
    info = convert_official_pickle(src, dest, nimg=nimg, ema_std=ema_std)
    std = "none" if info["ema_std"] is None else f"{info['ema_std']:.3f}"
    click.echo(f"{dest}: nimg={info['nimg']} ema_std={std} encoder={info['encoder']['class']}")
