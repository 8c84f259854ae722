"""Table 1 and Fig. 5a of the ablation ladder (edm2.report.ablation, `edm2 report ablation`)."""

import csv

from click.testing import CliRunner

from edm2.cli import main
from edm2.report.ablation import REPORTED, plot_fig5a, table1_rows, write_table1
from edm2.report.results import SCORE_COLUMNS, write_csv


def score(run, std, value, guidance_weight=1.0, metric="fid"):
    return dict(run=run, label=run, guidance="noguid", guidance_weight=guidance_weight, metric=metric, ema_std=std,
                value=value, values=f"{value};{value + 1}", mparams=1.5, gflops=0.25)  # fmt: skip


ROWS = [
    score("a", 0.072, 9.0),  # config A: one traditional EMA
    score("b", 0.05, 8.0),
    score("b", 0.10, 7.0),
    score("b", 0.15, 7.5),
    score("b", 0.10, 1.0, guidance_weight=2.0),  # guided: not in Table 1
    score("b", 0.10, 0.5, metric="fd_dinov2"),  # another metric
]


def test_table_1_holds_the_best_unguided_value_next_to_the_paper():
    a, b = table1_rows(ROWS, {"a": "A", "b": "B"}, "fid")
    assert (a["config"], a["value"], a["ema_std"], a["num_ema"]) == ("A", 9.0, 0.072, 1)
    assert (b["value"], b["ema_std"], b["num_ema"]) == (7.0, 0.10, 3)
    assert (b["paper_fid"], b["paper_mparams"], b["paper_gflops"]) == (7.24, 291.8, 100.4)
    assert REPORTED["G"][1:4] == (2.56, 280.2, 102.2)


def test_table_1_and_fig_5a_files(tmp_path):
    paths = write_table1(ROWS, {"a": "A", "b": "B", "g": "G"}, "fid", tmp_path / "table1")
    assert [p.name for p in paths] == ["table1.csv", "table1.md", "table1.tex"]
    with open(paths[0], newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["config"] for r in rows] == ["A", "B", "G"] and rows[2]["value"] == ""
    assert "| A | EDM baseline | 9.00 |" in paths[1].read_text()
    assert "\\begin{tabular}" in paths[2].read_text()
    plots = plot_fig5a(ROWS, {"a": "A", "b": "B"}, "fid", tmp_path / "fig5a")
    assert all(p.stat().st_size > 0 for p in plots)


def test_report_ablation_command_names_a_bad_config(tmp_path):
    scores = tmp_path / "scores.csv"
    write_csv(scores, ROWS, SCORE_COLUMNS)
    args = ["report", "ablation", "--scores", str(scores), "--metric", "fid", "--table", str(tmp_path / "t1")]
    ok = CliRunner().invoke(main, [*args, "--plot", str(tmp_path / "p"), "--config", "a=A", "--config", "b=B"])
    assert ok.exit_code == 0, ok.output
    assert (tmp_path / "t1.md").is_file() and (tmp_path / "p.png").is_file()
    bad = CliRunner().invoke(main, [*args, "--plot", str(tmp_path / "p"), "--config", "a=H"])
    assert bad.exit_code != 0 and "a=H: the config must be one of A, B, C, D, E, F, G" in bad.output
