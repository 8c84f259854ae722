"""`edm2 report`: plots and paper-style tables from result files (thin wrappers over edm2.report)."""

import json
import shlex
from pathlib import Path

import click

from edm2.commands.paths import OutputDir, OutputFile
from edm2.errors import ConfigError, DataError


def _metric_list(value: str) -> list[str]:
    metrics = [m.strip() for m in value.split(",") if m.strip()]
    if not metrics:
        raise click.BadParameter("give at least one metric, e.g. fid,fd_dinov2")
    return metrics


def _pairs(items, option: str, form: str) -> dict:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise click.BadParameter(f"{item!r} is not {form}", param_hint=option)
        out[name] = value
    return out


def _statistic_option(help: str):
    """--statistic: how the seed ranges of a score are combined (the paper: min of 3)."""
    return click.option("--statistic", type=click.Choice(["min", "mean"]), default="min", show_default=True, help=help)


def _scores_option():
    """--scores: the tidy CSV that `edm2 report aggregate` writes."""
    return click.option(
        "--scores",
        required=True,
        type=click.Path(exists=True, dir_okay=False),
        help="Tidy CSV from `edm2 report aggregate`.",
    )


@click.group(name="report")
def report():
    """Plots and paper-style tables from result files.

    \b
    Examples (after those of `edm2 metrics --help`):
      edm2 report model-info --net runs/demo/phema/phema-0000002-0.100.safetensors --run demo --out runs/demo/model-info.json
      edm2 report aggregate --out tables/scores.csv --best tables/best.csv --model-info runs/demo/model-info.json \\
          scores/*/*/ema-*.json
      edm2 report plots --scores tables/scores.csv --metrics fd_cnn --run demo=runs/demo --outdir plots
      edm2 report tables --scores tables/scores.csv --metrics fd_cnn --out tables/table2
    """


@report.command()
@click.argument("scores", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--out", required=True, type=OutputFile("output"), help="Tidy CSV: one row per score file and metric.")
@click.option(
    "--best",
    "best_out",
    type=OutputFile("output"),
    help="CSV of the best EMA length per run, guidance setting and metric.",
)
@click.option(
    "--model-info",
    "model_infos",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False),
    help="Model info JSON of a run (repeat); adds label, Mparams, Gflops.",
)
@_statistic_option("Value reported over the seed ranges (the paper: min of 3).")
def aggregate(scores, out, best_out, model_infos, statistic):
    """Score JSONs (edm2 metrics gen --json) -> tidy CSV tables.

    The run and guidance setting of each score are read from its path,
    .../<run>/<guidance>/ema-<std>.json, as the workflow writes them.

    \b
    Examples:
      edm2 report aggregate --out tables/scores.csv --best tables/best.csv --model-info runs/demo/model-info.json \\
          scores/*/*/ema-*.json
    """
    from edm2.report.results import BEST_COLUMNS, SCORE_COLUMNS, aggregate, best_rows, write_csv

    rows = aggregate(scores, model_infos, statistic)
    write_csv(out, rows, SCORE_COLUMNS)
    if best_out:
        write_csv(best_out, best_rows(rows), BEST_COLUMNS)
    click.echo(f"{len(rows)} rows from {len(scores)} score files -> {out}")


