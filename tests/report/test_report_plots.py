"""The paper's plots as PNG and SVG (edm2.report.plots)."""

import re

from PIL import Image
from report_helpers import SIZES, paper_like_results, write_stats

from edm2.report.plots import loss_curve, plot_ema_sweep, plot_gflops, plot_training_loss
from edm2.report.results import aggregate, best_rows


def _svg_texts(path):
    return re.findall(r">([^<>]+)</text>", path.read_text())


def test_ema_sweep_writes_png_and_svg_with_each_optimum_marked(tmp_path):
    scores, infos = paper_like_results(tmp_path)
    paths = plot_ema_sweep(aggregate(scores, infos), "fid", tmp_path / "plots" / "ema-sweep-fid")
    assert [p.name for p in paths] == ["ema-sweep-fid.png", "ema-sweep-fid.svg"]
    with Image.open(paths[0]) as im:
        assert im.format == "PNG" and im.width > 300
    texts = " ".join(_svg_texts(paths[1]))
    for s in SIZES.values():  # each optimum in its curve's legend entry (labels cannot overlap)
        assert f"best {s['floor']:.3g} at {s['opt']:.3f}" in texts
        assert f"best {s['gfloor']:.3g} at {s['gopt']:.3f}" in texts
    assert "XS, noguid" in texts and "S, guid-fid" in texts
    assert "min-max over seed ranges" in texts  # the shaded band has a legend entry


def test_an_optimum_at_the_edge_of_the_grid_is_flagged(tmp_path):
    from edm2.report.plots import edge_optima

    scores, infos = paper_like_results(tmp_path)
    rows = [r for r in aggregate(scores, infos) if r["metric"] == "fid"]
    inside = edge_optima(rows, "fid")
    cut = [
        r for r in rows if not (r["run"] == "xs" and r["guidance"] == "noguid" and r["ema_std"] > SIZES["xs"]["opt"])
    ]
    edges = edge_optima(cut, "fid")  # the grid of XS without guidance now ends at its optimum
    assert {(e["run"], e["guidance"], e["side"]) for e in edges} - {
        (e["run"], e["guidance"], e["side"]) for e in inside
    } == {("xs", "noguid", "longest")}
    texts = " ".join(_svg_texts(plot_ema_sweep(cut, "fid", tmp_path / "edge")[1]))
    assert "(grid edge)" in texts and "Optimum at the edge of the EMA grid" in texts and "phema.refine" in texts


def test_gflops_plot_labels_every_size_with_its_best_ema(tmp_path):
    scores, infos = paper_like_results(tmp_path)
    paths = plot_gflops(best_rows(aggregate(scores, infos)), "fid", tmp_path / "gflops-fid")
    texts = " ".join(_svg_texts(paths[1]))
    assert f"XS ({SIZES['xs']['opt']:.3f})" in texts and f"S ({SIZES['s']['gopt']:.3f})" in texts
    assert "Gflops" in texts


def test_same_data_gives_identical_svg(tmp_path):
    scores, infos = paper_like_results(tmp_path)
    rows = aggregate(scores, infos)
    a = plot_ema_sweep(rows, "fid", tmp_path / "a")[1].read_text()
    b = plot_ema_sweep(rows, "fid", tmp_path / "b")[1].read_text()
    assert a == b


def test_training_loss_reads_stats_jsonl(tmp_path):
    stats = write_stats(
        tmp_path / "run" / "stats.jsonl", [(1.024, 2.0), (2.048, 1.5), (3.072, float("nan")), (4.096, 1.2)]
    )
    xs, ys = loss_curve(stats)
    assert xs == [1.024, 2.048, 4.096] and ys == [2.0, 1.5, 1.2]  # the status line without a loss and NaN are skipped
    paths = plot_training_loss({"xs": stats}, tmp_path / "training-loss", {"xs": "XS"})
    assert "XS" in _svg_texts(paths[1])


def test_a_metric_without_scores_still_gives_a_figure(tmp_path):
    scores, infos = paper_like_results(tmp_path, guided=False)
    paths = plot_ema_sweep(aggregate(scores, infos), "fd_dinov2", tmp_path / "empty")
    assert "no scores for fd_dinov2" in " ".join(_svg_texts(paths[1]))
