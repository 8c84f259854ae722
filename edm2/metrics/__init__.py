"""Feature detectors, statistics, Fréchet distance and FLOP counting (docs/method.md#metrics, #flops).

Names are imported on first use, so `import edm2.metrics` stays light (no Inception, no
transformers).
"""

from edm2.utils import lazy_exports

_EXPORTS = {
    "frechet_distance": "edm2.metrics.frechet",
    "count_flops": "edm2.metrics.flops",
    "FeatureStats": "edm2.metrics.stats",
    "save_stats": "edm2.metrics.stats",
    "load_stats": "edm2.metrics.stats",
    "load_detector": "edm2.metrics.detectors",
    "METRICS": "edm2.metrics.detectors",
    "FIDInceptionV3": "edm2.metrics.inception",
    "CNNClassifier": "edm2.metrics.cnn",
    "train_detector": "edm2.metrics.cnn",
    "reference_stats": "edm2.metrics.evaluate",
    "calc_metrics": "edm2.metrics.evaluate",
    "gen_metrics": "edm2.metrics.evaluate",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
