"""Every example in every `--help` runs as written.

The examples under "Examples" form one chain: run in this order, in an empty folder, each must
succeed (identical commands that appear in several helps run once, whatever their comments). Those under "At paper scale"
need GPUs, ImageNet or downloads; for them the test checks that every option they use exists.
A new command must be added to ORDER, so that its examples are checked too.
"""

import os
import shlex
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from edm2.cli import main

# Commands in the order their runnable examples build on each other.
ORDER = [
    (),
    ("dataset",),
    ("dataset", "digits"),
    ("dataset", "convert"),
    ("dataset", "encode"),
    ("train",),
    ("analyze",),
    ("analyze", "magnitudes"),
    ("analyze", "plot-magnitudes"),
    ("phema",),
    ("analyze", "phema-profile"),
    ("generate",),
    ("flops",),
    ("metrics",),
    ("metrics", "ref"),
    ("metrics", "calc"),
    ("metrics", "gen"),
    ("metrics", "train-detector"),
    ("report",),
    ("report", "model-info"),
    ("report", "aggregate"),
    ("report", "plots"),
    ("report", "tables"),
    ("report", "ablation"),
    ("report", "refine"),
    ("report", "search-round"),
    ("report", "search"),
    ("report", "heatmap"),
    ("report", "best"),
    ("report", "grid"),
    ("report", "summary"),
    ("report", "per-tensor"),
    ("report", "over-training"),
    ("report", "released"),
    ("toy",),
    ("convert-official",),
    ("download",),
]


def all_commands(group=main, path=()):
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        yield (*path, name)
        if isinstance(cmd, click.Group):
            yield from all_commands(cmd, (*path, name))


def help_text(path) -> str:
    r = CliRunner().invoke(main, [*path, "--help"], terminal_width=200)
    assert r.exit_code == 0, r.output
    return r.output


def example_blocks(text: str) -> dict:
    """{'run': [...], 'paper': [...]}: the example command lines of a help text (continuations joined)."""
    blocks, current = {"run": [], "paper": []}, None
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        stripped = lines[i].strip()
        if stripped.startswith("Example"):
            current = "run"
        elif stripped.startswith("At paper scale"):
            current = "paper"
        elif not stripped or not lines[i].startswith(" "):
            current = None
        elif current and stripped.startswith(("edm2 ", "torchrun ")):
            command = stripped
            while command.endswith("\\"):
                i += 1
                command = command[:-1].rstrip() + " " + lines[i].strip()
            blocks[current].append(command)
        i += 1
    return blocks


def resolve(tokens):
    """The click command an `edm2 ...` token list names, and the remaining tokens."""
    start = tokens.index("edm2") + 1
    cmd, rest = main, tokens[start:]
    while isinstance(cmd, click.Group) and rest and not rest[0].startswith("-"):
        cmd, rest = cmd.get_command(click.Context(cmd), rest[0]), rest[1:]
        assert cmd is not None, tokens
    return cmd, rest


def test_every_command_is_in_the_chain():
    assert set(all_commands()) == set(ORDER) - {()}


def test_paper_scale_examples_use_only_existing_options():
    for path in ORDER:
        for example in example_blocks(help_text(path))["paper"]:
            cmd, rest = resolve(shlex.split(example.replace("-m edm2", "edm2")))
            known = {opt for p in cmd.params for opt in p.opts + p.secondary_opts}
            unknown = [t.split("=")[0] for t in rest if t.startswith("--") and t.split("=")[0] not in known]
            assert not unknown, f"`{example}` uses options that `{cmd.name}` does not have: {unknown}"


@pytest.mark.slow
def test_every_runnable_example_runs_as_written_in_order(tmp_path):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    env.update(OMP_NUM_THREADS="1", EDM2_OFFLINE="1")
    seen = []
    for path in ORDER:
        for example in example_blocks(help_text(path))["run"]:
            command = shlex.split(example, comments=True)  # the same command with another comment
            if command in seen:
                continue
            seen.append(command)
            r = subprocess.run(
                ["bash", "-c", example], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
            )
            assert r.returncode == 0, (
                f"`edm2 {' '.join(path)} --help` example failed:\n{example}\n{r.stdout[-2000:]}{r.stderr[-3000:]}"
            )
    assert len(seen) >= 20
    assert (tmp_path / "summary.html").exists() and (tmp_path / "plots" / "samples" / "demo" / "noguid.png").exists()
