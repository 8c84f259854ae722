"""Score JSONs -> tidy tables.

A score JSON is what `edm2 metrics gen --json` writes (docs/HELPERS.md, "Results JSON"): the
values of each metric over K seed ranges plus the network, EMA std, kimg, NFE, seeds and
detectors. The workflow stores each one at `.../scores/<run>/<guidance>/ema-<std>.json`, so the
run and the guidance setting are read from the two folders above the file unless the JSON
names them itself (`run`, `guidance_name`).

The tidy table has one row per (score file, metric); `value` is the statistic the paper reports
over the seed ranges (the minimum of three; or the mean, `statistic="mean"`).
"""

import csv
import json
import math
from pathlib import Path

from edm2.data.limits import read_file
from edm2.errors import DataError, FormatError
from edm2.io.atomic import atomic_path
from edm2.naming import certificate_name, parse_snapshot_name

STATISTICS = ("min", "mean")

# Columns of the tidy table, in order.
SCORE_COLUMNS = [
    "run", "label", "guidance", "guidance_weight", "metric", "ema_std", "value",
    "min", "mean", "std", "num_ranges", "values", "kimg", "nimg", "nfe", "num_steps",
    "num_images", "mparams", "gflops", "network", "gnet", "detector", "ref", "source",
    "profile_error", "phema_weak", "guide_std", "guide_kimg", "guide_weights",
]  # fmt: skip

BEST_COLUMNS = [
    "run", "label", "guidance", "guidance_weight", "metric", "ema_std", "value", "min",
    "mean", "std", "nfe", "kimg", "mparams", "gflops", "num_images", "network", "gnet",
    "profile_error", "phema_weak", "guide_std", "guide_kimg", "guide_weights",
]  # fmt: skip


def _read_json(path) -> dict:
    path = Path(path)
    if not path.exists():
        raise FormatError(f"{path}: no such result file")
    try:
        data = json.loads(read_file(path, str(path)))  # bounded: a regular file of at most 1 GiB
    except DataError as e:
        raise FormatError(str(e)) from None
    except RecursionError:
        raise FormatError(f"{path}: JSON nested too deeply; re-run the job that wrote it") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FormatError(f"{path}: not a JSON file ({e}); re-run the job that wrote it") from None
    if not isinstance(data, dict):
        raise FormatError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def summarize(values, statistic: str) -> float:
    """The reported value of a metric over its seed ranges."""
    if statistic not in STATISTICS:
        raise ValueError(f"statistic must be one of {STATISTICS}, not {statistic!r}")
    try:
        finite = [float(v) for v in values]
    except (TypeError, ValueError):
        raise FormatError(f"metric values {str(values)[:80]} are not numbers") from None
    return min(finite) if statistic == "min" else sum(finite) / len(finite)


def read_certificate(network) -> dict | None:
    """The certificate `edm2 phema` wrote beside a reconstructed network (edm2.ema.certificate,
    docs/phema.md#certificate): {'profile_error', 'weak', ...}, or None for a network without one
    (a released or traditional-EMA network, a URL, or a file moved away from its certificate)."""
    if not network or "://" in str(network):
        return None
    path = Path(network)
    cert = path.parent / certificate_name(path.name)
    if not cert.is_file():
        return None
    data = _read_json(cert)
    return data if isinstance(data.get("profile_error"), (int, float)) else None


