"""Plots of post-hoc EMA beyond the paper's Fig. 5a (docs/phema.md), made with matplotlib's
object-oriented API like edm2.report.plots:

* the requested vs the reconstructed EMA profile of one `edm2 phema` output (its certificate,
  edm2.ema.certificate; `edm2 analyze phema-profile`);
* Fig. 5b: metric vs the EMA length of one tensor, the rest at the global optimum, one curve per
  tensor (`phema.per_tensor`);
* Fig. 5c: metric vs EMA length, one curve per training length, optimum marked (`phema.at_kimg`).
"""

import math

import numpy as np

from edm2.errors import FormatError
from edm2.report.plots import _colors, _figure, _maybe_log, metric_label, save_figure
from edm2.report.results import aggregate, read_certificate

PLOT_POINTS = 4000  # times per profile curve (uniform in t; the jumps at input times fall between two)


def plot_phema_profile(record: dict, stem, title: str | None = None) -> list:
    """Requested vs reconstructed EMA profile of one reconstruction, from its record (`extra.phema`
    of the snapshot metadata, or its certificate JSON: 'inputs' [{nimg, std}], 'coefficients',
    'out_nimg', 'profile_error', 'band', 'threshold'; `ema_std` from the record or the file).
    x: training images (millions), y: profile density per million images. Writes STEM.png and
    STEM.svg; returns their paths."""
    from edm2.ema.certificate import profiles

    used = record["inputs"]
    in_nimg = np.float64([u["nimg"] for u in used])
    X = np.float64(record["coefficients"])
    T = float(record["out_nimg"])
    t = np.linspace(0, T * 1.02, PLOT_POINTS)
    requested = profiles([T], [record["ema_std"]], t)[0]
    contributions = X[:, None] * profiles(in_nimg, [u["std"] for u in used], t)
    reconstructed = contributions.sum(axis=0)
    fig, ax = _figure()
    scale = 1e6  # images -> Mimg
    ax.plot(
        t / scale, requested * scale, color="black", lw=2, label=f"requested, $\\sigma_{{rel}}$={record['ema_std']:.3f}"
    )
    ax.plot(t / scale, reconstructed * scale, color="tab:red", lw=1, label=f"reconstructed from {len(used)} snapshots")
    ax.fill_between(t / scale, requested * scale, reconstructed * scale, color="tab:red", alpha=0.15, lw=0)
    band = record.get("band")
    band_text = "none" if not band else f"{band[0]:.3f}..{band[1]:.3f}"
    error = record.get("profile_error")
    note = f"relative L2 error {error:.3%}" if error is not None else "no certificate"
    note += f" (threshold {record.get('threshold', float('nan')):.0%}); supported band {band_text}"
    ax.set_xlabel("training images (millions)")
    ax.set_ylabel("EMA profile (weight per million images)")
    ax.set_title(title or "Post-hoc EMA: requested vs reconstructed profile")
    ax.text(0.01, 0.98, note, transform=ax.transAxes, fontsize=7, va="top")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0, 0.93))
    return save_figure(fig, stem)


