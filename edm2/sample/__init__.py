"""The EDM sampler, guidance and image generation (EDM, arXiv 2206.00364, Algorithm 2;
docs/method.md "Sampling and guidance").

The names import on first use, so `edm2.sample.options` stays free of torch.
"""

from edm2.utils import lazy_exports

__all__ = ["edm_sampler", "StackedRandomGenerator"]
__getattr__, __dir__ = lazy_exports(
    __name__, {"edm_sampler": "edm2.sample.sampler", "StackedRandomGenerator": "edm2.sample.sampler"}
)
