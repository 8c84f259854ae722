"""Refining the EMA grid: given the scores on a coarse grid of EMA lengths, choose a few finer
lengths around the optimum of every (run, guidance setting), so the optimum is located with far
fewer expensive scores than a dense grid would need.

The fine lengths lie on both sides of the coarse optimum, evenly spaced between it and its grid
neighbours (at the edge of the grid, as far beyond it as the neighbour on the other side),
rounded to the 3 decimals of the phema file names, excluding lengths already on the grid.
"""

from edm2.report.results import best_rows
from edm2.utils import MAX_STD  # power-function EMA profiles exist for std < 1/sqrt(12) (docs/method.md#ema)


def fine_stds(grid: list[float], best: float, points: int) -> list[float]:
    """`points` lengths on each side of `best`, evenly between it and its grid neighbour (at the
    edge of the grid, a neighbour mirrored across `best`), 3 decimals, new ones only."""
    grid = sorted(set(round(float(s), 3) for s in grid))
    best = round(float(best), 3)
    if best not in grid:
        raise ValueError(f"the best EMA std {best} is not on the grid {grid}")
    i = grid.index(best)
    if len(grid) == 1:
        lo, hi = best / 2, best * 1.5
    else:
        lo = grid[i - 1] if i > 0 else best - (grid[i + 1] - best)
        hi = grid[i + 1] if i + 1 < len(grid) else best + (best - grid[i - 1])
    lo, hi = max(lo, 0.0), min(hi, MAX_STD)
    out = set()
    for neighbour in (lo, hi):
        for k in range(1, points + 1):
            v = round(best + (neighbour - best) * k / (points + 1), 3)
            if 0 < v < MAX_STD and v not in grid:
                out.add(v)
    return sorted(out)


def refine(rows: list[dict], grid: list[float], points: int) -> dict:
    """Tidy score rows on the coarse grid -> {"stds": {run: {guidance: ["0.xyz", ...]}},
    "best": {run: {guidance: {"metric", "ema_std", "value"}}}}. The metric that decides is the
    first one scored for the setting."""
    first_metric = {}
    for row in rows:
        first_metric.setdefault((row["run"], row["guidance"]), row["metric"])
    result = {"stds": {}, "best": {}}
    for row in best_rows(rows):
        run, guidance = row["run"], row["guidance"]
        if row["metric"] != first_metric[(run, guidance)]:
            continue
        stds = fine_stds(grid, row["ema_std"], points)
        result["stds"].setdefault(run, {})[guidance] = [f"{s:.3f}" for s in stds]
        result["best"].setdefault(run, {})[guidance] = {
            "metric": row["metric"],
            "ema_std": row["ema_std"],
            "value": row["value"],
        }
    return result
