# Shared set-up for every rule: configuration (validated against the schema), derived settings
# of each training run, output paths, input functions and per-rule resources.
#
# Everything here is plain Python evaluated when the DAG is built. It must stay cheap (the paper
# configs dry-run in seconds) and may not import torch: the Snakemake process may run in an
# environment without it, and without the edm2 package installed. The few parsers shared with
# the commands (image counts, EMA std lists, file names, preset durations, sampler defaults, the
# table of training options) come from the repository's own torch-free modules (edm2.utils,
# edm2.naming, edm2.presets, edm2.sample.options, edm2.train.options: standard library only),
# imported from the checkout this Snakefile belongs to.

import hashlib
import json
import math
import os
import posixpath
import re
import shlex
import sys
import urllib.parse

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

# --- Configuration --------------------------------------------------------------------------

REPO = os.path.abspath(os.path.join(workflow.basedir, ".."))
sys.path.insert(0, REPO)

from edm2.errors import ConfigError
from edm2.naming import PHEMA_PREFIX, SNAPSHOT_PREFIX, snapshot_name, std_text
from edm2.presets import GENERATION_PRESETS, TRAINING_PRESETS
from edm2.sample.options import DEFAULTS as SAMPLER_DEFAULTS
from edm2.train.options import TRAIN_FIELDS, canonical_options, format_nimg
from edm2.train.options import command_line as train_command_line
from edm2.train.options import parse_options as parse_train_options
from edm2.utils import parse_nimg as _parse_nimg
from edm2.utils import parse_std_list


def _validate_config():
    """Validate `config` against the schema (filling defaults); name the bad key and the fix."""
    try:
        validate(config, "../schemas/config.schema.yaml")
    except WorkflowError as e:
        cause = e.__context__  # the jsonschema ValidationError
        if not hasattr(cause, "absolute_path"):
            raise
        where = "config" + "".join(f"[{p!r}]" for p in cause.absolute_path)
        raise WorkflowError(
            f"invalid configuration at {where}: {cause.message}. "
            "Fix it in your config file (every key is described in config/README.md)."
        ) from None


_validate_config()
if config["score"]["steps"] is None:  # the sampler's own default, from one place
    config["score"]["steps"] = SAMPLER_DEFAULTS.num_steps

RESULTS = config["results"].rstrip("/")

# The training options of a model are those of `edm2 train`, from its table
# (edm2.train.options): a key left unset (None) is not passed, so `edm2 train` uses its preset
# or its own default, which the workflow resolves the same way. The workflow adds only what is
# its own: how a run is launched (nodes, GPUs, processes, launcher), its retries and extra
# arguments. A model entry overrides any of them.
TRAIN_OPTIONS = [name for name, field in TRAIN_FIELDS.items() if field.workflow]
WORKFLOW_TRAIN_DEFAULTS = {
    "nodes": 1,
    "gpus_per_node": 0,
    "procs_per_node": None,
    "launch": "torchrun",
    "retries": 0,
    "extra_args": "",
}
TRAIN_DEFAULTS = {**{name: None for name in TRAIN_OPTIONS}, **WORKFLOW_TRAIN_DEFAULTS}


def _nimg_text(nimg):
    """An image count as `edm2 train --duration` reads it, in Mi when it is whole ('2048Mi')."""
    return f"{nimg >> 20}Mi" if nimg % (1 << 20) == 0 else str(nimg)


# Training duration of each preset (edm2.presets), for released-raw runs named after a preset.
PRESET_DURATION = {name: _nimg_text(p.duration) for name, p in TRAINING_PRESETS.items()}


def parse_nimg(value, where="an image count"):
    """'8Mi' -> 8388608 (`edm2 train`'s rule, edm2.utils.parse_nimg)."""
    try:
        return _parse_nimg(value)
    except ConfigError as e:
        raise WorkflowError(f"{where}: {e}") from None


def expand_std_list(value):
    """EMA std list (numbers, or `edm2 phema --outstd` text with its '...' expansion,
    edm2.utils.parse_std_list) -> sorted unique '0.xyz' strings, as they appear in file names."""
    try:
        values = parse_std_list(value)
    except ConfigError as e:
        raise WorkflowError(f"phema.grid: {e}") from None
    stds = {}
    for v in values:
        text = std_text(v)
        if text in stds and abs(stds[text] - v) > 1e-9:
            raise WorkflowError(f"phema.grid: {stds[text]:g} and {v:g} both round to {text}; use 3-decimal stds")
        stds[text] = v
    return sorted(stds, key=float)


