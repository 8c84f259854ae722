# Helpers of `score` in rules/evaluate.smk: the networks a score reads (coarse grid or
# refined folder, and the guide's) and the options of `edm2 metrics gen`.

import shlex

from edm2.naming import std_text
from edm2.sample.options import command_line
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


def score_inputs(wildcards, net=None):
    """Inputs of one score: the network (and its guide's), training done, reference, detector.
    `net`: the file or folder that provides the network (default: the grid's, `net_input`)."""
    run, g, std = wildcards.run, wildcards.guidance, wildcards.std
    if run not in MODELS or g not in GUIDANCE:
        raise WorkflowError(f"score: unknown run {run!r} or guidance setting {g!r}")
    setting = GUIDANCE[g]
    # The reconstructed networks are `ancient`: re-running `phema` for a changed grid rewrites
    # every file of the grid but must not re-score the stds that were already scored. A new
    # training run still re-scores everything, through `done`.
    net = net_input(run, std) if net is None else net
    inputs = {"net": ancient(net), "done": train_done(run), "ref": ref_input()}
    if is_guided(setting, run):
        guide = setting["guide"]
        guide_std = std if setting["guide_std"] == "same" else std_text(setting["guide_std"])
        inputs["gnet"] = ancient(net_input(guide, guide_std))
        inputs["gdone"] = train_done(guide)
    if "fd_cnn" in setting["metrics"]:
        inputs["detector"] = DETECTOR
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
        args += command_line(setting["interval"])  # the guidance interval (edm2.sample.options)
    if "fd_cnn" in setting["metrics"]:
        args.append(f"--cnn-detector {shlex.quote(DETECTOR)}")
    return " ".join(args)


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
