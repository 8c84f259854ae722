"""Configuration checks: the shipped configs are valid, bad keys and values are refused with
their name (by the schema in-process, and by the workflow itself on start)."""

import copy
import subprocess
import sys

import jsonschema
import pytest
import yaml
from workflow_helpers import REPO, SCHEMA, load_config, shell_commands, snakemake, write_config

SHIPPED = [
    "config.yaml",
    "smoke.yaml",
    "paper-img512.yaml",
    "paper-img64.yaml",
    "paper-img512-released.yaml",
    "paper-img512-ema-sweep.yaml",
    "paper-img512-autog.yaml",
]


@pytest.fixture(scope="module")
def validator():
    schema = yaml.safe_load(SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def errors(validator, config):
    return [(list(e.absolute_path), e.message) for e in validator.iter_errors(config)]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_configs_are_valid(validator, name):
    assert errors(validator, load_config(name)) == []


def test_shipped_overlay_is_valid_over_the_smoke_config(validator):
    config = load_config("smoke.yaml")
    config.update(load_config("smoke-released-raw.yaml"))  # its keys replace the smoke config's
    assert errors(validator, config) == []


@pytest.mark.parametrize("grid", ["0.050,0.100", "0.050,0.075,...,0.150", [0.05, 0.1], 0.1])
def test_schema_accepts_every_grid_that_phema_accepts(validator, grid):
    config = copy.deepcopy(load_config("smoke.yaml"))
    config["phema"]["grid"] = grid  # a single number is what YAML makes of `grid: 0.100`
    assert errors(validator, config) == []


@pytest.mark.parametrize(
    "edit, path, message",
    [
        (lambda c: c.update(reslts="x"), [], "'reslts' was unexpected"),
        (lambda c: c["data"].update(resolutoin="16x16"), ["data"], "'resolutoin' was unexpected"),
        (lambda c: c["models"][0].update(chanels=8), ["models", 0], "'chanels' was unexpected"),
        (lambda c: c["train"].update(durration="2Ki"), ["train"], "'durration' was unexpected"),
        (lambda c: c["score"].update(metrics=["fid", "is"]), ["score", "metrics", 1], "'is' is not one of"),
        (lambda c: c["phema"].update(grid=[0.05, 0.3]), ["phema", "grid"], "is not valid under any"),
        (lambda c: c["train"].update(snapshot="8 Mi"), ["train", "snapshot"], "is not valid under any"),
        (lambda c: c["train"].update(precision="fp8"), ["train", "precision"], "'fp8' is not one of"),
        (lambda c: c["resources"].update(trian={"threads": 2}), ["resources"], "'trian' is not one of"),
        (lambda c: c.pop("models"), [], "'models' is a required property"),
        (lambda c: c["score"].update(steps=1), ["score", "steps"], "less than the minimum of 2"),
        (lambda c: c["samples"].update(steps=1), ["samples", "steps"], "less than the minimum of 2"),
        (lambda c: c["models"][0].update(source="releasd"), ["models", 0, "source"], "'releasd' is not one of"),
        (lambda c: c.update(released={"keep_rw": False}), ["released"], "'keep_rw' was unexpected"),
        (lambda c: c["models"][0].update(url="ftp://x/"), ["models", 0, "url"], "does not match"),
        (lambda c: c.update(released={"jobs": 0}), ["released", "jobs"], "less than the minimum"),
        (lambda c: c.update(released={"include": []}), ["released", "include"], "should be non-empty"),
        (lambda c: c["models"][0].update(include=[]), ["models", 0, "include"], "should be non-empty"),
        (lambda c: c["guidance"][2].update(guide_fraction="1/0"), ["guidance", 2, "guide_fraction"], "not valid"),
        (lambda c: c["guidance"][2].update(guide_kimg=0), ["guidance", 2, "guide_kimg"], "less than the minimum"),
        (lambda c: c["guidance"][2].update(guide_std=[0.05, 0.3]), ["guidance", 2, "guide_std"], "not valid"),
        (lambda c: c["guidance"][2].update(guide_epoch=3), ["guidance", 2], "'guide_epoch' was unexpected"),
        (lambda c: c["search"][0].pop("weight"), ["search", 0], "'weight' is a required property"),
        (lambda c: c["search"][0].update(bisekt=2), ["search", 0], "'bisekt' was unexpected"),
        (lambda c: c["search"][0].update(weight="1,2,x"), ["search", 0, "weight"], "not valid"),
    ],
)
def test_schema_names_the_bad_key_or_value(validator, edit, path, message):
    config = copy.deepcopy(load_config("smoke.yaml"))
    edit(config)
    found = errors(validator, config)
    assert found, "the bad config was accepted"
    assert any(p == path and message in m for p, m in found), found


def _start(tmp_path, config):
    return snakemake(tmp_path, "-n", "--configfile", write_config(tmp_path / "bad.yaml", config), check=False)


def test_workflow_refuses_a_bad_key_at_start(tmp_path):
    config = load_config("smoke.yaml")
    config["score"]["metrcs"] = ["fd_cnn"]
    proc = _start(tmp_path, config)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "invalid configuration at config['score']" in out and "'metrcs' was unexpected" in out
    assert "config/README.md" in out
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c["models"].append(dict(c["models"][0])), "is used twice"),
        (lambda c: c["train"].update(duration="3Ki", snapshot="2Ki"), "not a multiple of snapshot=2Ki"),
        (lambda c: c["guidance"][1].update(guide="missing"), "guidance[guided].guide: no model named 'missing'"),
        (lambda c: c["phema"].update(grid="0.050,0.075,...,0.110"), "is not reachable from 0.075 in whole steps"),
        (lambda c: c["models"][0].update(source="released-raw"), "needs `run` (e.g. edm2-img512-xs) or `url`"),
        (
            lambda c: c["models"][0].update(source="released-raw", run="edm2-img512-xss", kimg=100),
            "models[tiny].run: unknown run 'edm2-img512-xss'; the released runs are named after the training presets",
        ),
        (
            lambda c: c["models"][0].update(source="released-raw", run="edm2-img512-xs", url="https://x/raw/"),
            "models[tiny]: give `run` or `url`, not both",
        ),
        (
            lambda c: c["models"].append(
                {"name": "r", "source": "released", "generation_preset": "edm2-img512-xx-fid"}
            ),
            "unknown generation_preset 'edm2-img512-xx-fid'",
        ),
        (
            lambda c: c["models"].append({"name": "r", "source": "released", "net": "https://x/a.pkl", "guidance": 2}),
            "models[r]: a guidance other than 1 needs `gnet`",
        ),
        (
            lambda c: c["guidance"][2].update(guide_kimg=3) or c["guidance"][2].pop("guide_fraction"),
            "guidance[autog].guide_kimg: tiny has no snapshot at kimg 3; its snapshots: 1, 2",
        ),
        (
            lambda c: c["guidance"][2].update(guide_fraction="1/3"),
            "guidance[autog].guide_fraction: 1/3 of tiny's duration 2Ki is not a snapshot time",
        ),
        (
            lambda c: c["search"][0].update(guidance="noguid"),
            "search[autog-w].guidance: 'noguid' has no `guide`; a search needs a guided setting",
        ),
        (
            lambda c: c["guidance"][1].update(sigma_lo=2.0, sigma_hi=1.0),
            "guidance[guided]: --sigma_lo (2) must be below --sigma_hi (1); the guidance interval is (sigma_lo, sigma_hi]",
        ),
    ],
)
def test_workflow_refuses_inconsistent_settings(tmp_path, edit, message):
    config = load_config("smoke.yaml")
    edit(config)
    proc = _start(tmp_path, config)
    assert proc.returncode != 0 and message in proc.stdout + proc.stderr


