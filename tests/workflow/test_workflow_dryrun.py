"""Dry-runs of the shipped configurations: the right jobs per rule, and the shell commands the
paper's jobs would run. No job is executed."""

import re
import shlex

import pytest
import yaml
from workflow_helpers import CONFIG, REPO, dry_run, job_counts, load_config, shell_commands, snakemake, write_config

GRID_49 = 49  # 0.010,0.015,...,0.250 (docs/method.md#ema)


@pytest.fixture
def workdir(tmp_path):
    return tmp_path


def test_paper_img512_lists_every_job(workdir):
    counts = dry_run(workdir, "--configfile", CONFIG / "paper-img512.yaml")
    sizes, runs = 6, 7  # XS..XXL, plus the unconditional XS guide
    settings = 3  # no guidance, guid-fid, guid-dino
    assert counts == {
        "convert": 1,
        "encode": 1,  # SD-VAE latents
        "ref_stats": 1,
        "train": runs,
        "phema": runs,
        "model_info": runs,
        "score": sizes * GRID_49 * settings,
        "result_set": 1,
        "aggregate": 1,
        "plots": 1,
        "tables": 1,
        "samples": sizes * settings,
        "report": 1,
        # Magnitudes of every snapshot, one job per run (test_paper_img512_measures_...); one plot per run.
        "magnitudes": runs,
        "magnitude_plot": runs,
        "all": 1,
    }


def test_paper_img512_measures_every_snapshot_of_a_run_in_its_one_magnitudes_job(workdir):
    proc = snakemake(workdir, "-n", "-p", "--configfile", CONFIG / "paper-img512.yaml")
    outs = {}
    for c in (c for c in shell_commands(proc.stdout) if "edm2 analyze magnitudes" in c):
        words = shlex.split(c.split(">")[0])
        run = words[words.index("--out") + 1].split("/runs/")[1].split("/")[0]
        outs[run] = [words[i + 1].rsplit("/", 1)[1] for i, w in enumerate(words) if w == "--out"]
    # Every 8Mi images and at 0: XS, S, M and the guide 2048Mi, L 1792Mi, XL 1280Mi, XXL 896Mi.
    counts = {run: len(o) for run, o in outs.items()}
    assert counts == {"xs": 257, "s": 257, "m": 257, "xs-uncond": 257, "l": 225, "xl": 161, "xxl": 113}
    assert all(o[0] == "0000000.json" and o[1] == f"{(8 << 20) // 1000:07d}.json" for o in outs.values())


def test_paper_img512_autog_trains_the_guide_and_searches_at_its_early_point(workdir):
    """The S and its XS guide trained; the guide reconstructed at 1/16 of its 2048Mi images
    (134217 kimg, the released autoguidance guide's kimg); 5 x 5 EMA pairs per metric; per
    metric 6 screening points of 5,000 images (first round) and the rounds after them."""
    proc = snakemake(workdir, "-n", "-p", "--configfile", CONFIG / "paper-img512-autog.yaml")
    counts = job_counts(proc.stdout + proc.stderr)
    assert counts["train"] == 2 and counts["phema"] == 3  # S, XS at its end (model info), XS at T/16
    assert (counts["score"], counts["score_sweep"], counts["heatmap"]) == (GRID_49, 2 * 5 * 5, 2)
    assert counts["search_eval"] == 2 * 6 and counts["search_result"] == 2 and counts["search_report"] == 2
    commands = shell_commands(proc.stdout)
    assert any(
        "edm2 phema --indir results/img512-autog/runs/xs/train-" in c and "--outkimg 134217 " in c for c in commands
    )
    sweep = [c for c in commands if "--json results/img512-autog/scores/s/autog-fid/ema-0.070-guide-0.125.json" in c]
    assert len(sweep) == 1 and "--gnet results/img512-autog/runs/xs/phema/phema-0134217-0.125.safetensors" in sweep[0]
    assert "--guidance 2.1 " in sweep[0] and "--metrics fid " in sweep[0]
    screen = [
        c
        for c in commands
        if "--json results/img512-autog/search/evals/s/autog-fid/ema-0.070-guide-0.125/w1.500-n5000x1.json" in c
    ]
    assert len(screen) == 1 and "--num 5000 " in screen[0] and "--seeds-ranges 1 " in screen[0]
    assert "--guidance 1.5 " in screen[0]