GRID = expand_std_list(config["phema"]["grid"])


def _model_settings(entry):
    settings = dict(TRAIN_DEFAULTS)
    settings.update({k: v for k, v in config["train"].items() if v is not None})
    settings.update({k: v for k, v in entry.items() if v is not None})
    name = entry["name"]
    settings.setdefault("label", name)
    settings.setdefault("score", True)
    given = {k: settings[k] for k in TRAIN_OPTIONS if settings[k] is not None}
    try:  # the options as `edm2 train` reads and checks them (NaN, infinities, bounds)
        opts = parse_train_options(given, outdir="-", data="-").resolved()
    except ConfigError as e:
        raise WorkflowError(f"models[{name}]: {e}") from None
    settings["given"] = given  # what the command line passes
    settings["resolved"] = opts  # what the run computes with (preset and defaults filled in)
    nimg, snapshot = opts.duration, opts.snapshot
    if snapshot <= 0 or snapshot % 1024 or snapshot % opts.batch:
        raise WorkflowError(
            f"models[{name}]: snapshot={format_nimg(snapshot)} must be a positive multiple of 1024 "
            f"and of batch={opts.batch}"
        )
    if nimg % snapshot:
        raise WorkflowError(
            f"models[{name}]: duration={format_nimg(nimg)} is not a multiple of snapshot={format_nimg(snapshot)}; "
            "post-hoc EMA needs a snapshot at the end of training, so make the duration a multiple of it"
        )
    settings["duration_nimg"] = nimg
    settings["kimg"] = nimg // 1000
    if settings["procs_per_node"] is None:
        settings["procs_per_node"] = max(settings["gpus_per_node"], 1)
    return settings


# --- Released artifacts (docs/released.md) -----------------------------------------------------
# `source: released-raw`: the raw training snapshots NVIDIA published for a run replace training
# (a download job); post-hoc EMA, scoring, plots and tables then run as for a trained run.
# `source: released`: a released post-hoc reconstruction (a generation preset, or explicit URLs)
# is scored directly with its guidance; these models get their own table next to the reported
# values (they have no EMA grid).

RELEASED_CFG = config["released"]
NVIDIA_RAW_ROOT = "https://nvlabs-fi-cdn.nvidia.com/edm2/raw-snapshots/"


def _as_folder(url):
    """A folder URL with its trailing separator (so that urljoin appends to it)."""
    return url if url.endswith(posixpath.sep) else f"{url}{posixpath.sep}"


def _released_url(url):
    """A preset's URL under `released.model_root` (the NVIDIA CDN by default)."""
    return urllib.parse.urljoin(_as_folder(RELEASED_CFG["model_root"]), _url_file(url)) if url else None


def _url_file(url):
    """The file name a URL ends in."""
    return posixpath.basename(urllib.parse.urlsplit(url).path.rstrip(posixpath.sep))


def _raw_settings(entry):
    """A `source: released-raw` model: where its raw snapshots are, and the kimg to reconstruct at."""
    name = entry["name"]
    settings = dict(TRAIN_DEFAULTS)
    settings.update(entry)
    settings.setdefault("label", name)
    settings.setdefault("score", True)
    settings["preset"] = None
    if entry.get("url") and entry.get("run"):
        raise WorkflowError(f"models[{name}]: give `run` or `url`, not both (`url` names the folder itself)")
    if entry.get("url"):
        url = _as_folder(entry["url"])
    elif entry.get("run"):
        if _as_folder(RELEASED_CFG["raw_root"]) == NVIDIA_RAW_ROOT and entry["run"] not in PRESET_DURATION:
            raise WorkflowError(
                f"models[{name}].run: unknown run {entry['run']!r}; the released runs are named after the training "
                f"presets ({', '.join(PRESET_DURATION)}); or give `url`"
            )
        url = urllib.parse.urljoin(_as_folder(RELEASED_CFG["raw_root"]), _as_folder(entry["run"]))
    else:
        raise WorkflowError(f"models[{name}]: a released-raw model needs `run` (e.g. edm2-img512-xs) or `url`")
    settings["url"] = url
    if entry.get("kimg") is not None:
        settings["kimg"] = int(entry["kimg"])
    else:
        duration = entry.get("duration") or PRESET_DURATION.get(entry.get("run") or "")
        if duration is None:
            raise WorkflowError(f"models[{name}]: set `kimg` (the training kimg to reconstruct at) or `duration`")
        settings["kimg"] = parse_nimg(duration) // 1000
    settings["include"] = entry.get("include") or RELEASED_CFG["include"]
    return settings


