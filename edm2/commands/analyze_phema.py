"""`edm2 analyze phema-profile`: the requested vs the reconstructed EMA profile of a post-hoc
EMA output (docs/phema.md#certificate)."""

import json
from pathlib import Path

import click

from edm2.commands.paths import OutputFile
from edm2.errors import FormatError


def read_phema_record(path) -> dict:
    """The record of one `edm2 phema` output, from the snapshot's metadata (`extra.phema`) or its
    certificate JSON; `ema_std` filled in. Raises FormatError for a file that is neither, or a
    snapshot not written by `edm2 phema`."""
    path = Path(path)
    if path.suffix == ".json":
        try:
            record = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise FormatError(f"{path}: not a certificate JSON ({e}); give an `edm2 phema` output") from None
    else:
        from edm2.io.snapshot import read_snapshot_info

        info = read_snapshot_info(path)
        record = dict(info.extra.get("phema") or {})
        record.setdefault("ema_std", info.ema_std)
    missing = [k for k in ("inputs", "coefficients", "out_nimg", "ema_std") if record.get(k) is None]
    if missing:
        raise FormatError(
            f"{path}: no post-hoc EMA record ({', '.join(missing)} missing); give a file written by `edm2 phema`"
        )
    return record


@click.command("phema-profile")
@click.argument("network", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", required=True, type=OutputFile("plot"), help="Plot stem: writes STEM.png and STEM.svg")
def phema_profile(network, out):
    """Plot the requested vs the reconstructed EMA profile of an `edm2 phema` output.

    NETWORK is a reconstructed snapshot (.safetensors) or its .certificate.json. The title gives
    the relative L2 error between the two profiles and the band of EMA lengths the inputs
    support (docs/phema.md#certificate).

    \b
    Examples:
      edm2 analyze phema-profile runs/demo/phema-1k/phema-0000001-0.100.safetensors --out plots/profile-0.100
    """
    from edm2.report.phema_plots import plot_phema_profile

    record = read_phema_record(network)
    paths = plot_phema_profile(record, out, title=f"{Path(network).name}: requested vs reconstructed EMA profile")
    click.echo(f"profile error {record.get('profile_error', float('nan')):.3%} -> {', '.join(map(str, paths))}")
