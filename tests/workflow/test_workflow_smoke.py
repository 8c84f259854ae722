"""The smoke configuration end to end (every rule runs, guidance included), then what a re-run
would do after editing the configuration: nothing when it is unchanged, only the dependent jobs
when the EMA grid or a sampler setting changes, one stage with --forcerun."""

import csv
import json
import shutil

import pytest
from PIL import Image
from workflow_helpers import dry_run, load_config, snakemake, write_config

pytestmark = pytest.mark.slow

STDS = ["0.050", "0.100", "0.150"]
SETTINGS = ["noguid", "guided"]
# The autoguided setting: tiny guided by itself at 1Ki of its 2Ki images, 2 x 2 EMA lengths.
AUTOG = [(std, gstd) for std in ("0.100", "0.150") for gstd in ("0.050", "0.150")]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("smoke")
    config = load_config("smoke.yaml")
    config["results"] = "results"
    configfile = write_config(workdir / "smoke.yaml", config)
    snakemake(workdir, "--cores", "2", "--configfile", configfile)
    return workdir, config


def edited(workdir, config, name, edit):
    config = json.loads(json.dumps(config))
    edit(config)
    return write_config(workdir / name, config)


def test_every_output_is_written(smoke):
    workdir, _ = smoke
    results = workdir / "results"
    for setting in SETTINGS:
        for std in STDS:
            score = json.loads((results / "scores" / "tiny" / setting / f"ema-{std}.json").read_text())
            assert score["ema_std"] == float(std) and len(score["metrics"]["fd_cnn"]["values"]) == 2
            assert (score["gnet"] is not None) == (setting == "guided")
            if setting == "guided":
                assert score["guidance"] == 1.5 and "/runs/tiny-uncond/phema/" in score["gnet"]
    for std, gstd in AUTOG:
        score = json.loads((results / "scores" / "tiny" / "autog" / f"ema-{std}-guide-{gstd}.json").read_text())
        assert score["guidance"] == 2.0 and score["gnet"].endswith(f"/runs/tiny/phema/phema-0000001-{gstd}.safetensors")
    with open(results / "tables" / "scores.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(SETTINGS) * len(STDS) + len(AUTOG)
    assert {(r["ema_std"], r["guide_std"], r["guide_kimg"]) for r in rows if r["guidance"] == "autog"} == {
        (str(float(std)), str(float(gstd)), "1") for std, gstd in AUTOG
    }
    assert {r["label"] for r in rows} == {"tiny (8 ch)"} and all(float(r["gflops"]) > 0 for r in rows)
    with open(results / "tables" / "table2.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert row["model"] == "tiny (8 ch)" and row["fd_cnn_ema_std"] in {"0.05", "0.1", "0.15"}
    assert row["fd_cnn_guidance"] == "1.5"
    assert "| tiny (8 ch) |" in (results / "tables" / "table2.md").read_text()
    for stem in ("ema-sweep-fd_cnn", "gflops-fd_cnn", "training-loss", "ema-heatmap-autog-fd_cnn", "search-autog-w"):
        with Image.open(results / "plots" / f"{stem}.png") as im:
            assert im.format == "PNG"
        assert (results / "plots" / f"{stem}.svg").read_text().lstrip().startswith("<?xml")
    for setting in SETTINGS + ["autog"]:
        with Image.open(results / "plots" / "samples" / "tiny" / f"{setting}.png") as im:
            assert im.size == (4 * 64 + 5 * 2, 4 * 64 + 5 * 2)  # 16 seeds of 16x16, upscaled 4x
    assert "data:image/png;base64," in (results / "summary.html").read_text()
    rules = ("digits", "convert", "train", "phema", "score", "aggregate", "plots", "tables", "samples", "report")
    for rule in (*rules, "magnitudes", "magnitude_plot", "toy"):
        assert any((results / "logs" / rule).rglob("*.log")), rule
        assert any((results / "benchmarks" / rule).rglob("*.tsv")), rule
    # The toy example's job: its figure, and one measure per panel (edm2 toy --json).
    with Image.open(results / "plots" / "toy.png") as im:
        assert im.format == "PNG"
    measures = json.loads((results / "tables" / "toy.json").read_text())["measures"]
    assert set(measures) == {"truth", "none", "cfg", "auto"}
    assert all(0 <= m["on_branches"] <= 1 for m in measures.values())


def test_the_search_screens_bisects_and_confirms(smoke):
    """Weights 1, 2, 3 on 16 images, one bisection round around the best (two midpoints, or one
    and half a spacing beyond the grid's end), the best screened weight confirmed on 2 x 32."""
    workdir, _ = smoke
    results = workdir / "results"
    state = json.loads((results / "search" / "autog-w" / "tiny" / "fd_cnn" / "result.json").read_text())
    screened = {e["weight"]: e["value"] for e in state["evaluated"] if e["num"] == 16}
    assert {1.0, 2.0, 3.0} <= set(screened) and len(screened) == 5
    best = min(screened, key=screened.get)
    result = state["result"]
    assert (result["weight"], result["num"], result["ranges"]) == (best, 32, 2)
    assert (result["ema_std"], result["guide_std"], result["guide_kimg"]) == (
        (0.1, 0.05, 1) if best != 1.0 else (0.1, None, None)
    )
    confirmed = json.loads(
        (
            results / "search" / "evals" / "tiny" / "autog" / "ema-0.100-guide-0.050" / f"{result['name']}.json"
        ).read_text()
    )
    assert min(confirmed["metrics"]["fd_cnn"]["values"]) == result["value"]
    with open(results / "tables" / "search-autog-w.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert float(row["weight"]) == best and float(row["value"]) == result["value"] and row["evaluations"] == "6"


def test_an_extended_search_grid_evaluates_only_the_new_point(smoke):
    workdir, config = smoke
    configfile = edited(workdir, config, "search.yaml", lambda c: c["search"][0].update(weight="1.0,2.0,3.0,4.0"))
    counts = dry_run(workdir, "--configfile", configfile)
    # The new weight, then the rounds re-planned (round 1 after the checkpoint), the result, the table.
    assert counts.get("search_eval") == 1 and counts.get("search_round", 0) >= 1
    assert not {"train", "phema", "score", "score_sweep", "aggregate"} & set(counts)


def test_magnitudes_and_tensorboard_of_every_run(smoke):
    """Per snapshot a magnitudes JSON (EDM2 Figs. 3/15) and per run its plot; the training's
    TensorBoard events read back with the tensorboard package's reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    workdir, _ = smoke
    results = workdir / "results"
    for run in ("tiny", "tiny-uncond"):
        records = [json.loads(p.read_text()) for p in sorted((results / "runs" / run / "magnitudes").glob("*.json"))]
        assert [(r["kimg"], r["ema_std"], r["inputs"]["num"]) for r in records] == [(k, 0.1, 32) for k in (0, 1, 2)]
        assert all(
            set(r["activations"]) == set(r["weights"]) == {"Enc-16x16", "Dec-16x16", "Enc-8x8", "Dec-8x8"}
            for r in records
        )
        with Image.open(results / "plots" / "magnitudes" / f"{run}.png") as im:
            assert im.format == "PNG"
        (run_dir,) = (results / "runs" / run).glob("train-*")
        events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0})
        events.Reload()
        assert [e.step for e in events.Scalars("Loss/loss")] == [1024, 2048]
        assert [e.step for e in events.Images("Samples/ema")] == [0, 1024, 2048]


def test_unchanged_config_has_nothing_to_do(smoke):
    workdir, config = smoke
    assert dry_run(workdir, "--configfile", workdir / "smoke.yaml") == {}


def test_a_new_ema_length_scores_only_that_length(smoke):
    workdir, config = smoke
    configfile = edited(workdir, config, "grid.yaml", lambda c: c["phema"].update(grid="0.050,0.100,0.150,0.200"))
    counts = dry_run(workdir, "--configfile", configfile)
    # phema reconstructs the grid again (one pass); the three scored lengths are not re-scored.
    # The autoguided setting scores fixed lengths (`stds`): nothing new for it but its heat map,
    # and its guide's reconstruction at 1Ki is not re-run (no score needs the new length there).
    assert counts == {
        "phema": 2,
        "score": len(SETTINGS),
        "result_set": 1,
        "aggregate": 1,
        "plots": 1,
        "tables": 1,
        "heatmap": 1,
        "samples": len(SETTINGS) + 1,
        "report": 1,
        "all": 1,
    }


def test_a_sampler_change_rescores_without_retraining(smoke):
    workdir, config = smoke
    configfile = edited(workdir, config, "steps.yaml", lambda c: c["score"].update(steps=5))
    counts = dry_run(workdir, "--configfile", configfile)
    assert counts["score"] == len(SETTINGS) * len(STDS)
    assert not {"train", "phema", "digits", "convert", "ref_stats", "train_detector", "model_info"} & set(counts)


def test_a_guidance_weight_change_rescores_that_setting_only(smoke):
    workdir, config = smoke
    configfile = edited(workdir, config, "weight.yaml", lambda c: c["guidance"][1].update(weight=2.0))
    counts = dry_run(workdir, "--configfile", configfile)
    assert counts["score"] == len(STDS) and "train" not in counts and "phema" not in counts


def test_forcerun_reruns_one_stage(smoke):
    workdir, _ = smoke
    counts = dry_run(workdir, "--configfile", workdir / "smoke.yaml", "--forcerun", "phema")
    assert counts.get("phema") == 3  # tiny, tiny-uncond, and tiny at 1Ki as the autoguidance guide
    assert not {"train", "score", "score_sweep", "search_eval", "convert"} & set(counts)


def test_removing_an_ema_length_is_consistent_after_one_run(smoke, tmp_path):
    """One run after removing 0.150 (on a copy of the finished run) leaves no aggregate naming it
    (phema re-runs in that run, which used to hide the aggregates from Snakemake's checks)."""
    workdir, config = smoke
    copy = tmp_path / "copy"
    shutil.copytree(workdir, copy, symlinks=True)  # results and .snakemake metadata, mtimes kept

    def fewer(c):
        c["phema"].update(grid="0.050,0.100")
        c["guidance"][2].update(stds=[0.100], guide_std=[0.050])  # the lengths it scores stay on the grid

    configfile = edited(copy, config, "fewer.yaml", fewer)
    counts = dry_run(copy, "--configfile", configfile)
    assert "score" not in counts and counts.get("aggregate") == 1 and counts.get("phema") == 3
    snakemake(copy, "--cores", "2", "--configfile", configfile)
    results = copy / "results"
    with open(results / "tables" / "scores.csv", newline="") as f:
        assert {r["ema_std"] for r in csv.DictReader(f)} == {"0.05", "0.1"}
    with open(results / "tables" / "best.csv", newline="") as f:
        assert {r["ema_std"] for r in csv.DictReader(f)} <= {"0.05", "0.1"}
    assert dry_run(copy, "--configfile", configfile) == {}


def test_snakemake_report_collects_plots_and_tables(smoke):
    workdir, _ = smoke
    snakemake(workdir, "--configfile", workdir / "smoke.yaml", "--report", workdir / "report.html")
    html = (workdir / "report.html").read_text(errors="replace")
    assert len(html) > 10_000


def test_per_tensor_and_over_training_sweeps_add_only_their_jobs(smoke):
    """phema.per_tensor and phema.at_kimg on the finished smoke run: the checkpoint picks the
    base length, one phema pass each writes the variants / the earlier grid, and Fig. 5b/5c
    are drawn; nothing before them re-runs."""
    workdir, config = smoke
    sweeps = dict(per_tensor={"tensors": ["enc-16x16-block0-affine"], "grid": "0.050,0.150"}, at_kimg=[1])
    configfile = edited(workdir, config, "sweeps.yaml", lambda c: c["phema"].update(sweeps))
    counts = dry_run(workdir, "--configfile", configfile)
    assert not {"train", "phema", "score"} & set(counts)
    assert (
        counts["phema_tensor"] == counts["phema_at"] == counts["fig5b"] == counts["fig5c"] == counts["sweep_set"] == 1
    )
    assert counts["score_tensor"] == 2 and counts["score_at"] == len(STDS)
    snakemake(workdir, "--cores", "2", "--configfile", configfile)
    results = workdir / "results"
    best = json.loads((results / "refine" / "grid.json").read_text())["best"]["tiny"]["noguid"]["ema_std"]
    for std in ("0.050", "0.150"):
        score = json.loads(
            (results / "scores-tensor" / "tiny" / "noguid" / "enc-16x16-block0-affine" / f"ema-{std}.json").read_text()
        )
        assert f"enc-16x16-block0-affine={std}-0000002-{best:.3f}.safetensors" in score["network"]
        assert score["ema_std"] == best  # the global length of the variant
    for std in STDS:
        assert (
            json.loads((results / "scores-at" / "tiny" / "noguid" / "kimg-0000001" / f"ema-{std}.json").read_text())[
                "kimg"
            ]
            == 1
        )
    for stem in ("fig5b-tiny-fd_cnn", "fig5c-tiny-fd_cnn"):
        with Image.open(results / "plots" / f"{stem}.png") as im:
            assert im.format == "PNG"
    assert "fig5c-tiny-fd_cnn" in (results / "summary.md").read_text()
    assert dry_run(workdir, "--configfile", configfile) == {}


def test_refine_scores_finer_lengths_around_the_optimum(smoke):
    """Runs last: turning phema.refine on adds the checkpoint, the refined reconstructions and
    the fine scores to the finished smoke run, and nothing before them."""
    workdir, config = smoke

    def refine(c):
        c["phema"].update(refine=True, refine_points=1)
        del c["guidance"][2], c["search"]  # refine leaves out a guide taken before its end (checked at start)

    configfile = edited(workdir, config, "refine.yaml", refine)
    proc = snakemake(workdir, "--cores", "2", "--configfile", configfile)
    log = proc.stdout + proc.stderr
    assert "rule train:" not in log and "rule phema:" not in log
    results = workdir / "results"
    chosen = json.loads((results / "refine" / "grid.json").read_text())
    for setting in SETTINGS:
        stds = chosen["stds"]["tiny"][setting]  # one point on each side of the optimum
        assert len(stds) == 2 and not set(stds) & set(STDS)
        for std in stds:
            assert (results / "scores" / "tiny" / setting / f"ema-{std}.json").is_file()
            assert any((results / "runs" / "tiny" / "phema-refine").glob(f"phema-*-{std}.safetensors"))
    with open(results / "tables" / "scores.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == len(SETTINGS) * (len(STDS) + 2)
