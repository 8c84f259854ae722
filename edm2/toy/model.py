"""The small MLP denoisers of the 2-D toy example (autoguidance, arXiv 2406.02507, Sec. 3 and
App. C; NVIDIA's `toy_example.py`, `ToyModel` / `do_train`), their training by score matching
against the exact mixture score, and guided sampling with the EDM sampler.

    net = train_toy("A", dim=64, iters=1024)       # main model
    guide = train_toy("A", dim=32, iters=128)      # weaker guide: smaller, shorter-trained
    paths = sample_toy(net, x_init, gnet=guide, guidance=3)   # [steps + 1, N, 2]

The network outputs an unnormalised log-density log p(x; sigma); its score (and so the
denoiser D(x; sigma) = x + sigma^2 grad_x log p) comes from automatic differentiation.
"""

import copy
import math

import torch
from tqdm import tqdm

from edm2.ema.maths import power_function_beta
from edm2.nn.layers import mp_silu, normalize
from edm2.toy.mixture import tree_mixture

# Training settings of the official toy example (`do_train`): batch, Adam betas, learning
# rate lr / sqrt(max(i / lr_iter, 1)), log-normal training noise levels, EMA length.
BATCH = 4096
LR = 1e-2
LR_ITER = 512
P_MEAN, P_STD = -2.3, 1.5
SIGMA_DATA = 0.5
EMA_STD = 0.010
SIGMA_MAX = 5.0  # sampling starts from the class-A mixture smoothed to sigma = 5 (`do_sample`)


