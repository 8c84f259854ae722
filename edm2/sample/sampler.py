"""The EDM (Heun) sampler with guidance, and per-seed random generators (docs/method.md#sampling)."""

import numpy as np
import torch

from edm2.sample.options import DEFAULTS


def edm_sampler(
    net,
    noise,
    labels=None,
    gnet=None,
    num_steps=DEFAULTS.num_steps,
    sigma_min=DEFAULTS.sigma_min,
    sigma_max=DEFAULTS.sigma_max,
    rho=DEFAULTS.rho,
    guidance=1,
    S_churn=DEFAULTS.S_churn,
    S_min=DEFAULTS.S_min,
    S_max=DEFAULTS.S_max,
    S_noise=DEFAULTS.S_noise,
    dtype=torch.float32,
    randn_like=torch.randn_like,
):
    """EDM's 2nd-order Heun sampler, EDM (arXiv 2206.00364) Algorithm 2 (deterministic with
    S_churn = 0, the stochastic variant otherwise), with guidance; the official
    `generate_images.edm_sampler` (docs/method.md#sampling).

    noise [N, C, R, R] (unit variance), labels [N, label_dim] or None -> x_0 [N, C, R, R] in
    `dtype`. NFE = 2 * num_steps - 1; each call evaluates `gnet` too when guidance != 1.
    """

    # Guided denoiser: lerp(D_guide, D_main, guidance), autoguidance (arXiv 2406.02507) Eq. 1 /
    # classifier-free guidance; the guide is skipped when guidance == 1.
    def denoise(x, t):
        Dx = net(x, t, labels).to(dtype)
        if guidance == 1:
            return Dx
        ref_Dx = gnet(x, t, labels).to(dtype)
        return ref_Dx.lerp(Dx, guidance)

    # Time step discretisation in `dtype`, EDM (arXiv 2206.00364) Eq. 5, with t_N = 0.
    step_indices = torch.arange(num_steps, dtype=dtype, device=noise.device)
    t_steps = (
        sigma_max ** (1 / rho) + step_indices / (num_steps - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))
    ) ** rho
    t_steps = torch.cat([t_steps, torch.zeros_like(t_steps[:1])])

    # Main sampling loop.
    x_next = noise.to(dtype) * t_steps[0]
    for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:])):
        x_cur = x_next

        # Increase noise temporarily (churn), gamma capped at sqrt(2) - 1.
        if S_churn > 0 and S_min <= t_cur <= S_max:
            gamma = min(S_churn / num_steps, np.sqrt(2) - 1)
            t_hat = t_cur + gamma * t_cur
            x_hat = x_cur + (t_hat**2 - t_cur**2).sqrt() * S_noise * randn_like(x_cur)
        else:
            t_hat = t_cur
            x_hat = x_cur

        # Euler step.
        d_cur = (x_hat - denoise(x_hat, t_hat)) / t_hat
        x_next = x_hat + (t_next - t_hat) * d_cur

        # Second-order correction, skipped on the last step.
        if i < num_steps - 1:
            d_prime = (x_next - denoise(x_next, t_next)) / t_next
            x_next = x_hat + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_prime)

    return x_next


class StackedRandomGenerator:
    """One torch.Generator per seed (seed mod 2^32); draws are stacked along the batch, so a
    sample's randomness does not depend on the batch it lands in (docs/method.md#sampling)."""

    def __init__(self, device, seeds):
        self.generators = [torch.Generator(device).manual_seed(int(seed) % (1 << 32)) for seed in seeds]

    def randn(self, size, **kwargs):
        assert size[0] == len(self.generators)
        return torch.stack([torch.randn(size[1:], generator=gen, **kwargs) for gen in self.generators])

    def randn_like(self, input):
        return self.randn(input.shape, dtype=input.dtype, layout=input.layout, device=input.device)

    def randint(self, *args, size, **kwargs):
        assert size[0] == len(self.generators)
        return torch.stack([torch.randint(*args, size=size[1:], generator=gen, **kwargs) for gen in self.generators])
