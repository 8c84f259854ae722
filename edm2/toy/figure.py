"""The figure of the 2-D toy example (autoguidance, arXiv 2406.02507, Fig. 1-2; the official
`toy_example.py plot`), drawn with matplotlib: the true density, samples without guidance, with
classifier-free guidance and with autoguidance, and sampling trajectories near a branch tip.

    run = run_toy(iters=2048, seed=0)              # trains the three models, samples, measures
    save_figure(run, "toy.png")
"""

import dataclasses

import numpy as np
import torch
from tqdm import tqdm

from edm2.toy.mixture import tree_mixture
from edm2.toy.model import (
    SIGMA_MAX,
    branch_level,
    log_density_quantiles,
    mean_log_density,
    on_branch_fraction,
    sample_toy,
    train_toy,
)
from edm2.toy.options import ToySetup

# Views (centre x, centre y, half-size) of the two rows: the whole class-A tree, and a branch tip.
FULL_VIEW = (0.30, 0.30, 1.2)
TIP_VIEW = (0.45, 1.22, 0.3)
TIP_SIGMA = 0.03  # trajectories near the tip start from the class-A density at this noise level
TIP_SPACING = 0.045  # at most one start point per cell of this size (readable trajectories)


@dataclasses.dataclass
class ToyRun:
    """The trained models and the samples of every panel (tensors on the CPU)."""

    setup: ToySetup
    net: torch.nn.Module
    auto_guide: torch.nn.Module
    cfg_guide: torch.nn.Module
    samples: dict  # method -> [N, 2] samples of the first row ('truth', 'none', 'cfg', 'auto')
    paths: dict  # method -> [steps + 1, M, 2] trajectories near the tip ('none', 'cfg', 'auto')
    measures: dict  # method -> {mean_log_density, median_log_density, on_branches} under the true class-A density

    def summary(self) -> dict:
        """The measured numbers and settings, as JSON-ready values."""
        return {"measures": self.measures, "setup": dataclasses.asdict(self.setup)}


def run_toy(setup: ToySetup = ToySetup(), progress: bool = False, device=None) -> ToyRun:
    """Train the main model (class A), the autoguidance guide (class A, smaller, shorter-trained)
    and the CFG guide (classes A and B, same size and training as the autoguide), then sample
    each method from the same starting points (seeded by `setup.seed`). `device`: where to
    train and sample (default CPU); the returned models and samples are on the CPU."""
    s = setup
    device = torch.device("cpu" if device is None else device)
    kw = dict(batch=s.batch, progress=progress, device=device)
    guide_iters = s.guide_iters
    net = train_toy("A", dim=s.dim, iters=s.iters, seed=s.seed, desc="main model", **kw)
    auto = train_toy("A", dim=s.guide_dim, iters=guide_iters, seed=s.seed + 1, desc="autoguide", **kw)
    cfg = train_toy("AB", dim=s.guide_dim, iters=guide_iters, seed=s.seed + 2, desc="CFG guide", **kw)
    gt = tree_mixture("A", device=device)
    gen = torch.Generator(device).manual_seed(s.seed + 3)
    start = gt.sample(s.num_samples, SIGMA_MAX, generator=gen)
    tip_start = _thinned(gt.sample(4096, TIP_SIGMA, generator=gen).cpu(), TIP_VIEW, TIP_SPACING).to(device)
    methods = {"none": (None, 1.0), "cfg": (cfg, s.cfg_guidance), "auto": (auto, s.auto_guidance)}
    samples = {"truth": gt.sample(s.num_samples, generator=gen)}
    paths = {}
    for name, (guide, w) in tqdm(methods.items(), desc="sample", disable=not progress, leave=False):
        samples[name] = sample_toy(net, start, gnet=guide, guidance=w)[-1].cpu()
        paths[name] = sample_toy(net, tip_start, gnet=guide, guidance=w, sigma_max=TIP_SIGMA).cpu()
    samples["truth"] = samples["truth"].cpu()
    gt = tree_mixture("A")
    measures = {name: measure(x, gt) for name, x in samples.items()}
    return ToyRun(s, net.cpu(), auto.cpu(), cfg.cpu(), samples, paths, measures)


def measure(samples, gt) -> dict:
    """How well samples [N, 2] lie on the tree: mean and median log p(x) under the true density
    `gt` (higher is closer to the branches; the mean is dominated by far outliers) and the
    fraction within `edm2.toy.model.BRANCH_NATS` of the peak density."""
    return {
        "mean_log_density": round(mean_log_density(samples, gt), 4),
        "median_log_density": round(log_density_quantiles(samples, gt, [0.5])[0], 4),
        "on_branches": round(on_branch_fraction(samples, gt), 4),
    }


def _thinned(points, view, spacing):
    """The points inside `view`, at most one (the first) per grid cell of `spacing`."""
    cx, cy, half = view
    inside = ((points[:, 0] - cx).abs() <= half) & ((points[:, 1] - cy).abs() <= half)
    points = points[inside]
    cells = torch.floor(points / spacing).to(torch.int64)
    _, first = np.unique(cells.numpy(), axis=0, return_index=True)
    return points[np.sort(first)]


