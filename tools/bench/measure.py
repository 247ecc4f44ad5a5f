"""What every benchmark shares: the machine line, threads per process, repeated timings and
side-by-side ratios.

On a shared machine one timing says little: every figure is the minimum and the median of
`repeat` runs, and a figure a user would compare is timed against the plain way of doing the same
thing, alternating the two run by run in the same process and threads, so that a load that comes
and goes slows both and their ratio holds.
"""

import os
import statistics
import time

import torch

from tools import pool


def set_threads(threads):
    """`threads` per process: torch and OpenCV here, and (through the environment) any worker."""
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
    pool.set_threads(threads)


cpus = pool.available_cpus


def run_main(module, argv):
    """A program's main on parsed argv (the bench calls the scripts in-process)."""
    return module.main(module.get_args_parser().parse_args(argv))


# Vector extensions that move BLAS-bound against index-bound code (a ratio of the two moved 2x
# between two CPU models of one machine kind), in the order they are reported.
VECTOR_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile", "sve", "neon", "asimd")


def cpu_model(path="/proc/cpuinfo"):
    """(model name, [vector extensions]) of this CPU from /proc/cpuinfo; the platform's processor
    string and no extensions where there is none."""
    import platform

    name, flags = None, []
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                if key in ("model name", "cpu model", "hardware") and name is None:
                    name = value.strip()
                elif key in ("flags", "features") and not flags:
                    present = set(value.split())
                    flags = [flag for flag in VECTOR_FLAGS if flag in present]
    except OSError:
        pass
    return name or platform.processor() or platform.machine(), flags


class Machine:
    """Prints, and keeps, the CPU model and its vector extensions, the CPUs, threads per process and
    the 1-minute load average before and after the block it wraps:
    `with Machine() as machine: ...; machine.record`."""

    def __enter__(self):
        model, flags = cpu_model()
        self.record = {
            "cpu_model": model,
            "vector_extensions": flags,
            "cpus": cpus(),
            "threads": torch.get_num_threads(),
            "load_before": os.getloadavg()[0],
        }
        print(
            f"machine: {model} ({', '.join(flags) or 'no listed vector extension'}), {self.record['cpus']} CPUs "
            f"in affinity, {self.record['threads']} thread(s) per process, load average "
            f"{self.record['load_before']:.2f} before",
            flush=True,
        )
        return self

    def __exit__(self, *exc):
        self.record["load_after"] = os.getloadavg()[0]
        print(f"machine: load average {self.record['load_after']:.2f} after", flush=True)
        return False


def stats(times, cpu_times=None):
    """min / median wall seconds; `cpu`: the least CPU seconds of this process (all its threads) in a
    run, the figure a busy machine disturbs least."""
    figure = {"min": min(times), "median": statistics.median(times), "runs": len(times)}
    if cpu_times:
        figure["cpu"] = min(cpu_times)
    return figure


def timed(function, repeat, number=1, sync=None):
    """min / median seconds per call of `function` over `repeat` runs of `number` calls, after one
    untimed call (caches, lazy initialisation)."""
    return side_by_side({"x": function}, repeat, number, sync)["x"]


def side_by_side(functions, repeat, number=1, sync=None):
    """{name: stats} for each of `functions` ({name: callable}), timed in turn within each run."""
    times = {name: [] for name in functions}
    cpu_times = {name: [] for name in functions}
    for function in functions.values():
        function()
    for _ in range(repeat):
        for name, function in functions.items():
            start, cpu_start = time.perf_counter(), time.process_time()
            for _ in range(number):
                function()
            if sync:
                sync()
            times[name].append((time.perf_counter() - start) / number)
            cpu_times[name].append((time.process_time() - cpu_start) / number)
    return {name: stats(times[name], cpu_times[name]) for name in functions}


def ratio(slow, fast):
    """How many times faster `fast` is than `slow`: from the minima, the medians and (where both
    have it) the CPU seconds."""
    value = {"min": slow["min"] / fast["min"], "median": slow["median"] / fast["median"]}
    if "cpu" in slow and "cpu" in fast and fast["cpu"] > 0:
        value["cpu"] = slow["cpu"] / fast["cpu"]
    return value


def show(name, figure, unit="ms", scale=1e3):
    cpu = f"  CPU {figure['cpu'] * scale:9.2f} {unit}" if "cpu" in figure else ""
    print(
        f"{name:<48} min {figure['min'] * scale:9.2f} {unit}  median {figure['median'] * scale:9.2f} {unit}{cpu}",
        flush=True,
    )


def show_ratio(name, value):
    cpu = f", CPU seconds x{value['cpu']:.2f}" if "cpu" in value else ""
    print(f"{name:<48} x{value['min']:.2f} (medians x{value['median']:.2f}{cpu})", flush=True)
