"""The EDM2 training loss (docs/method.md#training)."""

import torch


class EDM2Loss:
    """Uncertainty-weighted denoising loss; returns the unreduced per-element loss [N,C,H,W]."""

    def __init__(self, P_mean: float = -0.4, P_std: float = 1.0, sigma_data: float = 0.5):
        self.P_mean = P_mean  # Mean of ln(sigma) in the training noise distribution.
        self.P_std = P_std  # Std of ln(sigma) in the training noise distribution.
        self.sigma_data = sigma_data  # Expected standard deviation of the training data.

    def __call__(self, net, images, labels=None):
        # Draw order matters for resuming exactly: ln(sigma) first, then the noise (docs/method.md#training).
        rnd_normal = torch.randn([images.shape[0], 1, 1, 1], device=images.device)
        sigma = (rnd_normal * self.P_std + self.P_mean).exp()
        weight = (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2  # lambda(sigma)
        noise = torch.randn_like(images) * sigma
        denoised, logvar = net(images + noise, sigma, labels, return_logvar=True)
        # (lambda / e^u) * (D - y)^2 + u, with u broadcast to every element (docs/method.md#training, #official-details).
        loss = (weight / logvar.exp()) * ((denoised - images) ** 2) + logvar
        return loss

    def kwargs(self) -> dict:
        """The constructor arguments (P_mean, P_std, sigma_data), as stored in snapshots and training states."""
        return dict(P_mean=self.P_mean, P_std=self.P_std, sigma_data=self.sigma_data)
