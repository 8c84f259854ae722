"""Learning-rate schedule (docs/method.md#training, #official-details): values at the warm-up and decay boundaries,
computed by hand."""

import math

import pytest

from edm2.train import learning_rate_schedule


def lr(cur_nimg, batch_size=2048, **kwargs):
    return float(learning_rate_schedule(cur_nimg=cur_nimg, batch_size=batch_size, **kwargs))


def test_the_first_step_has_learning_rate_zero():
    assert lr(0) == 0.0
    assert lr(0, ref_lr=0.0120, ref_batches=70000) == 0.0


def test_defaults_are_ref_lr_0_01_decay_70k_batches_warmup_10_million_images():
    # Past both the warm-up and the decay threshold 70e3 * 2048 = 143,360,000 images.
    assert lr(4 * 143_360_000) == pytest.approx(0.01 / 2, rel=1e-15)


def test_warmup_is_linear_over_ten_million_decimal_images():
    assert lr(5_000_000) == pytest.approx(0.005, rel=1e-15)
    assert lr(2_048) == pytest.approx(0.01 * 2048 / 10_000_000, rel=1e-15)
    assert lr(8 * 2**20) == pytest.approx(0.01 * 0.8388608, rel=1e-15)  # not 8Mi binary
    assert lr(9_999_360) == pytest.approx(0.01 * 0.999936, rel=1e-15)
    assert lr(10_000_000) == 0.01
    assert lr(12_000_000) == 0.01  # plateau until the decay threshold


def test_decay_starts_at_ref_batches_times_batch_size_images_as_inverse_square_root():
    threshold = 70_000 * 2048
    assert lr(threshold - 2048) == 0.01
    assert lr(threshold) == 0.01
    assert lr(threshold + 2048) == pytest.approx(0.01 / math.sqrt(70_001 / 70_000), rel=1e-14)
    assert lr(9 * threshold) == pytest.approx(0.01 / 3, rel=1e-14)
    assert lr(100 * threshold) == pytest.approx(0.001, rel=1e-14)
    # The threshold scales with the batch size.
    assert lr(4 * 70_000 * 512, batch_size=512) == pytest.approx(0.005, rel=1e-14)


def test_preset_values_and_keyword_names():
    # img512-xs: ref_lr 0.0120, ref_batches 70000, batch 2048.
    assert lr(2 * 143_360_000, ref_lr=0.0120, ref_batches=70_000) == pytest.approx(0.0120 / math.sqrt(2), rel=1e-14)
    # img64-s: ref_lr 0.0100, ref_batches 35000.
    assert lr(16 * 35_000 * 2048, ref_lr=0.0100, ref_batches=35_000) == pytest.approx(0.0025, rel=1e-14)


def test_warmup_and_decay_multiply_when_they_overlap():
    # Threshold 1e6 images; at 4e6: 0.01 / sqrt(4) * 4e6 / 1e7.
    assert lr(4_000_000, batch_size=1000, ref_batches=1000) == pytest.approx(0.01 / 2 * 0.4, rel=1e-14)


def test_zero_disables_each_part():
    assert lr(0, ref_batches=0, rampup_Mimg=0) == 0.01
    assert lr(1e12, ref_batches=0) == 0.01
    assert lr(1000, rampup_Mimg=0) == 0.01
    assert lr(3_000_000, rampup_Mimg=1) == 0.01
    assert lr(500_000, rampup_Mimg=1) == pytest.approx(0.005, rel=1e-15)
