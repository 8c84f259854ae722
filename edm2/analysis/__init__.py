"""Analyses of trained networks: activation and weight magnitudes (EDM2 Appendix A.6, Eq. 3;
docs/method.md#magnitudes)."""
