"""The smoke configuration (one model) through the workflow's SLURM profile, against the local SLURM.

    snakemake --profile workflow/profiles/slurm --workflow-profile ci/slurm/profile \
        --configfile config/smoke.yaml

Every job of the DAG (except the local `all` and `result_set`) must go through sbatch and be on SLURM's record as
completed in partition `debug` under account `ci`, and every output must equal that of a plain
local run (`snakemake --cores 2`) of the same configuration.
"""

import json
import re
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from slurm_helpers import REPO, job_env, job_record

pytestmark = pytest.mark.slurm

SNAKEFILE = REPO / "workflow" / "Snakefile"
SMOKE = REPO / "config" / "smoke.yaml"
SLURM_PROFILE = REPO / "workflow" / "profiles" / "slurm"
CI_PROFILE = REPO / "ci" / "slurm" / "profile"
# Per-run records that hold times, hosts or process ids rather than results.
NOT_COMPARED_DIRS = {"logs", "benchmarks"}
NOT_COMPARED_NAMES = {"log.txt", "stats.jsonl"}
NOT_COMPARED_SUFFIXES = {".svg", ".html", ".log"}  # embed dates or random ids

RULE_LINE = re.compile(r"^(localrule|rule|localcheckpoint|checkpoint) (\S+):$")
JOBID_LINE = re.compile(r"^\s+jobid: (\d+)$")
SUBMITTED = re.compile(r"Job (\d+) has been submitted with SLURM jobid (\d+) \(log: (\S+)\)\.")


def start_snakemake(workdir, *args, extra_configfile=None):
    """Starts snakemake on the smoke config (plus an overlay) in `workdir`; output to snakemake.out."""
    workdir.mkdir(parents=True, exist_ok=True)
    configfiles = [str(SMOKE)] + ([str(extra_configfile)] if extra_configfile else [])
    cmd = ["snakemake", "--snakefile", str(SNAKEFILE), "--directory", str(workdir), *map(str, args),
           "--configfile", *configfiles]  # fmt: skip
    env = job_env()
    for key in ("EDM2_SLURM_PARTITION", "EDM2_SLURM_ACCOUNT"):
        env.pop(key, None)
    with open(workdir / "snakemake.out", "w") as out:
        return subprocess.Popen(cmd, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT)


def finish(proc, workdir, timeout=900):
    code = proc.wait(timeout=timeout)
    output = (workdir / "snakemake.out").read_text()
    assert code == 0, f"snakemake in {workdir} failed ({code}):\n{output[-8000:]}"
    return output


def jobs_of(output):
    """{snakemake job id: (rule, local?)} from the 'rule X:' / 'jobid: N' blocks of a log."""
    jobs, current = {}, None
    for line in output.splitlines():
        if m := RULE_LINE.match(line):
            current = (m.group(2), m.group(1).startswith("local"))
        elif current and (m := JOBID_LINE.match(line)):
            jobs[int(m.group(1))] = current
            current = None
    return jobs


def _submissions(output):
    """[(SLURM job id, rule)] of every submission in a Snakemake log, in order."""
    jobs = jobs_of(output)
    return [(m.group(2), jobs[int(m.group(1))][0]) for m in SUBMITTED.finditer(output)]


def results_dir(workdir):
    return workdir / "results" / "smoke"


def compared_files(root):
    out = []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if not p.is_file() or rel.parts[0] in NOT_COMPARED_DIRS or p.name in NOT_COMPARED_NAMES:
            continue
        if p.suffix in NOT_COMPARED_SUFFIXES or ".snakemake" in rel.parts:
            continue
        out.append(rel)
    return out


def normalised(value, workdir):
    """Text or parsed JSON with this run's working directory replaced by a placeholder."""
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return text.replace(str(workdir), "<WORKDIR>")


def json_or_text(text, workdir):
    text = normalised(text, workdir)
    try:
        return json.loads(text)
    except ValueError:
        return text


def flat_tensors(obj, prefix=""):
    """{path: tensor} of every tensor in a nested dict/list (a training state)."""
    if isinstance(obj, torch.Tensor):
        return {prefix: obj}
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list | tuple) else []
    out = {}
    for key, value in items:
        out.update(flat_tensors(value, f"{prefix}/{key}"))
    return out


