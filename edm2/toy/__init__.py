"""The 2-D toy example of autoguidance (Karras et al. 2024, arXiv 2406.02507): the tree-shaped
Gaussian mixture (`edm2.toy.mixture`), small MLP denoisers trained on it and guided sampling
(`edm2.toy.model`), and the paper-style figure (`edm2.toy.figure`); `edm2 toy` runs them all."""
