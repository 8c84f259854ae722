"""Speed options of the training loop: wrappers around the network that change how fast a step
runs, not what it computes (up to the order of floating-point reductions).

    ChannelsLast(model)          image input in channels-last memory layout (faster convolutions on CPU)
    CompiledForward(model, net)  torch.compile with MPConv's forced weight normalisation done eagerly
    match_optimizer_implementation(optimizer, fused)   fused or foreach Adam, after loading a state

`edm2 train --fast` uses all of them (the fused Adam on CUDA only) and builds the network with
fused attention (`Precond(..., fused_attention=True)`: scaled_dot_product_attention instead of
the official pair of einsums, the same softmax(q k^T / sqrt(c)) v of EDM2 Eq. 10-11 up to float
rounding), which its snapshots record.
"""

import time

import torch

from edm2.distributed import print0
from edm2.nn.layers import MPConv, normalize

COMPILE_BACKEND = "inductor"  # torch.compile backend of CompiledForward (tests of the plumbing use "aot_eager")


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
        self.model = torch.compile(model, dynamic=False, backend=COMPILE_BACKEND)
        self.compile_seconds = None  # wall time of the first call (compiling it), once made

    def __call__(self, *args, **kwargs):
        with torch.no_grad():
            for conv in self.convs:
                w = conv.weight.to(torch.float64 if conv.weight.dtype == torch.float64 else torch.float32)
                conv.weight.copy_(normalize(w))
        if self.compile_seconds is not None:
            return self.model(*args, **kwargs)
        start = time.perf_counter()
        out = self.model(*args, **kwargs)  # the forward graph; the backward compiles at its first use
        self.compile_seconds = time.perf_counter() - start
        print0(f"Compiled the network's forward in {self.compile_seconds:.1f} s")
        return out


def match_optimizer_implementation(optimizer: torch.optim.Optimizer, fused: bool) -> None:
    """Make every param group of an Adam use the fused (True) or multi-tensor (False) update, with
    its step counters where that implementation keeps them (fused: a float32 tensor on the
    parameter's device; multi-tensor: on the CPU). Loading a state dict restores the saver's
    choice, so a run resumed with or without `--fast` calls this after loading."""
    for group in optimizer.param_groups:
        group["fused"] = bool(fused) or None
        group["foreach"] = not fused
        for p in group["params"]:
            state = optimizer.state.get(p)
            if state and "step" in state:
                device = p.device if fused else torch.device("cpu")
                state["step"] = torch.as_tensor(state["step"]).to(device=device, dtype=torch.float32)
