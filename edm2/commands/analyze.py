"""`edm2 analyze`: analyses of trained networks (thin wrappers over edm2.analysis).

A subcommand is one line of ANALYZE_COMMANDS ("name": "module:attribute" of a click command),
imported only when used, like the commands of `edm2` itself (edm2.cli).
"""

import json
from pathlib import Path

import click

from edm2.analysis import DEFAULT_NUM_SAMPLES, DEFAULT_SEED
from edm2.cli import LazySubcommands
from edm2.commands.paths import OutputDir, OutputFile
from edm2.errors import ConfigError

ANALYZE_COMMANDS = {
    "magnitudes": "edm2.commands.analyze:magnitudes",
    "plot-magnitudes": "edm2.commands.analyze:plot_magnitudes",
    "phema-profile": "edm2.commands.analyze_phema:phema_profile",
}


class _AnalyzeGroup(LazySubcommands):
    lazy_commands = ANALYZE_COMMANDS


@click.group(name="analyze", cls=_AnalyzeGroup)
def analyze():
    """Analyses of trained networks: activation and weight magnitudes (EDM2 Figs. 3 and 15), and
    how well a post-hoc EMA reconstruction matches its requested profile (Appendix C.3).

    \b
    Examples (after those of `edm2 train --help`):
      edm2 analyze magnitudes runs/demo/network-snapshot-0000002-0.100.safetensors --data data/digits.zip \\
          --num 256 --out runs/demo/magnitudes/0000002.json
      edm2 analyze plot-magnitudes runs/demo/magnitudes/0000002.json --out plots/magnitudes-demo.png
    """


@click.command("magnitudes")
@click.argument("networks", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False), metavar="NET...")
@click.option("--data", default=None, help="Dataset (ZIP or folder) for the activations  [default: weights only]")
@click.option(
    "--out",
    type=OutputFile("magnitudes JSON"),
    multiple=True,
    help="JSON file of a NET; once per NET, in their order (one process measures them all)",
)
@click.option("--outdir", type=OutputDir("output folder"), default=None, help="Folder of <NET name>.json (any NETs)")
@click.option(
    "--num",
    type=click.IntRange(min=1),
    default=DEFAULT_NUM_SAMPLES,
    show_default=True,
    help="Samples of the activations",
)
@click.option(
    "--seed", type=click.IntRange(min=0), default=DEFAULT_SEED, show_default=True, help="Seed of the samples' draws"
)
@click.option("--P_mean", "P_mean", type=float, default=None, help="ln(sigma) mean  [default: the network's training]")
@click.option("--P_std", "P_std", type=float, default=None, help="ln(sigma) std  [default: the network's training]")
@click.option("--batch", type=click.IntRange(min=1), default=64, show_default=True, help="Samples per forward")
def magnitudes(networks, data, out, outdir, num, seed, P_mean, P_std, batch):
    """Activation and weight magnitudes per U-Net bucket (EDM2 Appendix A.6, Eq. 3; Figs. 3, 15).

    NET is an edm2 snapshot or post-hoc reconstruction (.safetensors) or an official EDM2
    pickle (a release network or a raw training snapshot, read safely). For each, writes one
    JSON: per bucket (encoder/decoder x resolution) the max and mean magnitude of the weights
    and, with --data, of the activations over --num training samples at the network's training
    noise levels (the same draws for every network with the same --seed, so that snapshots
    compare); and the same per tensor. Without --data only the weights are measured.

    \b
    Examples (after those of `edm2 train --help`):
      edm2 analyze magnitudes runs/demo/network-snapshot-0000002-0.100.safetensors --data data/digits.zip \\
          --num 256 --out runs/demo/magnitudes/0000002.json
      edm2 analyze magnitudes runs/demo/network-snapshot-*-0.100.safetensors --outdir runs/demo/weights
      edm2 analyze magnitudes runs/demo/network-snapshot-0000000-0.100.safetensors \\
          runs/demo/network-snapshot-0000002-0.100.safetensors --data data/digits.zip --num 256 \\
          --out runs/demo/magnitudes/0000000.json --out runs/demo/magnitudes/0000002.json

    \b
    At paper scale (downloads; the tests check their options only):
      edm2 analyze magnitudes raw/edm2-img512-xs-2147483-0.100.pkl --outdir magnitudes/xs
      edm2 analyze magnitudes runs/s/network-snapshot-2147483-0.100.safetensors --data img512-sd.zip \\
          --out magnitudes/s-2147483.json
    """
    from tqdm import tqdm

    from edm2.analysis.magnitudes import measure_network
    from edm2.io.atomic import atomic_write_text

    if bool(out) == (outdir is not None):
        raise ConfigError("give exactly one of --out FILE (once per NET) and --outdir DIR")
    if out and len(out) != len(networks):
        raise ConfigError(f"--out is given {len(out)} time(s) for {len(networks)} NET(s); give one --out per NET")
    targets = [Path(o) for o in out] if out else [Path(outdir) / f"{Path(n).stem}.json" for n in networks]
    if len(set(targets)) != len(targets):
        raise ConfigError("two NETs would write the same JSON file; give distinct --out files or --outdir folders")
    bar = tqdm(total=len(networks), unit="net", disable=len(networks) == 1)
    for net, target in zip(networks, targets):
        record = measure_network(
            net, data=data, num=num, seed=seed, P_mean=P_mean, P_std=P_std, batch=batch, progress=data is not None
        )
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(target, json.dumps(record, indent=1) + "\n")
        bar.update(1)
    bar.close()
    click.echo(f"Wrote {len(targets)} magnitude file{'s' if len(targets) != 1 else ''} ({targets[-1]})")


@click.command("plot-magnitudes")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False), metavar="JSON...")
@click.option("--out", type=OutputFile("plot"), required=True, help="Figure (.png or .svg)")
@click.option("--title", default=None, help="Figure title")
def plot_magnitudes(files, out, title):
    """Magnitudes over training as in EDM2 Figs. 3 and 15: one row per config, columns
    Activations (max), Weights (max), Activations (mean), Weights (mean), one line per bucket,
    x in training images.

    JSON files come from `edm2 analyze magnitudes`; they are grouped into rows by the config they
    record (A..G) and ordered by training images. Without activations (weights-only files) only
    the weight columns are drawn.

    \b
    Examples (after those of `edm2 analyze magnitudes --help`):
      edm2 analyze plot-magnitudes runs/demo/magnitudes/0000002.json --out plots/magnitudes-demo.png
    """
    from edm2.analysis.plots import plot_magnitudes as plot
    from edm2.analysis.plots import read_magnitude_files

    path = plot(read_magnitude_files(files), out, title=title)
    click.echo(f"Wrote {path}")
