"""Figures of the magnitude analysis over training: EDM2 (arXiv 2312.02696) Fig. 3 (max) and
Fig. 15 (max and mean), from the JSON files of `edm2 analyze magnitudes` (docs/method.md#magnitudes).

Made with matplotlib's object-oriented API (no pyplot, no global backend), as edm2.report.plots.
"""

import json
from pathlib import Path

import matplotlib
from matplotlib.figure import Figure

from edm2.errors import FormatError
from edm2.io.atomic import atomic_path

# Columns of Fig. 15 (Fig. 3 is its first two): (title, record key, statistic).
COLUMNS = (
    ("Activations (max)", "activations", "max"),
    ("Weights (max)", "weights", "max"),
    ("Activations (mean)", "activations", "mean"),
    ("Weights (mean)", "weights", "mean"),
)


def read_magnitude_files(files) -> list[dict]:
    """The records of `edm2 analyze magnitudes` JSON files; FormatError naming a file that is not one."""
    records = []
    for path in files:
        try:
            record = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise FormatError(f"{path}: not a readable magnitudes JSON ({e})") from None
        if not isinstance(record, dict) or not {"weights", "buckets", "config"} <= set(record):
            raise FormatError(f"{path}: not a magnitudes JSON of `edm2 analyze magnitudes`")
        if record.get("nimg") is None:
            raise FormatError(f"{path}: the network records no training image count; cannot place it on the x-axis")
        records.append(record)
    return records


def magnitude_series(records: list[dict]) -> dict:
    """{config: {"nimg": [...], "buckets": [...], (key, stat): {bucket: [...]}}}, sorted by nimg."""
    rows = {}
    for record in sorted(records, key=lambda r: (r["config"], r["nimg"])):
        row = rows.setdefault(record["config"], {"nimg": [], "buckets": record["buckets"]})
        row["nimg"].append(record["nimg"])
        for _title, key, stat in COLUMNS:
            values = record.get(key) or {}
            series = row.setdefault((key, stat), {})
            for bucket in row["buckets"]:
                series.setdefault(bucket, []).append(values.get(bucket, {}).get(stat, float("nan")))
    return dict(sorted(rows.items()))


def plot_magnitudes(records: list[dict], out, title: str | None = None) -> Path:
    """Write the Fig. 15 grid of `records` to `out` (.png or .svg; the format from the suffix):
    one row per config, columns Activations/Weights x max/mean (only the weight columns when no
    record has activations), one line per bucket (Enc solid, Dec dashed, one colour per
    resolution), x in training images (Mimg, or kimg for runs under 1 Mi images). Returns `out`."""
    rows = magnitude_series(records)
    has_acts = any(r.get("activations") for r in records)
    columns = [c for c in COLUMNS if has_acts or c[1] == "weights"]
    fig = Figure(figsize=(3.2 * len(columns), 2.4 * len(rows) + 0.6))
    axes = fig.subplots(len(rows), len(columns), squeeze=False)
    colors = matplotlib.colormaps["tab10"].colors
    largest = max(n for row in rows.values() for n in row["nimg"])
    unit, scale = ("Mimg", 2**20) if largest >= 2**20 else ("kimg", 1000)
    for i, (config, row) in enumerate(rows.items()):
        x = [n / scale for n in row["nimg"]]
        resolutions = sorted({b.split("-")[1] for b in row["buckets"]}, key=lambda r: -int(r.split("x")[0]))
        for j, (col_title, key, stat) in enumerate(columns):
            ax = axes[i][j]
            for bucket in row["buckets"]:
                flavor, res = bucket.split("-")
                ax.plot(
                    x,
                    row[(key, stat)][bucket],
                    color=colors[resolutions.index(res) % len(colors)],
                    linestyle="-" if flavor == "Enc" else "--",
                    marker="." if len(x) < 20 else None,
                    label=bucket,
                )
            top = max((v for s in row[(key, stat)].values() for v in s if v == v), default=1.0)
            ax.set_ylim(0, 1.15 * top if top > 0 else 1.0)
            ax.grid(alpha=0.3)
            if i == 0:
                ax.set_title(col_title, fontsize=10)
            if j == 0:
                ax.set_ylabel(f"Config {config}")
            if i == len(rows) - 1:
                ax.set_xlabel(f"Training images ({unit})")
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(out)
    fmt = out.suffix.lstrip(".").lower() or "png"
    if fmt not in ("png", "svg", "pdf"):
        raise FormatError(f"--out {out}: use a .png, .svg or .pdf file name")
    out.parent.mkdir(parents=True, exist_ok=True)
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "edm2"}):
        with atomic_path(out, suffix=f".{fmt}") as tmp:
            fig.savefig(
                tmp, format=fmt, dpi=120, bbox_inches="tight", metadata={"Software": None} if fmt == "png" else None
            )
    return out
