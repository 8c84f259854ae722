"""`edm2 phema`: post-hoc EMA reconstruction (thin wrapper over edm2.ema.phema)."""

import click

from edm2.commands.paths import OutputDir


@click.command("phema")
@click.option(
    "--indir",
    required=True,
    type=click.Path(exists=True, file_okay=False),
    help="Folder of input snapshots (*.safetensors or official *.pkl)",
)
@click.option("--inprefix", default=None, help="Only inputs whose file name prefix is exactly this")
@click.option("--instd", default=None, help="Only inputs with these EMA stds, e.g. 0.050,0.100")
@click.option("--outdir", required=True, type=OutputDir("output folder"), help="Where to write the reconstructions")
@click.option("--outprefix", default="phema", show_default=True, help="File name prefix of the outputs")
@click.option(
    "--outstd",
    required=True,
    help="EMA stds to reconstruct, e.g. 0.010,0.015,...,0.250 (0 < std < sqrt(1/12) = 0.2887)",
)
@click.option(
    "--outkimg",
    default=None,
    help="Training kimg to reconstruct at, or a list (one pass for all), e.g. 8,16  [default: the latest input]",
)
@click.option(
    "--tensor-std",
    "tensor_std",
    multiple=True,
    metavar="NAME=STD[,...]",
    help="Per-tensor EMA variant: these tensors (state-dict name, pattern, or paper D.6 name such as "
    "enc-64x64-block0-affine) get their own EMA length, the rest --outstd. Repeat for more variants "
    "(one pass for all)",
)
@click.option(
    "--tensor-std-file",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="YAML of per-tensor variants: a mapping NAME: STD, or a list of them (added to --tensor-std)",
)
@click.option("--skip", is_flag=True, help="Skip outputs that already exist")
@click.option("--max-memory", default="2GiB", show_default=True, help="Peak memory budget, e.g. 1GiB, 512MiB")
@click.option(
    "--dtype",
    type=click.Choice(["float32", "float64"]),
    default="float32",
    show_default=True,
    help="Accumulation dtype",
)
@click.option(
    "--batch",
    type=int,
    default=None,
    hidden=True,
    help="Accepted for compatibility with the official tool; ignored (one pass always)",
)
def phema(
    indir,
    inprefix,
    instd,
    outdir,
    outprefix,
    outstd,
    outkimg,
    tensor_std,
    tensor_std_file,
    skip,
    max_memory,
    dtype,
    batch,
):
    """Reconstruct networks with new EMA lengths from training snapshots (EDM2 post-hoc EMA).

    Reads every input once, whatever the number of outputs, with peak memory under
    --max-memory, and writes OUTDIR/<outprefix>-<kimg>-<std>.safetensors and beside each its
    certificate <name>.certificate.json (coefficients, relative profile error, input range).
    Warns in one line when an output's profile error exceeds 1% or its EMA length lies outside
    the band the inputs support (docs/phema.md#certificate).

    With --tensor-std, writes per-tensor variants instead,
    OUTDIR/<outprefix>-<NAME>=<STD>-<kimg>-<std>.safetensors: the named tensors with their own
    EMA length, the rest with --outstd (docs/phema.md#per-tensor).

    \b
    Examples:
      edm2 phema --indir runs/demo --outdir runs/demo/phema --outstd 0.050,0.100
      edm2 phema --indir runs/demo --outdir runs/demo/phema-1k --outstd 0.050,0.075,...,0.150 --outkimg 1
      edm2 phema --indir runs/demo --outdir runs/demo/phema-tensor --outstd 0.100 --tensor-std 'unet.enc.*=0.050' \\
          --tensor-std 'unet.enc.*=0.075,unet.out_conv.weight=0.150'

    \b
    At paper scale (GPUs, ImageNet or downloads; the tests check their options only):
      edm2 phema --indir runs/xs --outdir out --outstd 0.010,0.015,...,0.250 --outkimg 2147483
      edm2 phema --indir official-snapshots --inprefix network-snapshot --outdir out --outstd 0.135
      edm2 phema --indir raw/s --outdir out --outstd 0.130 --tensor-std enc-64x64-block0-affine=0.100 \\
          --tensor-std map-label=0.200 --outkimg 268435,536870
    """
    import torch

    from edm2.ema.certificate import warning_line
    from edm2.ema.per_tensor import parse_tensor_std, read_tensor_std_yaml
    from edm2.ema.phema import reconstruct_phema
    from edm2.utils import parse_int_list

    variants = [parse_tensor_std(text) for text in tensor_std]
    if tensor_std_file is not None:
        variants += read_tensor_std_yaml(tensor_std_file)

    result = reconstruct_phema(
        indir,
        outdir,
        outstd,
        inprefix=inprefix,
        instd=instd,
        outprefix=outprefix,
        outkimg=None if outkimg is None else parse_int_list(outkimg),
        tensor_std=variants or None,
        skip=skip,
        max_memory=max_memory,
        dtype=getattr(torch, dtype),
        progress=True,
    )
    if not result["outputs"]:
        click.echo("Nothing to do: every output exists (--skip).")
        return
    click.echo(
        f"Wrote {len(result['outputs'])} reconstruction{'s' if len(result['outputs']) != 1 else ''} "
        f"at kimg {','.join(sorted({str(r['out_nimg'] // 1000) for r in result['records']}, key=int))} "
        f"from {len(result['inputs'])} inputs to {outdir} ({result['bytes_read'] / 2**30:.2f} GiB read, "
        f"{result['wall_s']:.1f} s)"
    )
    warning = warning_line(result["records"])
    if warning:
        click.echo(warning, err=True)
