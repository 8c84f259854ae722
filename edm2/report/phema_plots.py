"""Plots of post-hoc EMA beyond the paper's Fig. 5a (docs/phema.md), made with matplotlib's
object-oriented API like edm2.report.plots:

* the requested vs the reconstructed EMA profile of one `edm2 phema` output (its certificate,
  edm2.ema.certificate; `edm2 analyze phema-profile`);
* Fig. 5b: metric vs the EMA length of one tensor, the rest at the global optimum, one curve per
  tensor (`phema.per_tensor`);
* Fig. 5c: metric vs EMA length, one curve per training length, optimum marked (`phema.at_kimg`).
"""

import numpy as np

from edm2.report.plots import _colors, _figure, _maybe_log, metric_label, save_figure

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


def plot_curves(curves: dict, metric: str, stem, title: str, xlabel: str, legend_title: str, best_marker=True) -> list:
    """Metric vs EMA length, one curve per key of `curves` ({label: [(ema_std, value), ...]}),
    each curve's optimum starred and given in the legend. Writes STEM.png and STEM.svg."""
    fig, ax = _figure()
    colors = _colors()
    values = []
    for i, (label, points) in enumerate(curves.items()):
        points = sorted(points)
        if not points:
            continue
        x, y = zip(*points)
        values += y
        color = colors[i % len(colors)]
        best = min(points, key=lambda p: (p[1], p[0]))
        ax.plot(x, y, "-o", color=color, markersize=3, lw=1, label=f"{label}: {best[1]:.3g} at {best[0]:.3f}")
        if best_marker:
            ax.plot([best[0]], [best[1]], "*", markersize=12, markeredgecolor="black", color=color)
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
