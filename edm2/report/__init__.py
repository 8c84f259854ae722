"""Plots and paper-style tables from result files (score JSONs, stats.jsonl, model info).

    aggregate(score_paths, model_info_paths, statistic) -> tidy rows   (results.py)
    best_rows(rows)                                                    (results.py)
    refine(rows, grid, points)                                         (refine.py)
    plot_ema_sweep, plot_gflops, plot_training_loss                    (plots.py)
    write_table2(rows, metrics, stem)                                  (tables.py)
    save_grid(folder, out)                                             (images.py)
    model_info(net_path, run, label)                                   (info.py)
    write_summary(...)                                                 (summary.py)

Matplotlib is used with the Agg backend only; nothing here needs a display.
"""

from edm2.report.results import aggregate, best_rows, read_csv, read_score, write_csv

__all__ = ["aggregate", "best_rows", "read_csv", "read_score", "write_csv"]
