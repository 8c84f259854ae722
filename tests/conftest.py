"""Puts this folder on sys.path (pytest prepend import mode), so tests import tiny_networks.

`make test` runs the suite on two pytest-xdist workers (`-n 2 --dist loadgroup`): the SLURM
tests spend most of their time waiting for job starts, status checks and time limits, and the
other worker runs the rest meanwhile. Each test module runs whole on one worker (its
module-scoped fixtures, such as a workflow run, are made once). The SLURM tests share a group,
and in any case take turns on the one local SLURM through the session lock of
tests/slurm/conftest.py (in fresh-clone runs one SLURM module still waited there for the others).
"""

import pytest


@pytest.hookimpl(wrapper=True)  # around every other implementation: pytest-xdist's reads the groups
def pytest_collection_modifyitems(config, items):
    for item in items:
        group = "slurm" if item.get_closest_marker("slurm") else item.nodeid.split("::")[0]
        item.add_marker(pytest.mark.xdist_group(group))
    return (yield)
