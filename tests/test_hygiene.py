"""Library hygiene: the CLI surfaces broken imports, plotting leaves global matplotlib state
alone, and the training step imports nothing."""

import ast
import importlib
import inspect
import subprocess
import sys
import textwrap

import pytest
from click.testing import CliRunner

import edm2.cli as cli


def test_a_broken_command_import_raises_instead_of_no_such_command(monkeypatch):
    monkeypatch.setitem(cli.COMMANDS, "broken", "edm2.commands.no_such_module:broken")
    result = CliRunner().invoke(cli.main, ["broken", "--help"])
    assert isinstance(result.exception, ModuleNotFoundError), result.output
    assert "No such command" not in result.output


def test_plotting_sets_no_global_backend_or_rcparams(tmp_path):
    """Using edm2.report.plots leaves matplotlib's backend and rcParams as they were."""
    code = (
        "import sys, matplotlib; backend = matplotlib.get_backend(); before = dict(matplotlib.rcParams);"
        "from edm2.report.plots import _figure, save_figure;"
        "fig, ax = _figure(); ax.plot([0, 1], [1, 0]); save_figure(fig, sys.argv[1]);"
        "changed = sorted(k for k in before if before[k] != matplotlib.rcParams[k]);"
        "assert not changed and matplotlib.get_backend() == backend, changed"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "fig")], check=True)
    assert (tmp_path / "fig.png").is_file() and (tmp_path / "fig.svg").is_file()


@pytest.mark.parametrize(
    "module, qualname", [("edm2.train.speed", "CompiledForward.__call__"), ("edm2.train.loop", "_iterate")]
)
def test_hot_paths_contain_no_import_statements(module, qualname):
    obj = importlib.import_module(module)
    for name in qualname.split("."):
        obj = getattr(obj, name)
    tree = ast.parse(textwrap.dedent(inspect.getsource(obj)))
    assert not [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