@report.command()
@_scores_option()
@click.option("--metrics", required=True, help="Comma-separated metrics to plot, e.g. fid,fd_dinov2.")
@click.option(
    "--run",
    "runs",
    multiple=True,
    metavar="NAME=DIR",
    help="A training run folder (holding stats.jsonl) for the loss plot; repeat.",
)
@click.option(
    "--label", "labels", multiple=True, metavar="NAME=LABEL", help="Display name of a run in the loss plot; repeat."
)
@click.option("--outdir", required=True, type=OutputDir("plot folder"), help="Folder for the PNG and SVG files.")
@_statistic_option("Only used in axis labels.")
def plots(scores, metrics, runs, labels, outdir, statistic):
    """The paper's plots: metric vs EMA length, best metric vs Gflops, training loss.

    Writes ema-sweep-<metric>, gflops-<metric> and training-loss, each as PNG and SVG.

    \b
    Examples:
      edm2 report plots --scores tables/scores.csv --metrics fd_cnn --run demo=runs/demo --outdir plots
    """
    from edm2.report.plots import edge_optima, plot_ema_sweep, plot_gflops, plot_training_loss
    from edm2.report.results import best_rows, read_csv

    rows = read_csv(scores)
    best = best_rows(rows)
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    for metric in _metric_list(metrics):
        plot_ema_sweep(rows, metric, outdir / f"ema-sweep-{metric}", statistic)
        for e in edge_optima(rows, metric):
            click.echo(
                f"Warning: {metric} of {e['label']} ({e['guidance']}) is best at the {e['side']} EMA length "
                f"scored ({e['ema_std']:.3f}); the optimum may lie outside the grid: extend phema.grid past it "
                "(then phema.refine searches around the new optimum).",
                err=True,
            )
        plot_gflops(best, metric, outdir / f"gflops-{metric}")
    stats = {name: Path(folder) / "stats.jsonl" for name, folder in _pairs(runs, "--run", "NAME=DIR").items()}
    names = {r["run"]: r["label"] for r in rows}
    names.update(_pairs(labels, "--label", "NAME=LABEL"))
    plot_training_loss(stats, outdir / "training-loss", names)
    click.echo(f"plots -> {outdir}")


@report.command()
@_scores_option()
@click.option("--metrics", required=True, help="Comma-separated metrics (table columns, in order).")
@click.option(
    "--out", required=True, type=OutputFile("output"), help="Output stem: writes STEM.csv, STEM.md, STEM.tex."
)
def tables(scores, metrics, out):
    """The paper's Table 2 layout as CSV, Markdown and LaTeX.

    Per model: Mparams, Gflops, NFE, and per metric the best value and EMA length
    without guidance and with guidance (value, EMA length, weight).

    \b
    Examples:
      edm2 report tables --scores tables/scores.csv --metrics fd_cnn --out tables/table2
    """
    from edm2.report.results import read_csv
    from edm2.report.tables import write_table2

    paths = write_table2(read_csv(scores), _metric_list(metrics), out)
    click.echo("tables -> " + ", ".join(str(p) for p in paths))


@report.command()
@_scores_option()
@click.option("--metric", required=True, help="The metric of the table and plot (the paper: fid).")
@click.option(
    "--config",
    "configs",
    multiple=True,
    required=True,
    metavar="RUN=CONFIG",
    help="A run and its config A..G (Table 1 row), in table order; repeat.",
)
@click.option(
    "--table", required=True, type=OutputFile("table"), help="Table stem: writes STEM.csv, STEM.md, STEM.tex."
)
@click.option("--plot", required=True, type=OutputFile("plot"), help="Plot stem: writes STEM.png and STEM.svg.")
def ablation(scores, metric, configs, table, plot):
    """The paper's Table 1 and Fig. 5a for runs of configs A-G.

    Table 1: per config the best metric without guidance over the EMA lengths scored, its EMA
    length, Mparams and Gflops, next to the paper's FID, Mparams and Gflops. Fig. 5a: metric vs
    EMA length, one curve per config, config A's traditional EMA as one point.

    \b
    Examples:
      edm2 report ablation --scores tables/scores.csv --metric fd_cnn --config demo=G \\
          --table tables/table1 --plot plots/fig5a-fd_cnn
    """
    from edm2.report.ablation import REPORTED, plot_fig5a, write_table1
    from edm2.report.results import read_csv

    runs = _pairs(configs, "--config", "RUN=CONFIG")
    for run, config in runs.items():
        if config not in REPORTED:
            raise click.BadParameter(
                f"{run}={config}: the config must be one of {', '.join(REPORTED)}", param_hint="--config"
            )
    rows = read_csv(scores)
    paths = write_table1(rows, runs, metric, table) + plot_fig5a(rows, runs, metric, plot)
    click.echo("ablation -> " + ", ".join(str(p) for p in paths))


