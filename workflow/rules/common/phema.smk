# Helpers of the post-hoc EMA rules (rules/phema.smk): the snapshots a reconstruction reads, and
# the refinement of the EMA grid (phema.refine).

import json


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
            if GUIDANCE[g]["guide"] == run and GUIDANCE[g]["guide_std"] == "same" and is_guided(GUIDANCE[g], main):
                stds.update(values)
    return sorted(s for s in stds if s not in GRID)


def coarse_scores():
    """The score JSONs of the coarse EMA grid (what refine_grid chooses from)."""
    return [score_file(run, g, std, gstd) for run, g in SCORED for std, gstd in scored_points(run, g)]