def _released_net_settings(entry):
    """A `source: released` model: the URLs of its nets, its guidance and the reported value."""
    name = entry["name"]
    s = {"name": name, "label": entry.get("label", name)}
    preset = entry.get("generation_preset")
    if preset is not None:
        if preset not in GENERATION_PRESETS:
            raise WorkflowError(
                f"models[{name}]: unknown generation_preset {preset!r}; see docs/released.md for the list"
            )
        p = GENERATION_PRESETS[preset]
        s.update(net=_released_url(p.net), gnet=_released_url(p.gnet), guidance=p.guidance)
        s.update(metric=p.metric, reported=p.value, preset=preset)
    elif entry.get("net"):
        s.update(net=entry["net"], gnet=entry.get("gnet"), guidance=float(entry.get("guidance", 1.0)), preset=None)
        s.update(metric=None, reported=None)
    else:
        raise WorkflowError(f"models[{name}]: a released model needs `generation_preset` or `net` (a URL)")
    for key in ("net", "gnet", "guidance"):
        if entry.get(key) is not None:
            s[key] = float(entry[key]) if key == "guidance" else entry[key]
    if s["guidance"] != 1.0 and not s["gnet"]:
        raise WorkflowError(f"models[{name}]: a guidance other than 1 needs `gnet`")
    s["metrics"] = entry.get("metrics") or ([s["metric"]] if s["metric"] else METRICS)
    unknown = [m for m in s["metrics"] if m not in METRICS]
    if unknown:
        raise WorkflowError(f"models[{name}].metrics: {unknown} not in score.metrics {METRICS}; add them there")
    if isinstance(entry.get("reported"), (int, float)):
        s["reported"] = float(entry["reported"])
    for key in ("net", "gnet"):
        if s[key] and not re.match(r"^(https?|file)://", s[key]):
            raise WorkflowError(f"models[{name}].{key}: {s[key]!r} is not an http(s):// or file:// URL")
    return s


METRICS = config["score"]["metrics"]
MODELS = {}
RELEASED = {}  # `source: released` models
for _entry in config["models"]:
    if _entry["name"] in MODELS or _entry["name"] in RELEASED:
        raise WorkflowError(f"models: the name {_entry['name']!r} is used twice; give every model its own name")
    _source = _entry.get("source", "train")
    if _source == "released":
        RELEASED[_entry["name"]] = _released_net_settings(_entry)
        continue
    MODELS[_entry["name"]] = _raw_settings(_entry) if _source == "released-raw" else _model_settings(_entry)
    MODELS[_entry["name"]]["source"] = _source
SCORED_RUNS = [name for name, m in MODELS.items() if m["score"]]
RAW_RUNS = [name for name, m in MODELS.items() if m["source"] == "released-raw"]


def _guidance_settings():
    settings = {}
    for g in config["guidance"]:
        name = g["name"]
        if name in settings:
            raise WorkflowError(f"guidance: the name {name!r} is used twice")
        g = dict(g)
        g.setdefault("guide", None)
        g.setdefault("weight", 1.0)
        g.setdefault("guide_std", "same")
        g.setdefault("metrics", METRICS)
        g.setdefault("runs", SCORED_RUNS)
        unknown = [m for m in g["metrics"] if m not in METRICS]
        if unknown:
            raise WorkflowError(f"guidance[{name}].metrics: {unknown} not in score.metrics {METRICS}; add them there")
        for run in g["runs"]:
            if run not in MODELS:
                raise WorkflowError(f"guidance[{name}].runs: no model named {run!r}")
        if g["guide"] is not None and g["guide"] not in MODELS:
            raise WorkflowError(
                f"guidance[{name}].guide: no model named {g['guide']!r}; add it to `models` (score: false)"
            )
        if isinstance(g["weight"], dict):
            missing = [r for r in g["runs"] if r not in g["weight"]]
            if missing:
                raise WorkflowError(f"guidance[{name}].weight: no weight for {missing}")
        if g["guide"] is None and any(guidance_weight(g, r) != 1 for r in g["runs"]):
            raise WorkflowError(f"guidance[{name}]: a weight other than 1 needs a `guide` model")
        if g["guide_std"] != "same" and std_text(g["guide_std"]) not in GRID:
            raise WorkflowError(f"guidance[{name}].guide_std {g['guide_std']} is not in phema.grid; add it there")
        settings[name] = g
    return settings