def _grid(view, resolution):
    cx, cy, half = view
    xs = torch.linspace(cx - half, cx + half, resolution)
    ys = torch.linspace(cy - half, cy + half, resolution)
    return xs, ys, torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)


def _logp_on(model, grid, sigma=0.0, chunk=4096):
    """log p on a grid [R, R, 2] -> [R, R], in chunks (the mixture holds [chunk, K, 2] at once)."""
    flat = grid.reshape(-1, 2)
    with torch.no_grad():
        values = [model.logp(part, sigma) for part in flat.split(chunk)]
    return torch.cat(values).reshape(grid.shape[:-1]).numpy()


def save_figure(run: ToyRun, path, resolution: int = 200) -> None:
    """Draw the 2 x 4 panel figure and save it as PNG at `path` (atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edm2.io.atomic import atomic_path

    s = run.setup
    gt_a, gt_ab = tree_mixture("A"), tree_mixture("AB")
    fx, fy, full = _grid(FULL_VIEW, resolution)
    tx, ty, tip = _grid(TIP_VIEW, resolution)
    density = {"A": _logp_on(gt_a, full), "AB": _logp_on(gt_ab, full), "tip": _logp_on(gt_a, tip)}
    levels = {"A": branch_level(gt_a), "AB": branch_level(gt_ab)}

    fig, axes = plt.subplots(2, 4, figsize=(20, 10.6), dpi=80)

    def backdrop(ax, xs, ys, view):
        ax.set_xlim(float(xs[0]), float(xs[-1]))
        ax.set_ylim(float(ys[0]), float(ys[-1]))
        ax.set_aspect("equal")
        ax.set_axis_off()

    def tree(ax):
        """Both classes in grey, class A in orange: the branches, where log p >= `branch_level`."""
        for key, fill, line in (("AB", (0.9, 0.9, 0.9), (0.7, 0.7, 0.7)), ("A", (1.0, 0.8, 0.6), (0.8, 0.6, 0.5))):
            v, edge = density[key], levels[key]
            ax.contourf(fx, fy, v, levels=[edge, max(v.max(), edge) + 1], colors=[fill])
            ax.contour(fx, fy, v, levels=[edge], colors=[line], linewidths=1)

    def points(ax, x, size=3.0, alpha=0.3):
        ax.plot(*x.numpy().T, ".", color="black", markersize=size, alpha=alpha, markeredgecolor="none")

    titles = {
        "truth": "Ground truth (class A, orange)",
        "none": "No guidance",
        "cfg": f"Classifier-free guidance, w = {s.cfg_guidance:g}",
        "auto": f"Autoguidance, w = {s.auto_guidance:g}",
    }
    for ax, name in zip(axes[0], titles):
        backdrop(ax, fx, fy, FULL_VIEW)
        tree(ax)
        points(ax, run.samples[name])
        m = run.measures[name]
        ax.set_title(
            f"{titles[name]}\nlog p: median {m['median_log_density']:.2f}, mean {m['mean_log_density']:.2f}; "
            f"on branches {100 * m['on_branches']:.1f}%",
            fontsize=12,
        )

    v = density["tip"]
    for ax, name in zip(axes[1], ("none", "cfg", "auto")):
        backdrop(ax, tx, ty, TIP_VIEW)
        ax.contourf(tx, ty, v, levels=np.linspace(v.max() - 8, v.max(), 12), cmap="Oranges", extend="min")
        for trajectory in run.paths[name].transpose(0, 1).numpy():
            ax.plot(*trajectory.T, "-", color="black", linewidth=1.2, alpha=0.35)
        points(ax, run.paths[name][-1], size=6, alpha=0.9)
        ax.set_title(f"Trajectories: {titles[name].split(',')[0].lower()}", fontsize=13)

    ax = axes[1, 3]
    backdrop(ax, tx, ty, TIP_VIEW)
    ratio = _logp_on(run.net, tip, TIP_SIGMA) - _logp_on(run.auto_guide, tip, TIP_SIGMA)
    ratio_levels = np.linspace(np.percentile(ratio, 2), np.percentile(ratio, 98), 16)
    ax.contourf(tx, ty, ratio, levels=ratio_levels, cmap="Blues", extend="both")
    ax.contour(tx, ty, v, levels=[levels["A"]], colors=[(0.8, 0.6, 0.5)], linewidths=1)
    ax.set_title(f"log p_main - log p_guide at sigma = {TIP_SIGMA:g}", fontsize=13)

    fig.suptitle(
        "2-D toy example of autoguidance (arXiv 2406.02507): main model "
        f"{s.dim} features x {s.iters} iterations, guides {s.guide_dim} x {s.guide_iters} (batch {s.batch})",
        fontsize=14,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
