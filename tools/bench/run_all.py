"""Run the CPU benchmarks that give the documented figures, and write docs/performance.md's CPU
table (between `<!-- bench:begin -->` and `<!-- bench:end -->`), so that no figure there is typed
by hand. A few minutes on 2 cores.

Each figure a user would compare is timed beside the plain way of doing the same thing, in the
same process and threads, runs alternating, and given as a ratio of the minima (medians and CPU
seconds beside it): ratios hold on a busy machine where absolute times do not.

    python tools/bench/run_all.py
    python tools/bench/run_all.py --write false --json /tmp/figures.json
"""

import datetime
import json
import os
import sys

if __package__ in (None, ""):  # run as a file, python tools/GROUP/NAME.py: the repository root on the import path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import torch  # noqa: E402

from core.errors import FormatError  # noqa: E402
from core.io import atomic_output  # noqa: E402
from tools.args import cli, make_parser, positive_int, str2bool  # noqa: E402
from tools.bench import bench_crf, bench_evaluate, bench_rw, bench_train_step  # noqa: E402
from tools.bench.measure import cpus, ratio, run_main  # noqa: E402
from tools.paths import REPO_ROOT  # noqa: E402

BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
DOC = os.path.join(REPO_ROOT, "docs", "performance.md")


def run(module, argv):
    print(f"\n== python tools/bench/{module.__name__.rsplit('.', 1)[-1]}.py {' '.join(argv)}", flush=True)
    return run_main(module, argv)


def duration(seconds):
    return f"{seconds * 1e3:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def cell(figure):
    """'min / median' of a timing; a timing with CPU seconds adds them."""
    text = f"{duration(figure['min'])} / {duration(figure['median'])}"
    return text + f" (CPU {duration(figure['cpu'])})" if "cpu" in figure else text


def times(value):
    text = f"x{value['min']:.2f} / x{value['median']:.2f}"
    return text + f" (CPU x{value['cpu']:.2f})" if "cpu" in value else text


def table(figures, args):
    data, rw, ev, crf = (figures[k] for k in ("data", "rw", "evaluate", "crf"))
    workers = args.workers
    rows = [
        (
            "training augmentation, one 500x375 image (`tools/bench/bench_train_step.py --only data`)",
            cell(data["augmentation"]),
            "torchvision `ColorJitter` + PIL pipeline: " + cell(data["augmentation, plain torchvision"]),
            times(data["augmentation speed-up"]),
        ),
        (
            "JPEG decode, one 500x375 image (same)",
            "OpenCV: " + cell(data["decode OpenCV"]),
            "PIL: " + cell(data["decode PIL"]),
            times(ratio(data["decode PIL"], data["decode OpenCV"])),
        ),
        (
            "random walk, 160x120 image, 2^8 steps (`tools/bench/bench_rw.py`)",
            "sparse: " + cell(rw["walk, sparse, small"]),
            "dense transition-matrix power (IRN): " + cell(rw["walk, dense, small"]),
            times(rw["sparse against dense, small"]),
        ),
        (
            "random walk, 500x375 image (same)",
            "sparse: " + cell(rw["walk, sparse"]),
            "dense, extrapolated by N^3: " + duration(rw["walk, dense, extrapolated"]["min"]),
            times(rw["sparse against dense, VOC (extrapolated)"]),
        ),
        (
            "boundary map, 500x375 image and mirror, ResNet-50 (same)",
            "padded to 512 (IRN): " + cell(rw["boundary map, padded to 512"]),
            "unpadded: " + cell(rw["boundary map, unpadded"]),
            times(rw["padding cost"]) + " (the padding's cost)",
        ),
        (
            "`--mode rw` per 500x375 image: boundary map + walk (same)",
            cell(rw["per image (boundary map + walk)"]),
            "end to end, 1 worker: " + duration(rw["convert --mode rw, end to end"]["min"])
            if "convert --mode rw, end to end" in rw
            else "-",
            "-",
        ),
        (
            "evaluation, 100 masks of 500x375, 21 classes (`tools/bench/bench_evaluate.py`)",
            "confusion matrix: " + cell(ev["confusion matrix per 100 masks"]),
            "per-class mask loop: " + cell(ev["per-class mask loop per 100 masks"]),
            times(ev["confusion matrix speed-up"]),
        ),
        (
            f"dense CRF, per 500x375 image (`tools/bench/bench_crf.py --workers 1,{workers}`)",
            f"{workers} workers: " + cell(crf[f"CRF, {workers} worker(s), per image"]),
            "1 worker: " + cell(crf["CRF, 1 worker(s), per image"]),
            times(crf["worker speed-up"]),
        ),
    ]
    machine = figures["machine"]
    lines = [
        f"Written by `python tools/bench/run_all.py` on {datetime.date.today().isoformat()}: "
        f"{machine['cpus']} CPUs in the process's affinity, {machine['threads']} thread per process, "
        f"load average {machine['load_before']:.2f} before and {machine['load_after']:.2f} after "
        f"(torch {torch.__version__}). Times are min / median of {args.repeat} runs; a ratio is how many "
        "times faster the first column is than the second, from the minima / the medians (CPU: from "
        "the CPU seconds of the process). Compare ratios across machines, not times.",
        "",
        "| what | this project | plain way | ratio |",
        "|---|---|---|---|",
    ]
    lines += [f"| {' | '.join(row)} |" for row in rows]
    return "\n".join(lines)


