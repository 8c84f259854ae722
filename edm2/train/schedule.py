"""Learning-rate schedule: inverse square root decay with a linear warm-up (EDM2, arXiv 2312.02696,
Sec. 2.3, Config E; the official learning_rate_schedule of training/training_loop.py; docs/method.md#training)."""

import numpy as np


def learning_rate_schedule(cur_nimg, batch_size, ref_lr=100e-4, ref_batches=70e3, rampup_Mimg=10):
    """Learning rate (a float) for the step that starts at `cur_nimg` images, batches of `batch_size`.

        alpha(t) = ref_lr / sqrt(max(t / ref_batches, 1))        t = cur_nimg / batch_size  (EDM2 Sec. 2.3)
                   * min(cur_nimg / (rampup_Mimg * 10^6), 1)     linear warm-up (EDM2 Fig. 16-22: 10 Mimg)

    `ref_batches` (t_ref) 0 disables the decay, `rampup_Mimg` 0 the warm-up; the warm-up counts
    decimal millions of images, so the very first step has lr = 0 (docs/method.md#official-details).
    """
    lr = ref_lr
    if ref_batches > 0:
        lr /= np.sqrt(max(cur_nimg / (ref_batches * batch_size), 1))
    if rampup_Mimg > 0:
        lr *= min(cur_nimg / (rampup_Mimg * 1e6), 1)
    return lr
