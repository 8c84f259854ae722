"""The EDM2 training loss: uncertainty-weighted denoising loss (EDM2, arXiv 2312.02696, Appendix
B.2, Eq. 13-16 and 21; the official EDM2Loss of training/training_loop.py; docs/method.md#training)."""

import torch


class EDM2Loss:
    """Uncertainty-weighted denoising loss (EDM2 Eq. 21): `loss_fn(net, images [N, C, H, W], labels
    [N, L] or None)` -> the unreduced per-element loss [N, C, H, W] (float32, or float64 for a
    float64 network and images), with

        ln(sigma) ~ N(P_mean, P_std^2)                                 (EDM2 Eq. 16)
        lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2   (EDM2 Eq. 15)
        loss = lambda(sigma) / e^u(sigma) * (D(y + n; sigma) - y)^2 + u(sigma)   (EDM2 Eq. 13, 14, 21)

    where n ~ N(0, sigma^2 I) and u(sigma) is the network's learned log-variance (Precond's
    `return_logvar`). The batch mean of its sum over elements is the loss the optimizer descends.
    After each call `last_sigma` [N] holds the noise levels drawn (detached; the training
    monitor's loss per sigma band reads it).
    """

    def __init__(self, P_mean: float = -0.4, P_std: float = 1.0, sigma_data: float = 0.5):
        self.P_mean = P_mean  # Mean of ln(sigma) in the training noise distribution.
        self.P_std = P_std  # Std of ln(sigma) in the training noise distribution.
        self.sigma_data = sigma_data  # Expected standard deviation of the training data.
        self.last_sigma = None  # The noise levels [N] of the latest call.

    def __call__(self, net, images, labels=None):
        # Draw order matters for resuming exactly: ln(sigma) first, then the noise (docs/method.md#training).
        rnd_normal = torch.randn([images.shape[0], 1, 1, 1], device=images.device)
        sigma = (rnd_normal * self.P_std + self.P_mean).exp()  # EDM2 Eq. 16
        weight = (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2  # lambda(sigma), EDM2 Eq. 15
        noise = torch.randn_like(images) * sigma
        self.last_sigma = sigma.detach().flatten()
        denoised, logvar = net(images + noise, sigma, labels, return_logvar=True)
        # (lambda / e^u) * (D - y)^2 + u, EDM2 Eq. 21, with u broadcast to every element (docs/method.md#official-details).
        loss = (weight / logvar.exp()) * ((denoised - images) ** 2) + logvar
        return loss

    def kwargs(self) -> dict:
        """The constructor arguments (P_mean, P_std, sigma_data), as stored in snapshots and training states."""
        return dict(P_mean=self.P_mean, P_std=self.P_std, sigma_data=self.sigma_data)


class EDMLoss(EDM2Loss):
    """Config A's loss, EDM's `EDMLoss` (NVlabs/edm training/loss.py; EDM2 Appendix B.1, Eq. 13-16):
    `loss_fn(net, images [N, C, H, W], labels [N, L] or None)` -> the unreduced per-element loss

        loss = lambda(sigma) * (D(y + n; sigma) - y)^2        lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2

    with ln(sigma) ~ N(P_mean, P_std^2) (EDM: P_mean -1.2, P_std 1.2) and n ~ N(0, sigma^2 I),
    without the learned uncertainty u(sigma) of B-G (config A's network has no such head). The
    random draws are those of EDM2Loss (ln(sigma) first, then the noise).
    """

    def __init__(self, P_mean: float = -1.2, P_std: float = 1.2, sigma_data: float = 0.5):
        super().__init__(P_mean=P_mean, P_std=P_std, sigma_data=sigma_data)

    def __call__(self, net, images, labels=None):
        rnd_normal = torch.randn([images.shape[0], 1, 1, 1], device=images.device)
        sigma = (rnd_normal * self.P_std + self.P_mean).exp()  # EDM2 Eq. 16
        weight = (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2  # lambda(sigma), EDM2 Eq. 15
        noise = torch.randn_like(images) * sigma
        self.last_sigma = sigma.detach().flatten()
        denoised = net(images + noise, sigma, labels)
        return weight * ((denoised - images) ** 2)


def make_loss(kind: str, **kwargs):
    """The loss of a config's `loss` setting (edm2.train.configs): 'edm' -> EDMLoss (A),
    'uncertainty' -> EDM2Loss (B-G); ValueError naming anything else."""
    if kind == "edm":
        return EDMLoss(**kwargs)
    if kind == "uncertainty":
        return EDM2Loss(**kwargs)
    raise ValueError(f"unknown loss {kind!r}; use 'edm' or 'uncertainty'")
