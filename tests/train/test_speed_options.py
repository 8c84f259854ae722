"""Speed options change the arithmetic only at float-rounding level and never the random draws."""

import copy
import os

import pytest
import torch

from edm2.nn import Precond
from edm2.train.loss import EDM2Loss
from edm2.train.speed import ChannelsLast, CompiledForward


def tiny_net():
    torch.manual_seed(0)
    net = Precond(8, 3, 4, use_fp16=False, model_channels=8, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4])
    with torch.no_grad():  # non-zero gains so that every layer matters
        for name, p in net.named_parameters():
            if name.endswith("gain"):
                p.fill_(0.6)
    return net.train()


def loss_and_grads(model, net):
    torch.manual_seed(1)
    images = torch.randn(6, 3, 8, 8)
    labels = torch.eye(4)[torch.arange(6) % 4]
    net.zero_grad(set_to_none=True)
    loss = EDM2Loss()(model, images, labels)
    loss.sum().backward()
    return loss.detach(), {k: p.grad.clone() for k, p in net.named_parameters()}, copy.deepcopy(net.state_dict())


def assert_close_to_eager(wrap, weights_exact):
    eager_net, other_net = tiny_net(), tiny_net()
    for _ in range(2):  # the second call starts from weights the first forced normalisation wrote
        ref = loss_and_grads(eager_net, eager_net)
        out = loss_and_grads(wrap(other_net), other_net)
    torch.testing.assert_close(out[0], ref[0], rtol=1e-4, atol=1e-5)
    for name, grad in ref[1].items():
        torch.testing.assert_close(out[1][name], grad, rtol=1e-3, atol=1e-4 * grad.abs().max().item() + 1e-9, msg=name)
    for name, value in ref[2].items():
        if weights_exact:
            assert torch.equal(out[2][name], value), name
        else:
            torch.testing.assert_close(out[2][name], value)


def test_channels_last_matches_eager():
    assert_close_to_eager(ChannelsLast, weights_exact=True)


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("EDM2_TEST_COMPILE"), reason="compiling takes minutes on CPU; set EDM2_TEST_COMPILE=1"
)
def test_compiled_forward_matches_eager_and_keeps_forced_weight_normalisation():
    compiled = {}

    def wrap(net):  # compile once; the second call reuses it
        if "model" not in compiled:
            compiled["model"] = CompiledForward(net, net)
        return compiled["model"]

    assert_close_to_eager(wrap, weights_exact=True)
