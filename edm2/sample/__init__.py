"""The EDM sampler, guidance and image generation (EDM2-SPEC §8)."""

from edm2.sample.sampler import StackedRandomGenerator, edm_sampler

__all__ = ["edm_sampler", "StackedRandomGenerator"]