def test_paper_img512_ablation_lists_seven_trainings_the_grid_and_the_scores(workdir):
    """Table 1 and Fig. 5a: configs A-G at size S; B-G reconstructed over the 49-length grid,
    config A scored at its one traditional EMA (0.034 at 2048Mi images); FID without guidance."""
    counts = dry_run(workdir, "--configfile", CONFIG / "paper-img512-ablation.yaml")
    assert counts == {
        "convert": 1,
        "encode": 1,
        "ref_stats": 1,
        "train": 7,
        "phema": 6,
        "model_info": 7,
        "score": 6 * GRID_49 + 1,
        "result_set": 1,
        "aggregate": 1,
        "plots": 1,
        "tables": 1,
        "ablation": 1,
        "samples": 7,
        "report": 1,
        "magnitudes": 7,  # every snapshot of every config (EDM2 Fig. 15), one job per config
        "magnitude_plot": 7,
        "fig15": 1,
        "all": 1,
    }
    proc = snakemake(workdir, "-n", "-p", "--configfile", CONFIG / "paper-img512-ablation.yaml")
    commands = shell_commands(proc.stdout)
    trains = [c for c in commands if " edm2 train" in c]
    for letter in "abcdef":
        assert any(f"--preset edm2-img512-s-config-{letter}" in c for c in trains), letter
    (score_a,) = [c for c in commands if "scores/config-a/noguid/" in c and "metrics gen" in c]
    assert "ema-0.034.json" in score_a and "network-snapshot-2147483-0.034.safetensors" in score_a
    assert not any("config-a/phema/" in c for c in commands)
    (ablation,) = [c for c in commands if "edm2 report ablation" in c]
    assert "--metric fid" in ablation and "--config=config-a=A" in ablation and "--config=config-g=G" in ablation


def test_paper_img512_released_lists_every_job_and_trains_nothing(workdir):
    proc = snakemake(workdir, "-n", "-p", "--configfile", CONFIG / "paper-img512-released.yaml")
    counts = job_counts(proc.stdout + proc.stderr)
    presets = 34  # the img512 generation presets: 12 plain, 12 guided, 6 autoguided, 4 with a guidance interval
    nets = 43  # the distinct main and guiding nets of those presets (edm2.presets; the interval rows add none)
    assert counts == {"download_net": nets, "score_released": presets, "released_table": 1, "all": 1}
    commands = shell_commands(proc.stdout)
    (autog,) = [c for c in commands if "--json results/img512-released/released/scores/s-autog-fid.json" in c]
    assert "--net results/img512-released/released/nets/edm2-img512-s-2147483-0.070.pkl" in autog
    assert "--gnet results/img512-released/released/nets/edm2-img512-xs-0134217-0.125.pkl --guidance 2.1" in autog
    assert "--metrics fid --num 50000 --seed 0 --seeds-ranges 3" in autog
    assert "--ref https://nvlabs-fi-cdn.nvidia.com/edm2/dataset-refs/img512.pkl" in autog
    (interval,) = [c for c in commands if "--json results/img512-released/released/scores/xxl-interval-fid.json" in c]
    assert "--net results/img512-released/released/nets/edm2-img512-xxl-0939524-0.015.pkl" in interval
    assert "edm2-img512-xs-uncond-2147483-0.015.pkl --guidance 2 --guidance_start 17 --guidance_stop 22" in interval
    (table,) = [c for c in commands if "edm2 report released" in c]
    assert "--reported s-autog-fid=fid:1.34" in table and "--reported xxl-dino=fd_dinov2:42.84" in table
    assert "--reported s-interval-dino=fd_dinov2:46.25" in table