def guidance_weight(g, run):
    w = g["weight"]
    return float(w[run] if isinstance(w, dict) else w)


def is_guided(g, run):
    return g["guide"] is not None and guidance_weight(g, run) != 1.0


GUIDANCE = _guidance_settings()
# (run, guidance) pairs that are scored.
SCORED = [(run, g) for g in GUIDANCE for run in GUIDANCE[g]["runs"] if MODELS[run]["score"]]


# --- Paths ----------------------------------------------------------------------------------

DATA = f"{RESULTS}/data"
LOGS = f"{RESULTS}/logs"
BENCH = f"{RESULTS}/benchmarks"

# wildcard_constraints (also used by the rules): names are path segments, stds '0.xyz'.
WC = {
    "run": r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    "guidance": r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    "std": r"\d\.\d{3}",
    "kimg": r"\d{7}",
    "opts": r"[0-9a-f]{8}",
}


def digits_dir():
    return f"{DATA}/digits"


def dataset_source():
    src = config["data"]["source"]
    return digits_dir() if src == "digits" else src


def dataset_source_input():
    """The demo digits are made by a rule; an external dataset (e.g. ImageNet) is read by
    `convert` only, so a dry-run works on a machine that does not hold it."""
    return digits_dir() if config["data"]["source"] == "digits" else []


def dataset_zip():
    return f"{DATA}/dataset.zip"


def latents_zip():
    return f"{DATA}/latents.zip"


def training_data():
    return latents_zip() if config["data"]["latents"] else dataset_zip()


def detector_file():
    return f"{DATA}/detector-cnn.safetensors"


def uses_cnn_detector():
    return "fd_cnn" in METRICS


def ref_stats():
    """Reference statistics: computed by `ref_stats`, or given as a path or URL (data.ref)."""
    return config["data"]["ref"] or f"{DATA}/ref-stats.npz"


def ref_input():
    """The reference statistics as an input file (nothing for a URL, which the command fetches)."""
    ref = ref_stats()
    return [] if re.match(r"^[a-z][a-z0-9+.-]*://", ref) else [ref]


def _train_cli(run):
    """`edm2 train` options of a run (everything but --outdir): the options the configuration
    gives, in the command's own spelling (edm2.train.options.command_line), then extra_args."""
    m = MODELS[run]
    args = ["--data", training_data(), *train_command_line(m["given"])]
    return " ".join([shlex.join(args), m["extra_args"]]).strip()


def sampling_mode_arg():
    """`--eager` when score.eager is set (score and samples rules), else nothing: the sampling fast
    path (compiled CUDA graphs) is on by default on CUDA and off on CPU (edm2.sample.fast)."""
    return "--eager" if config["score"]["eager"] else ""


def train_opts_hash(run):
    """Short hash of everything that defines a run's result, so that a changed option trains a
    fresh run in a new folder instead of resuming an incompatible one: the options of `edm2
    train` that are not operational (edm2.train.options.OPERATIONAL), as the run resolves them
    (preset and defaults filled in), the extra arguments and the data. The operational ones
    (duration, status/snapshot/checkpoint intervals, preset, slice, speed options) and the
    workflow's own launch settings resume the same folder, as `edm2 train` itself does."""
    m = MODELS[run]
    key = {k: v for k, v in canonical_options(m["resolved"].identity()).items() if k in TRAIN_OPTIONS}
    if key.get("config") == "G":  # the default config: run folders made before configs existed keep their names
        del key["config"]
    key["extra_args"] = m["extra_args"]
    key["data"] = {
        k: config["data"][k]
        for k in ("source", "digits_resolution", "resolution", "transform", "max_images", "latents", "vae")
    }
    return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:8]


RUN_DIRS = {
    run: f"{RESULTS}/runs/{run}/train-{train_opts_hash(run)}" for run in MODELS if MODELS[run]["source"] == "train"
}


def run_dir(run):
    return RUN_DIRS[run]


# --- Configs of the ablation ladder (edm2.train.configs) ---------------------------------------
# A run of config A keeps one traditional EMA (EDM's training loop): its last snapshot is scored
# as it is, at the one EMA length it has (Fig. 5a's single point of A), instead of a post-hoc EMA
# grid. Every other run is reconstructed at every length of phema.grid.


