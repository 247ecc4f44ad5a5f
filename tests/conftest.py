import os
import sys

# Tests import `core` and `tools` from the repository root, as the scripts do.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread_and_grad():
    """One intra-op thread (2 threads on a loaded 2-core machine are many times slower for the
    tiny networks of the tests) and autograd on, whatever a previous test left behind."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with torch.enable_grad():
        yield
    torch.set_num_threads(threads)
