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
    sigma_lo=DEFAULTS.sigma_lo,
    sigma_hi=DEFAULTS.sigma_hi,
    guidance_start=DEFAULTS.guidance_start,
    guidance_stop=DEFAULTS.guidance_stop,
    dtype=torch.float32,
    randn_like=torch.randn_like,
):
    """EDM's 2nd-order Heun sampler, EDM (arXiv 2206.00364) Algorithm 2 (deterministic with
    S_churn = 0, the stochastic variant otherwise), with guidance; the official
    `generate_images.edm_sampler` (docs/method.md#sampling).

    noise [N, C, R, R] (unit variance), labels [N, label_dim] or None -> x_0 [N, C, R, R] in
    `dtype`. NFE = 2 * num_steps - 1; each evaluation on a guided step evaluates `gnet` too.

    Guidance interval (Kynkäänniemi et al., arXiv 2404.07724, Sec. 3.1, Eq. 6): the guidance
    weight applies only on the steps `guided_steps` selects (noise level t_cur in
    (sigma_lo, sigma_hi], step index in [guidance_start, guidance_stop]); the other steps use
    the main network alone (w = 1) and never evaluate `gnet`. The defaults guide every step.

    Several guides (Karras et al. 2024, arXiv 2406.02507, Appendix B.2, Eq. 6, after Liu et al.
    2022): `gnet` a sequence of networks and `guidance` a sequence of as many weights w_i give
    D_w = D_m + sum_i (w_i - 1)(D_m - D_i), e.g. classifier-free guidance (an unconditional D_u)
    and autoguidance (a degraded D_c) together; `edm2.sample.options.mix_weights` gives the
    paper's w_u, w_c from a total weight and a mix alpha. A guide whose weight is 1 is never
    evaluated; the guidance interval applies to every guide. When one guide is left (a single
    guide, or all others at weight 1) the guided denoiser is lerp(D_g, D_m, w) = D_m + (w - 1)
    (D_m - D_g), the official code's expression, so the result is bit for bit that of the
    single-guide call. ValueError when the counts differ or a guide with weight != 1 is None.
    """
    guides = _active_guides(gnet, guidance)

    # Guided denoiser (arXiv 2406.02507 Eq. 1 / Eq. 6): the guides are skipped outside the interval.
    def denoise(x, t, guided):
        Dx = net(x, t, labels).to(dtype)
        if not guides or not guided:
            return Dx
        if len(guides) == 1:  # lerp(D_guide, D_main, w): the official single-guide expression
            guide, weight = guides[0]
            return guide(x, t, labels).to(dtype).lerp(Dx, weight)
        out = Dx
        for guide, weight in guides:  # Eq. 6: D_m + sum_i (w_i - 1)(D_m - D_i)
            out = out + (weight - 1) * (Dx - guide(x, t, labels).to(dtype))
        return out

    t_steps = time_steps(num_steps, sigma_min, sigma_max, rho, dtype=dtype, device=noise.device)
    guided_at = guided_steps(t_steps, sigma_lo, sigma_hi, guidance_start, guidance_stop)

    # Main sampling loop.
    x_next = noise.to(dtype) * t_steps[0]
    for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:])):
        x_cur = x_next
        guided = guided_at[i]  # decided by t_cur, for both evaluations of the step

        # Increase noise temporarily (churn), gamma capped at sqrt(2) - 1.
        if S_churn > 0 and S_min <= t_cur <= S_max:
            gamma = min(S_churn / num_steps, np.sqrt(2) - 1)
            t_hat = t_cur + gamma * t_cur
            x_hat = x_cur + (t_hat**2 - t_cur**2).sqrt() * S_noise * randn_like(x_cur)
        else:
            t_hat = t_cur
            x_hat = x_cur

        # Euler step.
        d_cur = (x_hat - denoise(x_hat, t_hat, guided)) / t_hat
        x_next = x_hat + (t_next - t_hat) * d_cur

        # Second-order correction, skipped on the last step.
        if i < num_steps - 1:
            d_prime = (x_next - denoise(x_next, t_next, guided)) / t_next
            x_next = x_hat + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_prime)

    return x_next


def _active_guides(gnet, guidance) -> list:
    """[(guide, w_i)] of the guides whose weight is not 1, in the order given. `gnet` one network
    (or None) with one weight, or sequences of equal length."""
    if isinstance(gnet, (list, tuple)) or isinstance(guidance, (list, tuple)):
        gnets = list(gnet) if isinstance(gnet, (list, tuple)) else [gnet]
        weights = list(guidance) if isinstance(guidance, (list, tuple)) else [guidance]
        if len(gnets) != len(weights):
            raise ValueError(f"edm_sampler: {len(gnets)} guiding networks but {len(weights)} guidance weights")
    else:
        gnets, weights = [gnet], [guidance]
    active = [(g, w) for g, w in zip(gnets, weights) if w != 1]
    if any(g is None for g, _ in active):
        raise ValueError("edm_sampler: a guidance weight other than 1 needs its guiding network (gnet)")
    return active


