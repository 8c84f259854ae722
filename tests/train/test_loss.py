"""EDM2 loss (docs/method.md#training, #official-details) with fake networks that record their inputs."""

import math

import pytest
import torch

from edm2.train import EDM2Loss


class RecordingNet:
    """Returns (denoised, logvar) from the given functions and records what it was called with."""

    def __init__(self, denoised_fn, logvar_fn):
        self.denoised_fn, self.logvar_fn = denoised_fn, logvar_fn
        self.calls = []

    def __call__(self, x, sigma, labels=None, return_logvar=False):
        self.calls.append(dict(x=x.clone(), sigma=sigma.clone(), labels=labels, return_logvar=return_logvar))
        return self.denoised_fn(x, sigma), self.logvar_fn(sigma)


def images_batch(n=4, c=3, h=5, w=6, seed=123):
    return torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(seed))


def test_draws_log_sigma_first_then_the_noise_and_feeds_the_noisy_image():
    images = images_batch()
    labels = torch.eye(10)[:4]
    net = RecordingNet(lambda x, s: torch.zeros_like(x), lambda s: torch.zeros_like(s))
    P_mean, P_std = -0.8, 1.6
    torch.manual_seed(7)
    EDM2Loss(P_mean=P_mean, P_std=P_std)(net=net, images=images, labels=labels)

    # Reproduce the draws independently with the same global seed and order.
    torch.manual_seed(7)
    rnd = torch.randn([4, 1, 1, 1])
    noise = torch.randn_like(images)
    sigma = torch.exp(rnd * P_std + P_mean)

    (call,) = net.calls
    assert call["return_logvar"] is True and call["labels"] is labels
    assert call["sigma"].shape == (4, 1, 1, 1)
    torch.testing.assert_close(call["sigma"], sigma, rtol=1e-6, atol=0)
    torch.testing.assert_close(call["x"], images + noise * sigma, rtol=1e-6, atol=1e-6)


def test_per_element_loss_matches_the_formula_unreduced():
    images = images_batch(n=5, c=2, h=3, w=4)
    offset = torch.linspace(-1, 1, 2 * 3 * 4).reshape(1, 2, 3, 4)
    net = RecordingNet(lambda x, s: 0.3 * x + offset, lambda s: 0.7 * torch.log(s) - 0.2)
    sigma_data = 0.5
    loss = EDM2Loss(P_mean=-0.4, P_std=1.0, sigma_data=sigma_data)(net=net, images=images)
    assert loss.shape == images.shape  # not reduced

    (call,) = net.calls
    x, sigma = call["x"].double(), call["sigma"].double()
    y = images.double()
    D = 0.3 * x + offset.double()
    u = 0.7 * torch.log(sigma) - 0.2
    lam = 1 / sigma**2 + 1 / sigma_data**2  # = (sigma^2 + sigma_data^2) / (sigma * sigma_data)^2
    expected = lam * torch.exp(-u) * (D - y) ** 2 + u
    torch.testing.assert_close(loss.double(), expected, rtol=2e-5, atol=1e-5)


def test_perfect_denoiser_gives_exactly_the_logvar_on_every_element():
    images = images_batch(n=6, c=4, h=2, w=3)
    u_values = torch.tensor([-3.0, -0.5, 0.0, 0.25, 1.0, 2.5]).reshape(6, 1, 1, 1)
    net = RecordingNet(lambda x, s: images, lambda s: u_values)
    loss = EDM2Loss()(net=net, images=images)
    assert loss.shape == (6, 4, 2, 3)
    assert torch.equal(loss, u_values.expand(6, 4, 2, 3))
    # Summed per sample, the +u term contributes C*H*W*u (docs/method.md#official-details).
    assert torch.equal(loss.sum(dim=(1, 2, 3)), 24 * u_values.flatten())


def test_identity_denoiser_loss_is_lambda_sigma_squared_times_noise_squared():
    # D = y + n: (D - y)^2 = n^2 = sigma^2 eps^2; lambda * sigma^2 = 1 + sigma^2/sigma_data^2.
    images = images_batch(n=3, c=1, h=4, w=4)
    net = RecordingNet(lambda x, s: x, lambda s: torch.zeros_like(s))
    torch.manual_seed(11)
    loss = EDM2Loss(sigma_data=0.5)(net=net, images=images)
    torch.manual_seed(11)
    sigma = torch.exp(torch.randn([3, 1, 1, 1]) - 0.4)
    eps = torch.randn_like(images)
    torch.testing.assert_close(loss, (1 + sigma**2 / 0.25) * eps**2, rtol=1e-5, atol=1e-6)


def test_log_sigma_is_normal_with_the_given_mean_and_std():
    n = 40_000
    images = torch.zeros(n, 1, 1, 1)
    net = RecordingNet(lambda x, s: x, lambda s: torch.zeros_like(s))
    torch.manual_seed(0)
    EDM2Loss(P_mean=-0.8, P_std=1.6)(net=net, images=images)
    log_sigma = net.calls[0]["sigma"].double().log().flatten()
    assert log_sigma.mean().item() == pytest.approx(-0.8, abs=5 * 1.6 / math.sqrt(n))
    assert log_sigma.std().item() == pytest.approx(1.6, abs=5 * 1.6 / math.sqrt(2 * n))


def test_default_parameters_are_the_img512_ones():
    loss_fn = EDM2Loss()
    assert (loss_fn.P_mean, loss_fn.P_std, loss_fn.sigma_data) == (-0.4, 1.0, 0.5)