def run_config(run):
    """The config A..G a run trains (G for released-raw runs)."""
    m = MODELS[run]
    return m["resolved"].config if m["source"] == "train" else "G"


def is_traditional(run):
    """Whether the run keeps a traditional EMA (config A) rather than power-function EMAs."""
    return MODELS[run]["source"] == "train" and MODELS[run]["resolved"].training().ema == "traditional"


def run_stds(run):
    """The EMA lengths a run is scored at: the grid, or a traditional EMA's own length."""
    if is_traditional(run):
        m = MODELS[run]
        return [std_text(m["resolved"].training().traditional_ema_std(m["duration_nimg"]))]
    return GRID


def traditional_snapshot(run):
    """The last training snapshot of a config-A run (its one traditional EMA)."""
    return f"{run_dir(run)}/{snapshot_name(SNAPSHOT_PREFIX, MODELS[run]['kimg'], run_stds(run)[0])}"


def ablation_runs():
    """{run: config} of the scored runs when the models include a config other than G (then the
    workflow also makes Table 1 and Fig. 5a); {} otherwise."""
    runs = {run: run_config(run) for run in SCORED_RUNS}
    return runs if any(c != "G" for c in runs.values()) else {}


def ablation_files():
    if not ablation_runs():
        return []
    tables = [f"{RESULTS}/tables/table1.{ext}" for ext in ("csv", "md", "tex")]
    return tables + [f"{RESULTS}/plots/fig5a-{METRICS[0]}.{ext}" for ext in ("png", "svg")]


def train_done(run):
    """The file that says a run's snapshots are complete: training-done.json of a trained run, or
    the record of a released-raw run's download (`ancient`: a download repeated after the raw
    snapshots were deleted, for a changed EMA grid, re-scores nothing)."""
    if MODELS[run]["source"] == "released-raw":
        return ancient(raw_record(run))
    return f"{run_dir(run)}/training-done.json"


def raw_selection_hash(run):
    """Short hash of what defines a released-raw run's result (where its snapshots come from,
    which files, the kimg reconstructed at): as a trained run's options hash, another selection
    gets folders of its own, so its reconstructions are scored anew."""
    m = MODELS[run]
    key = {"url": m["url"], "include": sorted(m["include"]), "kimg": m["kimg"]}
    return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:8]


def raw_dir(run):
    """The raw snapshots of a released-raw run (temporary with released.keep_raw: false)."""
    return f"{RESULTS}/runs/{run}/raw-{raw_selection_hash(run)}"


def raw_record(run):
    """SHA-256 manifest of a released-raw run's downloaded snapshots (kept when they are deleted)."""
    return f"{raw_dir(run)}.SHA256SUMS"


def snapshot_inputs(run):
    """Inputs of the phema rules: a trained run's training-done.json, or a released-raw run's
    downloaded snapshots."""
    if MODELS[run]["source"] == "released-raw":
        return {"done": train_done(run), "snapshots": raw_dir(run)}
    return {"done": train_done(run)}


def snapshot_dir(run):
    """The folder `edm2 phema` reads a run's snapshots from."""
    return raw_dir(run) if MODELS[run]["source"] == "released-raw" else run_dir(run)


def phema_dir(run):
    return f"{RESULTS}/runs/{run}/phema"


def phema_file(run, std):
    return f"{phema_dir(run)}/{snapshot_name(PHEMA_PREFIX, MODELS[run]['kimg'], std)}"


def refine_dir(run):
    return f"{RESULTS}/runs/{run}/phema-refine"


def model_info(run):
    return f"{RESULTS}/runs/{run}/model-info.json"


def score_file(run, guidance, std):
    return f"{RESULTS}/scores/{run}/{guidance}/ema-{std}.json"


def scores_csv():
    return f"{RESULTS}/tables/scores.csv"


def best_csv():
    return f"{RESULTS}/tables/best.csv"


def refine_grid_file():
    return f"{RESULTS}/refine/grid.json"


def plot_files():
    stems = [f"ema-sweep-{m}" for m in METRICS] + [f"gflops-{m}" for m in METRICS] + ["training-loss"]
    return [f"{RESULTS}/plots/{s}.{ext}" for s in stems for ext in ("png", "svg")]


