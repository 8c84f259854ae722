# Configuration: the config validated against workflow/schemas/config.schema.yaml (defaults
# filled in), and what the rules compute from it: the settings of every model (trained,
# released-raw, released), the guidance settings (autoguidance: the guide's training point and
# EMA sweep), the guidance searches, the EMA grid, and the identity of each run (the hash in its
# folder name).
#
# Everything in workflow/rules/ is plain Python evaluated when the DAG is built. It must stay
# cheap (the paper configs dry-run in seconds) and may not import torch: the Snakemake process
# may run in an environment without it, and without the edm2 package installed. The few parsers
# shared with the commands (image counts, EMA std lists, file names, preset durations, sampler
# defaults, the table of training options) come from the repository's own torch-free modules
# (edm2.utils, edm2.naming, edm2.presets, edm2.sample.options, edm2.train.options: standard
# library only), imported from the checkout this Snakefile belongs to.

import hashlib
import json
import os
import posixpath
import re
import sys
import urllib.parse

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

REPO = os.path.abspath(os.path.join(workflow.basedir, ".."))
sys.path.insert(0, REPO)

from edm2.ema.per_tensor import D6_TENSORS
from edm2.errors import ConfigError
from edm2.naming import std_text
from edm2.presets import GENERATION_PRESETS, TRAINING_PRESETS
from edm2.sample.options import DEFAULTS as SAMPLER_DEFAULTS
from edm2.sample.options import interval_options, mix_weights
from edm2.search import AXES as SEARCH_AXES
from edm2.search import SearchPlan, parse_grid
from edm2.train.options import RAMPUP_NIMG, TRAIN_FIELDS, canonical_options, format_nimg
from edm2.train.options import parse_options as parse_train_options
from edm2.utils import parse_nimg as _parse_nimg
from edm2.utils import parse_std_list


def _validate_config():
    """Validate `config` against the schema (filling defaults); name the bad key and the fix."""
    try:
        validate(config, "../../schemas/config.schema.yaml")
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


def expand_std_list(value, where="phema.grid"):
    """EMA std list (numbers, or `edm2 phema --outstd` text with its '...' expansion,
    edm2.utils.parse_std_list) -> sorted unique '0.xyz' strings, as they appear in file names."""
    try:
        values = parse_std_list(value)
    except ConfigError as e:
        raise WorkflowError(f"{where}: {e}") from None
    stds = {}
    for v in values:
        text = std_text(v)
        if text in stds and abs(stds[text] - v) > 1e-9:
            raise WorkflowError(f"{where}: {stds[text]:g} and {v:g} both round to {text}; use 3-decimal stds")
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


# --- Released artifacts as models (docs/released.md) --------------------------------------------
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


def _interval(where, entry):
    """The guidance-interval keys of a config entry, checked by the sampler's option table."""
    try:
        return interval_options(entry, config["score"]["steps"])
    except ConfigError as e:
        raise WorkflowError(f"{where}: {e}") from None


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
        s.update(metric=p.metric, reported=p.value, preset=preset, interval=p.sampler)
    elif entry.get("net"):
        s.update(net=entry["net"], gnet=entry.get("gnet"), guidance=float(entry.get("guidance", 1.0)), preset=None)
        s.update(metric=None, reported=None, interval={})
    else:
        raise WorkflowError(f"models[{name}]: a released model needs `generation_preset` or `net` (a URL)")
    s["interval"] = _interval(f"models[{name}]", entry) or s["interval"]  # its own interval wins
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


