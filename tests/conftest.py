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


@pytest.fixture(autouse=True)
def _release_output_locks():
    """Each test starts holding no writer lock: a script's main() run in the test process keeps the
    locks of its outputs for the life of the process (core.safety.hold_output), as a script does."""
    yield
    from core.safety import release_output
    release_output()


# The shape most tests train on: 8 train_aug images (the first 4 also in train), one validation
# and one test image, 48 to 64 pixels a side.
TOY_DEFAULTS = dict(seed=0, num_train=4, num_train_aug=8, num_validation=1, num_test=1, min_size=48, max_size=64)


@pytest.fixture(scope="session")
def toy_dataset(tmp_path_factory):
    """make(**settings) -> the root (str) of a TOY dataset of make_toy_dataset with TOY_DEFAULTS
    updated by `settings`; built once per distinct settings in a session, so tests must only read
    it (a test that changes files copies it first)."""
    from tools.datasets.make_toy_dataset import make_toy_dataset
    built = {}

    def make(**settings):
        settings = {**TOY_DEFAULTS, **settings}
        key = tuple(sorted(settings.items()))
        if key not in built:
            root = str(tmp_path_factory.mktemp("toy") / "TOY")
            make_toy_dataset(root, progress=False, **settings)
            built[key] = root
        return built[key]
    return make