def test_guidance_interval_of_a_guidance_entry_reaches_its_score_commands(tmp_path):
    config = load_config("smoke.yaml")
    config["guidance"][1].update(guidance_start=1, guidance_stop=2)
    proc = snakemake(tmp_path, "-n", "-p", "--configfile", write_config(tmp_path / "interval.yaml", config))
    scores = [c for c in shell_commands(proc.stdout) if "edm2 metrics gen" in c]
    guided = [c for c in scores if "/guided/" in c]
    assert guided and all("--guidance 1.5 --guidance_start 1 --guidance_stop 2" in c for c in guided)
    assert not any("--guidance_start" in c for c in scores if "/noguid/" in c)
    (grid,) = [c for c in shell_commands(proc.stdout) if "edm2 report best" in c and "--guidance guided" in c]
    assert "--guidance_start 1 --guidance_stop 2" in grid  # the sample grid uses the interval too


def test_lint_reports_nothing(tmp_path):
    proc = snakemake(tmp_path, "--lint")
    assert "Congratulations, your workflow is in a good condition!" in proc.stdout + proc.stderr
    assert "Lints for" not in proc.stdout + proc.stderr


def test_workflow_parsers_are_torch_free():
    """The Snakefile imports the package's parsers; they must not pull torch, NumPy or PIL into
    the Snakemake process (a dry run of the paper configs stays fast)."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "import edm2.naming, edm2.presets, edm2.search, edm2.utils;"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy', 'PIL'));"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code, str(REPO)], check=True)


def test_schema_sampler_bounds_are_the_commands():
    """The schema refuses exactly the step counts `edm2 generate` / `metrics gen` refuse, and
    leaves the default to the sampler's options (edm2.sample.options)."""
    from edm2.sample.options import INTERVAL_FIELDS, SAMPLER_FIELDS

    schema = yaml.safe_load(SCHEMA.read_text())
    interval = schema["$defs"]["guidance_interval"]["properties"]
    assert list(interval) == list(INTERVAL_FIELDS)
    for name, prop in interval.items():
        field = SAMPLER_FIELDS[name]
        assert prop["minimum"] == field.minimum and prop["type"] == {int: "integer", float: "number"}[field.type]
    for section in ("score", "samples"):
        steps = schema["properties"][section]["properties"]["steps"]
        assert steps["minimum"] == SAMPLER_FIELDS["num_steps"].minimum and steps["default"] is None


def test_toy_keys_are_options_of_edm2_toy():
    """The `toy` section's keys become `edm2 toy --<key with dashes>` (paths.smk toy_args): each
    must be an option of the command, so a renamed option cannot silently drop out of the workflow."""
    from edm2.commands.toy import toy

    schema = yaml.safe_load(SCHEMA.read_text())
    keys = set(schema["properties"]["toy"]["properties"]) - {"enabled"}
    options = {opt for p in toy.params for opt in p.opts}
    assert keys and {f"--{k.replace('_', '-')}" for k in keys} <= options, keys
