"""EMA trackers used during training (docs/method.md#ema)."""

import copy
import math

import torch

from edm2.ema.maths import power_function_beta, std_to_exp
from edm2.naming import std_text


class PowerFunctionEMA:
    """One power-function EMA of the network per relative std (docs/method.md#ema).

    Only parameters are averaged; buffers are copied from the live net when read.
    """

    @torch.no_grad()
    def __init__(self, net: torch.nn.Module, stds=(0.050, 0.100)):
        self.net = net
        self.stds = list(stds)
        self.emas = [copy.deepcopy(net) for _std in self.stds]
        self._exps = {std: float(std_to_exp(std)) for std in self.stds}  # solve each cubic once

    @torch.no_grad()
    def reset(self):
        """Set every EMA's parameters to the network's."""
        for ema in self.emas:
            for p_net, p_ema in zip(self.net.parameters(), ema.parameters()):
                p_ema.copy_(p_net)

    @torch.no_grad()
    def update(self, cur_nimg, batch_size):
        """Average in the network's parameters after a step of `batch_size` images that ended at
        `cur_nimg` images: `ema <- lerp(ema, net, 1 - beta)`, beta = (1 - batch/cur_nimg)^(gamma+1)
        (EDM2 Eq. 127)."""
        # Called after cur_nimg += batch_size, so beta = 0 on the first step (docs/method.md#official-details).
        net_params = list(self.net.parameters())
        for std, ema in zip(self.stds, self.emas):
            beta = power_function_beta(std, t_next=cur_nimg, t_delta=batch_size, exp=self._exps[std])
            torch._foreach_lerp_(list(ema.parameters()), net_params, 1 - beta)

    @torch.no_grad()
    def get(self):
        """[(ema network, file-name suffix '-0.050'), ...], with the buffers copied from the network."""
        for ema in self.emas:
            for b_net, b_ema in zip(self.net.buffers(), ema.buffers()):
                b_ema.copy_(b_net)
        return [(ema, f"-{std_text(std)}") for std, ema in zip(self.stds, self.emas)]

    def snapshots(self, cur_nimg):
        """[(ema network, relative std), ...]: what the snapshots at `cur_nimg` images hold."""
        return [(ema, std) for (ema, _suffix), std in zip(self.get(), self.stds)]

    def describe(self) -> str:
        """What a training state must track to be resumed with this EMA (compared on resume)."""
        return f"power-function EMA stds {[float(s) for s in self.stds]}"

    def state_dict(self):
        """{'stds': [...], 'emas': [state dict, ...]} (saved in training states)."""
        return dict(stds=self.stds, emas=[ema.state_dict() for ema in self.emas])

    def load_state_dict(self, state):
        """Restore what `state_dict` returned."""
        self.stds = list(state["stds"])
        self._exps = {std: float(std_to_exp(std)) for std in self.stds}
        for ema, s_ema in zip(self.emas, state["emas"]):
            ema.load_state_dict(s_ema)


class TraditionalEMA:
    """Classic exponential EMA with a half-life and ramp-up (docs/method.md#ema; available, unused)."""

    @torch.no_grad()
    def __init__(self, net: torch.nn.Module, halflife_Mimg=float("inf"), rampup_ratio=0.09):
        self.net = net
        self.halflife_Mimg = halflife_Mimg
        self.rampup_ratio = rampup_ratio
        self.ema = copy.deepcopy(net)

    @torch.no_grad()
    def reset(self):
        for p_net, p_ema in zip(self.net.parameters(), self.ema.parameters()):
            p_ema.copy_(p_net)

    @torch.no_grad()
    def update(self, cur_nimg, batch_size):
        halflife_Mimg = self.halflife_Mimg
        if self.rampup_ratio is not None:
            halflife_Mimg = min(halflife_Mimg, cur_nimg / 1e6 * self.rampup_ratio)
        beta = 0.5 ** (batch_size / max(halflife_Mimg * 1e6, 1e-8))
        for p_net, p_ema in zip(self.net.parameters(), self.ema.parameters()):
            p_ema.lerp_(p_net, 1 - beta)

    @torch.no_grad()
    def get(self):
        for b_net, b_ema in zip(self.net.buffers(), self.ema.buffers()):
            b_ema.copy_(b_net)
        return self.ema

    def state_dict(self):
        return self.ema.state_dict()

    def load_state_dict(self, state):
        self.ema.load_state_dict(state)


