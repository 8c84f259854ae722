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
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from slurm_helpers import FINAL_STATES, REPO, job_env, job_record

pytestmark = pytest.mark.slurm

SNAKEFILE = REPO / "workflow" / "Snakefile"
SMOKE = REPO / "config" / "smoke.yaml"
SLURM_PROFILE = REPO / "workflow" / "profiles" / "slurm"
CI_PROFILE = REPO / "ci" / "slurm" / "profile"
# Per-run records that hold times, hosts or process ids rather than results.
NOT_COMPARED_DIRS = {"logs", "benchmarks"}
NOT_COMPARED_NAMES = {"log.txt", "stats.jsonl"}
NOT_COMPARED_SUFFIXES = {".svg", ".html", ".log"}  # embed dates or random ids
NOT_COMPARED_PREFIX = "events.out.tfevents."  # TensorBoard event files: wall times, host names
PATH_DIGESTS = {"header_sha256"}  # safetensors metadata digests over text that holds the working directory

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


def finish(proc, workdir, timeout=3600):  # a hang guard only: slow machines take long
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
        if p.suffix in NOT_COMPARED_SUFFIXES or ".snakemake" in rel.parts or p.name.startswith(NOT_COMPARED_PREFIX):
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
            # header_sha256 covers the metadata as written, working directory included: the two runs'
            # differ there by design (the metadata itself is compared with the directory replaced).
            meta_a = {k: json_or_text(v, slurm_work) for k, v in (fa.metadata() or {}).items() if k not in PATH_DIGESTS}
            meta_b = {k: json_or_text(v, local_work) for k, v in (fb.metadata() or {}).items() if k not in PATH_DIGESTS}
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
# No guide model, so no guided setting and no guidance search (the smoke config's refers to one).
# One model, no guidance, and without the toy example and the magnitude probes (their rules run
# in the local smoke test; here each SLURM job costs a start and status checks).
ONE_MODEL = {
    "models": [{"name": "tiny", "label": "tiny (8 ch)"}],
    "guidance": [{"name": "noguid"}],
    "search": [],
    "toy": {"enabled": False},
    "magnitudes": {"enabled": False},
}


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


# The smoke config's model, trained longer, as 2 srun tasks (`launch: tasks`) with --signal=TERM@5.
# The first job has a 1-minute limit: slurmctld checks time limits every 30 s and sends the signal
# at the first check less than 5 + 30 s before the limit, 25-55 s after the job starts. Every later
# attempt gets 20 minutes (Snakemake's `attempt` in a --set-resources expression), so the run
# finishes in the second job however fast the machine trains: the outcome depends on speed only
# through two wide margins. (Before, every job had 1 minute and a machine at 340 img/s, most of
# each minute spent starting up, ran out of retries before 64Ki.)
# - The first job must still be training at the signal: 96Ki is 2.7x what a quiet 2-core machine
#   (786 img/s with the reference beside it) trains in 55 s; a SIGTERM during start-up is caught
#   too and still leaves a training state to resume from.
# - The second job must finish in 20 minutes: 96Ki at 80 img/s, a quarter of the slowest machine
#   seen (340 img/s).
TIME_LIMITED = {
    "models": [{"name": "tiny", "procs_per_node": 2, "launch": "tasks", "retries": 3}],
    "guidance": [{"name": "noguid"}],
    "search": [],
    # seed 1: a run folder of its own, never the smoke run's (whose options differ only in
    # operational ones, with which a run resumes).
    "train": {"duration": "96Ki", "snapshot": "8Ki", "checkpoint": "8Ki", "seed": 1},
    "slurm": {"signal_seconds": 5},
}
FIRST_LIMIT_MIN, LATER_LIMIT_MIN = 1, 20
RUNTIME_BY_ATTEMPT = f"train:runtime={FIRST_LIMIT_MIN} if attempt == 1 else {LATER_LIMIT_MIN}"
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


class JobRecords(threading.Thread):
    """Keeps the newest `scontrol` record of every job of `rule` that Snakemake in `workdir` submits,
    while it runs: SLURM forgets a finished job after MinJobAge (600 s), sooner than a slow
    machine's later attempts end. `stop()` ends the polling; `records` maps SLURM job id -> record."""

    def __init__(self, workdir, rule):
        super().__init__(daemon=True)
        self.out, self.rule = workdir / "snakemake.out", rule
        self.records: dict[str, dict] = {}
        self._done = threading.Event()

    def run(self):
        while not self._done.is_set():
            self.poll()
            self._done.wait(2)

    def poll(self):
        text = self.out.read_text() if self.out.exists() else ""
        for slurm_id, name in _submissions(text):
            if name != self.rule or self.records.get(slurm_id, {}).get("JobState") in FINAL_STATES:
                continue
            out = subprocess.run(["scontrol", "-o", "show", "job", slurm_id], capture_output=True, text=True)
            if out.returncode == 0:
                self.records[slurm_id] = job_record(slurm_id)

    def stop(self):
        self._done.set()
        self.join()
        self.poll()  # the last job's final state (on record for MinJobAge after the run)


