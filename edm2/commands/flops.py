"""`edm2 flops`: parameters and FLOPs of a network, counted by the official convention."""

import click


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("target", metavar="FILE|PRESET")
@click.option(
    "--forced-norm/--no-forced-norm",
    default=True,
    show_default=True,
    help="Charge the forced weight normalisation of a training-mode forward, as the official figures do.",
)
@click.option(
    "--config",
    type=click.Choice(["A", "B", "C", "D", "E", "F", "G"]),
    default=None,
    help="Count the network of the paper's Table 1 config at this size instead (default: the target's own).",
)
@click.option("--table/--no-table", default=True, show_default=True, help="Print the per-op table.")
def flops(target, forced_norm, config, table):
    """Count parameters and FLOPs of one denoiser evaluation (batch 1, sigma 0, no logvar head).

    FILE is an edm2 snapshot (.safetensors); PRESET is a training preset name (img512 presets
    use 64x64x4 latents, img64 presets 64x64x3 pixels, both with 1000 classes). The network is
    built on the meta device, so nothing is allocated and even XXL counts in about a second.
    One multiply-add counts as one FLOP (docs/method.md#flops).

    \b
    Examples:
      edm2 flops edm2-img512-xs            # 124.71 M params, 45.75 Gflops
      edm2 flops edm2-img512-xxl --no-table
      edm2 flops edm2-img512-s --config A --no-table   # Table 1's config A at S: 295.90 M, 110.75 Gflops
      edm2 flops runs/demo/network-snapshot-0000002-0.100.safetensors
    """
    from edm2.metrics.flops import count_flops_of

    result, kwargs = count_flops_of(target, forced_weight_norm=forced_norm, config=config)
    click.echo(f"Network:    {', '.join(f'{k}={v}' for k, v in kwargs.items())}")
    click.echo(f"Parameters: {result.mparams:.2f} M ({result.total_params:,})")
    click.echo(f"Gflops:     {result.gflops:.2f} per evaluation ({result.total_flops:,} flops)")
    if table:
        click.echo()
        click.echo(result.table())
    if result.unknown:
        names = ", ".join(f"{k} x{v}" for k, v in sorted(result.unknown.items()))
        click.echo(f"Not counted (unknown to the official table): {names}", err=True)
