"""Learning-rate schedule: inverse square root decay with a linear warm-up (docs/method.md#training)."""

import numpy as np


def learning_rate_schedule(cur_nimg, batch_size, ref_lr=100e-4, ref_batches=70e3, rampup_Mimg=10):
    """Learning rate for the step that starts at `cur_nimg` images.

    Decay `1/sqrt(t)` begins after `ref_batches` batches; warm-up is linear over
    `rampup_Mimg` million (decimal) images, so the very first step has lr = 0 (docs/method.md#official-details).
    """
    lr = ref_lr
    if ref_batches > 0:
        lr /= np.sqrt(max(cur_nimg / (ref_batches * batch_size), 1))
    if rampup_Mimg > 0:
        lr *= min(cur_nimg / (rampup_Mimg * 1e6), 1)
    return lr
