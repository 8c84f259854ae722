"""The paper's Table 2 layout as CSV, Markdown and LaTeX (edm2.report.tables)."""

import csv

from report_helpers import SIZES, paper_like_results

from edm2.report.results import aggregate
from edm2.report.tables import table2_rows, tex_escape, to_latex, to_markdown, write_table2


def test_one_row_per_size_with_unguided_and_guided_optimum(tmp_path):
    scores, infos = paper_like_results(tmp_path)
    table = table2_rows(aggregate(scores, infos), ["fid"])
    assert [row["model"] for row in table] == ["XS", "S"]
    for row, s in zip(table, SIZES.values()):
        assert (row["mparams"], row["gflops"], row["nfe"]) == (s["mparams"], s["gflops"], 63)
        assert (row["fid"], row["fid_ema_std"]) == (s["floor"], s["opt"])
        assert (row["fid_guided"], row["fid_guided_ema_std"], row["fid_guidance"]) == (s["gfloor"], s["gopt"], 1.4)
        assert row["fid_guidance_setting"] == "guid-fid"


def test_markdown_and_latex_show_the_numbers_in_paper_format(tmp_path):
    scores, infos = paper_like_results(tmp_path)
    table = table2_rows(aggregate(scores, infos), ["fid"])
    md = to_markdown(table, ["fid"])
    assert md.splitlines()[0] == "| Model | Mparams | Gflops | NFE | FID | EMA | FID (guided) | EMA | w |"
    assert "| XS | 125 | 45.6 | 63 | 3.50 | 0.125 | 2.90 | 0.050 | 1.40 |" in md
    assert "| S | 280 | 102 | 63 | 2.50 | 0.100 | 2.20 | 0.075 | 1.40 |" in md
    tex = to_latex(table, ["fid"])
    assert "\\begin{tabular}{lrrrrrrrr}" in tex
    assert "XS & 125 & 45.6 & 63 & 3.50 & 0.125 & 2.90 & 0.050 & 1.40 \\\\" in tex
    assert "\\multicolumn{3}{c}{FID, guided}" in tex and tex.rstrip().endswith("\\end{tabular}")


def test_without_guided_scores_the_guided_columns_are_left_out_but_kept_in_csv(tmp_path):
    scores, infos = paper_like_results(tmp_path, guided=False)
    paths = write_table2(aggregate(scores, infos), ["fid"], tmp_path / "tables" / "table2")
    assert [p.name for p in paths] == ["table2.csv", "table2.md", "table2.tex"]
    md = paths[1].read_text()
    assert "guided" not in md.splitlines()[0] and "No guided scores" in md
    with open(paths[0], newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["fid_guided"] == "" and float(rows[0]["fid"]) == SIZES["xs"]["floor"]


def test_metrics_not_scored_are_dashes(tmp_path):
    scores, infos = paper_like_results(tmp_path, guided=False)
    md = to_markdown(table2_rows(aggregate(scores, infos), ["fid", "fd_dinov2"]), ["fid", "fd_dinov2"])
    assert "| XS | 125 | 45.6 | 63 | 3.50 | 0.125 | – | – |" in md


def test_latex_escapes_labels():
    assert tex_escape("XS_2 & 50%") == "XS\\_2 \\& 50\\%"