def test_paths_with_spaces_reach_every_command_as_one_argument(workdir, tmp_path):
    # A released net given as a file:// URL (read in place), in a folder with a space.
    net = tmp_path / "with space" / "net.pkl"
    net.parent.mkdir()
    net.write_bytes(b"not read by a dry run")
    config = load_config("smoke.yaml")
    config["results"] = "results/with space"
    config["models"] += [
        {"name": "raw", "source": "released-raw", "url": "http://127.0.0.1:9/raw/", "kimg": 2},
        {"name": "mine", "source": "released", "net": net.as_uri(), "metrics": ["fd_cnn"]},
    ]
    proc = snakemake(workdir, "-n", "-p", "--configfile", write_config(workdir / "spaces.yaml", config))
    commands = shell_commands(proc.stdout)
    rules = set(job_counts(proc.stdout + proc.stderr)) - {"all", "result_set"}
    assert len(commands) >= len(rules) > 10, proc.stdout[-3000:]
    for command in commands:
        assert "with space" in command
        tokens = shlex.split(command.replace("$(", " ").replace("{", " ").replace("}", " "))
        split = [t for t in tokens if t.endswith("/with") or t.startswith("space/")]
        assert not split, f"a path was split in: {command}"
    # The file:// net is read in place: no download job, its path as the --net argument.
    assert "download_net" not in rules and "score_released" in rules
    (score,) = [c for c in commands if "edm2 metrics gen" in c and "released/scores/mine.json" in c]
    assert f"--net '{net}'" in score


def test_paper_img512_ema_sweep_lists_every_job(workdir):
    proc = snakemake(workdir, "-n", "-p", "--configfile", CONFIG / "paper-img512-ema-sweep.yaml")
    counts = job_counts(proc.stdout + proc.stderr)
    runs = 2
    assert counts == {
        "download_raw": runs,
        "result_set": 1,
        "phema": runs,
        "model_info": runs,
        "score": runs * GRID_49,
        "aggregate": 1,
        "plots": 1,
        "tables": 1,
        "samples": runs,
        "report": 1,
        "magnitudes_raw": runs,  # the weights of NVIDIA's raw snapshots over training (Fig. 15, row G)
        "magnitude_plot": runs,
        "all": 1,
        # Fig. 5c: the grid at 4 earlier training lengths, one phema pass per run.
        "phema_at": runs,
        "score_at": runs * 4 * GRID_49,
        "sweep_set": runs,  # the scores of each run's Fig. 5b/5c
        "fig5c": runs * 2,  # fid, fd_dinov2
        # Fig. 5b: the variants wait for the best grid length (a checkpoint): one pass per run.
        "refine_grid": 1,
        "phema_tensor": runs,
        "score_tensor": runs * 28 * 5,
        "fig5b": runs * 2,
    }
    commands = shell_commands(proc.stdout)
    (weights,) = [c for c in commands if "edm2 analyze magnitudes" in c and "/runs/xs/" in c]
    assert "/runs/xs/raw-" in weights and "/*-0.100.pkl --outdir" in weights and "--data" not in weights
    (download,) = [c for c in commands if "edm2 download" in c and "/xs/" in c.split("--dest")[1].split()[0] + "/"]
    assert download.startswith(
        "python -m edm2 download https://nvlabs-fi-cdn.nvidia.com/edm2/raw-snapshots/edm2-img512-xs/"
    )
    phemas = [c for c in commands if "edm2 phema --indir results/img512-ema-sweep/runs/xs/raw-" in c]
    (phema,) = [c for c in phemas if "/runs/xs/phema " in c]
    assert "--outkimg 2147483" in phema and "--outstd 0.010,0.015," in phema
    (at,) = [c for c in phemas if "/runs/xs/phema-at " in c]
    assert "--outkimg 268435,536870,1073741,1610612 " in at and "--outstd 0.010,0.015," in at


def test_paper_img64_lists_every_job(workdir):
    counts = dry_run(workdir, "--configfile", CONFIG / "paper-img64.yaml")
    assert counts == {
        "convert": 1,
        "ref_stats": 1,
        "train": 4,
        "phema": 4,
        "model_info": 4,
        "score": 4 * GRID_49,
        "result_set": 1,
        "aggregate": 1,
        "plots": 1,
        "tables": 1,
        "samples": 4,
        "report": 1,
        "magnitudes": 4,  # one job per run: every 8Mi of S 1024Mi, M 2048Mi, L 1024Mi, XL 640Mi, and at 0
        "magnitude_plot": 4,
        "all": 1,
    }


