"""The one process pool of the per-item stages (seed conversion, relation labels, evaluation, dataset
builders) and the thread rule of every process (docs/reliability.md#threads).

Workers run one thread each (torch, OpenCV, and BLAS libraries loaded after the fork): N workers
with N threads each on N cores spin against each other and run several times slower. The main
process takes the CPUs it may run on less the workers it starts, unless --threads or
OMP_NUM_THREADS says otherwise (the toy pipeline fixes its numbers through OMP_NUM_THREADS).
"""

import errno
import multiprocessing
import os
import sys

import torch

from core.errors import DatasetError, EvaluationError, FormatError, MissingFileError
from core.progress import progress as progress_bar

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


# What makes one item of a per-item stage skipped (listed at the end, exit status 1) rather than
# stopping the run: a bad input file of that item. core's shape checks raise ValueError for a
# seed that does not fit its image. A full disk (OutputError) or a bug stops the run.
SKIPPED_ERRORS = (FormatError, DatasetError, MissingFileError, EvaluationError, ValueError)
# errno of a failed write that concerns the whole output (every later write would fail the same
# way): the run stops. Any other failed write (a name the file system refuses, one unwritable file)
# is one item's problem: skipped and listed.
MACHINE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO})


def item_write_problem(error):
    """The one-line problem of a failed per-item write when it is the item's own (skip it), or
    None when the run must stop (disk full, read-only, device error)."""
    cause = error.__cause__ if isinstance(error.__cause__, OSError) else error
    if getattr(cause, "errno", None) in MACHINE_ERRNOS:
        return None
    return str(error)


def available_cpus():
    """CPUs this process may run on (its affinity mask: a container or taskset may allow fewer
    than os.cpu_count())."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def set_threads(count):
    """torch and OpenCV threads of this process."""
    torch.set_num_threads(count)
    try:
        import cv2

        cv2.setNumThreads(count)
    except ImportError:
        pass


def worker_threads(worker_id=None):
    """Initializer of every worker process (pool workers, and DataLoader workers as worker_init_fn):
    one thread for torch, OpenCV and whatever BLAS the worker loads later."""
    for name in THREAD_VARIABLES:
        os.environ[name] = "1"
    set_threads(1)


def main_threads(threads, workers, verbose=True):
    """Apply the thread rule to this process and print it once; returns its thread count.

    threads: --threads (None: OMP_NUM_THREADS when set, else available_cpus() - workers, at least 1).
    """
    if threads is None:
        text = os.environ.get("OMP_NUM_THREADS", "")
        threads = int(text) if text.isdigit() and int(text) > 0 else max(1, available_cpus() - workers)
    set_threads(threads)
    if verbose:
        print(
            f"threads: 1 per worker x {workers} workers, {threads} in the main process"
            if workers
            else f"threads: {threads} in this process (no worker processes)"
        )
    return threads


def pool_size(num_workers, num_items):
    """Worker processes for `num_items` items: --num_workers capped by the items and the CPUs;
    0 means in this process."""
    workers = min(num_workers, num_items, available_cpus())
    return workers if workers > 1 else 0


def _init_worker(setup, setup_args):
    worker_threads()
    if setup is not None:
        setup(*setup_args)


def run_pool(task, items, workers, setup=None, setup_args=(), ordered=False):
    """Yield task(item) for every item, in this process (workers 0) or over `workers` processes
    (pool_size). `setup(*setup_args)` runs once per process before its first item (a worker's
    global state: a job, a network). Unordered unless `ordered`."""
    items = list(items)
    if workers <= 1:
        if setup is not None:
            setup(*setup_args)
        yield from map(task, items)
        return
    # an item takes from milliseconds (a copy) to a second (a CRF): small chunks keep workers
    # balanced at the end and cost little
    chunksize = max(1, min(4, len(items) // (workers * 8)))
    with multiprocessing.Pool(workers, initializer=_init_worker, initargs=(setup, setup_args)) as pool:
        run = pool.imap if ordered else pool.imap_unordered
        yield from run(task, items, chunksize=chunksize)


_JOB = None  # this process's installed job method (run_job)


def _install_job(job, method):
    global _JOB
    if hasattr(job, "setup"):  # once per process, before the first item (e.g. a network, a CRF)
        job.setup()
    _JOB = getattr(job, method)


def _run_installed(item):
    return _JOB(item)


def run_job(job, items, workers, method="__call__", ordered=False):
    """Yield `job.method(item)` for every item, in this process (workers 0) or over `workers`
    processes: the job is pickled once per process and installed there as its global job (its
    `setup()` first, when it has one). The one worker-global installer of every stage."""
    yield from run_pool(_run_installed, items, workers, setup=_install_job, setup_args=(job, method), ordered=ordered)


def collect(results, total, desc, progress=True):
    """Drain (id, problem) results behind a progress bar: (number done, [{"id", "problem"}] skipped)."""
    done, skipped = 0, []
    for item_id, problem in progress_bar(
        results, total=total, desc=desc, unit="img", disable=not progress, dynamic_ncols=True
    ):
        if problem is None:
            done += 1
        else:
            skipped.append({"id": item_id, "problem": problem})
    return done, skipped


def list_skipped(skipped, what="image(s)"):
    """The end of every per-item stage with skipped items: count and list them on stderr (the
    caller returns them under "failed", so cli exits 1)."""
    if skipped:
        print(f"{len(skipped)} {what} skipped:", file=sys.stderr)
        for item in sorted(skipped, key=lambda s: s["id"]):
            print(f"  {item['id']}: {item['problem']}", file=sys.stderr)
