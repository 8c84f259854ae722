"""Training: options, loss, learning-rate schedule, the training loop (EDM2, arXiv 2312.02696,
Sec. 2 and Appendix B; docs/method.md#training, #presets).

The names import on first use, so `edm2.train.options` stays free of torch (the workflow reads it).
"""

from edm2.utils import lazy_exports

__all__ = ["EDM2Loss", "learning_rate_schedule", "TrainOptions"]
__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "EDM2Loss": "edm2.train.loss",
        "learning_rate_schedule": "edm2.train.schedule",
        "TrainOptions": "edm2.train.options",
    },
)