def test_embedded_default_and_smoke_configs(workdir):
    counts = dry_run(workdir)  # config/config.yaml, loaded by the Snakefile itself
    assert counts["train"] == 3 and counts["score"] == 2 * 8 and counts["digits"] == 1  # mc16, mc32, guide mc8
    assert counts["train_detector"] == 1 and "encode" not in counts
    assert counts["score_sweep"] == 1 * 2 and counts["search_eval"] == 3 and counts["heatmap"] == 1
    # Fig. 5b and 5c of mc16 at tiny scale: 2 tensors x 2 lengths, 4 lengths at kimg 8.
    assert (
        counts["phema_tensor"] == counts["phema_at"] == counts["fig5b"] == counts["fig5c"] == counts["sweep_set"] == 1
    )
    assert counts["score_tensor"] == 2 * 2 and counts["score_at"] == 4
    assert counts["toy"] == 1  # the 2-D toy example of autoguidance, in the demo's report
    counts = dry_run(workdir, "--configfile", CONFIG / "smoke.yaml")
    assert counts["train"] == 2 and counts["score"] == 3 * 2 and counts["samples"] == 3
    assert counts["toy"] == 1
    # Off unless a config enables it (config/README.md#toy).
    assert "toy" not in dry_run(workdir, "--configfile", CONFIG / "paper-img512.yaml")


def test_digits_ablation_ladder_trains_seven_configs_and_makes_table_1_and_fig_5a(workdir):
    counts = dry_run(workdir, "--configfile", CONFIG / "ablation-digits.yaml")
    assert counts["train"] == 7 and counts["phema"] == 6 and counts["score"] == 6 * 6 + 1
    assert counts["ablation"] == 1 and counts["samples"] == 7 and counts["digits"] == 1
    assert counts["magnitudes"] == 7 and counts["magnitude_plot"] == 7 and counts["fig15"] == 1  # one job per config


def test_digits_magnitude_ladder_makes_fig_15_of_four_configs_with_a_short_warm_up(workdir):
    """config/magnitudes-digits.yaml (make magnitudes-digits): configs C, D, E, G trained 32Ki
    images with a 1Ki learning-rate warm-up, every 2Ki snapshot measured, one Fig. 15 grid; no
    post-hoc EMA or scores for that target."""
    # The target after an option of one value (--configfile takes several).
    args = ("--cores", 1, "fig15", "--configfile", CONFIG / "magnitudes-digits.yaml")
    counts = dry_run(workdir, *args)
    assert counts == {"digits": 1, "convert": 1, "train": 4, "magnitudes": 4, "fig15": 1}
    commands = shell_commands(snakemake(workdir, "-n", "-p", *args).stdout)
    for c in (c for c in commands if "edm2 analyze magnitudes" in c):  # one process per run: 0, 2, ..., 32 kimg
        words = shlex.split(c.split(">")[0])
        outs = [words[i + 1].rsplit("/", 1)[1] for i, w in enumerate(words) if w == "--out"]
        nets = [w for w in words if w.endswith(".safetensors")]
        kimgs = [f"{k:07d}" for k in range(0, 33, 2)]
        assert outs == [f"{k}.json" for k in kimgs]
        assert [n.rsplit("/", 1)[1] for n in nets] == [f"network-snapshot-{k}-0.100.safetensors" for k in kimgs]
    trains = [shlex.split(c.split(";")[1]) for c in commands if "edm2 train" in c]
    assert sorted(t[t.index("--config") + 1] for t in trains) == ["C", "D", "E", "G"]
    for t in trains:
        assert t[t.index("--rampup") + 1] == "1Ki" and t[t.index("--duration") + 1] == "32Ki"


def test_released_raw_smoke_overlay_downloads_instead_of_training(workdir):
    counts = dry_run(workdir, "--configfile", CONFIG / "smoke.yaml", CONFIG / "smoke-released-raw.yaml")
    assert counts["download_raw"] == 1 and counts["phema"] == 1 and counts["score"] == 3, counts
    assert "train" not in counts


