"""The repository layout the Snakemake workflow catalog expects, and the pinned environments."""

import re
from pathlib import Path

import yaml
from workflow_helpers import REPO, dry_run

ENVS = REPO / "workflow" / "envs"


def _constraints() -> dict:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


def test_conda_environments_pin_the_versions_of_constraints_txt():
    """Every pip package of workflow/envs/*.yaml is pinned (==) to the version constraints.txt
    pins, so that conda rules compute with the environment the tests run in."""
    pins = _constraints()
    envs = sorted(ENVS.glob("*.yaml"))
    assert envs, f"no environments in {ENVS}"
    for env in envs:
        deps = yaml.safe_load(env.read_text())["dependencies"]
        pip = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
        assert pip, env
        for requirement in pip:
            name, sep, version = requirement.partition("==")
            key = re.sub(r"[-_.]+", "-", name).lower()
            assert sep, f"{env.name}: {requirement} is not pinned with =="
            assert key in pins, f"{env.name}: {name} is not in constraints.txt"
            assert version == pins[key], f"{env.name}: {name}=={version}, constraints.txt has {pins[key]}"


def test_every_conda_directive_names_an_existing_environment():
    for rules in (REPO / "workflow" / "rules").glob("*.smk"):
        for path in re.findall(r'conda:\s*\n\s*"([^"]+)"', rules.read_text()):
            assert (rules.parent / path).resolve().is_file(), f"{rules.name}: conda: {path} does not exist"


def test_catalog_files_and_test_config(tmp_path):
    catalog = yaml.safe_load((REPO / ".snakemake-workflow-catalog.yml").read_text())
    assert catalog["usage"]["software-stack-deployment"]["conda"] is True
    for name in ("LICENSE", "CITATION.cff"):
        assert (REPO / name).is_file()
    assert "BSD 3-Clause" in (REPO / "LICENSE").read_text()
    test_config = REPO / ".test" / "config" / "config.yaml"
    assert yaml.safe_load(test_config.read_text()) == yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())
    assert dry_run(tmp_path, "--configfile", test_config)["train"] == 2


def test_rules_are_snakefmt_formatted():
    """`make lint` runs snakefmt --check workflow; so does this test (snakefmt is in the dev extra,
    next to this interpreter, which need not be on PATH)."""
    import subprocess
    import sys

    snakefmt = str(Path(sys.executable).parent / "snakefmt")
    proc = subprocess.run([snakefmt, "--check", str(REPO / "workflow")], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