def test_training_cut_by_its_time_limit_is_resumed_by_the_workflows_retries(smoke_runs):
    # In the smoke runs' folders: their dataset is there, only the training runs.
    slurm_work, _, local_work, _ = smoke_runs
    for work, overlay in ((slurm_work, TIME_LIMITED), (local_work, UNINTERRUPTED)):
        (work / "overlay.yaml").write_text(json.dumps(overlay))  # JSON is YAML
    until = ["--until", "train"]
    cluster = start_snakemake(slurm_work, "--profile", SLURM_PROFILE, "--workflow-profile", CI_PROFILE, *until,
                              "--set-resources", RUNTIME_BY_ATTEMPT, extra_configfile=slurm_work / "overlay.yaml")  # fmt: skip
    procs = [(cluster, slurm_work)]
    keeper = JobRecords(slurm_work, "train")
    keeper.start()
    try:
        # The reference trains meanwhile, on the core that the cluster's training leaves it.
        wait_for_running(slurm_work, "train", cluster)
        local = start_snakemake(local_work, "--cores", "2", *until, extra_configfile=local_work / "overlay.yaml")
        procs.insert(0, (local, local_work))
    except BaseException:
        stop_all(procs)
        keeper.stop()
        raise
    try:
        _, output = run_both(procs)
    finally:
        keeper.stop()

    # The first training job: 2 tasks, a 1-minute limit, stopped by SLURM's signal and failed by
    # itself (FAILED, not TIMEOUT; the job's exit status is Snakemake's); Snakemake resubmitted it
    # with the longer limit until a job completed. Each stop wrote a training state that the next
    # resumed.
    train_jobs = [slurm_id for slurm_id, rule in _submissions(output) if rule == "train"]
    assert len(train_jobs) >= 2, f"the training was not resubmitted:\n{output[-4000:]}"
    assert set(keeper.records) == set(train_jobs), (keeper.records.keys(), train_jobs)
    records = [keeper.records[j] for j in train_jobs]
    limits = [f"00:{FIRST_LIMIT_MIN:02d}:00"] + [f"00:{LATER_LIMIT_MIN:02d}:00"] * (len(records) - 1)
    assert [(r["NumTasks"], r["TimeLimit"]) for r in records] == [("2", t) for t in limits], records
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


# A 2-GPU training of the workflow on one node (`gpus_per_node: 2`, torchrun): the local SLURM has
# two fake GPUs (ci/slurm/gres.conf.in: GRES files /dev/null and /dev/zero, no cgroup constraint),
# so the job is scheduled as on a GPU cluster; the ranks then run on the CPU (no CUDA here).
TWO_GPUS = {
    "models": [{"name": "tiny", "gpus_per_node": 2, "launch": "torchrun"}],
    "guidance": [{"name": "noguid"}],
    "search": [],
    "train": {"duration": "1024Ki", "seed": 2},  # runs until the test has seen its ranks
}


def _processes_of_job(job_id):
    """[(pid, argv, environment)] of the processes of a SLURM job on this machine."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            env = dict(v.split("=", 1) for v in (proc / "environ").read_text(errors="replace").split("\0") if "=" in v)
            argv = (proc / "cmdline").read_text(errors="replace").split("\0")
        except OSError:
            continue
        if env.get("SLURM_JOB_ID") == str(job_id):
            found.append((int(proc.name), argv, env))
    return found


def test_a_two_gpu_training_job_runs_its_script_once_with_one_rank_per_gpu(smoke_runs):
    slurm_work = smoke_runs[0]
    overlay = slurm_work / "two-gpus.yaml"
    overlay.write_text(json.dumps(TWO_GPUS))  # JSON is YAML
    proc = start_snakemake(slurm_work, "--profile", SLURM_PROFILE, "--workflow-profile", CI_PROFILE,
                           "--until", "train", extra_configfile=overlay)  # fmt: skip
    try:
        job = wait_for_running(slurm_work, "train", proc)
        deadline = time.monotonic() + 300
        while True:
            procs = _processes_of_job(job)
            ranks = [p for p in procs if "edm2" in p[1] and "train" in p[1] and "LOCAL_RANK" in p[2]]
            agents = [p for p in procs if any(a.endswith("torchrun") for a in p[1][:2]) and "LOCAL_RANK" not in p[2]]
            if len(ranks) >= 2 or time.monotonic() > deadline or proc.poll() is not None:
                break
            time.sleep(0.5)
        record = job_record(job)
        # Cancelled, the job stops its training (a training state, exit 75) and fails; with no
        # retries configured, Snakemake then ends (how soon depends on the machine: no limit).
        subprocess.run(["scancel", str(job)], check=True)
        proc.wait(timeout=3600)
    finally:
        stop_all([(proc, slurm_work)])
    output = (slurm_work / "snakemake.out").read_text()
    assert len(ranks) == 2, f"ranks of job {job}: {[(p[0], p[1]) for p in procs]}\n{output[-3000:]}"
    # One script: one torchrun agent (the executor did not start the rule once per task).
    assert len(agents) == 1, [(p[0], p[1]) for p in procs]
    # The job asked SLURM for 2 GPUs on one node, as one task.
    assert "gpu:2" in record["TresPerJob"] and record["NumNodes"] == "1" and record["NumTasks"] == "1", record
    # Each rank its own GPU: both see the job's two, and each takes cuda:LOCAL_RANK of them.
    local_ranks = sorted(int(env["LOCAL_RANK"]) for _, _, env in ranks)
    assert local_ranks == [0, 1]
    visible = {env["CUDA_VISIBLE_DEVICES"] for _, _, env in ranks}
    assert len(visible) == 1, visible
    devices = visible.pop().split(",")
    assert len(devices) == 2
    assert {devices[int(env["LOCAL_RANK"])] for _, _, env in ranks} == set(devices)
