"""The cached guidance search (edm2.search, edm2.report.search): the points of each round, the
rounds run the way the workflow runs them on synthetic evaluations, the table, plot and heat map."""

import csv
import json

import pytest
from report_helpers import write_score

from edm2.errors import ConfigError
from edm2.report.plots import plot_ema_heatmap
from edm2.report.results import aggregate
from edm2.report.search import search_round, write_search
from edm2.search import Point, SearchPlan, parse_grid, parse_point_name


def weight_curve(w, optimum=2.3, floor=1.5):
    """A parabola in the guidance weight with its minimum `floor` at `optimum` (paper Fig. 7)."""
    return floor + 0.8 * (w - optimum) ** 2


def interval_curve(p: Point):
    """Minimum at w=2.3, sigma_hi=2.9, sigma_lo=0.28 (the interval paper's EDM2-S FID setting)."""
    hi = 80.0 if p.sigma_hi is None else p.sigma_hi
    lo = 0.0 if p.sigma_lo is None else p.sigma_lo
    return weight_curve(p.weight) + 0.3 * (hi - 2.9) ** 2 + 0.5 * (lo - 0.28) ** 2


def evaluate(folder, point: Point, curve=lambda p: weight_curve(p.weight)):
    """An evaluation file as the workflow names it; its seed ranges all hold the curve's value."""
    path = write_score(folder, "s", "autog", 0.07, {"fid": [curve(point)] * point.ranges}, weight=point.weight,
                       gnet="runs/xs/phema/phema-0134217-0.125.safetensors")  # fmt: skip
    data = json.loads(path.read_text())
    data["num_images"] = point.num
    target = path.parent / f"{point.name}.json"
    target.write_text(json.dumps(data))
    path.unlink()
    return target


def run_search(folder, plan: SearchPlan, curve=lambda p: weight_curve(p.weight)):
    """Every round as the workflow runs them: evaluate the points a state names, then the next
    round reads every evaluation so far. Returns (final state, evaluation files)."""
    files = [evaluate(folder, p, curve) for p in plan.points(0, {})]
    for round_ in range(plan.rounds + 1):
        state = search_round(plan, round_, files, "fid", "min", "s")
        files += [evaluate(folder, parse_point_name(name), curve) for name in state["next"]]
    return state, files


def test_point_names_round_trip_and_bad_names_are_refused():
    for p in (Point(2.1, 5000, 1), Point(2.0, 50000, 3, sigma_hi=1.61, sigma_lo=0.19), Point(1.0, 16, 1, sigma_hi=2.9)):
        assert parse_point_name(p.name) == p
    assert Point(2.1, 5000, 1, sigma_hi=2.9, sigma_lo=0.28).name == "w2.100-hi2.900-lo0.280-n5000x1"
    with_mix = Point(2.1, 5000, 1, sigma_hi=2.9, mix=0.25)
    assert with_mix.name == "w2.100-m0.250-hi2.900-n5000x1" and parse_point_name(with_mix.name) == with_mix
    with pytest.raises(ConfigError, match="'w2.1-n5' is not a search point name"):
        parse_point_name("w2.1-n5")


def test_grids_expand_like_the_ema_grid():
    assert parse_grid("1.0,1.5,...,3.0", "weight") == [1.0, 1.5, 2.0, 2.5, 3.0]
    assert parse_grid([3, 1.25], "weight") == [1.25, 3.0]
    with pytest.raises(ConfigError, match="weight: "):
        parse_grid("1.0,1.5,...,2.2", "weight")


def test_bisection_brackets_the_optimum_and_confirms_it(tmp_path):
    """Grid spacing 0.5, two bisection rounds: the best screened weight lies within 0.125 of the
    parabola's minimum, and the confirmation at the full count is at that weight."""
    plan = SearchPlan((("weight", (1.0, 1.5, 2.0, 2.5, 3.0)),), 2, 500, 1, 5000, 3)
    state, files = run_search(tmp_path, plan)
    screened = [e for e in state["evaluated"] if e["num"] == 500]
    assert len(screened) == 5 + 2 + 2 and len(files) == 5 + 2 + 2 + 1
    best = min(screened, key=lambda e: e["value"])
    assert abs(best["weight"] - 2.3) <= 0.125 and best["weight"] == pytest.approx(2.25)
    result = state["result"]
    assert result["weight"] == best["weight"] and (result["num"], result["ranges"]) == (5000, 3)
    assert result["value"] == pytest.approx(weight_curve(2.25)) and result["screened_value"] == result["value"]
    assert (result["ema_std"], result["guide_std"], result["guide_kimg"]) == (0.07, 0.125, 134217)


def test_an_extended_grid_reuses_every_evaluation(tmp_path):
    """Extending the grid keeps the names of the points already evaluated: the new search needs
    only the new grid points and the rounds they change."""
    small = SearchPlan((("weight", (1.0, 2.0, 3.0)),), 1, 500, 1, 5000, 3)
    _, files = run_search(tmp_path, small)
    before = {f.name for f in files}
    extended = SearchPlan((("weight", (1.0, 2.0, 3.0, 4.0)),), 1, 500, 1, 5000, 3)
    first = {p.name + ".json" for p in extended.points(0, {})}
    assert first - before == {"w4.000-n500x1.json"}


