"""Puts this folder on sys.path (pytest prepend import mode), so tests import tiny_networks.

`make test` runs the suite on two pytest-xdist workers (`-n 2 --dist loadscope
--no-loadscope-reorder`), scheduled by `ModulesAndSlurm` below: each test module runs whole on
one worker (its module-scoped fixtures, such as a workflow run, are made once), and every SLURM
test (tests/slurm, marker `slurm`) runs on one worker, first, while the other worker runs the
rest: the SLURM tests mostly wait on job starts, status checks and time limits, and they stop and
restart the one local SLURM (tests/slurm/conftest.py also keeps other test sessions out with a
lock). The SLURM worker takes no other module until its SLURM tests are done, and the modules
with slow tests come first in the queue, so that the two workers end close together.

Why our own scheduler: `--dist loadgroup` groups by appending "@group" to each test's node id,
which pytest 9.2 no longer reads (pytest-dev/pytest-xdist#1386): with it, every test was
scheduled on its own and the SLURM modules spread over both workers, one waiting up to 1800 s
for the other's lock. A scope function of a LoadScopeScheduling subclass does not depend on node
id internals. tests/test_hygiene.py runs a small session of this scheduler and fails if the
SLURM tests spread.
"""

import os

import pytest

SLURM_DIR = "tests/slurm/"
SLURM_SCOPE = "slurm"


def scope_of(nodeid: str) -> str:
    """The work unit of a test: "slurm" for the SLURM tests, else its module's path."""
    path = nodeid.split("::", 1)[0]
    return SLURM_SCOPE if path.startswith(SLURM_DIR) else path


def worker_threads() -> int:
    """CPU threads of one pytest-xdist worker: its share of the cores this process may use."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    return max(1, len(os.sched_getaffinity(0)) // workers)


def pytest_configure(config):
    """Under xdist, each worker (and every process it starts: trainings, workflows, SLURM jobs)
    uses its share of the cores. With torch's default of one thread per core in each of two
    workers plus their subprocesses, the OpenMP threads outnumber the cores and wait on each
    other: a network test that takes 0.14 s alone took 39 s in the suite."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        threads = worker_threads()
        os.environ["OMP_NUM_THREADS"] = str(threads)
        import torch

        torch.set_num_threads(threads)


def pytest_collection_modifyitems(config, items):
    """SLURM tests first (so their group starts at once), and only in tests/slurm (the scheduler
    knows them by their path)."""
    misplaced = [i.nodeid for i in items if bool(i.get_closest_marker("slurm")) != i.nodeid.startswith(SLURM_DIR)]
    if misplaced:
        raise pytest.UsageError(f"tests marked slurm must be in {SLURM_DIR} and only those: {misplaced[:5]}")
    # Then the modules with slow (end-to-end) tests, so that the other worker starts on them while
    # the SLURM tests run, and the short modules even out the two workers at the end.
    slow_modules = {item.nodeid.split("::", 1)[0] for item in items if item.get_closest_marker("slow")}
    items.sort(  # stable: otherwise collection order
        key=lambda item: (not item.nodeid.startswith(SLURM_DIR), item.nodeid.split("::", 1)[0] not in slow_modules)
    )


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook: the container's self-checks run without xdist
def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ModulesAndSlurm(LoadScopeScheduling):
        def _split_scope(self, nodeid):
            return scope_of(nodeid)

        def _reschedule(self, node):
            # xdist queues another module on a worker when at most two of its tests are left;
            # behind the last SLURM tests (minutes each) that module would wait while the other
            # worker idles at the end. A worker gets more only when its SLURM tests are done.
            if not all(self.assigned_work[node].get(SLURM_SCOPE, {}).values()):
                return
            super()._reschedule(node)

    return ModulesAndSlurm(config, log)