def assert_same_output(rel, slurm_root, slurm_work, local_root, local_work):
    a, b = slurm_root / rel, local_root / rel
    if a.suffix == ".safetensors":
        with safe_open(str(a), "pt") as fa, safe_open(str(b), "pt") as fb:
            meta_a = {k: json_or_text(v, slurm_work) for k, v in (fa.metadata() or {}).items()}
            meta_b = {k: json_or_text(v, local_work) for k, v in (fb.metadata() or {}).items()}
            assert meta_a == meta_b, f"{rel}: metadata differs"
            assert set(fa.keys()) == set(fb.keys()), f"{rel}: different tensors"
            for key in fa.keys():
                assert torch.equal(fa.get_tensor(key), fb.get_tensor(key)), f"{rel}: {key} differs"
    elif a.suffix == ".pt":
        ta = flat_tensors(torch.load(a, map_location="cpu", weights_only=True))
        tb = flat_tensors(torch.load(b, map_location="cpu", weights_only=True))
        assert ta.keys() == tb.keys(), f"{rel}: different contents"
        for key in ta:
            assert torch.equal(ta[key], tb[key]), f"{rel}: {key} differs"
    elif a.suffix == ".npz":
        with np.load(a) as na, np.load(b) as nb:
            assert sorted(na.files) == sorted(nb.files), f"{rel}: different arrays"
            for key in na.files:
                assert np.array_equal(na[key], nb[key]), f"{rel}: {key} differs"
    elif a.suffix in {".json", ".csv", ".md", ".tex", ".txt", ".tsv", ".yaml"}:
        assert json_or_text(a.read_text(), slurm_work) == json_or_text(b.read_text(), local_work), f"{rel} differs"
    else:  # PNG, ZIP, ...: byte for byte
        assert a.read_bytes() == b.read_bytes(), f"{rel} differs"


def stop_all(procs_and_dirs):
    """Terminates the snakemake processes still running (snakemake cancels its SLURM jobs)."""
    for proc, _ in procs_and_dirs:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(60)


def run_both(procs_and_dirs):
    """Waits for snakemake processes [(proc, workdir)]; returns their outputs. On any failure the
    others are terminated."""
    try:
        return [finish(proc, work) for proc, work in procs_and_dirs]
    finally:
        stop_all(procs_and_dirs)


# One model and no guidance: every rule of the smoke DAG but the guided scores, which differ from
# the others only in their options (tests/workflow covers them), in fewer SLURM job waves.
ONE_MODEL = {"models": [{"name": "tiny", "label": "tiny (8 ch)"}], "guidance": [{"name": "noguid"}]}


@pytest.fixture(scope="module")
def smoke_runs(slurm, tmp_path_factory):
    """The smoke config (one model) through the SLURM profile, and locally: (slurm workdir, its
    output, local workdir, its output). The local reference runs meanwhile: the cluster run
    spends much of its time waiting for job starts and status checks."""
    root = tmp_path_factory.mktemp("smoke")
    slurm_work, local_work = root / "slurm", root / "local"
    overlay = root / "one-model.yaml"
    overlay.write_text(json.dumps(ONE_MODEL))  # JSON is YAML
    cluster = start_snakemake(
        slurm_work, "--profile", SLURM_PROFILE, "--workflow-profile", CI_PROFILE, extra_configfile=overlay
    )
    local = start_snakemake(local_work, "--cores", "2", extra_configfile=overlay)
    local_output, output = run_both([(local, local_work), (cluster, slurm_work)])
    return slurm_work, output, local_work, local_output


def test_smoke_workflow_runs_every_job_through_sbatch_with_local_results(smoke_runs):
    slurm_work, output, local_work, local_output = smoke_runs

    # Every job of the DAG went through sbatch, except the local ones: the target rule and
    # result_set (it only writes the list of results the configuration names).
    jobs = jobs_of(output)
    assert jobs, output[-3000:]
    assert sorted(rule for rule, _ in jobs.values()) == sorted(rule for rule, _ in jobs_of(local_output).values())
    assert {rule for rule, local in jobs.values() if local} == {"all", "result_set"}
    submitted = {}
    for line in output.splitlines():
        if m := SUBMITTED.search(line):
            submitted[int(m.group(1))] = (m.group(2), Path(m.group(3)))
    remote = {jobid: rule for jobid, (rule, local) in jobs.items() if not local}
    assert set(submitted) == set(remote), f"jobs without a SLURM job id: {set(remote) - set(submitted)}"
    assert {"train", "phema", "score", "aggregate"} <= set(remote.values())

    # ...and each is on SLURM's record: completed, in the CI partition and account, that rule.
    for jobid, rule in remote.items():
        slurm_id, log = submitted[jobid]
        record = job_record(slurm_id)
        assert record["JobState"] == "COMPLETED" and record["ExitCode"] == "0:0", f"{rule}: {record}"
        assert record["Partition"] == "debug" and record["Account"] == "ci"
        assert record["WorkDir"] == str(slurm_work)
        assert record["Comment"].startswith(f"rule_{rule}"), record["Comment"]
        assert Path(record["StdOut"]) == log and f"rule {rule}:" in log.read_text(), f"{rule}: {log}"

    # The same outputs as the local run (paths of the working directory aside).
    slurm_root, local_root = results_dir(slurm_work), results_dir(local_work)
    files = compared_files(local_root)
    assert files and compared_files(slurm_root) == files
    assert any(f.suffix == ".safetensors" for f in files) and any(f.parts[0] == "scores" for f in files)
    for rel in files:
        assert_same_output(rel, slurm_root, slurm_work, local_root, local_work)