def table_files():
    return [f"{RESULTS}/tables/table2.{ext}" for ext in ("csv", "md", "tex")]


def sample_files():
    return [f"{RESULTS}/plots/samples/{run}/{g}.png" for run, g in SCORED]


def summary_files():
    return [f"{RESULTS}/summary.md", f"{RESULTS}/summary.html"]


# --- Refinement of the EMA grid (phema.refine) ------------------------------------------------

REFINE = config["phema"]["refine"]
if REFINE and any(is_traditional(run) for run in SCORED_RUNS):
    raise WorkflowError(
        "phema.refine: config A runs keep one traditional EMA, which has no grid to refine; set phema.refine: false"
    )


def refined_stds():
    """{run: {guidance: [std, ...]}} chosen by the `refine_grid` checkpoint (only call from input
    functions of jobs that come after it)."""
    with open(checkpoints.refine_grid.get().output[0]) as f:
        return json.load(f)["stds"]


def refine_phema_stds(run):
    """Fine stds the run's refined phema must provide: its own, and those of the runs it guides
    with the same EMA std."""
    chosen = refined_stds()
    stds = set()
    for main, per_guidance in chosen.items():
        for g, values in per_guidance.items():
            if main == run:
                stds.update(values)
            if GUIDANCE[g]["guide"] == run and GUIDANCE[g]["guide_std"] == "same" and is_guided(GUIDANCE[g], main):
                stds.update(values)
    return sorted(s for s in stds if s not in GRID)


def net_file(run, std):
    """Reconstructed network of `run` at `std`: from the coarse grid, or from the refined folder
    (config A: its training snapshot)."""
    if is_traditional(run):
        return traditional_snapshot(run)
    if std in GRID:
        return phema_file(run, std)
    return f"{refine_dir(run)}/{snapshot_name(PHEMA_PREFIX, MODELS[run]['kimg'], std)}"


def net_input(run, std):
    if is_traditional(run):
        return train_done(run)  # the snapshot is written with it
    return phema_file(run, std) if std in GRID else refine_dir(run)


def all_scores(wildcards=None):
    """Every score JSON of the configuration (coarse grid, plus the refined stds when enabled)."""
    files = [score_file(run, g, std) for run, g in SCORED for std in run_stds(run)]
    if REFINE:
        for run, per_guidance in refined_stds().items():
            for g, stds in per_guidance.items():
                files.extend(score_file(run, g, std) for std in stds if std not in GRID)
    return files


def coarse_scores():
    return [score_file(run, g, std) for run, g in SCORED for std in run_stds(run)]


# --- Input functions --------------------------------------------------------------------------


def score_inputs(wildcards):
    run, g, std = wildcards.run, wildcards.guidance, wildcards.std
    if run not in MODELS or g not in GUIDANCE:
        raise WorkflowError(f"score: unknown run {run!r} or guidance setting {g!r}")
    setting = GUIDANCE[g]
    # The reconstructed networks are `ancient`: re-running `phema` for a changed grid rewrites
    # every file of the grid but must not re-score the stds that were already scored. A new
    # training run still re-scores everything, through `done`.
    inputs = {"net": ancient(net_input(run, std)), "done": train_done(run), "ref": ref_input()}
    if is_guided(setting, run):
        guide = setting["guide"]
        guide_std = std if setting["guide_std"] == "same" else std_text(setting["guide_std"])
        inputs["gnet"] = ancient(net_input(guide, guide_std))
        inputs["gdone"] = train_done(guide)
    if "fd_cnn" in setting["metrics"]:
        inputs["detector"] = detector_file()
    return inputs


def score_args(wildcards):
    """Options of `edm2 metrics gen` for one score (guide, guidance weight, detector)."""
    run, g, std = wildcards.run, wildcards.guidance, wildcards.std
    setting = GUIDANCE[g]
    args = []
    if is_guided(setting, run):
        guide_std = std if setting["guide_std"] == "same" else std_text(setting["guide_std"])
        args.append(f"--gnet {shlex.quote(net_file(setting['guide'], guide_std))}")
        args.append(f"--guidance {guidance_weight(setting, run):g}")
    if "fd_cnn" in setting["metrics"]:
        args.append(f"--cnn-detector {shlex.quote(detector_file())}")
    return " ".join(args)


