# Helpers of the post-hoc EMA rules (rules/phema.smk): the snapshots a reconstruction reads, and
# the refinement of the EMA grid (phema.refine).

import json
import shlex


def snapshot_inputs(run):
    """Inputs of the phema rules: a trained run's training-done.json, or a released-raw run's
    downloaded snapshots."""
    if MODELS[run]["source"] == "released-raw":
        return {"done": train_done(run), "snapshots": raw_dir(run)}
    return {"done": train_done(run)}


def snapshot_dir(run):
    """The folder `edm2 phema` reads a run's snapshots from."""
    return raw_dir(run) if MODELS[run]["source"] == "released-raw" else run_dir(run)


# --- Refinement of the EMA grid (phema.refine) ------------------------------------------------


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
            s = GUIDANCE[g]
            guides_at_main_std = (s["guide"] == run and s["guide_std"] == "same") or (
                s["cfg_guide"] == run and s["cfg_guide_std"] is None
            )
            if guides_at_main_std and is_guided(s, main):
                stds.update(values)
    return sorted(s for s in stds if s not in GRID)


def coarse_scores():
    """The score JSONs of the coarse EMA grid (what refine_grid chooses from)."""
    return [score_file(run, g, std, gstd) for run, g in SCORED for std, gstd in scored_points(run, g)]


# --- Per-tensor EMA (phema.per_tensor, Fig. 5b) and the grid over training (phema.at_kimg, 5c) --


def refined_best():
    """{run: {guidance: {metric, ema_std, value}}}: the best of the coarse grid, chosen by the
    `refine_grid` checkpoint (only call from input functions or params of jobs after it)."""
    with open(checkpoints.refine_grid.get().output[0]) as f:
        return json.load(f)["best"]


def per_tensor_base(run):
    """The global EMA length of a run's per-tensor variants: phema.per_tensor.base, or the best
    of the coarse grid for the run's sweep guidance setting (after the refine_grid checkpoint)."""
    if PER_TENSOR["base"] is not None:
        return PER_TENSOR["base"]
    return std_text(refined_best()[run][sweep_guidance(run)]["ema_std"])


def per_tensor_base_input(wildcards):
    """The checkpoint the base EMA length comes from (nothing with phema.per_tensor.base)."""
    return [] if PER_TENSOR["base"] is not None else [REFINE_GRID]


def tensor_std_args(run):
    """`--tensor-std T=S` for every tensor and EMA length of the sweep: all variants of the run
    in one `edm2 phema` pass."""
    return " ".join(shlex.quote(f"--tensor-std={t}={s}") for t in PER_TENSOR["tensors"] for s in PER_TENSOR["grid"])
