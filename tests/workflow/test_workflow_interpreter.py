"""Rules run with the interpreter Snakemake runs under, whatever `python` is first on PATH."""

import os
import subprocess

from workflow_helpers import CONFIG, SNAKEFILE, SNAKEMAKE


def test_rules_use_snakemakes_interpreter_not_the_first_python_on_path(tmp_path):
    # A `python` first on PATH that is not the one with the package (a system Python, another
    # venv): it fails loudly if a rule ever calls it.
    bad = tmp_path / "bin"
    bad.mkdir()
    (bad / "python").write_text('#!/bin/sh\necho "wrong python on PATH" >&2\nexit 97\n')
    (bad / "python").chmod(0o755)
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PATH=f"{bad}:/usr/bin:/bin", OMP_NUM_THREADS="1")
    cmd = [SNAKEMAKE, "--snakefile", str(SNAKEFILE), "--directory", str(work), "--cores", "1",
           "--configfile", str(CONFIG / "smoke.yaml"), "--until", "digits"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    digits = list((work / "results").rglob("digits*"))
    assert digits and any(p.is_dir() and any(p.rglob("*.png")) for p in digits)