def time_steps(num_steps, sigma_min, sigma_max, rho, dtype=torch.float32, device=None) -> torch.Tensor:
    """The noise levels t_0 > ... > t_{N-1} > t_N = 0 of the sampler, [num_steps + 1] in `dtype`,
    computed in `dtype` as the official `edm_sampler` does: EDM (arXiv 2206.00364) Eq. 5."""
    step_indices = torch.arange(num_steps, dtype=dtype, device=device)
    t_steps = (
        sigma_max ** (1 / rho) + step_indices / (num_steps - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))
    ) ** rho
    return torch.cat([t_steps, torch.zeros_like(t_steps[:1])])


def guided_steps(
    t_steps,
    sigma_lo=DEFAULTS.sigma_lo,
    sigma_hi=DEFAULTS.sigma_hi,
    guidance_start=DEFAULTS.guidance_start,
    guidance_stop=DEFAULTS.guidance_stop,
) -> list[bool]:
    """Which steps the guidance interval guides: [num_steps] bools for t_steps [num_steps + 1].

    Step i is guided iff sigma_lo < t_i <= sigma_hi (arXiv 2404.07724 Eq. 6, decided by the
    step's starting noise level t_i, so the weight is constant within a step as Sec. 3.1 asks)
    and guidance_start <= i <= guidance_stop (the step-index form of the paper's code; None =
    the last step). t_i is compared exactly as the sampler computes it (in its dtype).
    """
    levels = [float(t) for t in t_steps[:-1].tolist()]
    stop = len(levels) - 1 if guidance_stop is None else guidance_stop
    return [sigma_lo < t <= sigma_hi and guidance_start <= i <= stop for i, t in enumerate(levels)]


def interval_steps(num_steps=DEFAULTS.num_steps, sigma_min=DEFAULTS.sigma_min, sigma_max=DEFAULTS.sigma_max,
                   rho=DEFAULTS.rho, guidance=1, sigma_lo=DEFAULTS.sigma_lo, sigma_hi=DEFAULTS.sigma_hi,
                   guidance_start=DEFAULTS.guidance_start, guidance_stop=DEFAULTS.guidance_stop,
                   dtype=torch.float32, **_other) -> list[int]:  # fmt: skip
    """The indices of the steps `edm_sampler` guides with these keyword arguments (none when
    guidance == 1, or every weight is 1 for several guides); each guide whose weight is not 1 is
    evaluated 2x per guided step but once on the last step (`guide_evaluations`)."""
    if active_guides(guidance) == 0:
        return []
    t_steps = time_steps(num_steps, sigma_min, sigma_max, rho, dtype=dtype)
    mask = guided_steps(t_steps, sigma_lo, sigma_hi, guidance_start, guidance_stop)
    return [i for i, guided in enumerate(mask) if guided]


def active_guides(guidance) -> int:
    """How many guides `edm_sampler` evaluates with `guidance` (one weight or one per guide):
    those whose weight is not 1."""
    weights = guidance if isinstance(guidance, (list, tuple)) else [guidance]
    return sum(1 for w in weights if w != 1)


def guide_evaluations(steps: list[int], num_steps: int, guides: int = 1) -> int:
    """Evaluations of guiding networks per image when `steps` are guided by `guides` networks
    (Heun: 2 per step and guide, 1 on the last step)."""
    return guides * sum(1 if i == num_steps - 1 else 2 for i in steps)


def describe_interval(**kwargs) -> str:
    """One line on the steps `edm_sampler` guides with these keyword arguments, e.g.
    'guidance 2 on 6 of 32 steps: 17-22 (sigma in (0.189, 1.609])', or with two guides
    'guidance 2.1 (guides 1.55, 1.55) on 6 of 32 steps: ...' (the total, then each w_i)."""
    num_steps = kwargs.get("num_steps", DEFAULTS.num_steps)
    steps = interval_steps(**kwargs)
    if not steps:
        return f"no guidance on any of the {num_steps} steps"
    runs, first = [], steps[0]
    for a, b in zip(steps, steps[1:] + [None]):
        if b != a + 1:
            runs.append(f"{first}" if first == a else f"{first}-{a}")
            first = b
    text = f"guidance {_weights_text(kwargs['guidance'])} on {len(steps)} of {num_steps} steps: {', '.join(runs)}"
    if len(runs) == 1:
        names = ("num_steps", "sigma_min", "sigma_max", "rho")
        t = time_steps(*(kwargs.get(n, getattr(DEFAULTS, n)) for n in names)).tolist()
        text += f" (sigma in ({t[steps[-1] + 1]:.3f}, {t[steps[0]]:.3f}])"
    return text


def _weights_text(guidance) -> str:
    """'2' for one weight; '2.1 (guides 1.55, 1.55)' (the total, then each) for one per guide."""
    if not isinstance(guidance, (list, tuple)):
        return f"{guidance:g}"
    total = 1 + sum(w - 1 for w in guidance)
    return f"{total:g} (guides {', '.join(f'{w:g}' for w in guidance)})"


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
