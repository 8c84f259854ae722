"""The paper's plots from result files (PNG and SVG of each figure). Figures are made with
matplotlib's object-oriented API (`matplotlib.figure.Figure`), never through pyplot, so this
library sets no global backend or rcParams in the process that imports it:

* metric vs EMA length, one curve per run (and guidance setting), optimum marked (paper Fig. 5);
* best metric vs Gflops per model size (paper Fig. 1);
* training loss vs training images, from each run's stats.jsonl.
"""

import json
import math
from pathlib import Path

import matplotlib
from matplotlib.figure import Figure

from edm2.errors import FormatError
from edm2.io.atomic import atomic_path

METRIC_LABELS = {"fid": "FID", "fd_dinov2": "FD$_\\mathrm{DINOv2}$", "fd_cnn": "FD$_\\mathrm{CNN}$"}
FORMATS = ("png", "svg")


def metric_label(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric)


# Saving settings, applied only while a figure is saved: text stays text in SVGs (searchable,
# editable), and SVG ids are stable, so identical data gives identical files.
_SAVE_RC = {"svg.fonttype": "none", "svg.hashsalt": "edm2"}


def _figure():
    """(fig, ax) of a new figure that belongs to no pyplot window manager."""
    fig = Figure(figsize=(6.4, 4.4))
    return fig, fig.subplots()


def _colors():
    return matplotlib.colormaps["tab10"].colors


def save_figure(fig, stem) -> list[Path]:
    """Write `stem.png` and `stem.svg` atomically."""
    stem = Path(stem)
    paths = []
    with matplotlib.rc_context(_SAVE_RC):
        for fmt in FORMATS:
            path = stem.with_name(f"{stem.name}.{fmt}")
            with atomic_path(path, suffix=f".{fmt}") as tmp:
                fig.savefig(tmp, format=fmt, dpi=150, bbox_inches="tight", metadata=_metadata(fmt))
            paths.append(path)
    return paths


def _metadata(fmt):
    # Fixed metadata so that identical data gives identical files.
    if fmt == "svg":
        return {"Date": None}
    if fmt == "png":
        return {"Software": None}
    return None


def _series(rows, key):
    groups = {}
    for row in rows:
        groups.setdefault(key(row), []).append(row)
    return groups


def _styles(runs, guidances):
    colors = _colors()
    dashes = ["-", "--", ":", "-."]
    color = {run: colors[i % len(colors)] for i, run in enumerate(runs)}
    dash = {g: dashes[i % len(dashes)] for i, g in enumerate(guidances)}
    return color, dash


def _unique(values):
    return list(dict.fromkeys(values))


def _maybe_log(ax, values, axis="y"):
    finite = [v for v in values if v is not None and v > 0 and math.isfinite(v)]
    if finite and max(finite) / min(finite) > 20:
        (ax.set_yscale if axis == "y" else ax.set_xscale)("log")


def edge_optima(rows: list[dict], metric: str) -> list[dict]:
    """The (run, guidance) curves of `metric` whose optimum lies at the smallest or largest EMA
    length scored: the true optimum may lie outside the grid. Each item: run, label, guidance,
    ema_std, side ('shortest' or 'longest')."""
    found = []
    for (run, guidance), group in _series(
        [r for r in rows if r["metric"] == metric], lambda r: (r["run"], r["guidance"])
    ).items():
        stds = sorted({r["ema_std"] for r in group})
        if len(stds) < 2:
            continue
        best = min(group, key=lambda r: (r["value"], r["ema_std"]))
        if best["ema_std"] in (stds[0], stds[-1]):
            side = "shortest" if best["ema_std"] == stds[0] else "longest"
            found.append(
                dict(run=run, label=group[0]["label"] or run, guidance=guidance, ema_std=best["ema_std"], side=side)
            )
    return found


