"""EMA trackers used during training (docs/method.md#ema)."""

import copy

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
