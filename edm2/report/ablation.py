"""The ablation ladder's results: the paper's Table 1 and Fig. 5a (arXiv 2312.02696) from the tidy
scores of runs of configs A-G.

* Table 1: per config, ours (best metric over the EMA lengths scored, its EMA length, Mparams,
  Gflops) next to the paper's reported FID, Mparams and Gflops; CSV, Markdown and LaTeX.
* Fig. 5a: metric vs EMA length, one curve per config; a run scored at one EMA length (config A's
  traditional EMA) is drawn as a single point.

    write_table1(rows, {"a": "A", "g": "G"}, "fid", "tables/table1")
    plot_fig5a(rows, {"a": "A", "g": "G"}, "fid", "plots/fig5a-fid")
"""

from pathlib import Path

from edm2.io.atomic import atomic_write_text
from edm2.report.plots import _colors, _figure, metric_label, save_figure
from edm2.report.results import write_csv
from edm2.report.tables import DASH, PLAIN_METRIC_NAMES, TEX_METRIC_NAMES, _metric, _num, _std, tex_escape

# Table 1 of the paper (FID without guidance, min of three evaluations; size S on ImageNet-512)
# and the EMA length at the optimum from the boxes of Figs. 16-22 (A: its traditional EMA).
REPORTED = {
    "A": ("EDM baseline", 8.00, 295.9, 110.4, 0.034),
    "B": ("+ Minor improvements", 7.24, 291.8, 100.4, 0.090),
    "C": ("+ Architectural streamlining", 6.96, 277.8, 100.3, 0.075),
    "D": ("+ Magnitude-preserving learned layers", 3.75, 277.8, 101.2, 0.225),
    "E": ("+ Control effective learning rate", 3.02, 277.8, 101.2, 0.145),
    "F": ("+ Remove group normalizations", 2.71, 280.2, 102.1, 0.100),
    "G": ("+ Magnitude-preserving fixed-function layers", 2.56, 280.2, 102.2, 0.130),
}

TABLE1_COLUMNS = [
    "config", "name", "run", "metric", "value", "ema_std", "num_ema", "mparams", "gflops",
    "paper_fid", "paper_mparams", "paper_gflops", "paper_ema_std",
]  # fmt: skip


def _unguided(rows, metric, run):
    return [
        r
        for r in rows
        if r["run"] == run
        and r["metric"] == metric
        and (r.get("guidance_weight") in (None, "") or float(r["guidance_weight"]) == 1.0)
    ]


def table1_rows(rows: list[dict], configs: dict, metric: str) -> list[dict]:
    """Tidy score rows and {run: config 'A'..'G'} -> one dict per run, in the order of `configs`
    (KeyError-free: a run without scores gets empty values)."""
    table = []
    for run, config in configs.items():
        mine = _unguided(rows, metric, run)
        best = min(mine, key=lambda r: (float(r["value"]), float(r["ema_std"]))) if mine else {}
        name, fid, mparams, gflops, ema = REPORTED[config]
        table.append(
            dict(
                config=config,
                name=name,
                run=run,
                metric=metric,
                value=best.get("value"),
                ema_std=best.get("ema_std"),
                num_ema=len({r["ema_std"] for r in mine}),
                mparams=best.get("mparams"),
                gflops=best.get("gflops"),
                paper_fid=fid,
                paper_mparams=mparams,
                paper_gflops=gflops,
                paper_ema_std=ema,
            )  # fmt: skip
        )
    return table


def table1_markdown(table: list[dict], metric: str) -> str:
    name = PLAIN_METRIC_NAMES.get(metric, metric)
    header = ["Config", "", f"{name} (ours)", "EMA", "Mparams", "Gflops", "FID (paper)", "EMA", "Mparams", "Gflops"]
    lines = ["| " + " | ".join(header) + " |", "|---|---|" + "|".join(["---:"] * (len(header) - 2)) + "|"]
    for r in table:
        cells = [r["config"], r["name"], _metric(r["value"]), _std(r["ema_std"]), _num(r["mparams"]), _num(r["gflops"])]
        cells += [f"{r['paper_fid']:.2f}", f"{r['paper_ema_std']:.3f}", f"{r['paper_mparams']:.1f}"]
        cells += [f"{r['paper_gflops']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    notes = [
        "",
        f"Ours: the best {name} over the EMA lengths scored (post-hoc EMA; config A: its one traditional EMA),",
        "without guidance. Paper: Table 1 of Karras et al., CVPR 2024 (ImageNet-512, size S, FID min of three).",
    ]
    return "\n".join(lines + notes) + "\n"