def test_paper_guided_score_command(workdir):
    target = "results/img512/scores/s/guid-dino/ema-0.085.json"
    proc = snakemake(workdir, target, "-n", "-p", "--configfile", CONFIG / "paper-img512.yaml")
    commands = shell_commands(proc.stdout)
    (score,) = [c for c in commands if "edm2 metrics gen" in c]
    assert "--net results/img512/runs/s/phema/phema-2147483-0.085.safetensors" in score
    assert "--gnet results/img512/runs/xs-uncond/phema/phema-2147483-0.085.safetensors --guidance 1.9" in score
    for option in ("--metrics fd_dinov2", "--num 50000", "--seeds-ranges 3", "--steps 32", "--json " + target):
        assert option in score
    trains = [c for c in commands if "edm2 train" in c]
    assert len(trains) == 2  # S and its guide
    s_train = next(c for c in trains if "/runs/s/" in c)
    for option in (
        "--preset edm2-img512-s",
        "--duration 2048Mi",
        "--lr 0.01",
        "--snapshot 8Mi",
        "--data results/img512/data/latents.zip",
    ):
        assert option in s_train
    guide = next(c for c in trains if "/runs/xs-uncond/" in c)
    assert "--cond False" in guide
    # Multi-node launch: one srun task per node, each a torchrun with a c10d rendezvous.
    assert re.search(
        r"srun --nodes=4 --ntasks-per-node=1 .*torchrun --nnodes=4 --nproc-per-node=8 --rdzv-backend=c10d", s_train
    )
    (phema,) = [c for c in commands if "edm2 phema" in c and "/runs/s/" in c]
    assert "--outstd 0.010,0.015,0.020," in phema and ",0.245,0.250 " in phema and "--outkimg 2147483" in phema


def test_refine_adds_a_checkpoint_before_the_fine_scores(workdir):
    config = load_config("smoke.yaml")
    config["phema"]["refine"] = True
    del config["guidance"][2], config["search"]  # refine leaves out a guide taken before its end
    configfile = write_config(workdir / "refine.yaml", config)
    proc = snakemake(workdir, "-n", "--configfile", configfile)
    out = proc.stdout + proc.stderr
    counts = job_counts(out)
    # The coarse grid is scored first; the fine stds exist only once the checkpoint has run.
    assert counts["refine_grid"] == 1 and counts["score"] == 3 * 2 and counts["aggregate"] == 1
    assert "checkpoint refine_grid:" in out


