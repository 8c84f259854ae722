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


def score_inputs(wildcards):
    """Inputs of one score: the network (and its guide's), training done, reference, detector."""
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
