"""Training tests run single-threaded: tiny models are dominated by per-op overhead, and on a shared
2-core machine two OpenMP threads per process mostly wait for each other."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
