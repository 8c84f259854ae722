"""The paper's Table 2 layout from the tidy scores: one row per model size with its parameter
count, Gflops and NFE, and for every metric the best value and its EMA length without guidance
and with guidance (value, EMA length, guidance weight). Written as CSV (every column, empty when
not evaluated), Markdown and LaTeX (guided columns shown for metrics that have guided scores).
"""

from pathlib import Path

from edm2.io.atomic import atomic_write_text
from edm2.report.results import best_rows, write_csv

PLAIN_METRIC_NAMES = {"fid": "FID", "fd_dinov2": "FD_DINOv2", "fd_cnn": "FD_CNN"}
TEX_METRIC_NAMES = {"fid": "FID", "fd_dinov2": "FD\\textsubscript{DINOv2}", "fd_cnn": "FD\\textsubscript{CNN}"}
DASH = "–"


def _is_guided(row) -> bool:
    weight = row.get("guidance_weight")
    return weight is not None and float(weight) != 1.0


def table2_rows(rows: list[dict], metrics: list[str]) -> list[dict]:
    """Tidy score rows -> one dict per run (in order of first appearance)."""
    best = best_rows(rows)
    runs = list(dict.fromkeys(r["run"] for r in rows))
    table = []
    for run in runs:
        mine = [r for r in best if r["run"] == run]
        first = mine[0]
        entry = {"model": first["label"] or run, "run": run, "mparams": first["mparams"], "gflops": first["gflops"]}
        unguided_nfe = [r["nfe"] for r in mine if not _is_guided(r) and r["nfe"] is not None]
        any_nfe = [r["nfe"] for r in mine if r["nfe"] is not None]
        entry["nfe"] = (unguided_nfe or any_nfe or [None])[0]
        for metric in metrics:
            plain = [r for r in mine if r["metric"] == metric and not _is_guided(r)]
            guided = [r for r in mine if r["metric"] == metric and _is_guided(r)]
            p = min(plain, key=lambda r: (r["value"], r["ema_std"])) if plain else None
            g = min(guided, key=lambda r: (r["value"], r["ema_std"])) if guided else None
            entry[metric] = p["value"] if p else None
            entry[f"{metric}_ema_std"] = p["ema_std"] if p else None
            entry[f"{metric}_guided"] = g["value"] if g else None
            entry[f"{metric}_guided_ema_std"] = g["ema_std"] if g else None
            entry[f"{metric}_guidance"] = g["guidance_weight"] if g else None
            entry[f"{metric}_guidance_setting"] = g["guidance"] if g else None
        table.append(entry)
    return table


def table2_columns(metrics: list[str]) -> list[str]:
    columns = ["model", "run", "mparams", "gflops", "nfe"]
    for m in metrics:
        columns += [m, f"{m}_ema_std", f"{m}_guided", f"{m}_guided_ema_std", f"{m}_guidance", f"{m}_guidance_setting"]
    return columns


def _num(value, digits=3):
    """Significant-digit formatting for sizes: 124.71 -> 125, 1.013 -> 1.01, 0.2531 -> 0.253."""
    if value is None:
        return DASH
    value = float(value)
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.{digits}g}"


def _metric(value):
    """Two decimals as in the paper (FID 2.56); three significant digits below 1."""
    if value is None:
        return DASH
    value = float(value)
    return f"{value:.2f}" if abs(value) >= 1 else f"{value:.3g}"


def _std(value):
    return DASH if value is None else f"{float(value):.3f}"


def _weight(value):
    return DASH if value is None else f"{float(value):.2f}"


def _guided_metrics(table, metrics):
    return [m for m in metrics if any(row[f"{m}_guided"] is not None for row in table)]


def to_markdown(table: list[dict], metrics: list[str]) -> str:
    guided = _guided_metrics(table, metrics)
    header = ["Model", "Mparams", "Gflops", "NFE"]
    for m in metrics:
        name = PLAIN_METRIC_NAMES.get(m, m)
        header += [name, "EMA"]
        if m in guided:
            header += [f"{name} (guided)", "EMA", "w"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for row in table:
        cells = [
            str(row["model"]),
            _num(row["mparams"]),
            _num(row["gflops"]),
            DASH if row["nfe"] is None else str(row["nfe"]),
        ]
        for m in metrics:
            cells += [_metric(row[m]), _std(row[f"{m}_ema_std"])]
            if m in guided:
                cells += [_metric(row[f"{m}_guided"]), _std(row[f"{m}_guided_ema_std"]), _weight(row[f"{m}_guidance"])]
        lines.append("| " + " | ".join(cells) + " |")
    notes = [
        "",
        "Best value over the EMA lengths scored (EMA: the relative EMA length sigma_rel at the optimum); lower is better.",
    ]
    if not guided:
        notes.append("No guided scores in this configuration.")
    return "\n".join(lines + notes) + "\n"


_TEX_ESCAPES = {
    "\\": "\\textbackslash{}",
    "&": "\\&",
    "%": "\\%",
    "$": "\\$",
    "#": "\\#",
    "_": "\\_",
    "{": "\\{",
    "}": "\\}",
    "~": "\\textasciitilde{}",
    "^": "\\textasciicircum{}",
}


def tex_escape(text: str) -> str:
    return "".join(_TEX_ESCAPES.get(c, c) for c in str(text))


def to_latex(table: list[dict], metrics: list[str]) -> str:
    guided = _guided_metrics(table, metrics)
    spec = "lrrr"
    top = ["", "", "", ""]
    sub = ["Model", "Mparams", "Gflops", "NFE"]
    rules = []
    col = 5
    for m in metrics:
        name = TEX_METRIC_NAMES.get(m, tex_escape(m))
        spec += "rr"
        top.append(f"\\multicolumn{{2}}{{c}}{{{name}}}")
        sub += ["value", "EMA"]
        rules.append(f"\\cmidrule(lr){{{col}-{col + 1}}}")
        col += 2
        if m in guided:
            spec += "rrr"
            top.append(f"\\multicolumn{{3}}{{c}}{{{name}, guided}}")
            sub += ["value", "EMA", "$w$"]
            rules.append(f"\\cmidrule(lr){{{col}-{col + 2}}}")
            col += 3
    dash = "--"
    lines = [
        "% Table 2 layout (EDM2, Karras et al. 2024); needs \\usepackage{booktabs}",
        f"\\begin{{tabular}}{{{spec}}}",
        "\\toprule",
        " & ".join(top) + " \\\\",
        " ".join(rules),
        " & ".join(sub) + " \\\\",
        "\\midrule",
    ]
    for row in table:
        cells = [
            tex_escape(row["model"]),
            _num(row["mparams"]),
            _num(row["gflops"]),
            dash if row["nfe"] is None else str(row["nfe"]),
        ]
        for m in metrics:
            cells += [_metric(row[m]), _std(row[f"{m}_ema_std"])]
            if m in guided:
                cells += [_metric(row[f"{m}_guided"]), _std(row[f"{m}_guided_ema_std"]), _weight(row[f"{m}_guidance"])]
        lines.append(" & ".join(c.replace(DASH, dash) for c in cells) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


def write_table2(rows: list[dict], metrics: list[str], stem) -> list[Path]:
    """Write `stem.csv`, `stem.md`, `stem.tex`; returns their paths."""
    stem = Path(stem)
    table = table2_rows(rows, metrics)
    paths = [stem.with_name(stem.name + ext) for ext in (".csv", ".md", ".tex")]
    write_csv(paths[0], table, table2_columns(metrics))
    atomic_write_text(paths[1], to_markdown(table, metrics))
    atomic_write_text(paths[2], to_latex(table, metrics))
    return paths
