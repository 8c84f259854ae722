"""The `container` config key: off by default; when set, every rule of the workflow declares that
image, so `snakemake --sdm apptainer` runs each rule in it (docs/workflow.md). The image itself
is built from the Dockerfile and self-checked by ci/container/build.sh (CI), not here."""

import json
import shutil
import subprocess
import sys

import pytest
from workflow_helpers import SNAKEFILE, env, load_config, snakemake, write_config

IMAGE = "docker://localhost/edm2:0.1.0"

# Loads the workflow through Snakemake's API (as `snakemake --sdm apptainer` does) and prints
# {rule: image} as Snakemake resolved it.
RULE_IMAGES = """
import json, sys
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.settings.types import (ConfigSettings, DeploymentMethod, DeploymentSettings,
    OutputSettings, ResourceSettings, StorageSettings)
snakefile, configfile, workdir = sys.argv[1:4]
with SnakemakeApi(OutputSettings(quiet={"all"})) as api:
    workflow = api.workflow(
        snakefile=Path(snakefile), workdir=Path(workdir),
        config_settings=ConfigSettings(configfiles=[Path(configfile)]),
        resource_settings=ResourceSettings(), storage_settings=StorageSettings(),
        deployment_settings=DeploymentSettings(deployment_method={DeploymentMethod.APPTAINER}),
    )._workflow
    print(json.dumps({rule.name: rule.container_img for rule in workflow.rules}))
"""


def rule_images(tmp_path, config) -> dict:
    configfile = write_config(tmp_path / "c.yaml", config)
    proc = subprocess.run(
        [sys.executable, "-c", RULE_IMAGES, str(SNAKEFILE), str(configfile), str(tmp_path)],
        cwd=tmp_path,
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_no_image_by_default(tmp_path):
    config = load_config("smoke.yaml")
    assert "container" not in config
    images = rule_images(tmp_path, config)
    assert "train" in images and "score" in images
    assert set(images.values()) == {None}


def test_every_rule_runs_in_the_configured_image(tmp_path):
    config = load_config("paper-img512.yaml")
    config["container"] = IMAGE
    images = rule_images(tmp_path, config)
    assert {"convert", "encode", "train", "phema", "score", "aggregate", "report"} <= set(images)
    assert images == dict.fromkeys(images, IMAGE)


@pytest.mark.skipif(
    bool(shutil.which("apptainer") or shutil.which("singularity")),
    reason="relies on apptainer being absent: Snakemake then stops when it would pull the image",
)
def test_apptainer_run_asks_for_the_image_only_when_configured(tmp_path):
    config = load_config("smoke.yaml")
    off = snakemake(tmp_path, "-n", "--sdm", "apptainer", "--configfile", write_config(tmp_path / "off.yaml", config))
    assert "apptainer or singularity command" not in off.stdout + off.stderr

    config["container"] = IMAGE
    on = snakemake(
        tmp_path, "-n", "--sdm", "apptainer", "--configfile", write_config(tmp_path / "on.yaml", config), check=False
    )
    assert on.returncode != 0
    assert "apptainer or singularity command has to be available" in on.stdout + on.stderr


def test_schema_refuses_a_non_string_image(tmp_path):
    config = load_config("smoke.yaml")
    config["container"] = 3
    proc = snakemake(tmp_path, "-n", "--configfile", write_config(tmp_path / "bad.yaml", config), check=False)
    assert proc.returncode != 0
    assert "invalid configuration at config['container']" in proc.stdout + proc.stderr
