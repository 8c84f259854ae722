"""The guidance search's rounds, result table and plot (docs/evaluation.md#the-guidance-search).

`search_round` reads the evaluations made so far (score JSONs of `edm2 metrics gen`, each named
after its setting, `edm2.search.Point.name`) and writes the state after a round: every
evaluation with its value, the best screened setting, and the points of the next round (the
plan of `edm2.search.SearchPlan`); after the last screening round those are the confirmation
points, and the round after it writes the result (the best confirmed setting). `write_search`
turns the results of a search into a table (best setting, value, the reported value) and a plot
of the metric along each searched axis.
"""

import json
from pathlib import Path

from matplotlib.figure import Figure

from edm2.errors import DataError
from edm2.io.atomic import atomic_write_text
from edm2.report.plots import metric_label, save_figure
from edm2.report.results import read_score, write_csv
from edm2.search import AXES, Point, SearchPlan, parse_point_name

AXIS_LABELS = {
    "weight": "guidance weight $w$",
    "mix": "mix $\\alpha$ (0: first guide, 1: second)",
    "sigma_hi": "$\\sigma_\\mathrm{hi}$",
    "sigma_lo": "$\\sigma_\\mathrm{lo}$",
}
TABLE_COLUMNS = [
    "search", "run", "metric", "weight", "mix", "sigma_hi", "sigma_lo", "ema_std", "guide_std", "guide_kimg",
    "value", "screened_value", "num_images", "seeds_ranges", "screen_images", "evaluations", "reported", "file",
]  # fmt: skip


def plan_from_json(text: str) -> SearchPlan:
    """The plan as the workflow passes it (`json.dumps(dataclasses.asdict(plan))`)."""
    data = json.loads(text)
    data["axes"] = tuple((axis, tuple(grid)) for axis, grid in data["axes"])
    return SearchPlan(**data)


def _evaluation(path, metric: str, statistic: str) -> dict:
    """One evaluation file -> its point, value of `metric` and the networks it used."""
    path = Path(path)
    point = parse_point_name(path.stem)
    rows = {r["metric"]: r for r in read_score(path, statistic)}
    if metric not in rows:
        raise DataError(f"{path}: no {metric!r} value; the evaluation computed {sorted(rows)}")
    row = rows[metric]
    if row["num_images"] is not None and (row["num_images"], row["num_ranges"]) != (point.num, point.ranges):
        raise DataError(
            f"{path}: holds {row['num_ranges']} x {row['num_images']} images, its name says {point.ranges} x "
            f"{point.num}; delete it and re-run"
        )
    return {
        "name": point.name,
        "file": str(path),
        **{a: point.value(a) for a in AXES},
        "num": point.num,
        "ranges": point.ranges,
        "value": row["value"],
        "values": [float(v) for v in row["values"].split(";")],
        "ema_std": row["ema_std"],
        "guide_std": row.get("guide_std"),
        "guide_kimg": row.get("guide_kimg"),
    }


def _point(entry: dict) -> Point:
    return Point(entry["weight"], entry["num"], entry["ranges"], **{a: entry.get(a) for a in AXES if a != "weight"})


def search_round(plan: SearchPlan, round_: int, files, metric: str, statistic: str, run: str) -> dict:
    """The state after screening round `round_` (0-based; `plan.rounds` = the confirmation) from
    every evaluation file so far: {"round", "run", "metric", "evaluated": [...], "best": entry of
    the best screened setting, "next": names of the next round's points (the confirmation points
    after the last screening round; [] after the confirmation), "result": the best confirmed
    entry (after the confirmation only)}."""
    evaluated = sorted(
        (_evaluation(f, metric, statistic) for f in dict.fromkeys(map(str, files))), key=lambda e: e["name"]
    )
    screened = [e for e in evaluated if (e["num"], e["ranges"]) == (plan.num, plan.ranges)]
    if not screened:
        raise DataError(f"search of {run}/{metric}: no screening evaluation among {len(evaluated)} files")
    history = {_point(e): e["value"] for e in screened}
    best = min(screened, key=lambda e: (e["value"], _point(e).setting_key()))
    state = {"round": round_, "rounds": plan.rounds, "run": run, "metric": metric, "statistic": statistic}
    state.update(evaluated=evaluated, best=best, next=[], result=None)
    if round_ + 1 < plan.rounds:
        state["next"] = [p.name for p in plan.points(round_ + 1, history)]
    elif round_ + 1 == plan.rounds:
        state["next"] = [p.name for p in plan.confirm_points(history)]
    else:  # the confirmation: the best of the confirmed points
        wanted = {p.name for p in plan.confirm_points(history)}
        confirmed = [e for e in evaluated if e["name"] in wanted]
        missing = wanted - {e["name"] for e in confirmed}
        if missing:
            raise DataError(f"search of {run}/{metric}: the confirmation of {sorted(missing)} is missing; re-run")
        result = min(confirmed, key=lambda e: (e["value"], _point(e).setting_key()))
        screen = next(e for e in screened if _point(e).setting_key() == _point(result).setting_key())
        state["result"] = {**result, "screened_value": screen["value"]}
    return state


