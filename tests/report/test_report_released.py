"""The released-nets table (edm2 report released): our value next to the reported one."""

import csv
import json

from click.testing import CliRunner

from edm2.cli import main


def score_json(path, metric, values, guidance=1.0, gnet=None):
    data = {
        "metrics": {metric: {"values": values, "min": min(values), "mean": sum(values) / len(values)}},
        "network": "/r/released/nets/edm2-img512-s-2147483-0.070.pkl",
        "gnet": gnet,
        "guidance": guidance,
        "ema_std": 0.07,
        "num_images": 150000,
    }
    path.write_text(json.dumps(data))
    return path


def test_released_table_shows_ours_next_to_the_reported_value(tmp_path):
    a = score_json(tmp_path / "a.json", "fid", [1.40, 1.36, 1.38], 2.1, "/r/nets/edm2-img512-xs-0134217-0.125.pkl")
    b = score_json(tmp_path / "b.json", "fd_dinov2", [104.0, 103.0, 103.5])
    args = ["report", "released", "--score", f"s-autog-fid={a}", "--score", f"xs-dino={b}"]
    args += ["--reported", "s-autog-fid=fid:1.34", "--reported", "xs-dino=fd_dinov2:103.39"]
    args += ["--label", "s-autog-fid=S autog", "--preset", "s-autog-fid=edm2-img512-s-autog-fid"]
    args += ["--out", str(tmp_path / "t.csv"), "--md", str(tmp_path / "t.md")]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    with open(tmp_path / "t.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows] == ["s-autog-fid", "xs-dino"]
    assert rows[0]["model"] == "S autog" and rows[0]["preset"] == "edm2-img512-s-autog-fid"
    assert float(rows[0]["ours"]) == 1.36 and float(rows[0]["reported"]) == 1.34  # min of the 3 ranges
    assert abs(float(rows[0]["difference"]) - 0.02) < 1e-9
    assert rows[0]["gnet"] == "edm2-img512-xs-0134217-0.125.pkl" and float(rows[0]["guidance"]) == 2.1
    md = (tmp_path / "t.md").read_text().splitlines()
    assert md[0].startswith("| model | guidance | EMA length | metric | reported | ours (min over seed ranges)")
    assert "| S autog | 2.10 | 0.070 | FID | 1.34 | 1.36 | +0.02 |" in md
    assert "| xs-dino | 1.00 | 0.070 | FD_DINOv2 | 103.39 | 103.00 | -0.39 |" in md


def test_released_table_refuses_a_bad_reported_value(tmp_path):
    a = score_json(tmp_path / "a.json", "fid", [1.4])
    r = CliRunner().invoke(main, ["report", "released", "--score", f"x={a}", "--reported", "x=fid", "--out", "t.csv"])
    assert r.exit_code == 2 and "NAME=METRIC:VALUE" in r.output
