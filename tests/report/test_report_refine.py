"""Choosing finer EMA lengths around the coarse optimum (edm2.report.refine)."""

import pytest
from report_helpers import GRID, SIZES, paper_like_results

from edm2.report.refine import fine_stds, refine
from edm2.report.results import aggregate


def test_fine_lengths_lie_on_both_sides_between_the_optimum_and_its_neighbours():
    fine = fine_stds([0.05, 0.10, 0.15, 0.20], 0.10, 4)
    assert fine == [0.06, 0.07, 0.08, 0.09, 0.11, 0.12, 0.13, 0.14]
    assert fine_stds([0.05, 0.10, 0.15, 0.20], 0.15, 1) == [0.125, 0.175]  # the midpoints


def test_fine_lengths_are_new_after_rounding_to_three_decimals():
    assert fine_stds([0.100, 0.101, 0.102], 0.101, 8) == []
    fine = fine_stds([0.10, 0.11], 0.10, 4)
    assert fine == sorted(set(fine)) and len(fine) == 8 and not {0.10, 0.11} & set(fine)


def test_at_the_edge_of_the_grid_the_step_is_mirrored_and_clipped():
    low = fine_stds([0.05, 0.10], 0.05, 1)
    assert low == [0.025, 0.075]  # the left neighbour mirrored to 0.0
    high = fine_stds([0.20, 0.25], 0.25, 3)
    assert all(0.20 < s < 0.289 for s in high)


def test_refine_picks_the_neighbourhood_of_each_optimum(tmp_path):
    scores, infos = paper_like_results(tmp_path)
    result = refine(aggregate(scores, infos), GRID, points=3)
    for run, s in SIZES.items():
        for guidance, opt in (("noguid", s["opt"]), ("guid-fid", s["gopt"])):
            assert result["best"][run][guidance]["ema_std"] == pytest.approx(opt)
            stds = [float(v) for v in result["stds"][run][guidance]]
            assert len(stds) == 6 and all(0 < abs(v - opt) < 0.025 for v in stds)
            assert all(f"{v:.3f}" == text for v, text in zip(stds, result["stds"][run][guidance]))
