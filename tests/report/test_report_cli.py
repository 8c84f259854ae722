"""`edm2 report ...` end to end on synthetic result files."""

import json
import shlex

import pytest
import torch
from click.testing import CliRunner
from report_helpers import GRID, SIZES, paper_like_results, write_score, write_stats

from edm2.cli import main
from edm2.report.results import read_csv


def run(*args):
    result = CliRunner().invoke(main, ["report", *map(str, args)])
    return result


@pytest.fixture
def aggregated(tmp_path):
    scores, infos = paper_like_results(tmp_path / "scores")
    args = ["aggregate", "--out", tmp_path / "scores.csv", "--best", tmp_path / "best.csv"]
    for info in infos:
        args += ["--model-info", info]
    result = run(*args, *scores)
    assert result.exit_code == 0, result.output
    return tmp_path


def test_aggregate_writes_tidy_and_best_tables(aggregated):
    rows = read_csv(aggregated / "scores.csv")
    assert len(rows) == 2 * 2 * len(GRID)
    best = {(r["run"], r["guidance"]): r for r in read_csv(aggregated / "best.csv")}
    assert best[("s", "noguid")]["ema_std"] == SIZES["s"]["opt"] and best[("s", "noguid")]["label"] == "S"


def test_tables_and_plots_commands(aggregated):
    result = run(
        "tables", "--scores", aggregated / "scores.csv", "--metrics", "fid", "--out", aggregated / "t" / "table2"
    )
    assert result.exit_code == 0, result.output
    assert (aggregated / "t" / "table2.tex").is_file() and "| XS | 125 |" in (
        aggregated / "t" / "table2.md"
    ).read_text()
    stats = write_stats(aggregated / "runs" / "xs" / "stats.jsonl", [(1.0, 2.0), (2.0, 1.0)])
    result = run(
        "plots", "--scores", aggregated / "scores.csv", "--metrics", "fid", "--run", f"xs={stats.parent}",
        "--label", "xs=XS model", "--outdir", aggregated / "plots",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in (aggregated / "plots").iterdir())
    assert names == sorted(f"{s}.{e}" for s in ("ema-sweep-fid", "gflops-fid", "training-loss") for e in ("png", "svg"))
    assert "XS model" in (aggregated / "plots" / "training-loss.svg").read_text()


def test_best_prints_generation_options(aggregated):
    result = run(
        "best", "--best", aggregated / "best.csv", "--run", "xs", "--guidance", "guid-fid", "--metric", "fid", "--shell"
    )
    assert result.exit_code == 0, result.output
    args = shlex.split(result.output)
    assert args == [
        "--net", "runs/xs/phema/phema-0000065-0.050.safetensors",
        "--gnet", "runs/xs-uncond/phema/phema-0000065-0.050.safetensors", "--guidance", "1.4",
    ]  # fmt: skip
    result = run(
        "best", "--best", aggregated / "best.csv", "--run", "xs", "--guidance", "noguid", "--metric", "fid", "--shell"
    )
    assert shlex.split(result.output) == ["--net", "runs/xs/phema/phema-0000065-0.125.safetensors"]
    result = run("best", "--best", aggregated / "best.csv", "--run", "xl", "--guidance", "noguid", "--metric", "fid")
    assert result.exit_code != 0 and "no score of run 'xl'" in result.output


def test_best_of_two_guides_prints_each_guide_with_its_weight(tmp_path):
    """A score with two guides (metrics gen --gnet twice): the guides' weights w_i reach best.csv
    and `best --shell` gives one --guidance per --gnet, in order; the last guide (autoguidance's
    in the workflow) gives guide_std and guide_kimg."""
    gnets = ["runs/s-uncond/phema/phema-0000065-0.100.safetensors", "runs/xs/phema/phema-0000032-0.050.safetensors"]
    path = write_score(tmp_path / "scores", "s", "cfg-autog", 0.1, {"fid": [2.0]}, weight=2.2, gnet=gnets)
    data = json.loads(path.read_text())
    data.update(guides=[{"gnet": gnets[0], "guidance": 1.9}, {"gnet": gnets[1], "guidance": 1.3}], guidance_mix=0.25)
    path.write_text(json.dumps(data))
    result = run("aggregate", "--out", tmp_path / "scores.csv", "--best", tmp_path / "best.csv", path)
    assert result.exit_code == 0, result.output
    (row,) = read_csv(tmp_path / "best.csv")
    assert (row["guide_std"], row["guide_kimg"], row["guidance_weight"]) == (0.05, 32, 2.2)
    result = run("best", "--best", tmp_path / "best.csv", "--run", "s", "--guidance", "cfg-autog", "--metric", "fid",
                 "--shell")  # fmt: skip
    assert shlex.split(result.output) == [
        "--net", "runs/s/phema/phema-0000065-0.100.safetensors",
        "--gnet", gnets[0], "--guidance", "1.9", "--gnet", gnets[1], "--guidance", "1.3",
    ]  # fmt: skip


def test_refine_writes_the_fine_grid(aggregated):
    scores = sorted((aggregated / "scores").rglob("ema-*.json"))
    out = aggregated / "refine" / "grid.json"
    result = run("refine", "--grid", ",".join(f"{s:.3f}" for s in GRID), "--points", "2", "--out", out, *scores)
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert set(data["stds"]) == {"xs", "s"} and set(data["stds"]["xs"]) == {"noguid", "guid-fid"}


def test_model_info_counts_a_real_snapshot(tmp_path):
    from edm2.io.snapshot import save_snapshot
    from edm2.nn import Precond

    torch.manual_seed(0)
    net = Precond(16, 3, 10, use_fp16=False, model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[8])
    path = tmp_path / "phema-0000016-0.100.safetensors"
    save_snapshot(path, net.state_dict(), net.init_kwargs, {"class": "StandardRGBEncoder"}, 16384, 0.1)
    result = run("model-info", "--net", path, "--run", "mc16", "--label", "XS (16 ch)", "--out", tmp_path / "info.json")
    assert result.exit_code == 0, result.output
    info = json.loads((tmp_path / "info.json").read_text())
    assert info["run"] == "mc16" and info["label"] == "XS (16 ch)" and info["kimg"] == 16
    assert info["total_params"] == sum(p.numel() for p in net.parameters())
    assert 0 < info["gflops"] < 1


def test_bad_pairs_are_refused_with_the_option_named(aggregated):
    result = run(
        "plots", "--scores", aggregated / "scores.csv", "--metrics", "fid", "--run", "xs", "--outdir", aggregated / "p"
    )
    assert result.exit_code != 0 and "--run" in result.output and "NAME=DIR" in result.output