def test_slurm_profile_gives_training_its_cluster_geometry(workdir):
    target = "results/img512/runs/xs/model-info.json"
    proc = snakemake(
        workdir, target, "-n", "--profile", REPO / "workflow" / "profiles" / "slurm",
        "--configfile", CONFIG / "paper-img512.yaml",
        extra_env={"EDM2_SLURM_PARTITION": "gpuq", "EDM2_SLURM_ACCOUNT": "edm2"},
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    train = next(line for line in out.splitlines() if "mpi=srun" in line)
    for resource in (
        "runtime=2880",
        "slurm_partition=gpuq",
        "slurm_account=edm2",
        "nodes=4",
        "gres=gpu:8",
        "tasks=4",
        "tasks_per_gpu=0",
        "slurm_extra=--signal=TERM@600",
    ):
        assert resource in train, resource
    encode = next(line for line in out.splitlines() if "runtime=1440" in line)
    assert "gpu=1" in encode and "slurm_partition=gpuq" in encode


def test_fast_and_eager_keys_reach_the_commands_without_changing_the_run(workdir):
    """train.fast adds `edm2 train --fast` and score.eager adds `--eager` to `metrics gen`; the
    run folder (hash of what defines the result) stays the same, so a run may switch."""
    target = "results/img512/scores/s/guid-dino/ema-0.085.json"
    commands = {}
    for fast in (False, True):
        config = load_config("paper-img512.yaml")
        config.setdefault("train", {})["fast"] = fast
        config.setdefault("score", {})["eager"] = fast
        path = write_config(workdir / f"config-{fast}.yaml", config)
        proc = snakemake(workdir, target, "-n", "-p", "--configfile", path)
        commands[fast] = shell_commands(proc.stdout)
    for fast, lines in commands.items():
        (score,) = [c for c in lines if "edm2 metrics gen" in c]
        trains = [c for c in lines if "edm2 train" in c]
        assert ("--eager" in score) == fast
        assert len(trains) == 2 and all(("--fast" in c) == fast for c in trains)
    run_dirs = {fast: sorted(re.findall(r"runs/[\w-]+/train-\w+", " ".join(lines))) for fast, lines in commands.items()}
    assert run_dirs[True] == run_dirs[False] and run_dirs[True]


def test_a_search_point_with_an_interval_reaches_metrics_gen(workdir):
    """A point's name carries its weight, interval and size; its evaluation passes them on (the
    guide at its early kimg, the interval as the sampler's options)."""
    target = "results/smoke/search/evals/tiny/autog/ema-0.100-guide-0.050/w2.500-hi1.000-lo0.200-n16x1.json"
    proc = snakemake(workdir, target, "-n", "-p", "--configfile", CONFIG / "smoke.yaml")
    (score,) = [c for c in shell_commands(proc.stdout) if "edm2 metrics gen" in c]
    assert "--gnet results/smoke/runs/tiny/phema/phema-0000001-0.050.safetensors --guidance 2.5" in score
    assert "--sigma_lo 0.2 --sigma_hi 1" in score and "--num 16 " in score and "--seeds-ranges 1 " in score


# --- Classifier-free guidance and autoguidance together (arXiv 2406.02507, App. B.2, Eq. 6) -------

CFG_AUTOG = {
    "name": "cfg-autog",
    "guide": "tiny",  # autoguidance's guide: tiny at half its training
    "guide_fraction": "1/2",
    "guide_std": 0.050,
    "cfg_guide": "tiny-uncond",  # classifier-free guidance's guide
    "cfg_guide_std": 0.150,
    "weight": 2.0,
    "mix": 0.25,
    "stds": [0.100],
}
CFG_AUTOG_SEARCH = {"name": "cfg-autog-mix", "guidance": "cfg-autog", "std": 0.100, "guide_std": 0.050,
                    "weight": "1.5,2.0", "mix": "0,0.5,1", "bisect": 0, "num": 16, "seeds_ranges": 1}  # fmt: skip


def cfg_autog_config(workdir, **entry):
    """The smoke config with a guidance entry naming both guides, and a search over its mix."""
    config = load_config("smoke.yaml")
    config["guidance"].append({**CFG_AUTOG, **entry})
    config["search"] = config.get("search", []) + [CFG_AUTOG_SEARCH]
    return write_config(workdir / "cfg-autog.yaml", config)


def test_a_combined_guidance_entry_passes_both_guides_and_the_mix_to_metrics_gen(workdir):
    """The unconditional guide (its last snapshot, at cfg_guide_std) first, then autoguidance's
    guide (at its guide_fraction and guide_std), the total weight and the mix; both guides'
    reconstructions are inputs, and the search lists its weight round at the entry's mix."""
    configfile = cfg_autog_config(workdir)
    target = "results/smoke/scores/tiny/cfg-autog/ema-0.100.json"
    proc = snakemake(workdir, target, "-n", "-p", "--configfile", configfile)
    (score,) = [c for c in shell_commands(proc.stdout) if "edm2 metrics gen" in c]
    assert (
        "--gnet results/smoke/runs/tiny-uncond/phema/phema-0000002-0.150.safetensors"
        " --gnet results/smoke/runs/tiny/phema/phema-0000001-0.050.safetensors --guidance 2 --guidance-mix 0.25"
    ) in score
    counts = job_counts(proc.stdout + proc.stderr)
    assert counts["score"] == 1 and counts["train"] == 2 and counts["phema"] == 3  # tiny, tiny at 1/2, uncond
    everything = dry_run(workdir, "--configfile", configfile)
    baseline = dry_run(workdir, "--configfile", CONFIG / "smoke.yaml")
    assert everything["score"] == baseline["score"] + 1  # one main length
    assert everything["search_eval"] == baseline.get("search_eval", 0) + 2  # w 1.5 and 2.0 at mix 0.25


def test_a_search_point_at_mix_one_evaluates_autoguidance_alone(workdir):
    """alpha = 1: the unconditional guide's weight is 1, so it is neither an input nor passed;
    alpha = 0.5 passes both guides, the point's mix replacing the entry's."""
    configfile = cfg_autog_config(workdir)
    evals = "results/smoke/search/evals/tiny/cfg-autog/ema-0.100-guide-0.050"
    proc = snakemake(workdir, f"{evals}/w2.000-m1.000-n16x1.json", "-n", "-p", "--configfile", configfile)
    (score,) = [c for c in shell_commands(proc.stdout) if "edm2 metrics gen" in c]
    assert "--gnet results/smoke/runs/tiny/phema/phema-0000001-0.050.safetensors --guidance 2 " in score
    assert "tiny-uncond" not in proc.stdout and "--guidance-mix" not in score
    proc = snakemake(workdir, f"{evals}/w1.500-m0.500-n16x1.json", "-n", "-p", "--configfile", configfile)
    (score,) = [c for c in shell_commands(proc.stdout) if "edm2 metrics gen" in c]
    assert "tiny-uncond/phema/phema-0000002-0.150.safetensors --gnet" in score
    assert "--guidance 1.5 --guidance-mix 0.5" in score


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"guide": None, "guide_fraction": None, "guide_std": "same"}, "guidance[cfg-autog].cfg_guide: needs `guide` too"),
        ({"mix": None}, "guidance[cfg-autog].mix: give the mix alpha in [0, 1]"),
        ({"cfg_guide": None, "cfg_guide_std": "same"}, "guidance[cfg-autog].mix: needs `cfg_guide`"),
        ({"cfg_guide": "nope"}, "guidance[cfg-autog].cfg_guide: no model named 'nope'"),
    ],
)  # fmt: skip
def test_a_combined_entry_with_a_missing_part_is_refused_in_one_line(workdir, entry, message):
    config = load_config("smoke.yaml")
    config["guidance"].append({k: v for k, v in {**CFG_AUTOG, **entry}.items() if v is not None})
    proc = snakemake(workdir, "-n", "--configfile", write_config(workdir / "bad.yaml", config), check=False)
    assert proc.returncode != 0 and message in proc.stderr + proc.stdout, proc.stderr[-2000:]