def plot_curves(curves: dict, metric: str, stem, title: str, xlabel: str, legend_title: str, base=None) -> list:
    """Metric vs EMA length, one curve per key of `curves` ({label: [(ema_std, value), ...]}),
    each curve's optimum starred and given in the legend; `base` (label, value): a horizontal
    reference line. Writes STEM.png and STEM.svg."""
    fig, ax = _figure()
    colors = _colors()
    dashes = ["-", "--", ":", "-."]
    values = []
    for i, (label, points) in enumerate(curves.items()):
        points = sorted(points)
        if not points:
            continue
        x, y = zip(*points)
        values += y
        color, dash = colors[i % len(colors)], dashes[(i // len(colors)) % len(dashes)]
        best = min(points, key=lambda p: (p[1], p[0]))
        ax.plot(
            x, y, dash, marker="o", color=color, markersize=3, lw=1, label=f"{label}: {best[1]:.3g} at {best[0]:.3f}"
        )
        ax.plot([best[0]], [best[1]], "*", markersize=11, markeredgecolor="black", color=color)
    if base is not None:
        ax.axhline(base[1], color="black", lw=1.2, ls="--", label=f"{base[0]}: {base[1]:.3g}")
        values.append(base[1])
    _maybe_log(ax, values)
    ax.margins(y=0.1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(metric_label(metric))
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if curves:
        ax.legend(fontsize=6, title=legend_title, title_fontsize=7, ncol=2 if len(curves) > 10 else 1)
    else:
        ax.text(0.5, 0.5, f"no scores for {metric}", ha="center", va="center", transform=ax.transAxes)
    return save_figure(fig, stem)


def _rows(paths, metric, statistic) -> list[dict]:
    return [r for r in aggregate(paths, statistic=statistic) if r["metric"] == metric]


def plot_per_tensor(score_paths, grid_paths, metric: str, stem, statistic: str = "min") -> dict:
    """Fig. 5b: the metric vs the EMA length of the one tensor each scored variant moves, one
    curve per tensor (or set of tensors moved together), and the global optimum (the grid score
    at the variants' global length) as a line. The tensors and their length come from each
    network's certificate (`edm2 phema --tensor-std`). Returns {'base': (std, value) or None,
    'tensors': {spec: best (std, value)}}. Raises FormatError for a score of a network that is
    not a variant moving its tensors to one length."""
    curves, bases = {}, set()
    for r in _rows(score_paths, metric, statistic):
        cert = read_certificate(r["network"])
        moved = (cert or {}).get("tensor_std") or []
        if not moved or len({t["std"] for t in moved}) != 1:
            raise FormatError(
                f"{r['source']}: its network {r['network']} is not a variant of `edm2 phema --tensor-std` "
                "that moves its tensors to one EMA length"
            )
        curves.setdefault("+".join(t["spec"] for t in moved), []).append((moved[0]["std"], r["value"]))
        bases.add(round(cert["ema_std"], 3))
    base = None
    if len(bases) == 1:
        (base_std,) = bases
        matches = [
            r for r in _rows(grid_paths, metric, statistic) if math.isclose(r["ema_std"], base_std, abs_tol=5e-4)
        ]
        if matches:
            base = (base_std, matches[0]["value"])
    title = f"{metric_label(metric)} vs the EMA length of one tensor (per-tensor post-hoc EMA)"
    plot_curves(
        curves, metric, stem, title, "EMA length $\\sigma_\\mathrm{rel}$ of the moved tensor", "moved tensor",
        base=None if base is None else (f"all tensors at {base[0]:.3f}", base[1]),
    )  # fmt: skip
    return {"base": base, "tensors": {k: min(v, key=lambda p: (p[1], p[0])) for k, v in curves.items()}}


def _images(nimg: int) -> str:
    """'268M', '16.4M', '8k': a training length as the paper writes it."""
    if nimg >= 1e8:
        return f"{nimg / 1e6:.0f}M"
    return f"{nimg / 1e6:.1f}M" if nimg >= 1e6 else f"{nimg / 1e3:.0f}k"


def plot_over_training(score_paths, metric: str, stem, statistic: str = "min") -> dict:
    """Fig. 5c: the metric vs EMA length, one curve per training length (the score JSONs'
    `kimg`), each optimum starred. Returns {kimg: best (std, value)}."""
    curves = {}
    for r in _rows(score_paths, metric, statistic):
        if r["kimg"] is None:
            raise FormatError(f"{r['source']}: no 'kimg'; score a network reconstructed by `edm2 phema`")
        curves.setdefault(int(r["kimg"]), []).append((r["ema_std"], r["value"]))
    curves = dict(sorted(curves.items()))
    labelled = {f"{_images(k * 1000)} images (kimg {k})": v for k, v in curves.items()}
    title = f"{metric_label(metric)} vs EMA length over training (post-hoc EMA)"
    plot_curves(labelled, metric, stem, title, "EMA length $\\sigma_\\mathrm{rel}$", "training length")
    return {k: min(v, key=lambda p: (p[1], p[0])) for k, v in curves.items()}