def table1_latex(table: list[dict], metric: str) -> str:
    name = TEX_METRIC_NAMES.get(metric, tex_escape(metric))
    lines = [
        "% Table 1 layout (EDM2, Karras et al. 2024); needs \\usepackage{booktabs}",
        "\\begin{tabular}{llrrrrrrrr}",
        "\\toprule",
        " & & \\multicolumn{4}{c}{Ours} & \\multicolumn{4}{c}{Paper} \\\\",
        "\\cmidrule(lr){3-6} \\cmidrule(lr){7-10}",
        f"Config & & {name} & EMA & Mparams & Gflops & FID & EMA & Mparams & Gflops \\\\",
        "\\midrule",
    ]
    for r in table:
        cells = [r["config"], tex_escape(r["name"]), _metric(r["value"]), _std(r["ema_std"])]
        cells += [_num(r["mparams"]), _num(r["gflops"]), f"{r['paper_fid']:.2f}", f"{r['paper_ema_std']:.3f}"]
        cells += [f"{r['paper_mparams']:.1f}", f"{r['paper_gflops']:.1f}"]
        lines.append(" & ".join(c.replace(DASH, "--") for c in cells) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


def write_table1(rows: list[dict], configs: dict, metric: str, stem) -> list[Path]:
    """Write `stem.csv`, `stem.md`, `stem.tex`; returns their paths."""
    stem = Path(stem)
    table = table1_rows(rows, configs, metric)
    paths = [stem.with_name(stem.name + ext) for ext in (".csv", ".md", ".tex")]
    write_csv(paths[0], table, TABLE1_COLUMNS)
    atomic_write_text(paths[1], table1_markdown(table, metric))
    atomic_write_text(paths[2], table1_latex(table, metric))
    return paths


def plot_fig5a(rows: list[dict], configs: dict, metric: str, stem) -> list[Path]:
    """Metric vs EMA length, one curve per config (Fig. 5a): the optimum starred; a run scored at
    a single EMA length (config A's traditional EMA) drawn as one point. Shaded: min-max over
    the seed ranges."""
    fig, ax = _figure()
    colors = _colors()
    for i, (run, config) in enumerate(configs.items()):
        group = sorted(_unguided(rows, metric, run), key=lambda r: float(r["ema_std"]))
        if not group:
            continue
        x = [float(r["ema_std"]) for r in group]
        y = [float(r["value"]) for r in group]
        best = min(group, key=lambda r: (float(r["value"]), float(r["ema_std"])))
        color = colors[i % len(colors)]
        label = f"Config {config}: {float(best['value']):.3g} at {float(best['ema_std']):.3f}"
        if len(group) == 1:
            ax.plot(x, y, "D", color=color, markersize=7, label=label + " (traditional EMA)")
            continue
        ax.plot(x, y, "-", color=color, marker="o", markersize=3, label=label)
        spreads = [
            [float(v) for v in str(r["values"]).split(";")] if r.get("values") else [float(r["value"])] for r in group
        ]
        if any(len(s) > 1 for s in spreads):
            ax.fill_between(x, [min(s) for s in spreads], [max(s) for s in spreads], color=color, alpha=0.08, lw=0)
        ax.plot(
            [float(best["ema_std"])], [float(best["value"])], "*", markersize=12, markeredgecolor="black", color=color
        )
    ax.set_xlabel("EMA length $\\sigma_\\mathrm{rel}$")
    ax.set_ylabel(metric_label(metric))
    ax.set_title(f"{metric_label(metric)} vs EMA length per config (Fig. 5a)")
    ax.grid(True, alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, f"no scores for {metric}", ha="center", va="center", transform=ax.transAxes)
    return save_figure(fig, stem)
