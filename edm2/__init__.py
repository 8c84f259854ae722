"""edm2: a faithful re-implementation of EDM2 (Karras et al., CVPR 2024) and its pipeline."""

__version__ = "0.1.0"