# The smoke config's model, trained longer, as 2 srun tasks (`launch: tasks`) in 1-minute jobs
# with --signal=TERM@5. slurmctld checks time limits every 30 s and sends such a signal at the
# first check less than 5 + 30 s before the limit: 25-55 s after the job starts, after start-up
# and before the limit. The run lasts longer than that while the reference run shares the cores.
TIME_LIMITED = {
    "models": [{"name": "tiny", "procs_per_node": 2, "launch": "tasks", "retries": 6}],
    "guidance": [{"name": "noguid"}],
    # The first 1-minute job must still be training when SLURM's SIGTERM comes (55 s): 64Ki is
    # 83 s of training at the 786 img/s seen on a quiet 2-core machine (2 jobs), 160 s at the
    # 410 img/s of a busy one (3-4 jobs). 24Ki (31 s when quiet) finished before the signal once,
    # and the job then failed without a training state to resume from the signal. (A larger
    # signal_seconds makes SLURM send it at irregular times, sometimes ~15 s into a job.)
    "train": {"duration": "64Ki", "snapshot": "8Ki", "checkpoint": "8Ki"},
    "slurm": {"signal_seconds": 5},
    "resources": {"train": {"runtime": 1}},
}
# The uninterrupted reference: the same run as 2 local processes (torchrun --standalone).
UNINTERRUPTED = {**TIME_LIMITED, "models": [{"name": "tiny", "procs_per_node": 2, "launch": "torchrun"}]}


def train_jobs_opts(output):
    """The {opts} wildcard (options hash, the run folder's suffix) of the train jobs in a log."""
    found = set(re.findall(r"rule_train/\S+?_([0-9a-f]{8})/", output))
    assert len(found) == 1, found
    return found.pop()


def wait_for_running(workdir, rule, proc, timeout=300):
    """Waits until snakemake in `workdir` has a job of `rule` running on SLURM; returns its id."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        for slurm_id, name in _submissions((workdir / "snakemake.out").read_text()):
            if name == rule and job_record(slurm_id)["JobState"] != "PENDING":
                return slurm_id
        time.sleep(1)
    raise AssertionError(f"no {rule} job started:\n{(workdir / 'snakemake.out').read_text()[-4000:]}")


def test_training_cut_by_its_time_limit_is_resumed_by_the_workflows_retries(smoke_runs):
    # In the smoke runs' folders: their dataset is there, only the training runs.
    slurm_work, _, local_work, _ = smoke_runs
    for work, overlay in ((slurm_work, TIME_LIMITED), (local_work, UNINTERRUPTED)):
        (work / "overlay.yaml").write_text(json.dumps(overlay))  # JSON is YAML
    until = ["--until", "train"]
    cluster = start_snakemake(slurm_work, "--profile", SLURM_PROFILE, "--workflow-profile", CI_PROFILE, *until,
                              extra_configfile=slurm_work / "overlay.yaml")  # fmt: skip
    procs = [(cluster, slurm_work)]
    try:
        # The reference trains meanwhile, on the core that the cluster's training leaves it.
        wait_for_running(slurm_work, "train", cluster)
        local = start_snakemake(local_work, "--cores", "2", *until, extra_configfile=local_work / "overlay.yaml")
        procs.insert(0, (local, local_work))
    except BaseException:
        stop_all(procs)
        raise
    _, output = run_both(procs)

    # Every training job but the last: 2 tasks, a 1-minute limit, stopped by SLURM's signal and
    # failed by itself (FAILED, not TIMEOUT; the job's exit status is Snakemake's); Snakemake
    # resubmitted it until a job completed. Each stop wrote a training state that the next resumed.
    train_jobs = [slurm_id for slurm_id, rule in _submissions(output) if rule == "train"]
    assert len(train_jobs) >= 2, f"the training was not resubmitted:\n{output[-4000:]}"
    records = [job_record(j) for j in train_jobs]
    assert all(r["NumTasks"] == "2" and r["TimeLimit"] == "00:01:00" for r in records), records
    for r in records[:-1]:  # FAILED: it ended by itself; SLURM enforces the limit itself at 60-90 s
        assert r["JobState"] == "FAILED", r
    assert (records[-1]["JobState"], records[-1]["ExitCode"]) == ("COMPLETED", "0:0"), records[-1]
    run = results_dir(slurm_work) / "runs" / "tiny" / f"train-{train_jobs_opts(output)}"
    log = (run / "log.txt").read_text()  # both ranks' output, every attempt
    assert log.count("Resuming from") == len(records) - 1, log[-3000:]
    assert 1 <= log.count("Received SIGTERM") <= 2 * (len(records) - 1), log[-3000:]

    # The final weights (and every snapshot) equal the uninterrupted run's, bit for bit.
    reference = results_dir(local_work) / "runs" / "tiny" / run.name
    assert (reference / "training-done.json").is_file() and (run / "training-done.json").is_file()
    names = sorted(p.name for p in reference.glob("network-snapshot-*.safetensors"))
    assert names and sorted(p.name for p in run.glob("network-snapshot-*.safetensors")) == names
    last_state = max(p.name for p in reference.glob("training-state-*.pt"))
    for rel in [*names, last_state]:
        assert_same_output(Path(rel), run, slurm_work, reference, local_work)