class HalfLifeEMA:
    """Config A's traditional EMA, as EDM's training loop (NVlabs/edm training/training_loop.py,
    `ema_halflife_kimg`; EDM2 Appendix B.1 and Eq. 110/120: a 50 Mimg half-life).

    After the optimizer step of the batch that started at `nimg` images (the count *before* this
    step, as EDM updates the EMA before `cur_nimg += batch_size`):

        h    = min(halflife_nimg, rampup_ratio * nimg)      half-life in images (the ramp-up)
        beta = 0.5 ** (batch_size / max(h, 1e-8))
        ema  <- beta * ema + (1 - beta) * net               parameters only; buffers are copied

    so the first step copies the network. The loop's `update(cur_nimg, batch_size)` passes the
    count *after* the step, as for PowerFunctionEMA. One average; its snapshot is named by its
    relative std h / (ln 2 * nimg) (the std of the exponential weights over the images seen,
    EDM2 Sec. 3.1): 0.05 / ln 2 = 0.072 during the ramp-up, 0.034 for A at 2147.5 Mimg.
    """

    @torch.no_grad()
    def __init__(self, net: torch.nn.Module, halflife_nimg: int = 50_000_000, rampup_ratio: float | None = 0.05):
        self.net = net
        self.halflife_nimg = halflife_nimg
        self.rampup_ratio = rampup_ratio
        self.ema = copy.deepcopy(net)

    def halflife(self, nimg) -> float:
        """The half-life in images after `nimg` images (before the step)."""
        if self.rampup_ratio is None:
            return float(self.halflife_nimg)
        return min(float(self.halflife_nimg), nimg * self.rampup_ratio)

    def beta(self, nimg, batch_size) -> float:
        """The EMA decay of the step of `batch_size` images that starts at `nimg` images."""
        return 0.5 ** (batch_size / max(self.halflife(nimg), 1e-8))

    @torch.no_grad()
    def update(self, cur_nimg, batch_size):
        """Average in the network after the step of `batch_size` images that ended at `cur_nimg`."""
        beta = self.beta(cur_nimg - batch_size, batch_size)
        torch._foreach_lerp_(list(self.ema.parameters()), list(self.net.parameters()), 1 - beta)

    def relative_std(self, cur_nimg) -> float:
        """h / (ln 2 * nimg) at `cur_nimg` images (the ramp-up's 0.05 / ln 2 before any image)."""
        if cur_nimg <= 0:
            return (self.rampup_ratio if self.rampup_ratio is not None else math.inf) / math.log(2)
        return self.halflife(cur_nimg) / (math.log(2) * cur_nimg)

    @torch.no_grad()
    def snapshots(self, cur_nimg):
        """[(ema network with the network's buffers, relative std at `cur_nimg`)]."""
        for b_net, b_ema in zip(self.net.buffers(), self.ema.buffers()):
            b_ema.copy_(b_net)
        return [(self.ema, self.relative_std(cur_nimg))]

    def describe(self) -> str:
        """What a training state must track to be resumed with this EMA (compared on resume)."""
        return f"traditional EMA half-life {self.halflife_nimg} images, ramp-up {self.rampup_ratio}"

    def state_dict(self):
        """{'kind', 'halflife_nimg', 'rampup_ratio', 'ema': state dict} (saved in training states)."""
        return dict(kind="traditional", halflife_nimg=self.halflife_nimg, rampup_ratio=self.rampup_ratio,
                    ema=self.ema.state_dict())  # fmt: skip

    def load_state_dict(self, state):
        """Restore what `state_dict` returned."""
        self.halflife_nimg = state["halflife_nimg"]
        self.rampup_ratio = state["rampup_ratio"]
        self.ema.load_state_dict(state["ema"])


def describe_ema_state(state: dict) -> str:
    """`describe()` of the EMA whose `state_dict()` is `state` (a training state's 'ema')."""
    if state.get("kind") == "traditional":
        return f"traditional EMA half-life {state['halflife_nimg']} images, ramp-up {state['rampup_ratio']}"
    return f"power-function EMA stds {[float(s) for s in state['stds']]}"
