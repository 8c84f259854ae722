"""The workflow's training options are `edm2 train`'s table (edm2.train.options): every field
changes the run folder exactly when `edm2 train` would refuse to resume the run with it (the
operational fields resume the same folder), the command line the workflow writes is read back by
`edm2 train` as the options the workflow resolved, the schema agrees with the table, and a
finished run whose duration is extended trains only the added images (issue 20, deliverable 1)."""

import json
import re
import shlex

import numpy as np
import PIL.Image
import pytest
import yaml
from click.testing import CliRunner
from workflow_helpers import SCHEMA, load_config, shell_commands, snakemake, write_config

from edm2.cli import main
from edm2.train.options import OPERATIONAL, TRAIN_FIELDS
from edm2.train.run import check_run_dir

# A value other than the smoke configuration's for every training option the workflow accepts.
ALTERNATIVES = {
    "cond": False,
    "config": "B",
    "preset": "edm2-img64-m",  # fills another dropout (the smoke config sets the rest): a new run
    "duration": "4Ki",
    "batch": 64,
    "channels": 16,
    "dropout": 0.1,
    "P_mean": -0.5,
    "P_std": 1.2,
    "lr": 2.0,
    "decay": 1000,
    "rampup": "1Ki",
    "batch_gpu": 16,
    "precision": "bf16",
    "loss_scaling": 2.0,
    "bench": False,
    "status": "2Ki",
    "snapshot": "2Ki",
    "checkpoint": "1Ki",
    "slice": "2Ki",
    "probe": "1Ki",
    "tensorboard": False,
    "seed": 1,
    "workers": 2,
    "channels_last": True,
    "compile": True,
    "fast": True,
    "channel_mult": [1, 1],
    "num_blocks": 2,
    "attn_resolutions": [],
    "ema_stds": [0.05],
}
# The workflow's own launch settings resume the same run; extra_args are opaque, so they count.
OWN = {"procs_per_node": 2, "launch": "tasks", "retries": 3, "extra_args": "--seed 5"}
# Other spellings of the smoke configuration's own values: the same run.
SAME = {
    "same-preset": {"preset": "edm2-img64-s"},  # fills the same values as edm2-img64-xs
    "same-lr": {"lr": 4},  # 4 == 4.0
    "same-decay": {"decay": 35000.0},  # the preset's value, given
    "same-seed": {"seed": 0},  # the default, given
    "same-rampup": {"rampup": 10_000_000},  # the paper's warm-up, the default, given
    "same-status": {"status": 131072},  # 128Ki, the default, given
}


def test_every_option_of_the_table_has_an_alternative_here():
    assert set(ALTERNATIVES) == {name for name, field in TRAIN_FIELDS.items() if field.workflow}


@pytest.fixture(scope="module")
def variants(tmp_path_factory):
    """Dry run of one configuration whose models each change one option of the smoke model: the
    run folder and the `edm2 train` arguments of every model."""
    workdir = tmp_path_factory.mktemp("variants")
    config = load_config("smoke.yaml")
    config["results"] = "results"
    config["guidance"] = [{"name": "noguid"}]
    config["search"] = []  # the smoke search needs its guided setting
    models = {"base": {}, **{f"x-{k}": {k: v} for k, v in {**ALTERNATIVES, **OWN}.items()}, **SAME}
    config["models"] = [{"name": name, **change} for name, change in models.items()]
    path = write_config(workdir / "variants.yaml", config)
    proc = snakemake(workdir, "-n", "-p", "--configfile", path)
    found = {}
    for line in shell_commands(proc.stdout):
        m = re.search(r"edm2 train --outdir results/runs/([^/]+)/train-([0-9a-f]{8}) (.*?) >>", line)
        if m:
            found[m.group(1)] = (m.group(2), shlex.split(m.group(3)))
    assert set(found) == set(models), proc.stdout[-3000:]
    return found


