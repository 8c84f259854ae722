"""`edm2 train` launched by SLURM as a 2-task job, on CPU (gloo).

The launch is the training rule's multi-node launch (train_launch in
workflow/rules/common/train.smk): one srun task per node running torchrun, meeting at a c10d
rendezvous. Its snapshots must be bit-identical to a plain 2-process torchrun run's on this
machine. (One srun task per rank, time limits and resumption: test_slurm_workflow.py, through the
workflow.)
"""

import subprocess
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from slurm_helpers import job_env, read_tail, sbatch, wait_for_job

pytestmark = pytest.mark.slurm

# A tiny conditional model on 8x8 digits: a few seconds per thousand images on one core.
TINY = [
    "--preset", "edm2-img64-xs", "--batch", "32", "--channels", "8", "--channel-mult", "1,2", "--num-blocks", "1",
    "--attn-resolutions", "none", "--lr", "2.0", "--decay", "70000", "--precision", "fp32", "--workers", "0",
    "--device", "cpu", "--status", "512", "--seed", "7",
]  # fmt: skip


@pytest.fixture(scope="module")
def digits8(tmp_path_factory):
    dest = tmp_path_factory.mktemp("data") / "digits8"
    subprocess.run(["edm2", "dataset", "digits", "--dest", str(dest), "--resolution", "8"], env=job_env(), check=True,
                   capture_output=True)  # fmt: skip
    return dest


def train_args(outdir, data, *extra):
    return ["--outdir", str(outdir), "--data", str(data), *TINY, *extra]


def start_local_torchrun(outdir, data, *extra):
    """The reference: 2 processes on this machine, `torchrun --standalone` (not through SLURM).
    Returns the running process; finish it with wait_local()."""
    cmd = ["torchrun", "--standalone", "--nnodes=1", "--nproc-per-node=2", "-m", "edm2", "train"]
    with open(Path(outdir).parent / f"{Path(outdir).name}.log", "w") as log:
        return subprocess.Popen(
            [*cmd, *train_args(outdir, data, *extra)], env=job_env(), stdout=log, stderr=subprocess.STDOUT
        )


def wait_local(proc, outdir, timeout=600):
    code = proc.wait(timeout=timeout)
    assert code == 0, f"local torchrun failed:\n{read_tail(Path(outdir).parent / f'{Path(outdir).name}.log')}"
    assert (Path(outdir) / "training-done.json").is_file()


def batch_script(path, launch, args):
    """A batch script that starts training the way the workflow's train rule does on a cluster:
    the launch, then status 75 unless the run is done (with --kill-on-bad-exit, srun may report
    the SIGTERM with which it ended the last rank rather than that rank's own 75)."""
    outdir = args[args.index("--outdir") + 1]
    lines = [
        "#!/bin/bash",
        # As in the train rule: under Snakemake's job step, only SLURM_JOB_ID of the SLURM_* is kept.
        'export MASTER_ADDR=$(scontrol show hostnames "$(squeue -h -j "$SLURM_JOB_ID" -o %N)" | head -n 1)',
        'echo "job $SLURM_JOB_ID: $SLURM_NTASKS task(s) on $SLURM_JOB_NODELIST, master $MASTER_ADDR"',
        f"{launch} {' '.join(args)}",
        'echo "launch exit status $?"',
        f"test -f {outdir}/training-done.json || exit 75",
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


# The train rule's multi-node launch, one srun task per node running torchrun, the nodes meeting
# at a c10d rendezvous on the first one; here 2 "nodes" are 2 tasks of this one node.
# (One srun task per rank, `launch: tasks`, runs in test_slurm_workflow.py through the workflow.)
TORCHRUN_C10D = (
    "srun --nodes=1 --ntasks-per-node=2 --kill-on-bad-exit=1 torchrun --nnodes=2 --nproc-per-node=1 "
    '--rdzv-backend=c10d --rdzv-endpoint="$MASTER_ADDR:$((20000 + SLURM_JOB_ID % 10000))" '
    '--rdzv-id="$SLURM_JOB_ID" -m edm2 train'
)
TWO_TASKS = ["--nodes=1", "--ntasks=2", "--cpus-per-task=1", "--mem-per-cpu=1500"]


def tensors_of(path):
    with safe_open(str(path), "pt") as f:
        return f.metadata(), {k: f.get_tensor(k) for k in f.keys()}


def assert_same_snapshots(run, ref):
    """Every snapshot of `ref` exists in `run` with bit-identical tensors and the same nimg/EMA std."""
    names = sorted(p.name for p in Path(ref).glob("network-snapshot-*.safetensors"))
    assert names, f"no snapshots in {ref}"
    assert sorted(p.name for p in Path(run).glob("network-snapshot-*.safetensors")) == names
    for name in names:
        (meta_a, a), (meta_b, b) = tensors_of(Path(run) / name), tensors_of(Path(ref) / name)
        for key in ("nimg", "ema_std", "network_kwargs", "encoder"):
            assert meta_a[key] == meta_b[key], f"{name}: metadata {key} differs"
        assert a.keys() == b.keys(), f"{name}: different tensors"
        for key in a:
            assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), (
                f"{name}: {key} differs from the reference"
            )


def final_state(run):
    """The newest training state of a run: (cur_nimg, raw network weights)."""
    path = max(Path(run).glob("training-state-*.pt"), key=lambda p: int(p.stem.split("-")[-1]))
    data = torch.load(path, map_location="cpu", weights_only=True)
    return data["state"]["cur_nimg"], data["net"]


def assert_same_final_weights(run, ref):
    nimg_a, net_a = final_state(run)
    nimg_b, net_b = final_state(ref)
    assert nimg_a == nimg_b
    assert net_a.keys() == net_b.keys()
    for key in net_a:
        assert torch.equal(net_a[key], net_b[key]), f"final training weights differ at {key}"


SHORT = ["--duration", "2Ki", "--snapshot", "1Ki", "--checkpoint", "2Ki"]


def test_two_task_job_trains_like_local_two_process_run(slurm, digits8, tmp_path):
    script = batch_script(tmp_path / "train.sh", TORCHRUN_C10D, train_args(tmp_path / "slurm-run", digits8, *SHORT))
    job = sbatch([*TWO_TASKS, "--time=5", "--output=job-%j.out", str(script)], tmp_path)
    reference = start_local_torchrun(tmp_path / "local-run", digits8, *SHORT)  # meanwhile

    record = wait_for_job(job, timeout=240)
    log = (tmp_path / f"job-{job}.out").read_text(errors="replace")  # whole: its first line is asserted
    tail = log[-4000:]
    assert record["JobState"] == "COMPLETED" and record["ExitCode"] == "0:0", tail
    assert record["NumTasks"] == "2"
    assert f"job {job}: 2 task(s)" in log and "launch exit status 0" in log, tail
    assert (tmp_path / "slurm-run" / "training-done.json").is_file()

    wait_local(reference, tmp_path / "local-run")
    assert_same_snapshots(tmp_path / "slurm-run", tmp_path / "local-run")
    assert_same_final_weights(tmp_path / "slurm-run", tmp_path / "local-run")
