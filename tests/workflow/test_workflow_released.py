"""`source: released-raw` end to end against a real HTTP server on 127.0.0.1 that serves a
directory index of tiny official-format raw snapshots: the download job replaces training,
phema reconstructs the EMA grid from the downloaded pickles, and scoring, plots, tables and
the summary run as for a trained run; with `released.keep_raw: false` the raw snapshots are
deleted afterwards and a rerun has nothing to do."""

import csv
import hashlib
import json
import sys
from pathlib import Path

import pytest
from PIL import Image
from workflow_helpers import REPO, dry_run, job_counts, load_config, snakemake, write_config

sys.path.insert(0, str(REPO / "tests" / "io"))
from official_pickles import make_official_pickles  # noqa: E402
from range_server import RangeServer  # noqa: E402
from tiny_networks import tiny_network  # noqa: E402

from edm2.io.download import read_manifest  # noqa: E402

pytestmark = pytest.mark.slow

# The digits of the smoke config: 16x16 RGB, 10 classes.
NETWORK = tiny_network(img_resolution=16, label_dim=10, attn_resolutions=[8], channels_per_head=8)
NAMES = [f"edm2-tiny-{kimg:07d}-{std:.3f}.pkl" for kimg in (1, 2) for std in (0.05, 0.1)]
STDS = ["0.050", "0.100", "0.150"]


@pytest.fixture(scope="module")
def released_run(tmp_path_factory):
    served = tmp_path_factory.mktemp("served")
    specs = [dict(path=served / n, network_kwargs=NETWORK, seed=i, scale=0.5) for i, n in enumerate(NAMES)]
    make_official_pickles(tmp_path_factory.mktemp("maker"), specs)
    for n in NAMES:
        (served / f"{n}.ref.safetensors").unlink()
    workdir = tmp_path_factory.mktemp("released-raw")
    config = load_config("smoke.yaml")
    with RangeServer(served) as server:
        config["results"] = "results"
        config["models"] = [
            {"name": "tiny", "label": "tiny raw", "source": "released-raw", "url": server.url, "duration": "2Ki"}
        ]
        config["guidance"] = [{"name": "noguid"}]
        config["search"] = []  # the smoke search needs its guided setting
        config["released"] = {"keep_raw": False, "jobs": 2}
        configfile = write_config(workdir / "released.yaml", config)
        env = {"EDM2_CACHE_DIR": str(workdir / "cache"), "EDM2_OFFLINE": "0"}
        snakemake(workdir, "--cores", "2", "--configfile", configfile, extra_env=env)
        counts = dry_run(workdir, "--configfile", configfile)
        yield workdir, served, server, counts, config


@pytest.fixture(scope="module")
def released_net(released_run):
    """The same workdir with a `source: released` net added (the data jobs are done already)."""
    workdir, served, server, _, config = released_run
    config = dict(config)
    net = {"name": "rel", "label": "released tiny", "source": "released", "net": server.url + NAMES[-1]}
    config["models"] = config["models"] + [dict(net, reported=12.5)]
    configfile = write_config(workdir / "released-net.yaml", config)
    env = {"EDM2_CACHE_DIR": str(workdir / "cache"), "EDM2_OFFLINE": "0"}
    proc = snakemake(workdir, "--cores", "2", "--configfile", configfile, extra_env=env)
    return workdir, proc.stdout + proc.stderr


def test_download_replaces_training_and_phema_reads_the_pickles(released_run):
    workdir, served, server, _, _ = released_run
    run = workdir / "results" / "runs" / "tiny"
    (record_file,) = run.glob("raw-*.SHA256SUMS")
    assert not record_file.with_suffix("").exists()  # keep_raw: false deleted the raw snapshots after phema
    record = read_manifest(record_file)
    assert record == {n: hashlib.sha256((served / n).read_bytes()).hexdigest() for n in NAMES}
    assert all(server.gets(n) == [""] for n in NAMES)  # each fetched once, whole
    assert not list(run.glob("train-*"))  # nothing was trained
    from edm2.io.snapshot import read_snapshot_info

    for std in STDS:
        info = read_snapshot_info(run / "phema" / f"phema-0000002-{std}.safetensors")
        assert info.nimg == 2048 and info.ema_std == float(std)
        assert [i["file"] for i in info.extra["phema"]["inputs"]] == NAMES
        assert info.network_kwargs["model_channels"] == NETWORK["model_channels"]


def test_scores_plots_tables_and_summary_as_for_a_trained_run(released_run):
    workdir, _, _, _, _ = released_run
    results = workdir / "results"
    for std in STDS:
        score = json.loads((results / "scores" / "tiny" / "noguid" / f"ema-{std}.json").read_text())
        assert score["ema_std"] == float(std) and len(score["metrics"]["fd_cnn"]["values"]) == 2
    with open(results / "tables" / "scores.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(STDS) and {r["label"] for r in rows} == {"tiny raw"}
    assert "| tiny raw |" in (results / "tables" / "table2.md").read_text()
    for stem in ("ema-sweep-fd_cnn", "gflops-fd_cnn", "training-loss"):
        with Image.open(results / "plots" / f"{stem}.png") as im:
            assert im.format == "PNG"
    assert Path(results / "plots" / "samples" / "tiny" / "noguid.png").is_file()
    assert "data:image/png;base64," in (results / "summary.html").read_text()


def test_a_rerun_has_nothing_to_do_though_the_raw_snapshots_are_gone(released_run):
    _, _, _, counts, _ = released_run
    assert counts == {}


def test_another_selection_of_snapshots_is_reconstructed_and_scored_anew(released_run):
    workdir, _, _, _, config = released_run
    model = dict(config["models"][0], include=["*-0.050.pkl"])
    config = dict(config, models=[model])
    counts = dry_run(workdir, "--configfile", write_config(workdir / "narrower.yaml", config))
    assert counts["download_raw"] == 1 and counts["phema"] == 1 and counts["score"] == len(STDS), counts


def test_more_parallel_transfers_schedule_nothing(released_run):
    workdir, _, _, _, config = released_run
    config = dict(config, released=dict(config["released"], jobs=3))
    assert dry_run(workdir, "--configfile", write_config(workdir / "more-jobs.yaml", config)) == {}


def test_a_released_net_is_downloaded_scored_and_tabled_next_to_its_reported_value(released_net):
    workdir, log = released_net
    results = workdir / "results"
    assert (results / "released" / "nets" / NAMES[-1]).is_file()
    assert NAMES[-1] in read_manifest(results / "released" / "nets" / "SHA256SUMS")
    score = json.loads((results / "released" / "scores" / "rel.json").read_text())
    assert score["guidance"] == 1.0 and len(score["metrics"]["fd_cnn"]["values"]) == 2
    with open(results / "tables" / "released.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert row["model"] == "released tiny" and row["metric"] == "fd_cnn" and float(row["reported"]) == 12.5
    assert float(row["ours"]) == min(score["metrics"]["fd_cnn"]["values"])
    assert "| released tiny |" in (results / "tables" / "released.md").read_text()
    counts = job_counts(log)
    assert counts["download_net"] == 1 and counts["score_released"] == 1 and counts["released_table"] == 1
    assert "phema" not in counts and "score" not in counts  # the raw run was complete already
