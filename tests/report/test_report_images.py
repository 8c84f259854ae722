"""Sample grids (edm2.report.images) and the summary page (edm2.report.summary)."""

import numpy as np
import pytest
from PIL import Image
from report_helpers import paper_like_results

from edm2.errors import DataError
from edm2.report.images import make_grid, save_grid
from edm2.report.plots import plot_ema_sweep
from edm2.report.results import BEST_COLUMNS, aggregate, best_rows, write_csv
from edm2.report.summary import write_summary
from edm2.report.tables import write_table2


def test_grid_places_each_image_upscaled_in_row_major_order():
    images = [np.full((16, 16, 3), 10 * i, dtype=np.uint8) for i in range(5)]
    grid = make_grid(images, min_size=64, pad=2)
    assert grid.shape == (2 * 64 + 3 * 2, 3 * 64 + 4 * 2, 3)  # 3 columns, 2 rows, 4x upscale
    for i in range(5):
        r, c = divmod(i, 3)
        y, x = 2 + r * 66, 2 + c * 66
        assert (grid[y : y + 64, x : x + 64] == 10 * i).all()
    assert (grid[2 + 66 : 2 + 66 + 64, 2 + 2 * 66 : 2 + 2 * 66 + 64] == 255).all()  # the empty 6th cell


def test_grid_refuses_mixed_sizes():
    with pytest.raises(DataError, match="different sizes"):
        make_grid([np.zeros((8, 8, 3), np.uint8), np.zeros((16, 16, 3), np.uint8)])


def test_save_grid_reads_a_folder_of_generated_pngs(tmp_path):
    folder = tmp_path / "out" / "000000"
    folder.mkdir(parents=True)
    for seed in range(4):
        Image.fromarray(np.full((8, 8, 3), seed * 60, np.uint8)).save(folder / f"{seed:06d}.png")
    out = save_grid(tmp_path / "out", tmp_path / "grid.png", min_size=8)
    with Image.open(out) as im:
        grid = np.asarray(im)
    assert grid.shape == (2 * 8 + 3 * 2, 2 * 8 + 3 * 2, 3)
    assert grid[2, 2 + 8 + 2, 0] == 60  # seed 1 is second in the first row
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no PNG"):
        save_grid(tmp_path / "empty", tmp_path / "g.png")


def test_summary_links_and_embeds_everything(tmp_path):
    scores, infos = paper_like_results(tmp_path)
    rows = aggregate(scores, infos)
    write_csv(tmp_path / "best.csv", best_rows(rows), BEST_COLUMNS)
    table_md = write_table2(rows, ["fid"], tmp_path / "tables" / "table2")[1]
    plots = plot_ema_sweep(rows, "fid", tmp_path / "plots" / "ema-sweep-fid")
    sample = tmp_path / "plots" / "samples" / "xs" / "guid-fid.png"  # the workflow's layout
    sample.parent.mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(sample)
    write_summary(tmp_path / "best.csv", table_md, plots, [sample], tmp_path / "summary.md", tmp_path / "summary.html")
    md = (tmp_path / "summary.md").read_text()
    assert "![ema-sweep-fid](plots/ema-sweep-fid.png) ([SVG](plots/ema-sweep-fid.svg))" in md
    assert "![guid-fid](plots/samples/xs/guid-fid.png)" in md
    assert "**XS, guidance guid-fid (w=1.4), EMA length 0.050 (best fid)**" in md  # the grid's heading
    assert "| XS | guid-fid | 1.40 | fid | 0.050 | 2.900 | 63 |" in md
    html = (tmp_path / "summary.html").read_text()
    assert html.count("data:image/png;base64,") == 2 and "<table>" in html and "<td>XS</td>" in html
