"""Thin click wrappers over the library functions, one module per area."""