def plot_ema_sweep(rows: list[dict], metric: str, stem, statistic: str = "min"):
    """Metric vs EMA length (one curve per run and guidance setting; the optimum starred and
    given in the legend, so labels never overlap). Shaded: the min-max over the seed ranges.
    An optimum at the edge of the grid is drawn hollow and named in a note under the plot. A
    point whose reconstruction is weak (`phema_weak`: profile error above the threshold or
    outside the supported band, docs/phema.md#certificate) is ringed in red."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    rows = [r for r in rows if r["metric"] == metric]
    fig, ax = _figure()
    runs = _unique(r["run"] for r in rows)
    guidances = _unique(r["guidance"] for r in rows)
    color, dash = _styles(runs, guidances)
    edges = {(e["run"], e["guidance"]): e for e in edge_optima(rows, metric)}
    banded = weak = False
    for (run, guidance), group in _series(rows, lambda r: (r["run"], r["guidance"])).items():
        group = sorted(_best_over_guide_std(group), key=lambda r: r["ema_std"])
        x = [r["ema_std"] for r in group]
        y = [r["value"] for r in group]
        best = min(group, key=lambda r: (r["value"], r["ema_std"]))
        label = group[0]["label"] or run
        if len(guidances) > 1:
            label = f"{label}, {guidance}"
        edge = (run, guidance) in edges
        label += f": best {best['value']:.3g} at {best['ema_std']:.3f}" + (" (grid edge)" if edge else "")
        ax.plot(x, y, dash[guidance], color=color[run], marker="o", markersize=3, label=label)
        spreads = [[float(v) for v in str(r["values"]).split(";")] if r.get("values") else [r["value"]] for r in group]
        if any(len(s) > 1 for s in spreads):
            ax.fill_between(x, [min(s) for s in spreads], [max(s) for s in spreads], color=color[run], alpha=0.08, lw=0)
            banded = True
        ax.plot(
            [best["ema_std"]], [best["value"]], "*", markersize=13, markeredgecolor="black",
            color="white" if edge else color[run],
        )  # fmt: skip
        weak_points = [r for r in group if r.get("phema_weak")]
        if weak_points:
            ax.plot(
                [r["ema_std"] for r in weak_points], [r["value"] for r in weak_points], "o", markersize=9,
                markerfacecolor="none", markeredgecolor="red", markeredgewidth=1.2,
            )  # fmt: skip
            weak = True
    _maybe_log(ax, [r["value"] for r in rows])
    ax.margins(y=0.1)
    ax.set_xlabel("EMA length $\\sigma_\\mathrm{rel}$")
    ax.set_ylabel(f"{metric_label(metric)} ({statistic} over seed ranges)")
    ax.set_title(f"{metric_label(metric)} vs EMA length (post-hoc EMA)")
    ax.grid(True, alpha=0.3)
    if rows:
        handles, labels = ax.get_legend_handles_labels()
        if banded:
            handles.append(Patch(color="gray", alpha=0.25, lw=0))
            labels.append("min-max over seed ranges")
        if weak:
            handles.append(Line2D([], [], ls="", marker="o", markerfacecolor="none", markeredgecolor="red"))
            labels.append("weak reconstruction (profile error above threshold, or outside the supported band)")
        ax.legend(handles, labels, fontsize=7)
    else:
        ax.text(0.5, 0.5, f"no scores for {metric}", ha="center", va="center", transform=ax.transAxes)
    if edges:
        names = ", ".join(f"{e['label']} ({e['guidance']}) at {e['ema_std']:.3f}" for e in edges.values())
        fig.text(
            0.01, -0.02, f"Optimum at the edge of the EMA grid: {names}. Extend phema.grid past it; "
            "phema.refine then refines around the new optimum.", fontsize=7, ha="left", va="top", wrap=True,
        )  # fmt: skip
    return save_figure(fig, stem)


def _best_over_guide_std(group: list[dict]) -> list[dict]:
    """One row per main EMA length: with a 2-D EMA sweep (several guide lengths per main length),
    the best over the guide's lengths (the sweep itself is the heat map's)."""
    best = {}
    for r in group:
        cur = best.get(r["ema_std"])
        if cur is None or (r["value"], r.get("guide_std") or 0) < (cur["value"], cur.get("guide_std") or 0):
            best[r["ema_std"]] = r
    return list(best.values())


def plot_ema_heatmap(rows: list[dict], guidance: str, metric: str, stem):
    """The autoguidance paper's EMA heat map (Fig. 3c): the metric over the main net's EMA length
    (x) and the guide's (y) for one guidance setting, one panel per run; each cell labelled with
    its value, the optimum outlined. Cells not scored stay blank."""
    import numpy as np
    from matplotlib.patches import Rectangle

    rows = [r for r in rows if r["metric"] == metric and r["guidance"] == guidance and r.get("guide_std") is not None]
    runs = _unique(r["run"] for r in rows) or [""]
    fig = Figure(figsize=(5.2 * len(runs), 4.4), layout="constrained")
    axes = fig.subplots(1, len(runs), squeeze=False)[0]
    for ax, run in zip(axes, runs):
        group = [r for r in rows if r["run"] == run]
        if not group:
            ax.text(0.5, 0.5, f"no 2-D EMA scores for {guidance}", ha="center", va="center", transform=ax.transAxes)
            continue
        xs = sorted({r["ema_std"] for r in group})
        ys = sorted({r["guide_std"] for r in group})
        grid = np.full((len(ys), len(xs)), np.nan)
        for r in group:
            grid[ys.index(r["guide_std"]), xs.index(r["ema_std"])] = r["value"]
        image = ax.imshow(grid, origin="lower", cmap="viridis_r", aspect="auto")
        fig.colorbar(image, ax=ax, label=metric_label(metric))
        best = min(group, key=lambda r: (r["value"], r["ema_std"], r["guide_std"]))
        for r in group:  # dark text on the light (low, good) end of the reversed colormap
            i, j = ys.index(r["guide_std"]), xs.index(r["ema_std"])
            light = image.norm(r["value"]) < 0.5
            ax.text(
                j, i, f"{r['value']:.3g}", ha="center", va="center", fontsize=7, color="black" if light else "white"
            )
        bi, bj = ys.index(best["guide_std"]), xs.index(best["ema_std"])
        ax.add_patch(Rectangle((bj - 0.5, bi - 0.5), 1, 1, fill=False, edgecolor="red", lw=2))
        ax.set_xticks(range(len(xs)), [f"{x:.3f}" for x in xs], rotation=90, fontsize=7)
        ax.set_yticks(range(len(ys)), [f"{y:.3f}" for y in ys], fontsize=7)
        ax.set_xlabel("main EMA length EMA$_m$")
        kimg = best.get("guide_kimg")
        ax.set_ylabel("guide EMA length EMA$_g$" + (f" (guide at {kimg} kimg)" if kimg is not None else ""))
        label = group[0].get("label") or run
        ax.set_title(
            f"{label}, {guidance}, w={best['guidance_weight']:g}: best {best['value']:.3g} at "
            f"({best['ema_std']:.3f}, {best['guide_std']:.3f})",
            fontsize=9,
        )
    return save_figure(fig, stem)


def plot_gflops(best: list[dict], metric: str, stem):
    """Best metric (at the optimal EMA length) vs Gflops per model size, one line per guidance
    setting, each point labelled with its size and EMA length."""
    rows = [r for r in best if r["metric"] == metric and r.get("gflops") is not None]
    fig, ax = _figure()
    guidances = _unique(r["guidance"] for r in rows)
    colors = _colors()
    for i, (guidance, group) in enumerate(_series(rows, lambda r: r["guidance"]).items()):
        group = sorted(group, key=lambda r: r["gflops"])
        x = [r["gflops"] for r in group]
        y = [r["value"] for r in group]
        ax.plot(x, y, "-o", color=colors[i % len(colors)], label=guidance if len(guidances) > 1 else None)
        for r in group:
            ax.annotate(
                f"{r['label']} ({r['ema_std']:.3f})",
                (r["gflops"], r["value"]),
                textcoords="offset points",
                xytext=(5, 4),
                fontsize=7,
            )
    ax.set_xscale("log")
    ax.margins(x=0.15, y=0.12)
    _maybe_log(ax, [r["value"] for r in rows])
    ax.set_xlabel("Model complexity (Gflops per evaluation)")
    ax.set_ylabel(f"best {metric_label(metric)}")
    ax.set_title(f"{metric_label(metric)} vs model complexity")
    ax.grid(True, which="both", alpha=0.3)
    if len(guidances) > 1:
        ax.legend(fontsize=8)
    if not rows:
        ax.text(0.5, 0.5, "no model info (Gflops) for these scores", ha="center", va="center", transform=ax.transAxes)
    return save_figure(fig, stem)


def read_stats(path) -> list[dict]:
    """Lines of a training stats.jsonl (values are means; a {"mean": ...} object is accepted)."""
    path = Path(path)
    if not path.is_file():
        raise FormatError(f"{path}: no such file; does the run folder hold a finished `edm2 train` run?")
    records = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except RecursionError:
            raise FormatError(f"{path}:{i}: JSON nested too deeply") from None
        except json.JSONDecodeError as e:
            raise FormatError(f"{path}:{i}: not a JSON line ({e})") from None
        if not isinstance(record, dict):
            raise FormatError(f"{path}:{i}: a {type(record).__name__}, expected a JSON object")
        records.append({k: (v.get("mean") if isinstance(v, dict) else v) for k, v in record.items()})
    return records


def loss_curve(path) -> tuple[list[float], list[float]]:
    """(kimg, mean loss) points of a run's stats.jsonl."""
    xs, ys = [], []
    for record in read_stats(path):
        kimg, loss = record.get("Progress/kimg"), record.get("Loss/loss")
        if kimg is None or loss is None:
            continue
        try:
            loss, kimg = float(loss), float(kimg)
        except (TypeError, ValueError):
            raise FormatError(
                f"{path}: Progress/kimg {str(kimg)[:40]} or Loss/loss {str(loss)[:40]} is not a number"
            ) from None
        if math.isfinite(loss):
            xs.append(kimg)
            ys.append(loss)
    return xs, ys


def plot_training_loss(runs: dict, stem, labels: dict | None = None):
    """Training loss (mean per status interval) vs training images, one curve per run.
    `runs`: {run: path of its stats.jsonl}."""
    labels = labels or {}
    fig, ax = _figure()
    colors = _colors()
    drawn = 0
    for i, (run, path) in enumerate(runs.items()):
        xs, ys = loss_curve(path)
        if xs:
            ax.plot(
                xs,
                ys,
                "-",
                color=colors[i % len(colors)],
                label=labels.get(run, run),
                marker="." if len(xs) < 30 else None,
            )
            drawn += 1
    ax.set_xlabel("training images (kimg)")
    ax.set_ylabel("loss (incl. learned uncertainty)")
    ax.set_title("Training loss")
    ax.grid(True, alpha=0.3)
    if drawn:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no loss statistics yet", ha="center", va="center", transform=ax.transAxes)
    return save_figure(fig, stem)
