"""Training: loss, learning-rate schedule, the training loop (docs/method.md#training, #presets)."""

from edm2.train.loss import EDM2Loss
from edm2.train.schedule import learning_rate_schedule

__all__ = ["EDM2Loss", "learning_rate_schedule"]
