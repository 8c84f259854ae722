"""Process groups, ranks, stop signals and log tees for training (EDM2-SPEC §13).

Launch with `torchrun` (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT), with one SLURM
task per rank (SLURM_PROCID, SLURM_LOCALID, SLURM_NTASKS mapped onto them), or as a single plain
process (rank 0 of 1 on localhost, a free port).
"""

import contextlib
import dataclasses
import datetime
import importlib
import os
import re
import socket
import sys

import torch
import torch.distributed as tdist


@dataclasses.dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job."""

    rank: int
    local_rank: int
    world_size: int
    master_addr: str
    master_port: int
    launcher: str  # 'torchrun', 'slurm' or 'single'


def first_slurm_host(nodelist: str) -> str:
    """First host of a SLURM node list: 'gpu[007-009,012],cpu1' -> 'gpu007', 'a,b' -> 'a'."""
    m = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not m:
        return nodelist.strip()
    prefix, ranges = m.group(1), m.group(2)
    if ranges is None:
        return prefix
    first = ranges.split(",")[0].split("-")[0]  # zero padding is part of the text, so it is kept
    return prefix + first


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def resolve_env(environ=None) -> DistEnv:
    """Read the launcher's variables; fill defaults for a plain single process (spec §13).

    Order: torchrun's RANK/WORLD_SIZE if present; else one SLURM task per rank (SLURM_PROCID,
    SLURM_LOCALID, SLURM_STEP_NUM_TASKS or SLURM_NTASKS; MASTER_ADDR from
    SLURM_LAUNCH_NODE_IPADDR or the first host of SLURM_NODELIST; MASTER_PORT from the job id);
    else rank 0 of 1 on localhost with a free port. Explicit MASTER_ADDR/MASTER_PORT always win.
    """
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return DistEnv(
            rank=int(env["RANK"]),
            local_rank=int(env.get("LOCAL_RANK", 0)),
            world_size=int(env["WORLD_SIZE"]),
            master_addr=env.get("MASTER_ADDR", "localhost"),
            master_port=int(env.get("MASTER_PORT", 0) or 0),
            launcher="torchrun",
        )
    ntasks = env.get("SLURM_STEP_NUM_TASKS", env.get("SLURM_NTASKS"))
    if "SLURM_PROCID" in env and ntasks is not None and int(ntasks) > 1:
        addr = env.get("MASTER_ADDR") or env.get("SLURM_LAUNCH_NODE_IPADDR")
        if not addr and env.get("SLURM_NODELIST", env.get("SLURM_JOB_NODELIST")):
            addr = first_slurm_host(env.get("SLURM_NODELIST", env.get("SLURM_JOB_NODELIST")))
        # Every task must agree on the port without talking: derive it from the job id.
        port = env.get("MASTER_PORT") or 15000 + int(env.get("SLURM_JOB_ID", "0")) % 20000
        return DistEnv(
            rank=int(env["SLURM_PROCID"]),
            local_rank=int(env.get("SLURM_LOCALID", 0)),
            world_size=int(ntasks),
            master_addr=addr or "localhost",
            master_port=int(port),
            launcher="slurm",
        )
    return DistEnv(
        rank=0,
        local_rank=0,
        world_size=1,
        master_addr=env.get("MASTER_ADDR", "localhost"),
        master_port=int(env.get("MASTER_PORT", 0) or 0) or _free_port(),
        launcher="single",
    )


def init_distributed(device_type: str | None = None, timeout_min: float = 30) -> tuple[DistEnv, torch.device]:
    """Initialise the default process group (once per process) and pick the compute device.

    NCCL on CUDA, gloo on CPU. Returns the resolved environment and the device
    (`cuda:LOCAL_RANK` when CUDA is available and `device_type` is not 'cpu').
    """
    if device_type is None:
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
    if tdist.is_initialized():
        env = DistEnv(
            rank=tdist.get_rank(),
            local_rank=int(os.environ.get("LOCAL_RANK", tdist.get_rank())),
            world_size=tdist.get_world_size(),
            master_addr="",
            master_port=0,
            launcher="existing",
        )
    else:
        env = resolve_env()
    if device_type == "cuda":
        torch.cuda.set_device(env.local_rank)
        device = torch.device("cuda", env.local_rank)
    else:
        device = torch.device(device_type)
    if not tdist.is_initialized():
        # torch imports torch._dynamo lazily (first meta-device op, torch.compile), and that import
        # keeps references to the process group existing at that moment. destroy_process_group
        # then cannot stop gloo's threads, and the process can abort at exit ("terminate called
        # without an active exception"). Importing it before the group exists avoids that.
        importlib.import_module("torch._dynamo")

        backend = "nccl" if device.type == "cuda" else "gloo"
        timeout = datetime.timedelta(minutes=timeout_min)
        if env.launcher == "torchrun":
            # torchrun may host the rendezvous store itself; env:// knows how to join it.
            tdist.init_process_group(backend=backend, init_method="env://", timeout=timeout)
        else:
            tdist.init_process_group(
                backend=backend,
                init_method=f"tcp://{env.master_addr}:{env.master_port}",
                rank=env.rank,
                world_size=env.world_size,
                timeout=timeout,
            )
    return env, device


def get_rank() -> int:
    return tdist.get_rank() if tdist.is_initialized() else 0


def get_world_size() -> int:
    return tdist.get_world_size() if tdist.is_initialized() else 1


def barrier():
    if get_world_size() > 1:
        if tdist.get_backend() == "nccl":
            tdist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            tdist.barrier()


def print0(*args, **kwargs):
    """print() on rank 0 only."""
    if get_rank() == 0:
        print(*args, **kwargs)


def all_ranks_agree(flag: bool, device) -> bool:
    """True on every rank if `flag` is true on any rank (one small all-reduce)."""
    if get_world_size() == 1:
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    return bool(t.item() > 0)


@torch.no_grad()
def check_ddp_consistency(module: torch.nn.Module, device):
    """Raise if any parameter or buffer differs from rank 0's copy (NaNs compare equal)."""
    if get_world_size() == 1:
        return
    for name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
        other = tensor.detach().clone().to(device)
        tdist.broadcast(other, src=0)
        mine = tensor.detach().to(device)
        same = (mine.nan_to_num() == other.nan_to_num()) & (mine.isnan() == other.isnan())
        if not bool(same.all()):
            raise RuntimeError(f"rank {get_rank()}: {name} differs from rank 0's copy after the checkpoint")


class _Tee:
    def __init__(self, stream, file):
        self.stream = stream
        self.file = file

    def write(self, text):
        if text:
            self.file.write(text)
            self.file.flush()
            if self.stream is not None:
                self.stream.write(text)
        return len(text)

    def flush(self):
        self.file.flush()
        if self.stream is not None:
            self.stream.flush()

    def isatty(self):
        return False

    def __getattr__(self, name):
        return getattr(self.stream, name)


@contextlib.contextmanager
def tee_output(path):
    """Copy everything printed to stdout and stderr into `path` (append mode) while active."""
    with open(path, "a", encoding="utf-8") as f:
        old_out, old_err = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _Tee(old_out, f), _Tee(old_err, f)
        try:
            yield
        finally:
            sys.stdout, sys.stderr = old_out, old_err