def read_score(path, statistic: str = "min") -> list[dict]:
    """One score JSON -> tidy rows (one per metric); `profile_error` and `phema_weak` (0/1) from
    the network's certificate (`read_certificate`), empty without one."""
    path = Path(path)
    data = _read_json(path)
    metrics = data.get("metrics")
    if not isinstance(metrics, dict) or not metrics:
        raise FormatError(f"{path}: no 'metrics' object; is this a file written by `edm2 metrics gen --json`?")
    run = data.get("run") or path.parent.parent.name
    guidance = data.get("guidance_name") or path.parent.name
    ema_std = data.get("ema_std")
    if ema_std is None:
        raise FormatError(f"{path}: no 'ema_std'; score a network reconstructed by `edm2 phema`")
    cert = read_certificate(data.get("network"))
    # The guide's EMA length and training kimg, from its file name (edm2.naming): the axes of the
    # autoguidance EMA sweep (the autoguidance paper's EMA_g, and the guide's training length).
    # Several guides (a list; edm2 metrics gen --gnet twice): the last one, autoguidance's guide
    # in the workflow's order (classifier-free guide first), gives these axes.
    gnet = data.get("gnet")
    gnet = ";".join(map(str, gnet)) if isinstance(gnet, list) else gnet
    last = gnet.split(";")[-1] if gnet else None
    guide = parse_snapshot_name(Path(last).name) if last else None
    rows = []
    for metric, entry in metrics.items():
        if isinstance(entry, (int, float)):
            entry = {"values": [entry]}
        values = [float(v) for v in entry.get("values") or []]
        if not values:
            raise FormatError(f"{path}: metric {metric!r} has no values")
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
        rows.append(
            {
                "run": run,
                "label": run,
                "guidance": guidance,
                "guidance_weight": float(data.get("guidance", 1.0) or 1.0),
                "metric": metric,
                "ema_std": float(ema_std),
                "value": summarize(values, statistic),
                "min": float(entry.get("min", min(values))),
                "mean": float(entry.get("mean", mean)),
                "std": float(entry.get("std", std)),
                "num_ranges": len(values),
                "values": ";".join(repr(v) for v in values),
                "kimg": data.get("kimg"),
                "nimg": data.get("nimg"),
                "nfe": data.get("nfe"),
                "num_steps": data.get("num_steps"),
                "num_images": data.get("num_images"),
                "mparams": None,
                "gflops": None,
                "network": data.get("network"),
                "gnet": gnet,
                "detector": (data.get("detectors") or {}).get(metric),
                "ref": data.get("ref"),
                "source": str(path),
                "profile_error": None if cert is None else float(cert["profile_error"]),
                "phema_weak": None if cert is None else int(bool(cert.get("weak"))),
                "guide_std": guide.std if guide else None,
                "guide_kimg": guide.kimg if guide else None,
                # Several guides: each one's weight w_i, in the order of `gnet` (';'-separated).
                "guide_weights": ";".join(f"{g['guidance']!r}" for g in data["guides"])
                if isinstance(data.get("gnet"), list) and data.get("guides")
                else None,
            }
        )
    return rows


def read_model_info(path) -> dict:
    """A `model-info` JSON (`edm2 report model-info`): run, label, mparams, gflops."""
    data = _read_json(path)
    for key in ("run", "mparams", "gflops"):
        if key not in data:
            raise FormatError(f"{path}: no {key!r}; write it with `edm2 report model-info`")
    return data


def aggregate(score_paths, model_info_paths=(), statistic: str = "min") -> list[dict]:
    """Tidy rows of every score file, with label/Mparams/Gflops of the run filled in."""
    infos = {}
    for p in model_info_paths:
        info = read_model_info(p)
        infos[info["run"]] = info
    rows = []
    for p in score_paths:
        for row in read_score(p, statistic):
            info = infos.get(row["run"])
            if info is not None:
                row["label"] = info.get("label") or row["run"]
                row["mparams"] = info["mparams"]
                row["gflops"] = info["gflops"]
            rows.append(row)
    return rows


def best_rows(rows: list[dict]) -> list[dict]:
    """The best EMA length of every (run, guidance setting, metric): lowest value, ties to the
    shorter EMA. Order: first appearance of each group."""
    best = {}
    for row in rows:
        key = (row["run"], row["guidance"], row["metric"])
        cur = best.get(key)
        if cur is None or (float(row["value"]), float(row["ema_std"])) < (float(cur["value"]), float(cur["ema_std"])):
            best[key] = row
    return [{c: row.get(c) for c in BEST_COLUMNS} for row in best.values()]


def _fmt(value):
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def write_csv(path, rows: list[dict], columns: list[str]) -> None:
    """Write rows atomically (missing keys are empty cells)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".csv") as tmp:
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(columns)
            for row in rows:
                writer.writerow([_fmt(row.get(c)) for c in columns])


_NUMERIC = {
    "guidance_weight", "ema_std", "guide_std", "value", "min", "mean", "std", "mparams", "gflops", "profile_error",
}  # fmt: skip
_INTEGER = {"guide_kimg", "num_ranges", "kimg", "nimg", "nfe", "num_steps", "num_images", "phema_weak"}


def read_csv(path) -> list[dict]:
    """Read a table written by `write_csv`, converting the numeric columns."""
    path = Path(path)
    if not path.is_file():
        raise FormatError(f"{path}: no such table; run `edm2 report aggregate` first")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        for key, value in row.items():
            if value == "" or value is None:
                row[key] = None
            elif key in _NUMERIC:
                row[key] = float(value)
            elif key in _INTEGER:
                row[key] = int(float(value))
    return rows
