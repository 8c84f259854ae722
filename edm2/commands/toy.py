"""`edm2 toy`: the 2-D toy example of autoguidance (arXiv 2406.02507; docs/evaluation.md#toy)."""

import click

from edm2.commands.paths import OutputFile
from edm2.toy.options import ToySetup

DEFAULTS = ToySetup()


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--out", required=True, type=OutputFile("figure"), metavar="FILE.png", help="Where to save the figure (PNG)."
)
@click.option(
    "--iters",
    type=click.IntRange(min=1),
    default=DEFAULTS.iters,
    show_default=True,
    help="Training iterations of the main model (the official example: 4096).",
)
@click.option(
    "--guide-iters",
    type=click.IntRange(min=1),
    default=DEFAULTS.guide_iters,
    show_default=True,
    help="Training iterations of the two guides (the official example: 512).",
)
@click.option(
    "--batch",
    type=click.IntRange(min=2),
    default=DEFAULTS.batch,
    show_default=True,
    help="Samples per training iteration (the official example: 4096).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the training runs and the samples.")
@click.option("--cfg-guidance", type=float, default=DEFAULTS.cfg_guidance, show_default=True, help="Weight of CFG.")
@click.option(
    "--auto-guidance", type=float, default=DEFAULTS.auto_guidance, show_default=True, help="Weight of autoguidance."
)
@click.option(
    "--samples",
    "num_samples",
    type=click.IntRange(min=2),
    default=DEFAULTS.num_samples,
    show_default=True,
    help="Samples per panel.",
)
@click.option("--device", metavar="DEVICE", help="Torch device  [default: cpu]")
@click.option(
    "--json", "json_path", type=OutputFile("results"), metavar="OUT.json", help="Also write the measured numbers."
)
def toy(out, iters, guide_iters, batch, seed, cfg_guidance, auto_guidance, num_samples, device, json_path):
    """The 2-D toy example of autoguidance: a tree-shaped Gaussian mixture, small MLP denoisers
    trained on it, and samples without guidance, with CFG and with autoguidance.

    Trains a main model on class A (4 layers x 64 features), an autoguidance guide (class A,
    32 features, fewer iterations) and a CFG guide (classes A and B, the same size), then
    samples each way with the EDM sampler (32 Heun steps from sigma 5) and saves the figure:
    the density, the samples, and trajectories near a branch tip. Prints, per method, the mean
    and median log-density of its samples under the true class-A distribution (higher: closer
    to the branches) and the fraction of samples on the branches (docs/evaluation.md).

    The defaults (`edm2 toy --out toy.png`) take a few CPU-minutes; the official example trains
    4096 iterations of 4096 samples on a GPU (`--iters 4096 --batch 4096 --auto-guidance 3
    --device cuda`). The example below is a quick, rough version.

    \b
    Examples:
      edm2 toy --out toy.png --iters 64 --guide-iters 16 --batch 256 --samples 512 --json toy.json
    """
    import json

    import torch

    from edm2.io.atomic import atomic_write_text
    from edm2.toy.figure import run_toy, save_figure

    setup = ToySetup(
        iters=iters,
        guide_iters=guide_iters,
        batch=batch,
        seed=seed,
        cfg_guidance=cfg_guidance,
        auto_guidance=auto_guidance,
        num_samples=num_samples,
    )
    # The toy's tensors are small: one thread beats several (2.5x against 2 threads measured on
    # a loaded 2-core machine), and the results do not depend on the thread count then.
    torch.set_num_threads(1)
    run = run_toy(setup, progress=True, device=device)
    click.echo("samples   mean log p  median log p  on branches")
    for name, m in run.measures.items():
        click.echo(
            f"{name:<8} {m['mean_log_density']:11.3f} {m['median_log_density']:13.3f} {100 * m['on_branches']:11.1f}%"
        )
    save_figure(run, out)
    click.echo(f"Saved {out}")
    if json_path is not None:
        atomic_write_text(json_path, json.dumps(run.summary(), indent=2) + "\n")
