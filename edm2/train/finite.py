"""Numeric faults of a training run: when to stop rather than train on (docs/training.md).

The paper's own safety measure comes first: non-finite gradients are zeroed before every Adam
step (`edm2.train.loop.apply_gradients`, the official `torch.nan_to_num` of the gradients), so
one bad batch (an overflow, a poisoned image) costs one step and nothing else. A run "stays
non-finite", and is stopped, when

- the loss (the step's sum over all micro-batches of a rank) is non-finite for
  `NONFINITE_LOSS_STEPS` consecutive steps on any rank: the step is then a no-op apart from the
  decaying Adam momentum, so the weights do not leave the state that gives the non-finite loss;
- or any weight of the network is non-finite: the safety measure cannot allow that, so
  something bypassed it (a finite but absurd learning rate that overflows the weights or their
  forced normalisation, a fault in a kernel).

The tally stays on the device (no synchronisation per step); it is read, with one all-reduce over
the ranks, only where the loop would print or write (status lines, snapshots, training states,
the end), so the last training state and snapshots on disk are always from finite weights.
"""

import torch
import torch.distributed as tdist

from edm2.distributed import get_world_size, print0
from edm2.errors import NumericError

NONFINITE_LOSS_STEPS = 16  # consecutive steps with a non-finite loss that stop a run


class FiniteGuard:
    """Counts consecutive non-finite losses on `device` and checks the weights on request.

    `after_step(loss)` after each step with the step's loss ([] tensor, any dtype); `check(net,
    cur_nimg)` on every rank at the same points raises NumericError (the same one line on every
    rank) when the run stays non-finite."""

    def __init__(self, device, patience: int = NONFINITE_LOSS_STEPS):
        self.patience = int(patience)
        self.run = torch.zeros([], dtype=torch.float32, device=device)  # current run of non-finite losses
        self.worst = torch.zeros([], dtype=torch.float32, device=device)  # longest run since the last check

    def after_step(self, loss: torch.Tensor) -> None:
        bad = ~torch.isfinite(loss.detach().float())
        self.run = torch.where(bad, self.run + 1, torch.zeros_like(self.run))
        self.worst = torch.maximum(self.worst, self.run)

    @staticmethod
    def _stop(message: str) -> None:
        print0(f"Numeric fault: {message}")  # in log.txt too: the CLI's one-line error goes to stderr only
        raise NumericError(message)

    def check(self, net: torch.nn.Module, cur_nimg: int) -> None:
        """Raise NumericError if any rank had `patience` non-finite losses in a row since the last
        check, or holds a non-finite weight (named in the message)."""
        params = [p.detach() for p in net.parameters()]
        peaks = torch.stack([p.abs().amax().float() for p in params if p.numel()])  # NaN and inf propagate
        flags = torch.stack([self.worst, (~torch.isfinite(peaks)).any().float()])
        if get_world_size() > 1:
            tdist.all_reduce(flags, op=tdist.ReduceOp.MAX)
        worst, weights_bad = flags.tolist()
        self.worst.zero_()
        if weights_bad:
            name = next((n for n, p in net.named_parameters() if not torch.isfinite(p.detach()).all()), None)
            where = f"weight {name}" if name is not None else "a weight on another rank"
            self._stop(
                f"training stopped at {cur_nimg} images: {where} is not finite (NaN or infinite), although "
                "non-finite gradients are zeroed; the learning rate is likely far too high (--lr: start "
                "again in a new --outdir). The last training state and snapshots on disk are from finite weights"
            )
        if worst >= self.patience:
            self._stop(
                f"training stopped at {cur_nimg} images: the loss was not finite for {int(worst)} consecutive "
                "steps (non-finite gradients are zeroed, so training cannot recover); check the dataset for "
                "NaN or infinite values and the options (--lr, --P_mean, --P_std). The last training state "
                "and snapshots on disk are from finite weights"
            )
