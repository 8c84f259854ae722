"""Synthetic result files for the edm2.report tests: score JSONs laid out as the workflow writes
them (<root>/<run>/<guidance>/ema-<std>.json), model-info JSONs and training stats."""

import json
from pathlib import Path


def metric_curve(std: float, optimum: float, floor: float, curvature: float = 400.0) -> float:
    """A parabola in the EMA std with its minimum `floor` at `optimum` (the shape of paper Fig. 5)."""
    return floor + curvature * (std - optimum) ** 2


def write_score(root, run, guidance, std, metrics: dict, weight=1.0, gnet=None, kimg=65, nfe=63) -> Path:
    """metrics: {name: [value per seed range]} -> a JSON like `edm2 metrics gen --json`."""
    path = Path(root) / run / guidance / f"ema-{std:.3f}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "metrics": {m: {"values": v, "min": min(v), "mean": sum(v) / len(v), "std": 0.0} for m, v in metrics.items()},
        "network": f"runs/{run}/phema/phema-{kimg:07d}-{std:.3f}.safetensors",
        "gnet": gnet,
        "guidance": weight,
        "ema_std": std,
        "kimg": kimg,
        "nimg": kimg * 1024,
        "num_steps": (nfe + 1) // 2,
        "nfe": nfe,
        "seeds": [[i * 100, i * 100 + 99] for i in range(len(next(iter(metrics.values()))))],
        "num_images": 100,
        "detectors": {m: f"{m}-detector" for m in metrics},
        "ref": "ref.npz",
    }
    path.write_text(json.dumps(data))
    return path


def write_model_info(root, run, label, mparams, gflops) -> Path:
    path = Path(root) / f"{run}-model-info.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"run": run, "label": label, "mparams": mparams, "gflops": gflops}))
    return path


GRID = [0.050, 0.075, 0.100, 0.125, 0.150, 0.175, 0.200]

# Two sizes with their optimum EMA (no guidance / guided) and floor metric values.
SIZES = {
    "xs": {"label": "XS", "mparams": 124.71, "gflops": 45.6, "opt": 0.125, "floor": 3.5, "gopt": 0.050, "gfloor": 2.9},
    "s": {"label": "S", "mparams": 280.21, "gflops": 102.2, "opt": 0.100, "floor": 2.5, "gopt": 0.075, "gfloor": 2.2},
}


def paper_like_results(root, grid=GRID, guided=True, ranges=3) -> tuple[list[Path], list[Path]]:
    """Score files for two sizes over `grid` (fid, three seed ranges whose minimum is the curve),
    unguided and (optionally) guided with weight 1.4; plus their model-info files."""
    scores, infos = [], []
    for run, s in SIZES.items():
        infos.append(write_model_info(Path(root) / "info", run, s["label"], s["mparams"], s["gflops"]))
        for std in grid:
            base = metric_curve(std, s["opt"], s["floor"])
            scores.append(write_score(root, run, "noguid", std, {"fid": [base + 0.1 * k for k in range(ranges)][::-1]}))
            if guided:
                gbase = metric_curve(std, s["gopt"], s["gfloor"])
                scores.append(
                    write_score(
                        root,
                        run,
                        "guid-fid",
                        std,
                        {"fid": [gbase + 0.05 * k for k in range(ranges)]},
                        weight=1.4,
                        gnet=f"runs/xs-uncond/phema/phema-0000065-{std:.3f}.safetensors",
                    )
                )
    return scores, infos


def write_stats(path, points) -> Path:
    """stats.jsonl with (kimg, loss) points, as `edm2 train` writes it (means only)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"Progress/kimg": 0.0, "timestamp": 1.0})]
    lines += [json.dumps({"Loss/loss": loss, "Progress/kimg": kimg, "timestamp": 2.0 + kimg}) for kimg, loss in points]
    path.write_text("\n".join(lines) + "\n")
    return path
