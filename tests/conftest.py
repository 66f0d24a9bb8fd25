"""Shared test setup.

Every model in the suite is tiny: with several OpenMP threads on a small, often shared CPU, thread
synchronisation dominates (one thread was ~40x faster for the tiny parity model), so tests run single-threaded.
"""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _single_intra_op_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
