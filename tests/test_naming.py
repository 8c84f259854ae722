"""File names written and read by the package (edm2.naming)."""

import pytest

from edm2.errors import DataError
from edm2.naming import (
    parse_dataset_json,
    parse_snapshot_name,
    parse_training_state_name,
    snapshot_name,
    training_state_name,
)


def test_snapshot_names_round_trip():
    name = snapshot_name("phema", 65, 0.1)
    assert name == "phema-0000065-0.100.safetensors"
    parsed = parse_snapshot_name(name)
    assert (parsed.prefix, parsed.kimg, parsed.std, parsed.ext) == ("phema", 65, 0.1, "safetensors")
    assert snapshot_name("edm2-img512-xs", 2147483, "0.135", ext="pkl") == "edm2-img512-xs-2147483-0.135.pkl"


def test_snapshot_name_prefix_is_greedy_and_ext_filters():
    parsed = parse_snapshot_name("a-1-0.1-0000065-0.100.pkl")
    assert (parsed.prefix, parsed.kimg, parsed.std) == ("a-1-0.1", 65, 0.1)
    assert parse_snapshot_name("a-1-0.1-0000065-0.100.pkl", ext="safetensors") is None
    assert parse_snapshot_name("network.pkl") is None


def test_training_state_names():
    assert training_state_name(2) == "training-state-0000002.pt"
    assert parse_training_state_name("training-state-0000002.pt") == 2
    assert parse_training_state_name("training-state-0000002.pt.tmp") is None


def test_dataset_json():
    assert parse_dataset_json(b'{"labels": [["a.png", 1], ["b.png", 0]]}', "x") == {"a.png": 1, "b.png": 0}
    assert parse_dataset_json(b'{"labels": null}', "x") is None
    with pytest.raises(DataError, match="mixes label types"):
        parse_dataset_json(b'{"labels": [["a.png", 1], ["b.png", [0.5]]]}', "x")
    with pytest.raises(DataError, match="x is not valid dataset metadata"):
        parse_dataset_json(b"{}", "x")
