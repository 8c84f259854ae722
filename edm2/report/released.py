"""The table of released networks: our FID / FD_DINOv2 of each released post-hoc
reconstruction (a generation preset of the EDM2 release, arXiv 2312.02696 Table 2 and the
guidance results) next to the value the paper reports, as CSV and Markdown."""

from pathlib import Path

from edm2.errors import FormatError
from edm2.io.atomic import atomic_write_text
from edm2.report.results import _read_json, summarize, write_csv
from edm2.report.tables import PLAIN_METRIC_NAMES

COLUMNS = [
    "model", "name", "preset", "network", "gnet", "guidance", "ema_std", "metric", "reported",
    "ours", "difference", "values", "num_images",
]  # fmt: skip


def released_rows(scores: dict, labels=None, reported=None, presets=None, statistic: str = "min") -> list[dict]:
    """One row per (released net, metric) from score JSONs (`edm2 metrics gen --json`).

    `scores`: {name: path}; `labels`: {name: display name}; `reported`: {name: (metric, value)};
    `presets`: {name: generation preset}. `ours` is `statistic` ('min' as in the paper, or
    'mean') over the seed ranges; `difference` = ours - reported. Raises `FormatError` for a
    score file without metrics.
    """
    labels, reported, presets = labels or {}, reported or {}, presets or {}
    rows = []
    for name, path in scores.items():
        data = _read_json(path)
        metrics = data.get("metrics")
        if not isinstance(metrics, dict) or not metrics:
            raise FormatError(f"{path}: no 'metrics' in the score file; re-run the job that wrote it")
        for metric, entry in metrics.items():
            values = [float(v) for v in entry["values"]]
            ours = summarize(values, statistic)
            rep = reported.get(name)
            rep_value = rep[1] if rep and rep[0] == metric else None
            rows.append(
                {
                    "model": labels.get(name, name),
                    "name": name,
                    "preset": presets.get(name),
                    "network": Path(str(data.get("network"))).name,
                    "gnet": Path(str(data["gnet"])).name if data.get("gnet") else None,
                    "guidance": data.get("guidance"),
                    "ema_std": data.get("ema_std"),
                    "metric": metric,
                    "reported": rep_value,
                    "ours": ours,
                    "difference": None if rep_value is None else ours - rep_value,
                    "values": " ".join(f"{v:.4g}" for v in values),
                    "num_images": data.get("num_images"),
                }
            )
    return rows


def _num(value, digits=2):
    return "–" if value is None else f"{float(value):.{digits}f}"


def to_markdown(rows: list[dict], statistic: str = "min") -> str:
    """The table as Markdown: model, guidance, EMA length, metric, reported, ours, difference."""
    ours = "ours (min over seed ranges)" if statistic == "min" else "ours (mean over seed ranges)"
    lines = [
        f"| model | guidance | EMA length | metric | reported | {ours} | difference |",
        "|---|---:|---:|---|---:|---:|---:|",
    ]
    for r in rows:
        difference = "–" if r["difference"] is None else f"{r['difference']:+.2f}"
        lines.append(
            f"| {r['model']} | {_num(r['guidance'])} | {_num(r['ema_std'], 3)} | "
            f"{PLAIN_METRIC_NAMES.get(r['metric'], r['metric'])} | {_num(r['reported'])} | {_num(r['ours'])} | {difference} |"
        )
    return "\n".join(lines) + "\n"


def write_released_table(rows: list[dict], csv_path, md_path=None, statistic: str = "min") -> list[Path]:
    """Write the CSV (every column) and optionally the Markdown table, atomically."""
    write_csv(csv_path, rows, COLUMNS)
    paths = [Path(csv_path)]
    if md_path is not None:
        atomic_write_text(md_path, to_markdown(rows, statistic))
        paths.append(Path(md_path))
    return paths
