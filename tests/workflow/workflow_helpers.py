"""Running the workflow from tests: every run uses its own working directory (its own .snakemake
metadata and lock, its own results), the repository's Snakefile and this venv's tools."""

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
SNAKEFILE = REPO / "workflow" / "Snakefile"
CONFIG = REPO / "config"
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
VENV_BIN = Path(sys.executable).parent
SNAKEMAKE = str(VENV_BIN / "snakemake")


def env(**extra):
    """This venv first on PATH (the rules run `python -m edm2`), few threads per process."""
    e = dict(os.environ)
    e["PATH"] = f"{VENV_BIN}{os.pathsep}{e.get('PATH', '/usr/bin:/bin')}"
    e.setdefault("OMP_NUM_THREADS", "1")
    for key in ("EDM2_SLURM_PARTITION", "EDM2_SLURM_ACCOUNT"):
        e.pop(key, None)
    e.update(extra)
    return e


def snakemake(workdir, *args, check=True, timeout=900, extra_env=None) -> subprocess.CompletedProcess:
    """`snakemake --snakefile <repo> --directory <workdir> ARGS`, output captured."""
    cmd = [SNAKEMAKE, "--snakefile", str(SNAKEFILE), "--directory", str(workdir), *map(str, args)]
    proc = subprocess.run(
        cmd, cwd=workdir, env=env(**(extra_env or {})), capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"snakemake failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}"
        )
    return proc


def job_counts(output: str) -> dict:
    """The 'Job stats' table of a (dry) run -> {rule: count}; {} when there is nothing to do."""
    counts = {}
    lines = output.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("Job stats:"):
            for row in lines[i + 3 :]:
                m = re.fullmatch(r"(\S+)\s+(\d+)", row.strip())
                if not m:
                    break
                counts[m.group(1)] = int(m.group(2))
            break
    counts.pop("total", None)
    return counts


def dry_run(workdir, *args) -> dict:
    """Job counts per rule of `snakemake -n ARGS` (targets must come before --configfile)."""
    proc = snakemake(workdir, "-n", "--quiet", "rules", *args)
    return job_counts(proc.stdout + proc.stderr)


def shell_commands(output: str) -> list[str]:
    """The 'Shell command:' lines of `snakemake -n -p` output."""
    return [
        line.split("Shell command: ", 1)[1]
        for line in (output.splitlines())
        if line.startswith("Shell command: ") and not line.endswith("None")
    ]


def load_config(name: str) -> dict:
    return yaml.safe_load((CONFIG / name).read_text())


def write_config(path, config: dict) -> Path:
    path = Path(path)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path
