# Helpers of `score` and `search_eval` in rules/evaluate.smk: the networks a score reads (coarse
# grid or refined folder, and the guide's, possibly at an early training kimg) and the options of
# `edm2 metrics gen`; the rounds of the guidance search.

import json
import shlex

from edm2.naming import std_text
from edm2.search import parse_point_name
from snakemake.exceptions import WorkflowError


def net_file(run, std):
    """Reconstructed network of `run` at `std`: from the coarse grid, or from the refined folder
    (config A: its training snapshot)."""
    if is_traditional(run):
        return traditional_snapshot(run)
    return phema_file(run, std) if std in GRID else refined_file(run, std)


def net_input(run, std):
    """The output that provides net_file: the coarse grid's file, or the refined folder (config
    A: training-done.json, written with its snapshot)."""
    if is_traditional(run):
        return train_done(run)
    return phema_file(run, std) if std in GRID else refine_dir(run)


def guide_std(setting, std, gstd=None):
    """The guide's EMA length of a score at main length `std`: the wildcard of a 2-D sweep, else
    the setting's one guide_std ('same': the main net's)."""
    if gstd is not None:
        return gstd
    return std if setting["guide_stds"] is None else setting["guide_stds"][0]


def guide_file(setting, gstd):
    """The guide network: reconstructed at the setting's guide_kimg (autoguidance: an early point
    of the guide's training, from its snapshots by `edm2 phema --outkimg`) or at its end."""
    guide = setting["guide"]
    if setting["guide_kimg"] == MODELS[guide]["kimg"]:
        return net_file(guide, gstd), net_input(guide, gstd)
    path = phema_file(guide, gstd, setting["guide_kimg"])
    return path, path


def _score_inputs(run, g, std, gstd, weight):
    setting = GUIDANCE[g]
    # The reconstructed networks are `ancient`: re-running `phema` for a changed grid rewrites
    # every file of the grid but must not re-score the stds that were already scored. A new
    # training run still re-scores everything, through `done`.
    inputs = {"net": ancient(net_input(run, std)), "done": train_done(run), "ref": ref_input()}
    if setting["guide"] is not None and weight != 1.0:
        inputs["gnet"] = ancient(guide_file(setting, guide_std(setting, std, gstd))[1])
        inputs["gdone"] = train_done(setting["guide"])
    if "fd_cnn" in setting["metrics"]:
        inputs["detector"] = DETECTOR
    return inputs


def _score_args(g, std, gstd, weight):
    setting = GUIDANCE[g]
    args = []
    if setting["guide"] is not None and weight != 1.0:
        path = guide_file(setting, guide_std(setting, std, gstd))[0]
        args.append(f"--gnet {shlex.quote(path)}")
        args.append(f"--guidance {weight:g}")
    if "fd_cnn" in setting["metrics"]:
        args.append(f"--cnn-detector {shlex.quote(DETECTOR)}")
    return " ".join(args)


def _check(wildcards):
    run, g = wildcards.run, wildcards.guidance
    if run not in MODELS or g not in GUIDANCE:
        raise WorkflowError(f"score: unknown run {run!r} or guidance setting {g!r}")


def score_inputs(wildcards):
    """Inputs of one score: the network (and its guide's), training done, reference, detector."""
    _check(wildcards)
    weight = guidance_weight(GUIDANCE[wildcards.guidance], wildcards.run)
    return _score_inputs(wildcards.run, wildcards.guidance, wildcards.std, wildcards.get("gstd"), weight)


def score_args(wildcards):
    """Options of `edm2 metrics gen` for one score (guide, guidance weight, detector)."""
    weight = guidance_weight(GUIDANCE[wildcards.guidance], wildcards.run)
    return _score_args(wildcards.guidance, wildcards.std, wildcards.get("gstd"), weight)


# --- The guidance search ---------------------------------------------------------------------------


def search_eval_inputs(wildcards):
    """Inputs of one search evaluation: as a score's, at the point's weight."""
    _check(wildcards)
    weight = parse_point_name(wildcards.point).weight
    return _score_inputs(wildcards.run, wildcards.guidance, wildcards.std, wildcards.gstd, weight)


def search_eval_args(wildcards):
    """Options of `edm2 metrics gen` for one search point: guide and weight, image count, ranges."""
    point = parse_point_name(wildcards.point)
    args = _score_args(wildcards.guidance, wildcards.std, wildcards.gstd, point.weight)
    return f"{args} --num {point.num} --seeds-ranges {point.ranges}"


def search_points(wildcards, round_):
    """Names of the points round `round_` evaluates: the first grid (static), else those the
    state of the round before names (a checkpoint)."""
    s = SEARCHES[wildcards.search]
    if round_ == 0:
        return [p.name for p in s["plan"].points(0, {})]
    state = checkpoints.search_round.get(
        search=wildcards.search, run=wildcards.run, metric=wildcards.metric, round=str(round_ - 1)
    ).output[0]
    with open(state) as f:
        data = json.load(f)
    return [e["name"] for e in data["evaluated"]] + data["next"]


def search_round_inputs(wildcards, round_=None):
    """Every evaluation up to and including the round (`evals`), and the state before it (`prev`,
    which names them)."""
    round_ = int(wildcards.round) if round_ is None else round_
    search, run, metric = wildcards.search, wildcards.run, wildcards.metric
    inputs = {"evals": [search_eval_file(search, run, p) for p in search_points(wildcards, round_)]}
    if round_ > 0:
        inputs["prev"] = fill(SEARCH_STATE, search=search, run=run, metric=metric, round=round_ - 1)
    return inputs


def search_result_inputs(wildcards):
    """The final state's inputs: every screening evaluation and the confirmations."""
    return search_round_inputs(wildcards, SEARCHES[wildcards.search]["plan"].rounds)


def search_states(search):
    """The results of a search, one per (run, metric)."""
    s = SEARCHES[search]
    return [fill(SEARCH_RESULT, search=search, run=run, metric=m) for run in s["runs"] for m in s["metrics"]]
