"""Puts this folder on sys.path (pytest prepend import mode), so tests import tiny_networks."""
