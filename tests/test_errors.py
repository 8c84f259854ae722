"""Messages from libraries become one clean line: no object reprs, no torch advice to load
untrusted files with weights_only=False, state-dict mismatches counted, not listed."""

import io
import json

import pytest
import torch
from click.testing import CliRunner

from edm2.cli import main
from edm2.errors import one_line


def test_object_reprs_are_removed():
    assert one_line("cannot identify image file <_io.BytesIO object at 0x7f3a2b1c9e40>") == "cannot identify image file"


class Custom:
    pass


def test_torch_weights_only_advice_is_dropped_and_the_reason_kept():
    buf = io.BytesIO()
    torch.save({"a": Custom()}, buf)
    buf.seek(0)
    with pytest.raises(Exception) as e:
        torch.load(buf, weights_only=True)
    text = one_line(str(e.value))
    assert "weights_only" not in text and "arbitrary code" not in text and "\n" not in text
    assert "Custom" in text and text.startswith("the file holds objects that are not plain tensors")


def test_state_dict_mismatch_is_counted_with_examples():
    net = torch.nn.Sequential(*[torch.nn.Linear(2, 2) for _ in range(50)])
    wrong = {f"{i}.weight": torch.zeros(3, 2) for i in range(50)} | {f"x{i}": torch.zeros(1) for i in range(40)}
    with pytest.raises(RuntimeError) as e:
        net.load_state_dict(wrong, strict=True)
    text = one_line(str(e.value))
    assert "50 missing (e.g. 0.bias, 1.bias, 2.bias)" in text and "40 unexpected" in text
    assert "50 of another shape (e.g. 0.weight [3, 2] vs [2, 2]" in text and len(text) < 400


def test_a_file_that_is_no_image_is_named_without_object_reprs(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg" * 10)
    (src / "dataset.json").write_text(json.dumps({"labels": None}))
    r = CliRunner().invoke(main, ["dataset", "convert", "--source", str(src), "--dest", str(tmp_path / "o.zip"),
                                  "--workers", "1", "--quiet"])  # fmt: skip
    assert r.exit_code == 1 and "a.jpg" in r.output and "object at 0x" not in r.output
    assert r.output.count("\n") == 1
