# Helpers of `train` in rules/train.smk: its `edm2 train` command line, how it is
# launched (python, torchrun, srun), its retries and its SLURM geometry.

import math
import os
import shlex

from edm2.train.options import command_line as train_command_line

# --- Launch: the command line and how it is started -------------------------------------------


def _train_cli(run):
    """`edm2 train` options of a run (everything but --outdir): the options the configuration
    gives, in the command's own spelling (edm2.train.options.command_line), then extra_args."""
    m = MODELS[run]
    args = ["--data", training_data(), *train_command_line(m["given"])]
    return " ".join([shlex.join(args), m["extra_args"]]).strip()


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


# --- Resources: the SLURM geometry of a training job ------------------------------------------


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