def phema_inputs_for_samples(wildcards):
    """Every network the sample grid of (run, guidance) may pick (ancient: only their presence
    matters; the choice comes from the scores)."""
    run, g = wildcards.run, wildcards.guidance
    runs = [run]
    if is_guided(GUIDANCE[g], run):
        runs.append(GUIDANCE[g]["guide"])
    files = [net_input(r, std) for r in runs for std in run_stds(r)]
    if REFINE:
        files.extend(refine_dir(r) for r in runs)
    return [ancient(f) for f in dict.fromkeys(files)]


# --- Training launch --------------------------------------------------------------------------


def train_launch(run):
    """Command that starts `edm2 train` for a run: one process, torchrun on one node, or (under
    SLURM) one srun task per node running torchrun with a c10d rendezvous, or one srun task per
    rank (`launch: tasks`; ranks from SLURM_PROCID)."""
    m = MODELS[run]
    nodes, procs = m["nodes"], m["procs_per_node"]
    # First node of the job, and a port that differs between jobs sharing a node.
    head = (
        # The job-step plugin drops SLURM_JOB_NODELIST, so ask squeue for the job's nodes.
        'MASTER_ADDR=$(scontrol show hostnames "$(squeue -h -j "$SLURM_JOB_ID" -o %N)" | head -n 1) '
        f"MASTER_PORT=$(({config['slurm']['rdzv_port']} + SLURM_JOB_ID % 10000))"
    )
    if m["launch"] == "tasks" and nodes * procs > 1:
        return (
            f"export {head}; srun --nodes={nodes} --ntasks-per-node={procs} --kill-on-bad-exit=1 python -m edm2 train"
        )
    if nodes > 1:
        return (
            f"export {head}; "
            f"srun --nodes={nodes} --ntasks-per-node=1 --kill-on-bad-exit=1 "
            f"torchrun --nnodes={nodes} --nproc-per-node={procs} --rdzv-backend=c10d "
            f'--rdzv-endpoint="$MASTER_ADDR:$MASTER_PORT" --rdzv-id="$SLURM_JOB_ID" -m edm2 train'
        )
    if procs > 1:
        return f"torchrun --standalone --nnodes=1 --nproc-per-node={procs} -m edm2 train"
    return "python -m edm2 train"


def train_retries():
    """Resubmissions a training job may need: one per extra slice, plus the configured spare
    retries (time limits, preemption)."""
    most = 0
    for m in MODELS.values():
        slices = 1
        if m["slice"] is not None:
            slices = math.ceil(m["duration_nimg"] / max(parse_nimg(m["slice"], "slice"), 1))
        most = max(most, slices - 1 + m["retries"])
    return most


# --- Resources --------------------------------------------------------------------------------

_RESOURCE_DEFAULTS = {"threads": 1, "mem_mb": 4000, "runtime": 60, "gpus": 0, "partition": None}


def rule_setting(rule, key):
    res = config["resources"]
    for source in (res.get(rule, {}), res.get("default", {}), _RESOURCE_DEFAULTS):
        if source.get(key) is not None:
            return source[key]
    return None


def rule_threads(rule):
    return rule_setting(rule, "threads")


def rule_resources(rule):
    """Resources of a rule, to spread into its `resources`: memory, run time, GPUs, and the SLURM
    partition/account from the config or from EDM2_SLURM_PARTITION / EDM2_SLURM_ACCOUNT."""
    out = {"mem_mb": rule_setting(rule, "mem_mb"), "runtime": rule_setting(rule, "runtime")}
    gpus = rule_setting(rule, "gpus")
    if gpus:
        out["gpu"] = gpus
    slurm = config["slurm"]
    partition = rule_setting(rule, "partition")
    if partition is None and gpus:
        partition = slurm["gpu_partition"]
    partition = partition or slurm["partition"] or os.environ.get("EDM2_SLURM_PARTITION")
    account = slurm["account"] or os.environ.get("EDM2_SLURM_ACCOUNT")
    if partition:
        out["slurm_partition"] = partition
    if account:
        out["slurm_account"] = account
    return out