def _guide_kimg(name, g):
    """The training kimg the guide is reconstructed at (autoguidance: an early point of its run):
    `guide_kimg`, or `guide_fraction` of the guide's duration (the released autoguidance presets
    take the XS at 1/16, EDM2-S 2147483 kimg -> XS 134217), else the guide's last snapshot. For a
    trained guide it must be the kimg of one of its snapshots (what `edm2 phema --outkimg` reads)."""
    m = MODELS[g["guide"]]
    if g.get("guide_kimg") is not None and g.get("guide_fraction") is not None:
        raise WorkflowError(f"guidance[{name}]: give `guide_kimg` or `guide_fraction`, not both")
    if m["source"] != "train":  # released-raw: the snapshots are known after the download only
        if g.get("guide_fraction") is not None:
            raise WorkflowError(
                f"guidance[{name}].guide_fraction: the guide {g['guide']!r} is released-raw; give `guide_kimg`"
            )
        return int(g.get("guide_kimg") or m["kimg"])
    snapshot, duration = m["resolved"].snapshot, m["duration_nimg"]
    kimgs = [k * snapshot // 1000 for k in range(1, duration // snapshot + 1)]
    if g.get("guide_fraction") is not None:
        frac = g["guide_fraction"]
        num, _, den = str(frac).partition("/")
        value = float(num) / float(den) if den else float(num)
        if not 0 < value <= 1:
            raise WorkflowError(f"guidance[{name}].guide_fraction: {frac} is not in (0, 1]")
        nimg = duration * value
        if abs(nimg / snapshot - round(nimg / snapshot)) > 1e-9 or round(nimg / snapshot) < 1:
            raise WorkflowError(
                f"guidance[{name}].guide_fraction: {frac} of {g['guide']}'s duration {format_nimg(duration)} is not a "
                f"snapshot time (a multiple of snapshot={format_nimg(snapshot)}); choose another fraction or snapshot"
            )
        return round(nimg / snapshot) * snapshot // 1000
    if g.get("guide_kimg") is not None:
        if g["guide_kimg"] not in kimgs:
            shown = ", ".join(map(str, kimgs[:8])) + (", ..." if len(kimgs) > 8 else "")
            raise WorkflowError(
                f"guidance[{name}].guide_kimg: {g['guide']} has no snapshot at kimg {g['guide_kimg']}; its snapshots: {shown}"
            )
        return int(g["guide_kimg"])
    return m["kimg"]


def _std_choice(name, key, value, default):
    """An entry's EMA lengths: None -> `default`; 'grid' -> phema.grid; a number, a list or text
    with '...' (as phema.grid) -> those ('0.xyz'), each of which must be on phema.grid."""
    if value is None:
        return default
    if value == "grid":
        return list(GRID)
    try:  # a number, a list, or text with the '...' of phema.grid
        stds = [std_text(v) for v in parse_std_list(value)]
    except ConfigError as e:
        raise WorkflowError(f"guidance[{name}].{key}: {e}") from None
    missing = [s for s in stds if s not in GRID]
    if missing:
        raise WorkflowError(f"guidance[{name}].{key}: {', '.join(missing)} not in phema.grid; add them there")
    return sorted(dict.fromkeys(stds), key=float)


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
        _cfg_guide_settings(name, g)
        if g["guide"] is None:
            if any(guidance_weight(g, r) != 1 for r in g["runs"]):
                raise WorkflowError(f"guidance[{name}]: a weight other than 1 needs a `guide` model")
            for key in ("guide_kimg", "guide_fraction"):
                if g.get(key) is not None:
                    raise WorkflowError(f"guidance[{name}].{key}: needs a `guide` model")
        else:
            g["guide_kimg"] = _guide_kimg(name, g)
        # The EMA lengths scored: the main net's (`stds`, default the grid) and the guide's
        # (`guide_std`: 'same' as the main net, or one or several of the grid: then every main
        # length with every guide length, the autoguidance paper's 2-D EMA sweep).
        g["stds"] = _std_choice(name, "stds", g.get("stds"), None)
        g["guide_stds"] = None if g["guide_std"] == "same" else _std_choice(name, "guide_std", g["guide_std"], None)
        g["sweep"] = g["guide_stds"] is not None and not isinstance(g["guide_std"], (int, float))
        g["interval"] = _interval(f"guidance[{name}]", g)
        settings[name] = g
    return settings


def _cfg_guide_settings(name, g):
    """Classifier-free guidance together with autoguidance (Karras et al. 2024, arXiv 2406.02507,
    App. B.2, Eq. 6): `cfg_guide` (an unconditional model, at its last snapshot and EMA length
    `cfg_guide_std`) next to `guide` (autoguidance's guide), the total `weight` w split by `mix`
    alpha: w_u = (1 - alpha)(w - 1) + 1, w_c = alpha (w - 1) + 1 (edm2.sample.options.mix_weights)."""
    g.setdefault("cfg_guide", None)
    g.setdefault("cfg_guide_std", "same")
    g.setdefault("mix", None)
    if g["cfg_guide"] is None:
        for key, unset in (("mix", None), ("cfg_guide_std", "same")):
            if g[key] != unset:
                raise WorkflowError(f"guidance[{name}].{key}: needs `cfg_guide` (the unconditional guide to mix in)")
        return
    if g["guide"] is None:
        raise WorkflowError(
            f"guidance[{name}].cfg_guide: needs `guide` too (autoguidance's guide); for classifier-free "
            "guidance alone name the unconditional model as `guide`"
        )
    if g["cfg_guide"] not in MODELS:
        raise WorkflowError(
            f"guidance[{name}].cfg_guide: no model named {g['cfg_guide']!r}; add it to `models` (score: false)"
        )
    if g["mix"] is None:
        raise WorkflowError(
            f"guidance[{name}].mix: give the mix alpha in [0, 1] (0: `cfg_guide` only, 1: `guide` only)"
        )
    if isinstance(g["mix"], dict):
        missing = [r for r in g["runs"] if r not in g["mix"]]
        if missing:
            raise WorkflowError(f"guidance[{name}].mix: no mix for {missing}")
    for run in g["runs"]:
        try:
            mix_weights(guidance_weight(g, run), guidance_mix(g, run))
        except ConfigError as e:
            raise WorkflowError(f"guidance[{name}].mix: {e}") from None
    if g["cfg_guide_std"] == "same":
        g["cfg_guide_std"] = None
    else:
        (g["cfg_guide_std"],) = _std_choice(name, "cfg_guide_std", g["cfg_guide_std"], None)


def guidance_weight(g, run):
    w = g["weight"]
    return float(w[run] if isinstance(w, dict) else w)


def guidance_mix(g, run):
    """The mix alpha of a setting with two guides (`cfg_guide` and `guide`), None with one."""
    m = g.get("mix")
    return None if m is None else float(m[run] if isinstance(m, dict) else m)


def is_guided(g, run):
    return g["guide"] is not None and guidance_weight(g, run) != 1.0


def scored_points(run, g):
    """The (main std, guide std) pairs scored for a run under guidance setting `g`: every main
    length (the entry's `stds`, else the run's) with the guide's length ('same': the main one;
    None: unguided). A 2-D sweep (`guide_std` a list or 'grid') pairs every main length with
    every guide length."""
    setting = GUIDANCE[g]
    stds = [s for s in run_stds(run) if setting["stds"] is None or s in setting["stds"]]
    if not is_guided(setting, run):
        return [(s, None) for s in stds]
    if setting["guide_stds"] is None:
        return [(s, s) for s in stds]
    return [(s, gs) for s in stds for gs in setting["guide_stds"]]


GUIDANCE = _guidance_settings()
# (run, guidance) pairs that are scored.
SCORED = [(run, g) for g in GUIDANCE for run in GUIDANCE[g]["runs"] if MODELS[run]["score"]]


# --- The cached guidance search (docs/evaluation.md#the-guidance-search) -------------------------
# A `search` entry minimises each of its metrics over the guidance weight (and, with an interval,
# sigma_hi then sigma_lo) of a guided `guidance` entry, at fixed EMA lengths of the main net and
# the guide: a coarse grid and bisection rounds on a smaller image count, then the confirmation of
# the best at score.num x score.seeds_ranges (edm2.search.SearchPlan). Every evaluation is a file
# named after its setting, so a changed grid or more rounds re-use every evaluation made.


def _per_run(name, key, value, run):
    """A number, or {run: number}, for one run."""
    if isinstance(value, dict):
        if run not in value:
            raise WorkflowError(f"search[{name}].{key}: no value for run {run!r}")
        return value[run]
    return value


def _search_settings():
    settings = {}
    for entry in config["search"]:
        name = entry["name"]
        if name in settings:
            raise WorkflowError(f"search: the name {name!r} is used twice")
        g = entry["guidance"]
        if g not in GUIDANCE:
            raise WorkflowError(f"search[{name}].guidance: no guidance setting named {g!r}")
        setting = GUIDANCE[g]
        if setting["guide"] is None:
            raise WorkflowError(f"search[{name}].guidance: {g!r} has no `guide`; a search needs a guided setting")
        runs = entry.get("runs") or [r for r in setting["runs"] if MODELS[r]["score"]]
        unknown = [r for r in runs if r not in setting["runs"]]
        if unknown:
            raise WorkflowError(f"search[{name}].runs: {unknown} not among guidance[{g}].runs {setting['runs']}")
        metrics = entry.get("metrics") or setting["metrics"]
        unknown = [m for m in metrics if m not in setting["metrics"]]
        if unknown:
            raise WorkflowError(
                f"search[{name}].metrics: {unknown} not among guidance[{g}].metrics {setting['metrics']}"
            )
        if entry.get("mix") is not None and setting["cfg_guide"] is None:
            raise WorkflowError(
                f"search[{name}].mix: guidance[{g}] has one guide; a mix needs `cfg_guide` and `guide` there"
            )
        try:
            plan = SearchPlan(
                axes=tuple(
                    (axis, tuple(parse_grid(entry[axis], f"search[{name}].{axis}")))
                    for axis in SEARCH_AXES
                    if entry.get(axis) is not None
                ),
                bisect=entry.get("bisect", 2),
                num=entry.get("num", 5000),
                ranges=entry.get("seeds_ranges", 1),
                full_num=config["score"]["num"],
                full_ranges=config["score"]["seeds_ranges"],
                confirm=entry.get("confirm", 1),
            )
        except ConfigError as e:
            raise WorkflowError(f"search[{name}]: {e}") from None
        stds = {}
        for run in runs:
            std = std_text(_per_run(name, "std", entry["std"], run))
            gstd = entry.get("guide_std", "same")
            gstd = std if gstd == "same" else std_text(_per_run(name, "guide_std", gstd, run))
            for key, value in (("std", std), ("guide_std", gstd)):
                if value not in GRID:
                    raise WorkflowError(f"search[{name}].{key}: {value} is not in phema.grid; add it there")
            stds[run] = (std, gstd)
        reported = entry.get("reported") or {}
        if not isinstance(reported, dict):
            reported = {run: reported for run in runs}
        settings[name] = {"name": name, "guidance": g, "runs": runs, "metrics": metrics, "plan": plan}
        settings[name].update(stds=stds, reported=reported, args=_plan_args(plan))
    return settings


def _plan_args(plan):
    """The plan as the options of `edm2 report search-round` (edm2.commands.report)."""
    args = []
    for axis, grid in plan.axes:
        args.append(f"--{axis.replace('_', '-')} {','.join(f'{v:g}' for v in grid)}")
    args.append(f"--bisect {plan.bisect} --num {plan.num} --ranges {plan.ranges}")
    args.append(f"--full-num {plan.full_num} --full-ranges {plan.full_ranges} --confirm {plan.confirm}")
    return " ".join(args)


SEARCHES = _search_settings()


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


def ablation_runs():
    """{run: config} of the scored runs when the models include a config other than G (then the
    workflow also makes Table 1 and Fig. 5a); {} otherwise."""
    runs = {run: run_config(run) for run in SCORED_RUNS}
    return runs if any(c != "G" for c in runs.values()) else {}


REFINE = config["phema"]["refine"]


# --- Post-hoc EMA beyond the grid: per-tensor lengths (Fig. 5b) and over training (Fig. 5c) ------


def _sweep_runs():
    """The runs phema.per_tensor and phema.at_kimg apply to (phema.sweep_runs, default every
    scored run with power-function EMAs)."""
    chosen = config["phema"]["sweep_runs"]
    candidates = [run for run in SCORED_RUNS if not is_traditional(run)]
    if chosen is None:
        return candidates
    for run in chosen:
        if run not in candidates:
            raise WorkflowError(f"phema.sweep_runs: {run!r} is not a scored run with post-hoc EMA ({candidates})")
    return list(chosen)


def sweep_guidance(run):
    """The guidance setting the sweeps of `run` are scored with: the first unguided one."""
    for g in GUIDANCE:
        if run in GUIDANCE[g]["runs"] and not is_guided(GUIDANCE[g], run):
            return g
    raise WorkflowError(
        f"phema.per_tensor/at_kimg: run {run} has no unguided guidance setting to score the sweeps with; add one"
    )


PER_TENSOR = config["phema"]["per_tensor"]
AT_KIMG = sorted(config["phema"]["at_kimg"])
AT_GRID = (
    GRID
    if config["phema"]["at_kimg_grid"] is None
    else expand_std_list(config["phema"]["at_kimg_grid"], "phema.at_kimg_grid")
)
SWEEP_RUNS = _sweep_runs() if PER_TENSOR is not None or AT_KIMG else []
if PER_TENSOR is not None:
    PER_TENSOR = dict(PER_TENSOR)
    PER_TENSOR.setdefault("tensors", "d6")
    PER_TENSOR.setdefault("grid", "0.050,0.100,...,0.250")
    PER_TENSOR.setdefault("base", None)
    PER_TENSOR["tensors"] = list(D6_TENSORS) if PER_TENSOR["tensors"] == "d6" else PER_TENSOR["tensors"]
    PER_TENSOR["grid"] = expand_std_list(PER_TENSOR["grid"], "phema.per_tensor.grid")
    if PER_TENSOR["base"] is not None:
        PER_TENSOR["base"] = expand_std_list(PER_TENSOR["base"], "phema.per_tensor.base")[0]
        if PER_TENSOR["base"] not in GRID:
            raise WorkflowError(f"phema.per_tensor.base {PER_TENSOR['base']} is not in phema.grid; add it there")
for _run in SWEEP_RUNS:
    sweep_guidance(_run)  # checked now, not when the sweep's jobs are built
    if any(k >= MODELS[_run]["kimg"] for k in AT_KIMG):
        raise WorkflowError(
            f"phema.at_kimg {AT_KIMG}: run {_run} ends at kimg {MODELS[_run]['kimg']}; list earlier snapshot times only"
        )
if REFINE and any(is_traditional(run) for run in SCORED_RUNS):
    raise WorkflowError(
        "phema.refine: config A runs keep one traditional EMA, which has no grid to refine; set phema.refine: false"
    )
for _name, _g in GUIDANCE.items():
    if REFINE and _g["guide"] is not None and (_g["sweep"] or _g["guide_kimg"] != MODELS[_g["guide"]]["kimg"]):
        raise WorkflowError(
            f"guidance[{_name}]: phema.refine refines the main EMA length only, with a guide at its last snapshot and "
            "one guide_std; set phema.refine: false for a guide_std sweep or an early guide (guide_kimg, guide_fraction)"
        )


# --- Identity of a run (the hash in its folder name) ---------------------------------------------


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
    if key.get("rampup") == RAMPUP_NIMG:  # the paper's warm-up: run folders made before the option keep their names
        del key["rampup"]
    key["extra_args"] = m["extra_args"]
    key["data"] = {
        k: config["data"][k]
        for k in ("source", "digits_resolution", "resolution", "transform", "max_images", "latents", "vae")
    }
    return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:8]


def raw_selection_hash(run):
    """Short hash of what defines a released-raw run's result (where its snapshots come from,
    which files, the kimg reconstructed at): as a trained run's options hash, another selection
    gets folders of its own, so its reconstructions are scored anew."""
    m = MODELS[run]
    key = {"url": m["url"], "include": sorted(m["include"]), "kimg": m["kimg"]}
    return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:8]
