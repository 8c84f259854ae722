# Helpers of the magnitude rules (rules/magnitudes.smk): which snapshots of a run are measured and
# into which files, and the measurements a plot needs.

import shlex

from edm2.naming import SNAPSHOT_PREFIX, snapshot_name


def snapshot_nimgs(run):
    """{kimg text (7 digits): nimg} of every snapshot a trained run writes (at 0 and every
    `snapshot` images up to the duration)."""
    opts = MODELS[run]["resolved"]
    return {f"{n // 1000:07d}": n for n in range(0, MODELS[run]["duration_nimg"] + 1, opts.snapshot)}


def magnitude_snapshot(run, kimg):
    """The snapshot of a trained run that is measured at `kimg` (7 digits): the EMA closest to sigma_rel 0.10
    (the "EMA-averaged network" of EDM2 Fig. 15), or config A's one traditional EMA, whose
    relative std in the file name follows the image count (edm2.train.configs)."""
    opts = MODELS[run]["resolved"]
    nimg = snapshot_nimgs(run)[kimg]
    if is_traditional(run):
        std = opts.training().traditional_ema_std(nimg)
    else:
        std = min(opts.ema_stds, key=lambda s: abs(float(s) - 0.10))
    return f"{run_dir(run)}/{snapshot_name(SNAPSHOT_PREFIX, nimg // 1000, std)}"


def magnitude_args_of_run(run, folder):
    """`edm2 analyze magnitudes` NET and --out arguments that measure every snapshot of a trained
    run in one process, snapshot <kimg> into `folder`/<kimg>.json."""
    kimgs = list(snapshot_nimgs(run))
    nets = [shlex.quote(magnitude_snapshot(run, kimg)) for kimg in kimgs]
    outs = [f"--out {shlex.quote(f'{folder}/{kimg}.json')}" for kimg in kimgs]
    return " ".join(nets + outs)


def magnitude_inputs(run):
    """What the plot of one run reads: a trained run's folder of per-snapshot JSON files, or a
    released-raw run's."""
    if MODELS[run]["source"] == "released-raw":
        return [fill(RAW_MAGNITUDES, run=run, selection=raw_selection_hash(run))]
    return [fill(MAGNITUDES, run=run)]


def magnitude_json_args(files):
    """The JSON files of `edm2 analyze plot-magnitudes`: files as they are, folders as their *.json."""
    return " ".join(shlex.quote(f) if f.endswith(".json") else f"{shlex.quote(f)}/*.json" for f in files)


def magnitude_args():
    """`edm2 analyze magnitudes` options of the workflow (magnitudes.num; none: its default)."""
    num = config["magnitudes"]["num"]
    return "" if num is None else f"--num {int(num)}"