def split_doc(path):
    """(text before the begin marker, text after the end marker) of `path`."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = f.read()
    except FileNotFoundError:
        raise FormatError(f"{path}: not found; it must hold the lines {BEGIN} and {END}") from None
    if doc.count(BEGIN) != 1 or doc.count(END) != 1 or doc.index(BEGIN) > doc.index(END):
        raise FormatError(f"{path}: needs one {BEGIN} line followed by one {END} line")
    head, rest = doc.split(BEGIN)
    return head, rest.split(END)[1]


def write_table(path, text):
    """Replace what lies between the markers of `path`, atomically."""
    head, tail = split_doc(path)
    with atomic_output(path, "w") as f:
        f.write(f"{head}{BEGIN}\n{text}\n{END}{tail}")


def get_args_parser():
    parser = make_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", default=3, type=positive_int, help="runs per figure (min and median)")
    parser.add_argument(
        "--workers",
        default=cpus(),
        type=positive_int,
        help="worker processes of the CRF figure, against 1 (default: the CPUs in affinity)",
    )
    parser.add_argument("--write", default=True, type=str2bool, help="write the table into --doc")
    parser.add_argument("--doc", default=DOC, help="the page holding the bench markers")
    parser.add_argument("--json", default="", help="also write every figure to this JSON file")
    return parser


def main(args):
    if args.write:
        split_doc(args.doc)  # a page without markers fails now, not after minutes of timing
    repeat = str(args.repeat)
    load_before = os.getloadavg()[0]
    figures = {
        "data": run(bench_train_step, ["--only", "data", "--repeat", repeat, "--images", "10"])["data"],
        "rw": run(bench_rw, ["--repeat", repeat, "--num_images", "2"]),
        "evaluate": run(
            bench_evaluate, ["--num_masks", "100", "--num_seeds", "20", "--workers", "1", "--repeat", repeat]
        ),
        "crf": run(
            bench_crf, ["--num_images", str(4 * args.workers), "--workers", f"1,{args.workers}", "--repeat", repeat]
        ),
    }
    figures["machine"] = {"cpus": cpus(), "threads": 1, "load_before": load_before, "load_after": os.getloadavg()[0]}
    text = table(figures, args)
    print("\n" + text)
    if args.json:
        with atomic_output(args.json, "w") as f:
            json.dump(figures, f, indent=1)
    if args.write:
        write_table(args.doc, text)
        print(f"\nwrote the table into {args.doc}")
    return figures


if __name__ == "__main__":
    cli(main, get_args_parser())