def result_rows(states: list[dict], search: str, reported: dict) -> list[dict]:
    """Table rows of final states: the best confirmed setting of each (run, metric)."""
    rows = []
    for s in states:
        r = s.get("result")
        if r is None:
            raise DataError(f"search {search}: the state of {s.get('run')}/{s.get('metric')} has no result yet")
        rows.append(
            {
                "search": search,
                "run": s["run"],
                "metric": s["metric"],
                **{a: r[a] for a in AXES},
                "ema_std": r["ema_std"],
                "guide_std": r["guide_std"],
                "guide_kimg": r["guide_kimg"],
                "value": r["value"],
                "screened_value": r["screened_value"],
                "num_images": r["num"],
                "seeds_ranges": r["ranges"],
                "screen_images": min(e["num"] for e in s["evaluated"]),
                "evaluations": len(s["evaluated"]),
                "reported": reported.get(s["run"]),
                "file": r["file"],
            }
        )
    return rows


def _plot_axis(ax, states, axis, metric):
    """The metric along one axis: the screened values on the line through each run's result (the
    other axes at their best), the confirmed result as a star."""
    for s in states:
        r = s["result"]
        others = [a for a in AXES if a != axis]
        line = [e for e in s["evaluated"] if e["num"] != r["num"] or e["ranges"] != r["ranges"]]
        line = sorted(
            (e for e in line if e[axis] is not None and all(e[a] == r[a] for a in others)), key=lambda e: e[axis]
        )
        size = f" ({line[0]['ranges']} x {line[0]['num']} images)" if line else ""
        (drawn,) = ax.plot(
            [e[axis] for e in line], [e["value"] for e in line], "o-", ms=4, label=f"{s['run']} screened{size}"
        )
        if r[axis] is not None:
            label = f"{s['run']} confirmed ({r['ranges']} x {r['num']} images)"
            ax.plot([r[axis]], [r["value"]], "*", ms=12, color=drawn.get_color(), label=label)
    ax.set_xlabel(AXIS_LABELS[axis])
    ax.set_ylabel(metric_label(metric))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def _cell(v, digits=4):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def write_search(states: list[dict], search: str, reported: dict, table_stem, plot_stem) -> list[Path]:
    """TABLE.csv and TABLE.md (one row per run and metric) and PLOT.png/.svg: the metric along
    each searched axis (screened values on the line through the best setting, the confirmed
    best as a star), one panel per (metric, axis)."""
    rows = result_rows(states, search, reported)
    table_stem, plot_stem = Path(table_stem), Path(plot_stem)
    csv_path = table_stem.with_suffix(".csv")
    write_csv(csv_path, rows, TABLE_COLUMNS)
    md = [
        f"Guidance search `{search}`: the best confirmed setting per run and metric.",
        "",
        "| run | metric | w | mix | sigma_hi | sigma_lo | EMA | guide EMA | value | screened | reported | evaluations |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [r["run"], r["metric"], r["weight"], r["mix"], r["sigma_hi"], r["sigma_lo"], r["ema_std"]]
        cells += [r["guide_std"]]
        cells += [r["value"], r["screened_value"], r["reported"], r["evaluations"]]
        md.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    md_path = table_stem.with_suffix(".md")
    atomic_write_text(md_path, "\n".join(md) + "\n")

    metrics = list(dict.fromkeys(s["metric"] for s in states))
    axes = [a for a in AXES if a == "weight" or any(e[a] is not None for s in states for e in s["evaluated"])]
    fig = Figure(figsize=(4.4 * len(axes), 3.4 * len(metrics)), layout="constrained")
    panels = fig.subplots(len(metrics), len(axes), squeeze=False)
    for i, metric in enumerate(metrics):
        for j, axis in enumerate(axes):
            _plot_axis(panels[i][j], [s for s in states if s["metric"] == metric], axis, metric)
    fig.suptitle(f"guidance search {search}")
    paths = save_figure(fig, plot_stem)
    return [csv_path, md_path, *paths]