def test_a_mix_search_over_a_one_guide_entry_is_refused(workdir):
    config = load_config("smoke.yaml")
    config["search"] = [{**CFG_AUTOG_SEARCH, "guidance": "autog"}]
    proc = snakemake(workdir, "-n", "--configfile", write_config(workdir / "bad.yaml", config), check=False)
    assert proc.returncode != 0
    assert "search[cfg-autog-mix].mix: guidance[autog] has one guide" in proc.stderr + proc.stdout


def test_the_commented_combined_example_of_paper_img512_autog_runs_when_uncommented(workdir):
    """config/paper-img512-autog.yaml's commented `cfg-autog-fid` entry and its mix search, with
    the unconditional XS of paper-img512.yaml added as it says: the guides reach metrics gen."""
    text = (CONFIG / "paper-img512-autog.yaml").read_text()
    text = re.sub(r"(?m)^  # (- name: cfg-autog|  [a-z_]+: )", r"  \1", text)
    config = yaml.safe_load(text)
    uncond = next(m for m in load_config("paper-img512.yaml")["models"] if m["name"] == "xs-uncond")
    config["models"].append(uncond)
    assert [g["name"] for g in config["guidance"]][-1] == "cfg-autog-fid"
    assert [s["name"] for s in config["search"]][-1] == "cfg-autog-fid-mix"
    proc = snakemake(workdir, "-n", "-p", "--configfile", write_config(workdir / "autog-cfg.yaml", config))
    commands = shell_commands(proc.stdout)
    (score,) = [c for c in commands if "--json results/img512-autog/scores/s/cfg-autog-fid/ema-0.070.json" in c]
    assert (
        "--gnet results/img512-autog/runs/xs-uncond/phema/phema-2147483-0.070.safetensors"
        " --gnet results/img512-autog/runs/xs/phema/phema-0134217-0.125.safetensors --guidance 2.1 --guidance-mix 0.75"
    ) in score
    screens = [c for c in commands if "metrics gen" in c and "/evals/s/cfg-autog-fid/ema-0.070-guide-0.125/w" in c]
    assert len(screens) == 6 and all("--guidance-mix 0.75" in c for c in screens)  # the weight round
    assert job_counts(proc.stdout + proc.stderr)["train"] == 3