def train_resources():
    """Per-run SLURM geometry of a training job (functions of the `run` wildcard)."""
    base = rule_resources("train")
    base.pop("gpu", None)
    slurm = config["slurm"]
    explicit = rule_setting("train", "partition")

    def partition(wc):
        if explicit:
            return explicit
        if MODELS[wc.run]["gpus_per_node"] and slurm["gpu_partition"]:
            return slurm["gpu_partition"]
        return slurm["partition"] or os.environ.get("EDM2_SLURM_PARTITION") or None

    def srun_launched(m):
        return m["nodes"] > 1 or (m["launch"] == "tasks" and m["procs_per_node"] > 1)

    def single_node_gpus(wc):
        m = MODELS[wc.run]
        return m["gpus_per_node"] if m["gpus_per_node"] and not srun_launched(m) else None

    def per_node_gres(wc):
        m = MODELS[wc.run]
        return f"gpu:{m['gpus_per_node']}" if m["gpus_per_node"] and srun_launched(m) else None

    def mpi(wc):
        return "srun" if srun_launched(MODELS[wc.run]) else None

    def tasks(wc):
        m = MODELS[wc.run]
        if not srun_launched(m):
            return None
        return m["nodes"] * (m["procs_per_node"] if m["launch"] == "tasks" else 1)

    def tasks_per_gpu(wc):
        return 0 if MODELS[wc.run]["gpus_per_node"] else None

    def slurm_extra(wc):
        s = slurm["signal_seconds"]
        return f"--signal=TERM@{s}" if s else None

    base.update(
        slurm_partition=partition,
        nodes=lambda wc: MODELS[wc.run]["nodes"],
        gpu=single_node_gpus,
        gres=per_node_gres,
        mpi=mpi,
        tasks=tasks,
        tasks_per_gpu=tasks_per_gpu,
        slurm_extra=slurm_extra,
    )
    return base


def log_file(rule, name="all"):
    return f"{LOGS}/{rule}/{name}.log"


def bench_file(rule, name="all"):
    return f"{BENCH}/{rule}/{name}.tsv"


# --- Released nets (`source: released`) --------------------------------------------------------


def released_net_file(url):
    """Where a released net is read from: a `file://` URL in place, else the file it is
    downloaded to (one per URL file name, shared by models)."""
    if url.startswith("file://"):
        return urllib.parse.unquote(urllib.parse.urlsplit(url).path)
    return f"{RESULTS}/released/nets/{_url_file(url)}"


def released_net_urls():
    """{file name: URL} of every released net the configuration downloads (not `file://` ones)."""
    urls = {}
    for m in RELEASED.values():
        for url in (m["net"], m["gnet"]):
            if url and not url.startswith("file://"):
                name = _url_file(url)
                if urls.get(name, url) != url:
                    raise WorkflowError(f"models: two released nets share the file name {name}; rename one URL")
                urls[name] = url
    return urls


RELEASED_NET_URLS = released_net_urls()


def released_score_file(name):
    return f"{RESULTS}/released/scores/{name}.json"


def released_files():
    """Outputs of the released nets: the table of our values next to the reported ones."""
    if not RELEASED:
        return []
    return [f"{RESULTS}/tables/released.{ext}" for ext in ("csv", "md")]


def raw_output(path):
    """The raw snapshots folder, temporary with released.keep_raw: false (deleted once every
    phema job has read it)."""
    return path if RELEASED_CFG["keep_raw"] else temp(path)


def released_score_inputs(wc):
    m = RELEASED[wc.name]
    inputs = {"net": released_net_file(m["net"]), "ref": ref_input()}
    if m["gnet"] and m["guidance"] != 1.0:
        inputs["gnet"] = released_net_file(m["gnet"])
    if "fd_cnn" in m["metrics"]:
        inputs["detector"] = detector_file()
    return inputs


def released_score_args(wc, input):
    """Options of `edm2 metrics gen` for a released net (guide, guidance weight, detector)."""
    m = RELEASED[wc.name]
    args = []
    if "gnet" in input.keys():
        args += [f"--gnet {shlex.quote(input.gnet)}", f"--guidance {m['guidance']:g}"]
    if "fd_cnn" in m["metrics"]:
        args.append(f"--cnn-detector {shlex.quote(detector_file())}")
    return " ".join(args)


def released_table_args(wc, input):
    """Options of `edm2 report released`: every score with its label, preset and reported value."""
    args = []
    for name, path in zip(RELEASED, input):
        m = RELEASED[name]
        pairs = [("score", path), ("label", m["label"])]
        if m["reported"] is not None:
            metric = m["metric"] or m["metrics"][0]
            pairs.append(("reported", f"{metric}:{m['reported']:g}"))
        if m["preset"]:
            pairs.append(("preset", m["preset"]))
        args += [f"--{option} {shlex.quote(f'{name}={value}')}" for option, value in pairs]
    return " ".join(args)
