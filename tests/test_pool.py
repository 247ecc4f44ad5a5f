"""tools.pool: the one process pool and the thread rule. The counts are read inside the worker
processes themselves (pool workers and DataLoader workers), after the parent raised its own."""

import os
from types import SimpleNamespace

import cv2
import pytest
import torch

from core.randomwalk import one_thread
from tools import pool
from tools.engine import data_loading


def _thread_counts(_):
    return torch.get_num_threads(), cv2.getNumThreads(), os.environ.get("OMP_NUM_THREADS")


class _Counts(torch.utils.data.Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, index):
        return torch.tensor([torch.get_num_threads(), cv2.getNumThreads()])


@pytest.fixture()
def two_threads():
    before = torch.get_num_threads(), cv2.getNumThreads()
    pool.set_threads(2)  # so that a worker left at its parent's count would show 2
    yield
    torch.set_num_threads(before[0])
    cv2.setNumThreads(before[1])


def test_pool_workers_run_one_thread(two_threads):
    counts = list(pool.run_pool(_thread_counts, range(4), workers=2))
    assert counts == [(1, 1, "1")] * 4
    assert torch.get_num_threads() == 2  # the parent keeps its own


def test_dataloader_workers_run_one_thread(two_threads):
    ctx = SimpleNamespace(rank=0, world_size=1, distributed=False, device=torch.device("cpu"))
    loader = data_loading.build_loader(_Counts(), ctx, batch_size=1, num_workers=1, seed=0, shuffle=False)
    data_loading.set_loader_epoch(loader, 1)
    assert [batch.tolist() for batch in loader] == [[[1, 1]], [[1, 1]]]


def test_main_process_thread_rule(monkeypatch, two_threads, capsys):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    assert pool.main_threads(None, 3) == 1 and torch.get_num_threads() == 1  # 4 CPUs - 3 workers
    assert pool.main_threads(None, 1) == 3
    assert pool.main_threads(None, 6) == 1  # never below one
    assert pool.main_threads(2, 3) == 2  # --threads wins
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert pool.main_threads(None, 3) == 3  # an explicit OMP_NUM_THREADS too (the toy pipeline's)
    assert capsys.readouterr().out.splitlines()[0] == "threads: 1 per worker x 3 workers, 1 in the main process"


def test_pool_size_counts_the_cpus_of_the_affinity_mask(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {5}, raising=False)
    assert pool.pool_size(16, 100) == 0  # one CPU allowed: in this process, whatever cpu_count says
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert pool.pool_size(16, 100) == 8 and pool.pool_size(16, 3) == 3 and pool.pool_size(1, 100) == 0


def test_random_walk_thread_scope_is_restored(two_threads):
    with one_thread(torch.device("cpu")):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    with pytest.raises(KeyError), one_thread(torch.device("cpu")):
        raise KeyError("inside")
    assert torch.get_num_threads() == 2


class _Job:
    """A job as the stages hand to run_job: set up once per process, then one call per item."""

    def __init__(self, offset):
        self.offset, self.ready = offset, False

    def setup(self):
        self.ready = (os.getpid(), 0)

    def score(self, item):
        pid, calls = self.ready  # fails unless setup ran in this process first
        self.ready = (pid, calls + 1)
        return item + self.offset, pid


@pytest.mark.parametrize("workers", [0, 2])
def test_run_job_installs_the_job_once_per_process_and_calls_its_method(workers):
    results = list(pool.run_job(_Job(100), range(20), workers, method="score", ordered=True))
    assert [value for value, _ in results] == list(range(100, 120))
    pids = {pid for _, pid in results}
    assert (pids == {os.getpid()}) if workers == 0 else (os.getpid() not in pids and 1 <= len(pids) <= 2)