def test_interval_axes_follow_the_papers_recipe(tmp_path):
    """The weight first, then sigma_hi with sigma_lo at 0, then sigma_lo at the best sigma_hi."""
    plan = SearchPlan(
        (("weight", (1.5, 2.0, 2.5, 3.0)), ("sigma_hi", (1.0, 2.0, 3.0, 5.0)), ("sigma_lo", (0.0, 0.2, 0.4, 0.8))),
        1, 500, 1, 5000, 3,
    )  # fmt: skip
    state, _ = run_search(tmp_path, plan, interval_curve)
    hi_round = [e for e in state["evaluated"] if e["sigma_hi"] is not None and e["sigma_lo"] == 0.0]
    assert {e["weight"] for e in hi_round} == {2.25} and {1.0, 2.0, 3.0, 5.0} <= {e["sigma_hi"] for e in hi_round}
    result = state["result"]
    assert (result["weight"], result["sigma_hi"]) == (2.25, 3.0) and abs(result["sigma_lo"] - 0.28) <= 0.1


def mix_curve(p: Point):
    """Minimum at w=2.3 and the mix alpha 0.9 (near pure autoguidance); no mix = the setting's 0.5."""
    return weight_curve(p.weight) + 0.6 * ((0.5 if p.mix is None else p.mix) - 0.9) ** 2


def test_the_mix_axis_is_searched_after_the_weight_and_stays_in_0_1(tmp_path):
    """Two guides (arXiv 2406.02507 App. B.2): the weight at the setting's own mix first, then
    alpha at the best weight; bisection beyond the grid's end never leaves [0, 1]."""
    plan = SearchPlan((("weight", (1.5, 2.0, 2.5, 3.0)), ("mix", (0.0, 0.5, 1.0))), 2, 500, 1, 5000, 3)
    state, _ = run_search(tmp_path, plan, mix_curve)
    weight_round = [e for e in state["evaluated"] if e["mix"] is None]
    mix_round = [e for e in state["evaluated"] if e["mix"] is not None and e["num"] == 500]
    assert len(weight_round) == 4 + 2 + 2 and {e["weight"] for e in mix_round} == {2.25}
    assert {0.0, 0.5, 1.0, 0.75} <= {e["mix"] for e in mix_round} and max(e["mix"] for e in mix_round) <= 1.0
    result = state["result"]
    assert result["weight"] == 2.25 and abs(result["mix"] - 0.9) <= 0.125
    with pytest.raises(ConfigError, match="search axis mix: .* must hold values <= 1"):
        SearchPlan((("weight", (2.0,)), ("mix", (0.5, 1.5))), 1, 500, 1, 5000, 3)


def test_table_and_plot_of_a_search(tmp_path):
    plan = SearchPlan((("weight", (1.0, 2.0, 3.0)),), 1, 500, 1, 5000, 3)
    state, _ = run_search(tmp_path / "evals", plan)
    paths = write_search([state], "autog-w", {"s": 1.34}, tmp_path / "tables" / "search", tmp_path / "plots" / "search")
    with open(paths[0], newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert (row["run"], row["metric"], float(row["weight"]), float(row["reported"])) == ("s", "fid", 2.5, 1.34)
    assert "| s | fid | 2.5 |" in paths[1].read_text()
    assert paths[2].read_bytes()[:4] == b"\x89PNG" and paths[3].read_text().lstrip().startswith("<?xml")


def test_heat_map_of_a_two_dimensional_ema_sweep(tmp_path):
    """Main x guide EMA lengths from the guide file names; a cell per score, the optimum named."""
    scores = []
    for std in (0.05, 0.07, 0.09):
        for gstd in (0.1, 0.125):
            value = 1.3 + 50 * (std - 0.07) ** 2 + 30 * (gstd - 0.125) ** 2
            path = write_score(tmp_path / "scores", "s", "autog", std, {"fid": [value]}, weight=2.1,
                               gnet=f"runs/xs/phema/phema-0134217-{gstd:.3f}.safetensors")  # fmt: skip
            scores.append(path.rename(path.with_name(f"ema-{std:.3f}-guide-{gstd:.3f}.json")))
    rows = aggregate(scores)
    assert {(r["ema_std"], r["guide_std"], r["guide_kimg"]) for r in rows} >= {(0.07, 0.125, 134217)}
    paths = plot_ema_heatmap(rows, "autog", "fid", tmp_path / "heat")
    svg = paths[1].read_text()
    assert "best 1.3 at (0.070, 0.125)" in svg and "134217 kimg" in svg


def test_no_empty_interval_is_planned():
    """sigma_hi above sigma_lo = 0 only; sigma_lo below the best sigma_hi only (the sampler
    refuses an empty interval (lo, hi])."""
    plan = SearchPlan((("weight", (2.0,)), ("sigma_hi", (0.0, 1.0, 3.0)), ("sigma_lo", (0.5, 1.0, 2.0))), 0, 8, 1, 8, 1)
    weight_round = {Point(2.0, 8, 1): 1.0}
    assert [p.sigma_hi for p in plan.points(1, weight_round)] == [1.0, 3.0]
    history = {**weight_round, Point(2.0, 8, 1, sigma_hi=1.0, sigma_lo=0.0): 0.5}
    assert [p.sigma_lo for p in plan.points(2, history)] == [0.5]
