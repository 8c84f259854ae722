"""The process group of every multi-process command (training, generation, metrics).

Three ways to start N processes, all read by `resolve_env`:

- `torchrun` (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT);
- one SLURM task per rank (`srun`: SLURM_PROCID, SLURM_LOCALID, SLURM_STEP_NUM_TASKS or
  SLURM_NTASKS are mapped onto rank, local rank and world size);
- a plain single process (rank 0 of 1): no process group is created, and every collective
  helper here is then a no-op.

Every `edm2` command leaves the group at its end through `shutdown_distributed` (called by the
CLI, edm2.cli.LazyGroup.invoke): after a barrier when every rank got through (so that no rank
tears gloo/NCCL down while another still writes its results), without one after an error (the
other ranks may never get there).
"""

import dataclasses
import datetime
import importlib
import os
import re
import socket

import torch
import torch.distributed as tdist

from edm2.utils import die_with_parent


@dataclasses.dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job."""

    rank: int
    local_rank: int
    world_size: int
    master_addr: str
    master_port: int
    launcher: str  # 'torchrun', 'slurm', 'single' or 'existing' (a group the caller made)


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
    """Read the launcher's variables (default: `os.environ`) into a `DistEnv`.

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
    """Join the process group the launcher describes (once per process); pick the compute device.

    `device_type`: 'cuda' or 'cpu'; None = CUDA when available. Returns the resolved environment
    and the device (`cuda:LOCAL_RANK`, made the current CUDA device, or the CPU). Backend NCCL on
    CUDA, gloo on CPU; torchrun's rendezvous is joined through `env://`, a SLURM job's through
    `tcp://MASTER_ADDR:MASTER_PORT`. A single process (world size 1) joins no group. A group the
    caller initialised already is used as it is.
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
    if env.launcher == "torchrun" and "TORCHELASTIC_RUN_ID" in os.environ:
        # torchrun starts each rank in a session of its own: a SIGKILL of the agent (the launcher)
        # would leave the ranks running to the end of their work. They die with it instead.
        die_with_parent(os.getppid())
    if not tdist.is_initialized() and env.world_size > 1:
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


def shutdown_distributed(completed: bool = True) -> None:
    """Leave the process group, if one was joined (once, at the end of a command).

    `completed`: all ranks finished normally, so they first meet at a barrier (a rank must not
    tear down while another still communicates). After an error there is no barrier (the others
    may never arrive). Destroying the group joins gloo's worker threads while Python is fully
    alive: a group left open until the interpreter exits aborts the process at random
    ("terminate called without an active exception"), when a gloo thread that drops the last
    reference to a tensor of a finished collective needs the GIL during finalization.
    """
    if tdist.is_available() and tdist.is_initialized():
        if completed:
            barrier()
        tdist.destroy_process_group()


def get_rank() -> int:
    """This process's rank; 0 without a process group."""
    return tdist.get_rank() if tdist.is_available() and tdist.is_initialized() else 0


def get_world_size() -> int:
    """The number of processes; 1 without a process group."""
    return tdist.get_world_size() if tdist.is_available() and tdist.is_initialized() else 1


def barrier() -> None:
    """Wait for every rank (on NCCL: on this rank's current CUDA device); a no-op for one process."""
    if get_world_size() > 1:
        if tdist.get_backend() == "nccl":
            tdist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            tdist.barrier()


def print0(*args, **kwargs) -> None:
    """print() on rank 0 only."""
    if get_rank() == 0:
        print(*args, **kwargs)


def default_device() -> torch.device:
    """The current CUDA device if there is one, else the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def all_ranks_agree(flag: bool, device) -> bool:
    """True on every rank if `flag` is true on any rank (one small all-reduce on `device`)."""
    if get_world_size() == 1:
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    return bool(t.item() > 0)


@torch.no_grad()
def check_ddp_consistency(module: torch.nn.Module, device) -> None:
    """Raise RuntimeError if any parameter or buffer differs from rank 0's copy (NaNs compare equal)."""
    if get_world_size() == 1:
        return
    for name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
        other = tensor.detach().clone().to(device)
        tdist.broadcast(other, src=0)
        mine = tensor.detach().to(device)
        same = (mine.nan_to_num() == other.nan_to_num()) & (mine.isnan() == other.isnan())
        if not bool(same.all()):
            raise RuntimeError(f"rank {get_rank()}: {name} differs from rank 0's copy after the checkpoint")
