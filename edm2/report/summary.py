"""A one-page summary of a workflow's results: Table 2, the best EMA length of every run, the
plots and the sample grids, as Markdown (images linked) and as self-contained HTML (images
embedded), readable without Snakemake."""

import base64
import html
import os
from pathlib import Path

from edm2.io.atomic import atomic_write_text
from edm2.report.results import read_csv

TITLE = "EDM2 workflow results"


def profile_error_text(row: dict) -> str:
    """The reconstruction's relative profile error as a table cell ('0.12%', '3.40% weak'; empty
    for a network without a certificate: docs/phema.md#certificate)."""
    if row.get("profile_error") is None:
        return ""
    return f"{row['profile_error']:.2%}" + (" weak" if row.get("phema_weak") else "")


def _best_markdown(best: list[dict]) -> str:
    header = "| Run | Guidance | w | Metric | best EMA | value | NFE | profile error |\n"
    header += "|---|---|---:|---|---:|---:|---:|---:|\n"
    lines = []
    for r in best:
        weight = "" if r["guidance_weight"] is None else f"{r['guidance_weight']:.2f}"
        nfe = "" if r["nfe"] is None else str(r["nfe"])
        lines.append(
            f"| {r['label']} | {r['guidance']} | {weight} | {r['metric']} | {r['ema_std']:.3f} | {r['value']:.3f} | {nfe} "
            f"| {profile_error_text(r)} |"
        )
    return header + "\n".join(lines) + "\n"


def _sweep_markdown(rows: list[dict]) -> str:
    """Every scored EMA length with its value and the profile error of its reconstruction."""
    header = "| Run | Guidance | Metric | EMA length | value | profile error |\n|---|---|---|---:|---:|---:|\n"
    rows = sorted(rows, key=lambda r: (r["run"], r["guidance"], r["metric"], r["ema_std"]))
    lines = [
        f"| {r['label']} | {r['guidance']} | {r['metric']} | {r['ema_std']:.3f} | {r['value']:.3f} | {profile_error_text(r)} |"
        for r in rows
    ]
    return header + "\n".join(lines) + "\n"


def _rel(path, start) -> str:
    return Path(os.path.relpath(Path(path).resolve(), Path(start).resolve())).as_posix()


def build_markdown(best_csv, table_md, plots, samples, md_path, scores_csv=None) -> str:
    best = read_csv(best_csv)
    base = Path(md_path).parent
    parts = [f"# {TITLE}", "", "## Table 2 layout", "", Path(table_md).read_text().rstrip(), ""]
    parts += ["## Best EMA length per run, guidance setting and metric", "", _best_markdown(best)]
    if scores_csv is not None:
        parts += ["## EMA sweep", "", "Profile error: how far each post-hoc EMA reconstruction is from the requested"]
        parts += ["profile ('weak': above the threshold or outside the supported band; docs/phema.md#certificate).", ""]
        parts += [_sweep_markdown(read_csv(scores_csv))]
    parts += ["## Plots", ""]
    for p in plots:
        p = Path(p)
        if p.suffix.lower() == ".png":
            svg = p.with_suffix(".svg")
            link = f" ([SVG]({_rel(svg, base)}))" if svg.exists() or str(svg) in map(str, plots) else ""
            parts += [f"![{p.stem}]({_rel(p, base)}){link}", ""]
    if samples:
        parts += ["## Samples at the best EMA length", ""]
        for p in samples:
            parts += [f"**{sample_heading(p, best)}**", "", f"![{Path(p).stem}]({_rel(p, base)})", ""]
    return "\n".join(parts) + "\n"


def sample_heading(path, best: list[dict]) -> str:
    """'<model label>, guidance <setting> (w=<weight>), EMA length <std> (best <metric>)' for a
    grid at the workflow's `plots/samples/<run>/<guidance>.png`, from the first best.csv row of
    that run and setting (the workflow samples at the best length of its first metric); the file
    name alone when best.csv has no such row."""
    path = Path(path)
    run, guidance = path.parent.name, path.stem
    rows = [r for r in best if r["run"] == run and r["guidance"] == guidance]
    if not rows:
        return path.stem
    r = rows[0]
    weight = "" if r.get("guidance_weight") in (None, 1.0) else f" (w={r['guidance_weight']:g})"
    return f"{r['label'] or run}, guidance {guidance}{weight}, EMA length {r['ema_std']:.3f} (best {r['metric']})"


def _inline(markdown_line: str) -> str:
    return html.escape(markdown_line)


def _md_table_to_html(lines: list[str]) -> str:
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines]
    head, body = rows[0], [r for r in rows[2:]]
    out = ["<table>", "<tr>" + "".join(f"<th>{_inline(c)}</th>" for c in head) + "</tr>"]
    for r in body:
        out.append("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def markdown_to_html(markdown: str, base: Path) -> str:
    """The small Markdown subset written by `build_markdown` -> HTML, PNGs embedded."""
    out, table = [], []
    for line in markdown.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        if table:
            out.append(_md_table_to_html(table))
            table = []
        if line.startswith("## "):
            out.append(f"<h2>{_inline(line[3:])}</h2>")
        elif line.startswith("# "):
            out.append(f"<h1>{_inline(line[2:])}</h1>")
        elif line.startswith("![") and "](" in line:
            alt = line[2 : line.index("]")]
            src = line[line.index("](") + 2 : line.index(")", line.index("]("))]
            path = (base / src).resolve()
            if path.is_file():
                data = base64.b64encode(path.read_bytes()).decode("ascii")
                out.append(
                    f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"><figcaption>{html.escape(alt)}</figcaption></figure>'
                )
            else:
                out.append(f"<p>(missing image {html.escape(src)})</p>")
        elif line.startswith("**") and line.endswith("**"):
            out.append(f"<h3>{_inline(line[2:-2])}</h3>")
        elif line.strip():
            out.append(f"<p>{_inline(line)}</p>")
    if table:
        out.append(_md_table_to_html(table))
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
        "td:first-child,th:first-child{text-align:left}img{max-width:100%}figure{margin:1em 0}"
    )
    body = "\n".join(out)
    return f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{TITLE}</title><style>{style}</style></head>\n<body>\n{body}\n</body></html>\n'


def write_summary(best_csv, table_md, plots, samples, md_path, html_path, scores_csv=None) -> None:
    markdown = build_markdown(best_csv, table_md, plots, samples, md_path, scores_csv)
    atomic_write_text(md_path, markdown)
    atomic_write_text(html_path, markdown_to_html(markdown, Path(md_path).parent))
