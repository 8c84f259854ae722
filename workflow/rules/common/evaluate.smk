# Helpers of the score rules and `search_eval` in rules/evaluate.smk: the networks a score reads
# (coarse grid or refined folder, and the guide's, possibly at an early training kimg) and the
# options of `edm2 metrics gen`; the rounds of the guidance search.

import json
import shlex

from edm2.sample.options import command_line, guidance_command_line, mix_weights
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
    """(file, input) of the guide network: reconstructed at the setting's guide_kimg (autoguidance:
    an early point of the guide's training, from its snapshots by `edm2 phema --outkimg`) or at
    its end (then as `net_file` / `net_input`)."""
    guide = setting["guide"]
    if setting["guide_kimg"] == MODELS[guide]["kimg"]:
        return net_file(guide, gstd), net_input(guide, gstd)
    path = phema_file(guide, gstd, setting["guide_kimg"])
    return path, path


def guide_sources(setting, std, gstd):
    """[(file, input, done)] of the guides a guided setting names, in the order of `edm2 metrics
    gen --gnet`: the classifier-free guide (`cfg_guide`, at its last snapshot and `cfg_guide_std`,
    else the main net's length) first, then `guide` (`guide_file`)."""
    path, source = guide_file(setting, guide_std(setting, std, gstd))
    guides = [(path, source, train_done(setting["guide"]))]
    if setting["cfg_guide"] is not None:
        cfg, cstd = setting["cfg_guide"], setting["cfg_guide_std"] or std
        guides.insert(0, (net_file(cfg, cstd), net_input(cfg, cstd), train_done(cfg)))
    return guides


def guides_of(setting, std, gstd, weight, mix):
    """The `guide_sources` a score evaluates: those whose weight (by `mix_weights` with two
    guides) is not 1; none unguided."""
    if setting["guide"] is None or weight == 1.0:
        return []
    guides = guide_sources(setting, std, gstd)
    weights = (weight,) if len(guides) == 1 else mix_weights(weight, mix)
    return [guide for guide, w in zip(guides, weights) if w != 1]


def _mix(wildcards, mix=None):
    """The mix alpha of a score: `mix` (a search point's), else the setting's (None: one guide)."""
    return guidance_mix(GUIDANCE[wildcards.guidance], wildcards.run) if mix is None else mix


def _check(wildcards):
    run, g = wildcards.run, wildcards.guidance
    if run not in MODELS or g not in GUIDANCE:
        raise WorkflowError(f"score: unknown run {run!r} or guidance setting {g!r}")


def _score_inputs(wildcards, weight, net=None, mix=None):
    _check(wildcards)
    run, g, std = wildcards.run, wildcards.guidance, wildcards.std
    setting = GUIDANCE[g]
    # The reconstructed networks are `ancient`: re-running `phema` for a changed grid rewrites
    # every file of the grid but must not re-score the stds that were already scored. A new
    # training run still re-scores everything, through `done`.
    net = net_input(run, std) if net is None else net
    inputs = {"net": ancient(net), "done": train_done(run), "ref": ref_input()}
    guides = guides_of(setting, std, wildcards.get("gstd"), weight, _mix(wildcards, mix))
    for i, (_, source, done) in enumerate(guides):
        suffix = "" if i == 0 else str(i + 1)  # gnet, gdone; with two guides also gnet2, gdone2
        inputs[f"gnet{suffix}"] = ancient(source)
        inputs[f"gdone{suffix}"] = done
    if "fd_cnn" in setting["metrics"]:
        inputs["detector"] = DETECTOR
    return inputs


def _score_args(wildcards, weight, interval, mix=None):
    setting = GUIDANCE[wildcards.guidance]
    args = []
    mix, std, gstd = _mix(wildcards, mix), wildcards.std, wildcards.get("gstd")
    if guides_of(setting, std, gstd, weight, mix):  # --gnet, --guidance (--guidance-mix): edm2.sample.options
        args += guidance_command_line([path for path, _, _ in guide_sources(setting, std, gstd)], weight, mix)
        args += command_line(interval)  # the guidance interval (edm2.sample.options)
    if "fd_cnn" in setting["metrics"]:
        args.append(f"--cnn-detector {shlex.quote(DETECTOR)}")
    return " ".join(args)


def score_inputs(wildcards, net=None):
    """Inputs of one score: the network (and its guide's), training done, reference, detector.
    `net`: the file or folder that provides the network (default: the grid's, `net_input`)."""
    return _score_inputs(wildcards, guidance_weight(GUIDANCE[wildcards.guidance], wildcards.run), net)


def score_args(wildcards):
    """Options of `edm2 metrics gen` for one score (guide, guidance weight, interval, detector)."""
    setting = GUIDANCE[wildcards.guidance]
    return _score_args(wildcards, guidance_weight(setting, wildcards.run), setting["interval"])


def tensor_score_inputs(wildcards):
    """Inputs of a per-tensor score (Fig. 5b): the variants' folder and the base length's source."""
    return score_inputs(wildcards, phema_tensor_dir(wildcards.run)) | {"base": per_tensor_base_input(wildcards)}


def at_score_inputs(wildcards):
    """Inputs of a score at an earlier training time (Fig. 5c): that grid's folder."""
    return score_inputs(wildcards, phema_at_dir(wildcards.run))


# `edm2 metrics gen` of every score rule: `score_params(net)` gives its params, `net(wildcards)`
# the network file scored.
SCORE_SHELL = (
    "python -m edm2 metrics gen --net {params.net:q} {params.guide} --ref {params.ref:q}"
    " --metrics {params.metrics} --num {params.num} --seed {params.seed} --seeds-ranges {params.ranges}"
    " --steps {params.steps} --batch {params.batch} {params.eager} {params.extra} --json {output:q} > {log:q} 2>&1"
)


def score_params(net):
    return dict(
        net=net,
        ref=ref_stats(),
        metrics=lambda wc: ",".join(GUIDANCE[wc.guidance]["metrics"]),
        num=config["score"]["num"],
        seed=config["score"]["seed"],
        ranges=config["score"]["seeds_ranges"],
        steps=config["score"]["steps"],
        batch=config["score"]["batch"],
        guide=score_args,
        eager=sampling_mode_arg(),
        extra=config["score"]["extra_args"],
    )


# --- The guidance search ---------------------------------------------------------------------------


def search_eval_inputs(wildcards):
    """Inputs of one search evaluation: as a score's, at the point's weight."""
    point = parse_point_name(wildcards.point)
    return _score_inputs(wildcards, point.weight, mix=point.mix)


def search_eval_args(wildcards):
    """Options of `edm2 metrics gen` for one search point: guides, weight, mix and interval (the
    point's mix and sigma_hi/sigma_lo when the search has those axes, else the guidance setting's)."""
    point = parse_point_name(wildcards.point)
    interval = GUIDANCE[wildcards.guidance]["interval"]
    if point.sigma_hi is not None or point.sigma_lo is not None:
        interval = {k: v for k, v in (("sigma_lo", point.sigma_lo), ("sigma_hi", point.sigma_hi)) if v is not None}
    return _score_args(wildcards, point.weight, interval, point.mix)


def search_eval_params():
    """The params of `search_eval`: a score's (SCORE_SHELL), with the point's weight, interval,
    image count and seed ranges."""
    return score_params(lambda wc: net_file(wc.run, wc.std)) | dict(
        num=lambda wc: parse_point_name(wc.point).num,
        ranges=lambda wc: parse_point_name(wc.point).ranges,
        guide=search_eval_args,
    )


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