def edm2_train_record(args, data, tmp_path):
    """The options `edm2 train` reads from the workflow's arguments (its dry run's record)."""
    args = [a if a != "results/data/dataset.zip" else str(data) for a in args]
    result = CliRunner().invoke(main, ["train", "--outdir", str(tmp_path / "run"), *args, "--dry-run"])
    assert result.exit_code == 0, result.output
    text = result.output.split("Dry run; exiting.")[0]
    return json.loads(text[text.index("{") :])["options"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Eight 16x16 RGB images of ten classes, the shape of the smoke configuration's digits."""
    root = tmp_path_factory.mktemp("data") / "ds"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        PIL.Image.fromarray(rng.integers(0, 256, [16, 16, 3], dtype=np.uint8)).save(root / f"img{i}.png")
    (root / "dataset.json").write_text(json.dumps({"labels": [[f"img{i}.png", i] for i in range(8)]}))
    return root


@pytest.mark.parametrize("name", sorted(ALTERNATIVES) + sorted(OWN))
def test_an_option_changes_the_run_folder_exactly_when_it_is_not_operational(variants, name):
    base_hash, _ = variants["base"]
    changed_hash, _ = variants[f"x-{name}"]
    resumes = name in OPERATIONAL or name in ("procs_per_node", "launch", "retries")
    if name == "preset":
        resumes = False  # operational, but edm2-img64-m fills another dropout than edm2-img64-xs
    assert (changed_hash == base_hash) == resumes, f"{name}: {changed_hash} vs {base_hash}"


@pytest.mark.parametrize("name", sorted(SAME))
def test_the_same_options_spelled_otherwise_are_the_same_run(variants, name):
    assert variants[name][0] == variants["base"][0]


@pytest.mark.parametrize("name", sorted(ALTERNATIVES))
def test_edm2_train_reads_the_workflows_options_and_resumes_exactly_where_the_workflow_does(
    variants, data, tmp_path, name
):
    """The workflow's command line, read by `edm2 train`: the option has the value the
    configuration gives, every other one the base model's, and `edm2 train` accepts resuming the
    base run with it (check_run_dir) exactly when the workflow keeps the base run's folder."""
    base = edm2_train_record(variants["base"][1], data, tmp_path / "base")
    changed = edm2_train_record(variants[f"x-{name}"][1], data, tmp_path / "changed")
    differ = {k for k in base if base[k] != changed[k]} - {"outdir"}
    assert name in differ and differ <= {name, "dropout"}  # a preset may fill another dropout
    (tmp_path / "base-run").mkdir()
    (tmp_path / "base-run" / "training_options.json").write_text(json.dumps({"options": base}))
    try:
        check_run_dir(tmp_path / "base-run", changed)
        resumes = True
    except Exception:
        resumes = False
    assert resumes == (variants[f"x-{name}"][0] == variants["base"][0])


def test_the_schema_agrees_with_the_table():
    """Kinds, bounds and choices of every training option, as the workflow's schema states them."""
    schema = yaml.safe_load(SCHEMA.read_text())
    props = schema["$defs"]["train_options"]["properties"]
    own = {"nodes", "gpus_per_node", "procs_per_node", "launch", "retries", "extra_args"}
    assert set(props) == {n for n, f in TRAIN_FIELDS.items() if f.workflow} | own
    for name, field in TRAIN_FIELDS.items():
        if not field.workflow:
            continue
        prop = props[name]
        if field.kind in ("bool", "flag"):
            assert prop == {"type": "boolean"}, name
        elif field.kind == "str" and field.choices and name != "preset":
            assert prop == {"enum": list(field.choices)}, name
        elif name == "preset":
            assert all(re.fullmatch(prop["pattern"], p) for p in field.choices)
        elif field.kind in ("int", "float") or (field.kind == "nimg" and "type" in prop):
            assert prop["type"] == ("number" if field.kind == "float" else "integer"), name
            for bound, open_, low, high in (
                (field.minimum, field.open_min, "exclusiveMinimum", "minimum"),
                (field.maximum, field.open_max, "exclusiveMaximum", "maximum"),
            ):
                key = low if open_ else high
                assert prop.get(key) == bound, (name, key)
                assert (low if not open_ else high) not in prop, name
        elif field.kind == "nimg":
            refs = json.dumps(prop)
            assert "#/$defs/nimg" in refs, name
        else:  # lists
            arrays = [prop] if prop.get("type") == "array" else [p for p in prop["oneOf"] if p.get("type") == "array"]
            items = arrays[0]["items"]
            assert arrays[0].get("minItems", 0) == field.min_items, name
            key = "exclusiveMinimum" if field.open_min else "minimum"
            assert items.get(key) == field.minimum, name
            if field.maximum is not None:
                assert items.get("exclusiveMaximum" if field.open_max else "maximum") == field.maximum, name


@pytest.mark.slow
def test_extending_the_duration_of_a_finished_run_trains_only_the_added_images(tmp_path):
    """A real run on the digits: 2Ki, then the configuration says 4Ki (and a new status interval):
    the same run folder resumes from its last training state and trains 2048 more images."""
    config = load_config("smoke.yaml")
    config["results"] = "results"
    config["models"] = [{"name": "tiny", "label": "tiny"}]
    config["guidance"] = [{"name": "noguid"}]
    config["search"] = []  # the smoke search needs its guided setting
    first = write_config(tmp_path / "first.yaml", config)
    snakemake(tmp_path, "--cores", "2", "--configfile", first, "--until", "train")
    (run_dir,) = (tmp_path / "results" / "runs" / "tiny").glob("train-*")
    assert json.loads((run_dir / "training-done.json").read_text())["nimg"] == 2048

    config["train"].update(duration="4Ki", status="2Ki")
    longer = write_config(tmp_path / "longer.yaml", config)
    snakemake(tmp_path, "--cores", "2", "--configfile", longer, "--until", "train")
    assert list((tmp_path / "results" / "runs" / "tiny").glob("train-*")) == [run_dir]
    assert json.loads((run_dir / "training-done.json").read_text())["nimg"] == 4096
    log = (run_dir / "log.txt").read_text()
    assert f"Resuming from {run_dir.relative_to(tmp_path)}/training-state-0000002.pt" in log
    second = log.split("Training from 2 kimg to 4 kimg:")[1]  # the second invocation's lines
    assert "Trained 2048 images" in second and "finished the duration of 4 kimg" in second
    assert log.count("Training from 0 kimg") == 1  # the first invocation only
    kimgs = [json.loads(line)["Progress/kimg"] for line in (run_dir / "stats.jsonl").read_text().splitlines()]
    assert kimgs == [0, 1.024, 2.048, 4.096]  # status 1Ki up to 2Ki, then (status 2Ki) once more at 4Ki
    assert sorted(p.name for p in run_dir.glob("training-state-*.pt")) == [
        "training-state-0000002.pt",
        "training-state-0000004.pt",
    ]
