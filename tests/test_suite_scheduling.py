"""The suite's own scheduling (tests/conftest.py): under `make test`'s pytest options, every SLURM
test runs on one worker, first, and every other module whole on one worker.

A small session of dummy modules, with this folder's conftest.py and the Makefile's options,
records which worker ran each test; the SLURM tests must not spread (they take turns on the one
local SLURM; spread over two workers, one waited for the other's lock, up to 1800 s)."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

MODULE = """\
import os, time
import pytest
{mark}
@pytest.mark.parametrize("i", range(3))
def test_x(i):
    time.sleep(0.05)
    if {wait} and i == 2:  # the last SLURM test: until the other modules have run (30 s at most)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and open({log!r}).read().count(" test_other_") < 18:
            time.sleep(0.05)
    with open({log!r}, "a") as f:
        f.write(f"{{os.environ['PYTEST_XDIST_WORKER']}} {{__name__}} {{i}} {{time.monotonic()}}\\n")
"""


def make_test_options():
    """The pytest options of the Makefile's `test` target (after `-m pytest`)."""
    recipe = re.search(r"^test:.*\n\t(.+)$", (REPO / "Makefile").read_text(), re.MULTILINE).group(1)
    return shlex.split(recipe.split("-m pytest", 1)[1])


def test_make_test_runs_the_slurm_tests_on_one_worker_and_each_module_whole(tmp_path):
    options = make_test_options()
    assert "-n" in options, "make test no longer runs on several workers: drop this test"
    log = tmp_path / "ran.txt"
    log.touch()
    (tmp_path / "tests" / "slurm").mkdir(parents=True)
    (tmp_path / "tests" / "conftest.py").write_text((REPO / "tests" / "conftest.py").read_text())
    (tmp_path / "pyproject.toml").write_text(
        '[tool.pytest.ini_options]\ntestpaths = ["tests"]\nmarkers = ["slurm: x"]\naddopts = "--strict-markers"\n'
    )
    for name in ("a", "b", "c"):
        slurm = tmp_path / "tests" / "slurm" / f"test_slurm_{name}.py"
        wait = name == "c"  # the last SLURM module's last test
        slurm.write_text(MODULE.format(mark="pytestmark = pytest.mark.slurm", log=str(log), wait=wait))
    for name in "abcdef":
        (tmp_path / "tests" / f"test_other_{name}.py").write_text(MODULE.format(mark="", log=str(log), wait=False))
    out = subprocess.run([sys.executable, "-m", "pytest", *options, "-p", "no:cacheprovider"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    runs = [line.split() for line in log.read_text().splitlines()]
    assert len(runs) == 27, runs

    workers_of = {}
    for worker, module, _, _ in runs:
        workers_of.setdefault(module, set()).add(worker)
    assert all(len(w) == 1 for w in workers_of.values()), f"a module was split over workers: {workers_of}"
    slurm_workers = {w for m, ws in workers_of.items() if m.startswith("test_slurm") for w in ws}
    assert len(slurm_workers) == 1, f"the SLURM tests spread over workers {sorted(slurm_workers)}"
    assert len({w for ws in workers_of.values() for w in ws}) == 2, "the other worker ran nothing"
    # The SLURM group first on its worker: its first test is that worker's first.
    (worker,) = slurm_workers
    first = min((r for r in runs if r[0] == worker), key=lambda r: float(r[3]))
    assert first[1].startswith("test_slurm"), first
    # No module queued behind the SLURM tests: the last SLURM test waits until the other modules
    # have run, which only the other worker can do then (xdist's default queued one more module
    # on a worker with two tests left: it would wait behind that test, and the test time out).
    assert {m for m, ws in workers_of.items() if worker in ws} == {m for m in workers_of if m.startswith("test_slurm")}


def test_a_slurm_test_outside_tests_slurm_is_refused(tmp_path):
    """The scheduler knows the SLURM tests by their folder: a marked test elsewhere is an error."""
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "conftest.py").write_text((REPO / "tests" / "conftest.py").read_text())
    (tmp_path / "pyproject.toml").write_text(
        '[tool.pytest.ini_options]\ntestpaths = ["tests"]\nmarkers = ["slurm: x"]\n'
    )
    (tmp_path / "tests" / "test_misplaced.py").write_text(
        "import pytest\n\n@pytest.mark.slurm\ndef test_x():\n    pass\n"
    )
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode != 0
    assert "tests marked slurm must be in tests/slurm/" in out.stdout + out.stderr
