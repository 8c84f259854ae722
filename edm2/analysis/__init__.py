"""Analyses of trained networks: activation and weight magnitudes (EDM2 Appendix A.6, Eq. 3;
docs/method.md#magnitudes). This module is torch-free: the defaults that `edm2 analyze` shows."""

DEFAULT_NUM_SAMPLES = 4096  # inputs of the activation measurement (EDM2 Appendix A.6)
DEFAULT_SEED = 0  # of their draws: the same inputs for every network, so that values compare
