"""Training statistics (docs/method.md#training): means of finite elements, stats.jsonl formatting."""

import json
import math

import torch

from edm2.train.stats import StatsCollector, format_time, stats_json_line


def test_loss_mean_counts_every_finite_element_across_reports():
    stats = StatsCollector("cpu")
    stats.report("Loss/loss", torch.tensor([[1.0, 2.0], [float("nan"), 3.0]]))
    stats.report("Loss/loss", torch.tensor([float("inf"), 6.0]))
    stats.report("Loss/learning_rate", 0.5)
    stats.report0("Progress/kimg", 1.024)
    means = stats.flush()
    assert means == {"Loss/loss": 3.0, "Loss/learning_rate": 0.5, "Progress/kimg": 1.024}
    means = stats.flush()  # nothing reported since: NaN, names kept
    assert all(math.isnan(v) for v in means.values()) and list(means) == [
        "Loss/loss",
        "Loss/learning_rate",
        "Progress/kimg",
    ]


def test_stats_json_line_format():
    line = stats_json_line({"Loss/loss": 0.123456789, "Progress/kimg": 2.0, "Timing/x": math.nan}, timestamp=12.3456)
    assert line == '{"Loss/loss": 0.123457, "Progress/kimg": 2.000, "Timing/x": NaN, "timestamp": 12.346}\n'
    assert json.loads(line)["Progress/kimg"] == 2.0


def test_format_time():
    assert [format_time(s) for s in (5, 187, 18187, 180000)] == ["5s", "3m 07s", "5h 03m 07s", "2d 02h 00m"]
