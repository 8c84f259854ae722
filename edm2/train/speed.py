"""Speed options of the training loop: wrappers around the network that change how fast a step
runs, not what it computes (up to the order of floating-point reductions).

    ChannelsLast(model)          image input in channels-last memory layout (faster convolutions on CPU)
    CompiledForward(model, net)  torch.compile with MPConv's forced weight normalisation done eagerly
"""

import torch

from edm2.nn.layers import MPConv, normalize


class ChannelsLast(torch.nn.Module):
    """Calls `net` with its image input in channels-last memory layout (a speed option on CPU).

    The layout changes only the order of some floating-point reductions inside convolutions, not
    the random draws: the loss draws its noise before the call, in the default layout.
    """

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x, *args, **kwargs):
        return self.net(x.contiguous(memory_format=torch.channels_last), *args, **kwargs)


class CompiledForward:
    """`torch.compile` of the network, with MPConv's forced weight normalisation done eagerly.

    A compiled graph does not reproduce MPConv's in-place overwrite of its own parameter inside
    the forward (the official MPConv.forward in training/networks_edm2.py does
    `self.weight.copy_(normalize(w))`; EDM2 paper, arXiv 2312.02696, Sec. 2.3 'forced weight
    normalization'; docs/method.md), so the MPConv layers run in eval mode inside the graph (normalise
    and scale only) and every call first applies the forced normalisation `weight <-
    normalize(weight)` to all of them, as the eager training-mode forward does: the weights stay
    bit-identical; activations and gradients equal the eager ones up to float rounding (fusion).
    Every MPConv must take part in each forward, which holds for the training loss of Precond.
    """

    def __init__(self, model, net):
        self.convs = [m for m in net.modules() if isinstance(m, MPConv)]
        for conv in self.convs:
            conv.train(False)
        # dynamic=False: one graph per input shape (training has one); automatic dynamic shapes
        # would otherwise kick in when another model reuses the same forward code in this process.
        self.model = torch.compile(model, dynamic=False)

    def __call__(self, *args, **kwargs):
        with torch.no_grad():
            for conv in self.convs:
                w = conv.weight.to(torch.float64 if conv.weight.dtype == torch.float64 else torch.float32)
                conv.weight.copy_(normalize(w))
        return self.model(*args, **kwargs)