class MPLinear(torch.nn.Module):
    """Magnitude-preserving linear layer (EDM2 arXiv 2312.02696 Eq. 47): weights normalised to
    unit norm per output (and forced back to it in training), scaled by 1 / sqrt(fan-in)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(out_dim, in_dim))

    def forward(self, x):
        if self.training:
            with torch.no_grad():
                self.weight.copy_(normalize(self.weight))
        return x @ (normalize(self.weight) / math.sqrt(self.weight.shape[1])).t()


class ToyDenoiser(torch.nn.Module):
    """An MLP log-density model of a 2-D distribution at noise level sigma.

    forward(x [..., 2], sigma) -> log p(x; sigma) [...] up to a constant: the input scaled by
    1 / sqrt(sigma_data^2 + sigma^2) with log(sigma) / 4 and a constant 1 appended, `layers`
    hidden MP layers of `dim` features with MP-SiLU, and the output gain * mean(y^2) / sigma
    minus the Gaussian term |x_in|^2 / 2 (the official preconditioning; gain starts at 0, so an
    untrained model is the Gaussian N(0, sigma_data^2 + sigma^2)).
    """

    def __init__(self, layers: int = 4, dim: int = 64, sigma_data: float = SIGMA_DATA):
        super().__init__()
        self.sigma_data = sigma_data
        self.inputs = MPLinear(2 + 2, dim)
        self.hidden = torch.nn.ModuleList(MPLinear(dim, dim) for _ in range(layers))
        self.gain = torch.nn.Parameter(torch.zeros([]))

    def forward(self, x, sigma):
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).broadcast_to(x.shape[:-1])[..., None]
        x = x / (self.sigma_data**2 + sigma**2).sqrt()
        y = self.inputs(torch.cat([x, sigma.log() / 4, torch.ones_like(sigma)], dim=-1))
        for layer in self.hidden:
            y = layer(mp_silu(y))
        return (y**2).mean(-1) * self.gain / sigma[..., 0] - 0.5 * (x**2).sum(-1)

    def logp(self, x, sigma):
        return self(x, sigma)

    def score(self, x, sigma, graph: bool = False):
        """grad_x log p(x; sigma) [..., 2] by autograd (`graph`: keep it for a loss on it)."""
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self(x, sigma).sum(), [x], create_graph=graph)
        return grad


def train_toy(
    classes: str = "A",  # Training distribution: 'A' (conditional on class A) or 'AB' (unconditional).
    layers: int = 4,
    dim: int = 64,
    iters: int = 4096,  # Official: 4096 for the main model, 512 for the guides.
    batch: int = BATCH,
    seed: int = 0,
    ema_std: float = EMA_STD,
    progress: bool = False,
    desc: str = "train",
    device=None,  # torch device (default: CPU)
) -> ToyDenoiser:
    """Train a ToyDenoiser on the tree mixture and return its power-function EMA (EDM2 Eq. 127).

    Loss (the official `do_train`): sigma^2 |score_true(x; sigma) - score_net(x; sigma)|^2 / 2
    averaged over x ~ p(x; sigma) with ln sigma ~ N(P_mean, P_std^2): denoising score matching
    with the exact score of the mixture (autoguidance App. C). Adam (0.9, 0.99), learning rate
    lr / sqrt(max(i / 512, 1)). Deterministic for a given seed on one machine.
    """
    device = torch.device("cpu" if device is None else device)
    gen = torch.Generator(device).manual_seed(seed)
    torch.manual_seed(seed)  # the weights' initialisation
    gt = tree_mixture(classes, device=device)
    net = ToyDenoiser(layers, dim).to(device).train()
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    opt = torch.optim.Adam(net.parameters(), betas=(0.9, 0.99))
    for i in tqdm(range(iters), desc=desc, unit="it", disable=not progress, dynamic_ncols=True, leave=False):
        opt.param_groups[0]["lr"] = LR / math.sqrt(max(i / LR_ITER, 1))
        opt.zero_grad()
        sigma = (torch.randn(batch, generator=gen, device=device) * P_STD + P_MEAN).exp()
        x = gt.sample(batch, sigma, generator=gen)
        loss = sigma**2 * ((gt.score(x, sigma) - net.score(x, sigma, graph=True)) ** 2).mean(-1)
        loss.mean().backward()
        opt.step()
        beta = float(power_function_beta(ema_std, i + 1, 1))
        with torch.no_grad():
            for p_net, p_ema in zip(net.parameters(), ema.parameters()):
                p_ema.lerp_(p_net, 1 - beta)
    return ema


class _Denoiser:
    """A log-density model (or mixture) as the denoiser `edm_sampler` calls: D = x + sigma^2 score
    (recording every input, to read the trajectory off the sampler's calls)."""

    def __init__(self, model, record: bool = False):
        self.model, self.inputs = model, [] if record else None

    def __call__(self, x, sigma, labels=None):
        if self.inputs is not None:
            self.inputs.append(x.detach())
        return x + sigma**2 * self.model.score(x, sigma)


def sample_toy(
    net, x_init, gnet=None, guidance: float = 1.0, num_steps: int = 32, sigma_max: float = SIGMA_MAX, **interval
):
    """Trajectories of the deterministic EDM sampler (`edm2.sample.edm_sampler`, 32 Heun steps,
    sigma 5 -> 0.002, rho 7, as the official toy example) from x_init [N, 2] at noise level
    sigma_max: [num_steps + 1, N, 2], the last entry the samples. `net`/`gnet`: ToyDenoiser or
    GaussianMixture; guidance w lerps the guide's score to the main one's (autoguidance Eq. 1);
    `gnet` a list and `guidance` one weight per guide: several guides, e.g. the CFG guide and the
    autoguide together (arXiv 2406.02507 App. B.2, Eq. 6; `edm2.sample.options.mix_weights`);
    `interval`: the sampler's guidance-interval options (sigma_lo, sigma_hi, ...).
    """
    from edm2.sample.sampler import edm_sampler

    main = _Denoiser(net, record=True)
    if isinstance(gnet, (list, tuple)):
        guide = [_Denoiser(g) if g is not None else None for g in gnet]
    else:
        guide = _Denoiser(gnet) if gnet is not None else None
    noise = x_init / sigma_max  # the sampler starts at noise * t_0 = x_init (t_0 = sigma_max)
    with torch.no_grad():
        out = edm_sampler(
            main, noise, gnet=guide, num_steps=num_steps, sigma_max=sigma_max, guidance=guidance, **interval
        )
    states = main.inputs[0::2]  # Euler evaluations at t_0 .. t_{N-1}; corrections in between
    return torch.stack([*states, out])


BRANCH_NATS = 4.5  # "on the branches": log p(x) within this many nats of the density's peak


def mean_log_density(samples, gt=None) -> float:
    """Mean of log p(x) over samples [N, 2] under the true class-A distribution (higher: the
    samples lie more on the tree's branches). A few far outliers dominate it."""
    gt = tree_mixture("A") if gt is None else gt
    return float(gt.logp(samples.to(gt.dtype)).mean())


def log_density_quantiles(samples, gt=None, q=(0.1, 0.5)) -> list[float]:
    """Quantiles of log p(x) over samples [N, 2] under the true class-A distribution (robust to
    outliers, unlike the mean)."""
    gt = tree_mixture("A") if gt is None else gt
    return [float(v) for v in torch.quantile(gt.logp(samples.to(gt.dtype)), torch.tensor(q, dtype=gt.dtype))]


def on_branch_fraction(samples, gt=None) -> float:
    """Fraction of samples [N, 2] on the branches of class A: log p(x) at least the density's
    peak (over a fine grid of the tree) minus BRANCH_NATS, the outline drawn in the figure."""
    gt = tree_mixture("A") if gt is None else gt
    return float((gt.logp(samples.to(gt.dtype)) >= branch_level(gt)).to(torch.float64).mean())


def branch_level(gt) -> float:
    """log p at the edge of the branches: the peak of log p over the components' means minus BRANCH_NATS."""
    return float(gt.logp(gt.mu).max()) - BRANCH_NATS