@report.command()
@click.option(
    "--score", "scores", multiple=True, required=True, metavar="NAME=JSON", help="Score JSON of a released net; repeat."
)
@click.option("--label", "labels", multiple=True, metavar="NAME=LABEL", help="Display name of a net; repeat.")
@click.option(
    "--reported", "reported", multiple=True, metavar="NAME=METRIC:VALUE", help="Value the paper reports; repeat."
)
@click.option("--preset", "presets", multiple=True, metavar="NAME=PRESET", help="Generation preset of a net; repeat.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="CSV with every column.")
@click.option("--md", "md_path", type=click.Path(dir_okay=False), default=None, help="Markdown table.")
@_statistic_option("Value reported over the seed ranges (the paper: min of 3).")
def released(scores, labels, reported, presets, out, md_path, statistic):
    """Released networks: our value next to the value the paper reports.

    \b
    Examples (after those of `edm2 metrics --help`):
      edm2 report released --score demo=scores/demo/noguid/ema-0.100.json --reported demo=fd_cnn:50 \\
          --out tables/released.csv --md tables/released.md
    """
    from edm2.report.released import released_rows, write_released_table

    parsed = {}
    for name, text in _pairs(reported, "--reported", "NAME=METRIC:VALUE").items():
        metric, sep, value = text.partition(":")
        try:
            parsed[name] = (metric, float(value))
        except ValueError:
            raise click.BadParameter(f"{name}={text} is not NAME=METRIC:VALUE", param_hint="--reported") from None
    rows = released_rows(
        _pairs(scores, "--score", "NAME=JSON"),
        _pairs(labels, "--label", "NAME=LABEL"),
        parsed,
        _pairs(presets, "--preset", "NAME=PRESET"),
        statistic,
    )
    paths = write_released_table(rows, out, md_path, statistic)
    click.echo("released table -> " + ", ".join(str(p) for p in paths))


@report.command()
@click.argument("scores", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--grid", required=True, help="The coarse grid of EMA stds, comma-separated.")
@click.option(
    "--points",
    type=click.IntRange(1, 64),
    default=4,
    show_default=True,
    help="Finer EMA lengths per (run, guidance setting).",
)
@_statistic_option("Value used over the seed ranges.")
@click.option("--out", required=True, type=OutputFile("output"), help="JSON with the chosen stds.")
def refine(scores, grid, points, statistic, out):
    """Choose finer EMA lengths around the best coarse one of every (run, guidance setting).

    \b
    Examples:
      edm2 report refine --grid 0.050,0.100 --points 2 --out runs/demo/refine.json scores/*/*/ema-*.json
    """
    from edm2.io.atomic import atomic_write_text
    from edm2.report.refine import refine as choose
    from edm2.report.results import aggregate as read_all

    try:
        values = [float(v) for v in grid.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"{grid!r} is not a comma-separated list of numbers", param_hint="--grid") from None
    result = choose(read_all(scores, (), statistic), values, points)
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    click.echo(json.dumps(result["stds"]))


def _search_plan_options(f):
    """The plan of a guidance search (edm2.search.SearchPlan): grids, bisection, image counts."""
    options = [
        click.option("--weight", required=True, help="Coarse grid of guidance weights, e.g. 1.0,1.5,...,3.0."),
        click.option(
            "--mix", help="Coarse grid of the mix alpha of two guides (in [0, 1]), searched after the weight."
        ),
        click.option("--sigma-hi", help="Coarse grid of the interval's upper end, searched after the weight."),
        click.option("--sigma-lo", help="Coarse grid of the interval's lower end, searched last."),
        click.option(
            "--bisect", type=click.IntRange(0, 16), default=2, show_default=True, help="Refinement rounds per axis."
        ),
        click.option(
            "--num", type=click.IntRange(2, None), required=True, help="Images per seed range when screening."
        ),
        click.option(
            "--ranges", type=click.IntRange(1, None), default=1, show_default=True, help="Seed ranges when screening."
        ),
        click.option(
            "--full-num", type=click.IntRange(2, None), required=True, help="Images per seed range to confirm."
        ),
        click.option(
            "--full-ranges", type=click.IntRange(1, None), default=3, show_default=True, help="Seed ranges to confirm."
        ),
        click.option(
            "--confirm",
            type=click.IntRange(1, 64),
            default=1,
            show_default=True,
            help="Best screened settings confirmed.",
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def search_plan(weight, mix, sigma_hi, sigma_lo, bisect, num, ranges, full_num, full_ranges, confirm):
    """The SearchPlan of the `_search_plan_options` (also used by the workflow through them)."""
    from edm2.search import AXES, SearchPlan, parse_grid

    axes = [("weight", tuple(parse_grid(weight, "--weight")))]
    grids = {"mix": mix, "sigma_hi": sigma_hi, "sigma_lo": sigma_lo}
    for axis, grid in ((a, grids[a]) for a in AXES[1:]):
        if grid:
            axes.append((axis, tuple(parse_grid(grid, f"--{axis.replace('_', '-')}"))))
    return SearchPlan(tuple(axes), bisect, num, ranges, full_num, full_ranges, confirm)


@report.command(name="search-round")
@click.argument("evaluations", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@_search_plan_options
@click.option(
    "--round", "round_", type=click.IntRange(0, None), required=True, help="The round just evaluated (0-based)."
)
@click.option("--run", required=True, help="Run name (recorded in the state).")
@click.option("--metric", required=True, help="The metric minimised.")
@_statistic_option("Value used over the seed ranges.")
@click.option("--out", required=True, type=OutputFile("output"), help="State JSON after the round.")
def search_round(evaluations, round_, run, metric, statistic, out, **plan):
    """One round of a guidance search: the evaluations so far -> the next round's points.

    EVALUATIONS are score JSONs of `edm2 metrics gen`, each named after its setting
    (w<weight>[-hi<sigma_hi>][-lo<sigma_lo>]-n<images>x<ranges>.json). The state names the next
    points; after the last screening round, the confirmation points; the round after that
    (--round = the number of screening rounds) writes the result. docs/evaluation.md#the-guidance-search

    \b
    Examples:
      edm2 metrics gen  --net runs/demo/phema/phema-0000002-0.100.safetensors --ref refs/digits.npz \\
          --num 16 --steps 8 --cnn-detector refs/digits-cnn.safetensors --json search/demo/w1.000-n16x1.json
      edm2 report search-round --weight 1.0 --bisect 0 --num 16 --full-num 16 --full-ranges 1 --round 0 \\
          --run demo --metric fd_cnn --out search/demo/round-0.json search/demo/w1.000-n16x1.json
      edm2 report search-round --weight 1.0 --bisect 0 --num 16 --full-num 16 --full-ranges 1 --round 1 \\
          --run demo --metric fd_cnn --out search/demo/round-1.json search/demo/w1.000-n16x1.json
    """
    from edm2.io.atomic import atomic_write_text
    from edm2.report.search import search_round as step

    state = step(search_plan(**plan), round_, evaluations, metric, statistic, run)
    atomic_write_text(out, json.dumps(state, indent=2) + "\n")
    if state["result"] is not None:
        r = state["result"]
        click.echo(f"{run} {metric}: best {r['value']:.6g} at {r['name']} (screened {r['screened_value']:.6g})")
    else:
        click.echo(
            f"{run} {metric}: best screened {state['best']['value']:.6g} at {state['best']['name']}; next {state['next']}"
        )


@report.command(name="search")
@click.argument("states", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--search", "name", required=True, help="Name of the search (titles).")
@click.option(
    "--reported", multiple=True, metavar="RUN=VALUE", help="A value reported for a run (e.g. a paper's); repeat."
)
@click.option("--table", required=True, type=OutputFile("table"), help="Table stem: writes STEM.csv and STEM.md.")
@click.option("--plot", required=True, type=OutputFile("plot"), help="Plot stem: writes STEM.png and STEM.svg.")
def search(states, name, reported, table, plot):
    """The result of a guidance search: table and metric-along-each-axis plot.

    STATES are the final states of `edm2 report search-round` (one per run and metric).

    \b
    Examples:
      edm2 report search --search demo --table tables/search-demo --plot plots/search-demo search/demo/round-1.json
    """
    from edm2.report.search import write_search

    loaded = []
    for path in states:
        try:
            loaded.append(json.loads(Path(path).read_text()))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(f"{path}: not a search state ({e}); re-run its round") from None
    values = {}
    for run, value in _pairs(reported, "--reported", "RUN=VALUE").items():
        try:
            values[run] = float(value)
        except ValueError:
            raise click.BadParameter(f"{value!r} is not a number", param_hint="--reported") from None
    paths = write_search(loaded, name, values, table, plot)
    click.echo("search -> " + ", ".join(str(p) for p in paths))


@report.command()
@_scores_option()
@click.option("--guidance", required=True, help="The guidance setting whose EMA lengths were swept.")
@click.option("--metric", required=True, help="The metric shown.")
@click.option("--out", required=True, type=OutputFile("plot"), help="Plot stem: writes STEM.png and STEM.svg.")
def heatmap(scores, guidance, metric, out):
    """The autoguidance paper's EMA heat map: the metric over main x guide EMA length.

    \b
    Examples:
      edm2 report heatmap --scores tables/scores.csv --guidance noguid --metric fd_cnn --out plots/ema-heatmap
    """
    from edm2.report.plots import plot_ema_heatmap
    from edm2.report.results import read_csv

    paths = plot_ema_heatmap(read_csv(scores), guidance, metric, out)
    click.echo("heat map -> " + ", ".join(str(p) for p in paths))


@report.command()
@click.option(
    "--best",
    "best_csv",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="best.csv from `edm2 report aggregate`.",
)
@click.option("--run", required=True, help="Run name.")
@click.option("--guidance", required=True, help="Guidance setting name.")
@click.option("--metric", required=True, help="Metric that decides.")
@click.option(
    "--shell", "as_shell", is_flag=True, help="Print `edm2 generate` options (--net, --gnet, --guidance), shell-quoted."
)
def best(best_csv, run, guidance, metric, as_shell):
    """The best EMA length of a run: its row as JSON, or generation options with --shell.

    \b
    Examples:
      edm2 generate $(edm2 report best --best tables/best.csv --run demo --guidance noguid --metric fd_cnn --shell) \\
          --seeds 0-15 --outdir out-best
    """
    from edm2.report.results import read_csv

    rows = [r for r in read_csv(best_csv) if r["run"] == run and r["guidance"] == guidance and r["metric"] == metric]
    if not rows:
        raise DataError(
            f"{best_csv}: no score of run {run!r}, guidance {guidance!r}, metric {metric!r}; check the names"
        )
    row = rows[0]
    if not as_shell:
        click.echo(json.dumps(row))
        return
    if not row.get("network"):
        raise DataError(f"{best_csv}: the best score of {run}/{guidance} does not name its network")
    args = ["--net", row["network"]]
    if row.get("guide_weights"):  # several guides: each with its own weight (';'-separated, in order)
        for gnet, weight in zip(row["gnet"].split(";"), str(row["guide_weights"]).split(";")):
            args += ["--gnet", gnet, "--guidance", weight]
    elif row.get("gnet") and row.get("guidance_weight") not in (None, 1.0):
        args += ["--gnet", row["gnet"], "--guidance", f"{row['guidance_weight']:g}"]
    click.echo(" ".join(shlex.quote(a) for a in args))


@report.command()
@click.option(
    "--images",
    required=True,
    type=click.Path(exists=True, file_okay=False),
    help="Folder of PNGs (searched recursively).",
)
@click.option("--out", required=True, type=OutputFile("output"), help="Output PNG.")
@click.option("--columns", type=click.IntRange(1, None), help="Images per row (default: near-square).")
@click.option(
    "--min-size",
    type=click.IntRange(1, None),
    default=64,
    show_default=True,
    help="Upscale small images (nearest) to at least this many pixels.",
)
def grid(images, out, columns, min_size):
    """A grid image of generated samples.

    \b
    Examples:
      edm2 report grid --images out-best --out plots/samples/demo/noguid.png
    """
    from edm2.report.images import save_grid

    click.echo(f"grid -> {save_grid(images, out, columns=columns, min_size=min_size)}")


@report.command(name="per-tensor")
@click.argument("scores", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--metric", required=True, help="The metric plotted, e.g. fid.")
@click.option(
    "--grid-score",
    "grid_scores",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False),
    help="Score JSON of the global grid; the one at the variants' global length is drawn as a line. Repeat.",
)
@click.option("--out", required=True, type=OutputFile("plot"), help="Plot stem: writes STEM.png and STEM.svg.")
@_statistic_option("The statistic over seed ranges.")
def per_tensor(scores, metric, grid_scores, out, statistic):
    """Fig. 5b: metric vs the EMA length of one moved tensor, one curve per tensor.

    SCORES are score JSONs of networks from `edm2 phema --tensor-std NAME=STD` with one tensor
    each; the tensor and its EMA length are read from each network's certificate
    (docs/phema.md#per-tensor).

    \b
    At paper scale (needs the scores of per-tensor variants, which the workflow's phema.per_tensor
    makes; the tests check the options only):
      edm2 report per-tensor --metric fid --grid-score scores/s/noguid/ema-0.130.json --out plots/fig5b-s \\
          scores-tensor/s/noguid/*/ema-*.json
    """
    from edm2.report.phema_plots import plot_per_tensor

    result = plot_per_tensor(scores, grid_scores, metric, out, statistic)
    base = (
        "no grid score at the global length"
        if result["base"] is None
        else f"global {result['base'][0]:.3f}: {result['base'][1]:.4g}"
    )
    best = min(result["tensors"].items(), key=lambda kv: kv[1][1], default=None)
    click.echo(
        f"fig5b -> {out}.png ({len(result['tensors'])} curves; {base}"
        + (f"; best {best[0]} at {best[1][0]:.3f}: {best[1][1]:.4g})" if best else ")")
    )


@report.command(name="over-training")
@click.argument("scores", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--metric", required=True, help="The metric plotted, e.g. fid.")
@click.option("--out", required=True, type=OutputFile("plot"), help="Plot stem: writes STEM.png and STEM.svg.")
@_statistic_option("The statistic over seed ranges.")
def over_training(scores, metric, out, statistic):
    """Fig. 5c: metric vs EMA length, one curve per training length, optimum marked.

    SCORES are score JSONs of post-hoc EMA reconstructions at several training lengths (`edm2
    phema --outkimg K1,K2,...`); each curve gathers those of one `kimg`.

    \b
    Examples:
      edm2 report over-training --metric fd_cnn --out plots/fig5c scores/*/*/ema-*.json
    """
    from edm2.report.phema_plots import plot_over_training

    best = plot_over_training(scores, metric, out, statistic)
    optima = ", ".join(f"kimg {k}: {v[1]:.4g} at {v[0]:.3f}" for k, v in best.items())
    click.echo(f"fig5c -> {out}.png (optimum per training length: {optima})")


@report.command(name="model-info")
@click.option(
    "--net", required=True, type=click.Path(exists=True, dir_okay=False), help="A snapshot or phema .safetensors file."
)
@click.option("--run", help="Run name (default: the file's folder).")
@click.option("--label", help="Display name in tables and plots (default: the run name).")
@click.option("--out", required=True, type=OutputFile("output"), help="Output JSON.")
def model_info(net, run, label, out):
    """Parameter count and Gflops of a network (official counting convention), as JSON.

    \b
    Examples:
      edm2 report model-info --net runs/demo/phema/phema-0000002-0.100.safetensors --run demo --out runs/demo/model-info.json
    """
    from edm2.io.atomic import atomic_write_text
    from edm2.report.info import model_info as facts

    info = facts(net, run=run, label=label)
    atomic_write_text(out, json.dumps(info, indent=2) + "\n")
    click.echo(f"{info['label']}: {info['mparams']:.3f} Mparams, {info['gflops']:.4f} Gflops -> {out}")


@report.command()
@click.argument("plots", nargs=-1, type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--best",
    "best_csv",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="best.csv from `edm2 report aggregate`.",
)
@click.option(
    "--table",
    "table_md",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="table2.md from `edm2 report tables`.",
)
@click.option(
    "--samples", multiple=True, type=click.Path(exists=True, dir_okay=False), help="A sample grid PNG (repeat)."
)
@click.option(
    "--scores",
    "scores_csv",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="scores.csv from `edm2 report aggregate`: adds the EMA sweep table with each length's profile error.",
)
@click.option("--md", "md_path", required=True, type=OutputFile("output"), help="Output Markdown.")
@click.option("--html", "html_path", required=True, type=OutputFile("output"), help="Output HTML (images embedded).")
def summary(plots, best_csv, table_md, samples, scores_csv, md_path, html_path):
    """A one-page summary (Markdown and self-contained HTML) of tables, plots and samples.

    \b
    Examples:
      edm2 report summary --best tables/best.csv --table tables/table2.md --samples plots/samples/demo/noguid.png \\
          --md summary.md --html summary.html plots/*.png
    """
    from edm2.report.summary import write_summary

    if Path(md_path).resolve() == Path(html_path).resolve():
        raise ConfigError("--md and --html name the same file; give two different paths")
    write_summary(best_csv, table_md, plots, samples, md_path, html_path, scores_csv)
    click.echo(f"summary -> {md_path}, {html_path}")
