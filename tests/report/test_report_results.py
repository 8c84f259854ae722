"""Score JSONs -> tidy rows and the best EMA length (edm2.report.results)."""

import json

import pytest
from report_helpers import SIZES, paper_like_results, write_score

from edm2.errors import FormatError
from edm2.report.results import (
    BEST_COLUMNS,
    SCORE_COLUMNS,
    aggregate,
    best_rows,
    read_csv,
    read_score,
    summarize,
    write_csv,
)


def test_run_and_guidance_come_from_the_workflow_path(tmp_path):
    path = write_score(tmp_path, "xs", "guid-fid", 0.05, {"fid": [3.0, 2.5, 2.75]}, weight=1.4, gnet="g.safetensors")
    (row,) = read_score(path)
    assert (row["run"], row["guidance"], row["metric"], row["ema_std"]) == ("xs", "guid-fid", "fid", 0.05)
    assert row["guidance_weight"] == 1.4 and row["gnet"] == "g.safetensors"
    assert row["num_ranges"] == 3 and row["values"] == "3.0;2.5;2.75"
    assert row["source"] == str(path)


def test_reported_value_is_the_minimum_over_seed_ranges_or_the_mean(tmp_path):
    path = write_score(tmp_path, "xs", "noguid", 0.1, {"fid": [3.0, 2.0, 4.0], "fd_dinov2": [90.0, 110.0]})
    rows = {r["metric"]: r for r in read_score(path, "min")}
    assert rows["fid"]["value"] == 2.0 and rows["fd_dinov2"]["value"] == 90.0
    rows = {r["metric"]: r for r in read_score(path, "mean")}
    assert rows["fid"]["value"] == pytest.approx(3.0) and rows["fd_dinov2"]["value"] == pytest.approx(100.0)
    with pytest.raises(ValueError):
        summarize([1.0], "median")


def test_names_in_the_json_win_over_the_path(tmp_path):
    path = write_score(tmp_path, "folder-run", "folder-g", 0.1, {"fid": [1.0]})
    data = json.loads(path.read_text())
    data.update(run="xs", guidance_name="cfg")
    path.write_text(json.dumps(data))
    (row,) = read_score(path)
    assert (row["run"], row["guidance"]) == ("xs", "cfg")


def test_model_info_fills_label_params_and_gflops(tmp_path):
    scores, infos = paper_like_results(tmp_path, guided=False)
    rows = aggregate(scores, infos)
    assert len(rows) == len(scores)
    xs = [r for r in rows if r["run"] == "xs"]
    assert {r["label"] for r in xs} == {"XS"}
    assert {(r["mparams"], r["gflops"]) for r in xs} == {(124.71, 45.6)}


def test_best_is_the_lowest_value_per_run_guidance_and_metric(tmp_path):
    scores, infos = paper_like_results(tmp_path)
    best = best_rows(aggregate(scores, infos))
    found = {(r["run"], r["guidance"]): (r["ema_std"], r["value"]) for r in best}
    for run, s in SIZES.items():
        assert found[(run, "noguid")] == pytest.approx((s["opt"], s["floor"]))
        assert found[(run, "guid-fid")] == pytest.approx((s["gopt"], s["gfloor"]))
    assert list(best[0]) == BEST_COLUMNS


def test_ties_go_to_the_shorter_ema(tmp_path):
    paths = [write_score(tmp_path, "xs", "noguid", std, {"fid": [2.0]}) for std in (0.15, 0.05, 0.10)]
    (best,) = best_rows(aggregate(paths))
    assert best["ema_std"] == 0.05


def test_csv_round_trip_keeps_numbers(tmp_path):
    scores, infos = paper_like_results(tmp_path, guided=True)
    rows = aggregate(scores, infos)
    write_csv(tmp_path / "t" / "scores.csv", rows, SCORE_COLUMNS)
    back = read_csv(tmp_path / "t" / "scores.csv")
    assert len(back) == len(rows)
    for a, b in zip(rows, back):
        assert b["value"] == a["value"] and b["ema_std"] == a["ema_std"] and b["nfe"] == a["nfe"]
        assert b["gnet"] == a["gnet"]  # None stays None


@pytest.mark.parametrize(
    "content, message",
    [("{not json", "not a JSON file"), ("[1, 2]", "expected a JSON object"), ('{"ema_std": 0.1}', "no 'metrics'")],
)
def test_bad_score_files_name_the_file(tmp_path, content, message):
    path = tmp_path / "xs" / "noguid" / "ema-0.100.json"
    path.parent.mkdir(parents=True)
    path.write_text(content)
    with pytest.raises(FormatError, match=message) as info:
        read_score(path)
    assert str(path) in str(info.value)
