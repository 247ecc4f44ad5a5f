"""The CUDA path in one command: train and infer on synthetic VOC-sized data, measure, compare.

    python tools/gpu/gpu_check.py                 # on a CUDA machine, about 5-7 minutes
    python tools/gpu/gpu_check.py --smoke         # the same code path on the CPU at tiny sizes

Runs, each as its own process (through tools/gpu/gpu_probe.py, which records peak GPU memory):
  - train_rsepm.py (ResNet-50, batch 16, crop 512, RS and EPM active from the first iteration),
    train_seg.py (DeepLabV3+ ResNet-101 OS8, DeepLabV2 ResNet-101) with --amp off, bf16, fp16 on
    one GPU; then bf16 under torchrun --nproc_per_node N (DDP, SyncBN) and, with N > 1 GPUs,
    --gpus 0,..,N-1 (DataParallel). Ground-truth masks train the segmentation (--label_tag gt).
  - infer_rsepm.py and infer_seg.py with --gpus on VOC-sized images, --amp off and bf16, using
    the weights the fp32 runs above just wrote.
  - the same weights' seeds on the CPU and on the GPU in float32 (TF32 disabled through
    NVIDIA_TF32_OVERRIDE=0): they must agree within 2e-4; bf16 and TF32 differences are reported.
For each: images/s after warm-up (training: the scripts' JSONL log, one record per iteration;
inference: the completion times of the seed files), peak GPU memory, counted FLOPs per image
(tools/engine/flops.py) and the model-FLOP utilisation against the peak of tools/engine/flops.py PEAK_TFLOPS.
Writes OUT/result.json and OUT/result.md (default experiments/gpu_check/), prints the table and
exits 1 listing the failed checks. Synthetic data (tools/builders/make_toy_dataset.py, 375..500 px) is
made in a temporary folder and removed afterwards.
"""

import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass

if __package__ in (None, ""):  # run as a file, python tools/GROUP/NAME.py: the repository root on the import path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import train_rsepm  # noqa: E402
import train_seg  # noqa: E402
from core.dataset_layout import SeedLayout, load_dataset_info  # noqa: E402
from core.errors import SetupError  # noqa: E402
from core.io import atomic_output, load_seed, write_json  # noqa: E402
from core.networks import RSEPM, build_network  # noqa: E402
from tools.args import cli, make_parser, str2bool  # noqa: E402
from tools.builders.make_toy_dataset import make_toy_dataset  # noqa: E402
from tools.engine import flops  # noqa: E402
from tools.paths import REPO_ROOT  # noqa: E402

# Epoch numbers handed to train_rsepm.py so that RS and the mix are active from the first
# iteration (train_rsepm.py counts epochs from 1, as the authors' trainers do).
RS_START = 1
MIX_START = 1
MATCH_TOL = 2e-4  # max |GPU - CPU| of float32 seeds from the same weights
# --smoke runs every code path once (single process and torchrun, fp32 and bf16, each script and
# decoder, the seed comparison), not the whole matrix: each run is a process that imports torch.
SMOKE_CHECKS = (
    "train rsepm single off",
    "train rsepm torchrunx1 bf16",
    "train deeplabv3+ single bf16",
    "train deeplabv2 single off",
    "infer rsepm speed bf16",
    "infer rsepm match cpu fp32",
    "infer seg speed bf16",
    "infer seg match cpu fp32",
)


@dataclass
class Sizes:
    rsepm_backbone: str
    seg_backbone: str
    batch: int
    crop: int
    train_min: int  # --min_image_size / --max_image_size of the training crops
    train_max: int
    image_min: int  # sides of the synthetic images
    image_max: int
    warmup: int  # training iterations / inference images left out of the speed
    iterations: int  # measured training iterations
    infer_images: int
    match_images: int
    match_scales: str
    infer_scales: str  # of the speed runs
    workers: int


FULL = Sizes("resnet50", "resnet101", 16, 512, 320, 640, 375, 500, 3, 7, 48, 2, "1.0,0.5", "1.0,0.5,1.5,2.0", 8)
SMOKE = Sizes("resnet18", "resnet18", 2, 32, 32, 48, 48, 64, 1, 1, 4, 2, "1.0,0.5", "1.0,0.5", 0)


def get_args_parser():
    parser = make_parser(__doc__.splitlines()[0])
    # --smoke / --keep alone mean "true"
    parser.add_argument(
        "--smoke",
        default=False,
        type=str2bool,
        nargs="?",
        const=True,
        help="tiny sizes on the CPU (what the tests run)",
    )
    parser.add_argument("--out", default=os.path.join(REPO_ROOT, "experiments", "gpu_check"))
    parser.add_argument("--gpus", default=None, help="CUDA ids to use (default: every visible GPU)")
    parser.add_argument("--iterations", type=int, default=None, help="measured training iterations")
    parser.add_argument("--only", default="", help="comma-separated substrings: run only checks whose name has one")
    parser.add_argument(
        "--torchrun", default=True, type=str2bool, nargs="?", const=True, help="include the torchrun checks"
    )
    parser.add_argument(
        "--keep", default=False, type=str2bool, nargs="?", const=True, help="keep the temporary data and runs"
    )
    return parser


def run_probed(name, script, script_args, work, gpus_env=None, nproc=0, env_extra=None):
    """Run `script` through tools/gpu/gpu_probe.py (under torchrun when nproc > 0); return
    (exit status, wall s, peak memory bytes or None, tail of the output)."""
    probe_dir = os.path.join(work, "probe", name)
    probe = os.path.join(REPO_ROOT, "tools", "gpu", "gpu_probe.py")
    if nproc:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={nproc}",
            probe,
            probe_dir,
            script,
            *script_args,
        ]
    else:
        cmd = [sys.executable, probe, probe_dir, script, *script_args]
    env = dict(os.environ, **(env_extra or {}))
    if gpus_env is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpus_env
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wall = time.perf_counter() - start
    peaks = []
    for path in glob.glob(os.path.join(probe_dir, "probe-rank*.json")):
        with open(path) as f:
            peaks.append(json.load(f)["peak_mem_bytes"])
    peak = max((p for p in peaks if p is not None), default=None)
    with open(os.path.join(work, f"{name}.log"), "w") as f:
        f.write(" ".join(cmd) + "\n" + proc.stdout)
    return proc.returncode, wall, peak, proc.stdout[-2000:]


def training_speed(log_path, batch, warmup):
    """images/s over the iterations after `warmup`: total images / total time, from the JSONL
    records (one per iteration with --log_interval 1, each with images_per_s of that iteration)."""
    with open(log_path) as f:
        rates = [r["images_per_s"] for r in map(json.loads, f) if "images_per_s" in r][warmup:]
    if not rates:
        raise ValueError(f"{log_path}: no iteration after the {warmup} warm-up ones")
    return len(rates) * batch / sum(batch / r for r in rates)


def inference_speed(folder, warmup):
    """images/s from the completion times (mtime) of the seed files after the first `warmup`."""
    times = sorted(os.stat(p).st_mtime_ns for p in glob.glob(os.path.join(folder, "*.pkl")))
    if len(times) < warmup + 2:
        raise ValueError(f"{folder}: {len(times)} seed files, need at least {warmup + 2}")
    return (len(times) - 1 - warmup) / ((times[-1] - times[warmup]) * 1e-9)


def seed_difference(dir_a, dir_b):
    """(max, mean) |a - b| over the seed files both folders hold; ValueError on a key mismatch."""
    names = sorted(os.path.basename(p) for p in glob.glob(os.path.join(dir_a, "*.pkl")))
    if not names:
        raise ValueError(f"{dir_a}: no seed files")
    worst, total, count = 0.0, 0.0, 0
    for name in names:
        a, b = load_seed(os.path.join(dir_a, name)), load_seed(os.path.join(dir_b, name))
        if not np.array_equal(a["keys"], b["keys"]):
            raise ValueError(f"{name}: classes differ: {a['keys'].tolist()} vs {b['keys'].tolist()}")
        diff = np.abs(a["seed"] - b["seed"])
        worst, total, count = max(worst, float(diff.max(initial=0.0))), total + float(diff.sum()), count + diff.size
    return worst, total / max(count, 1)


class Check:
    """Builds the command lines, runs them and collects one row per check."""

    def __init__(self, args, sizes, work, data, cuda, gpu_ids):
        self.args, self.sizes, self.work, self.data, self.cuda, self.gpu_ids = args, sizes, work, data, cuda, gpu_ids
        self.device = torch.device("cuda", 0) if cuda else torch.device("cpu")
        self.device_name = torch.cuda.get_device_name(0) if cuda else "cpu"
        self.info = load_dataset_info("TOY")
        self.rows, self.flops = [], {}
        self.only = [s for s in args.only.split(",") if s]

    def wanted(self, name):
        if self.args.smoke and not any(name.startswith(s) or s.startswith(name) for s in SMOKE_CHECKS):
            return False
        return not self.only or any(s in name for s in self.only)

    def add(self, row):
        self.rows.append(row)
        shown = {k: v for k, v in row.items() if k in ("name", "status", "images_per_s", "max_abs_diff", "note")}
        print(f"[gpu_check] {json.dumps(shown)}", flush=True)

    def mfu(self, ips, flops_per_image, amp):
        peak = flops.peak_tflops(self.device_name, amp)
        if peak is None or ips is None:
            return None, peak
        return ips * flops_per_image / (peak * 1e12), peak

    # --- training -------------------------------------------------------------------------------
    def train_argv(self, model, amp, gpus, tag, pred_dir, sync_bn=False):
        s = self.sizes
        common = [
            "--root_dir",
            self.data,
            "--dataset",
            "TOY",
            "--domain",
            "train_aug",
            "--gpus",
            gpus,
            "--pretrained",
            "none",
            "--crop_size",
            str(s.crop),
            "--min_image_size",
            str(s.train_min),
            "--max_image_size",
            str(s.train_max),
            "--batch_size",
            str(s.batch),
            "--num_workers",
            str(s.workers),
            "--max_epoch",
            "1",
            "--log_interval",
            "1",
            "--save_interval",
            "1000000",
            "--amp",
            amp,
            "--pred_dir",
            pred_dir,
            "--tag",
            tag,
            "--sync_bn",
            str(sync_bn).lower(),
        ]
        if model == "rsepm":
            return "train_rsepm.py", common + [
                "--backbone",
                s.rsepm_backbone,
                "--rs_start",
                str(RS_START),
                "--mix_start",
                str(MIX_START),
                "--mix",
                "epm",
            ]
        return "train_seg.py", common + [
            "--decoder",
            model,
            "--backbone",
            s.seg_backbone,
            "--output_stride",
            "8",
            "--label_tag",
            "gt",
        ]

    def train_flops(self, model, argv):
        if model not in self.flops:
            s, n = self.sizes, self.info.num_classes
            if model == "rsepm":
                config = train_rsepm.method_config(train_rsepm.get_args_parser().parse_args(argv))
                self.flops[model] = flops.rsepm_train_flops(config, s.rsepm_backbone, n, s.crop, self.device)
            else:
                self.flops[model] = flops.seg_train_flops(
                    model, s.seg_backbone, n, 8, s.crop, self.device, train_seg.segmentation_loss
                )
            if self.cuda:
                torch.cuda.empty_cache()
        return self.flops[model]

    def train(self, model, amp, launcher):
        name = f"train {model} {launcher} {amp}"
        if not self.wanted(name):
            return
        row = {"name": name, "kind": "train", "model": model, "amp": amp, "launcher": launcher}
        if amp == "fp16" and not self.cuda:
            return self.add({**row, "status": "skipped", "note": "fp16 autocast needs CUDA"})
        n = len(self.gpu_ids)
        gpus = ",".join(map(str, range(n))) if launcher.startswith("dp") else "0"
        tag = name.replace(" ", "_")
        pred_dir = os.path.join(self.work, "exp")
        script, argv = self.train_argv(
            model, amp, gpus if self.cuda else "cpu", tag, pred_dir, sync_bn=launcher.startswith("torchrun")
        )
        nproc = int(launcher.split("x")[1]) if launcher.startswith("torchrun") else 0
        status, wall, peak, tail = run_probed(tag, script, argv, self.work, nproc=nproc)
        row.update(
            wall_s=wall,
            peak_mem_gib=None if peak is None else peak / 2**30,
            command=" ".join(["torchrun", f"--nproc_per_node={nproc}"] if nproc else ["python"])
            + f" {script} "
            + " ".join(argv),
        )
        if status != 0:
            return self.add({**row, "status": "fail", "note": f"exit {status}: {tail[-600:]}"})
        log = os.path.join(pred_dir, "models", tag, "logs", "log.jsonl")
        ips = training_speed(log, self.sizes.batch, self.sizes.warmup)
        per_image = self.train_flops(model, argv)
        mfu, peak_tf = self.mfu(ips, per_image, amp)
        row.update(
            status="ok",
            images_per_s=ips,
            gflop_per_image=per_image / 1e9,
            mfu=mfu,
            peak_tflops=peak_tf,
            weights=os.path.join(pred_dir, "models", tag, "last.pth"),
        )
        self.add(row)

    # --- inference ------------------------------------------------------------------------------
    def infer(self, model, amp, domain, device, weights, label, env_extra=None, scales=None):
        """One inference run; returns (row, seed folder) or (row, None) on failure."""
        name = f"infer {model} {label}"
        script = "infer_rsepm.py" if model == "rsepm" else "infer_seg.py"
        pred_dir = os.path.join(self.work, "infer", name.replace(" ", "_"))
        gpus = ",".join(map(str, range(len(self.gpu_ids)))) if device == "cuda" else "cpu"
        argv = [
            "--root_dir",
            self.data,
            "--dataset",
            "TOY",
            "--domain",
            domain,
            "--gpus",
            gpus,
            "--num_workers",
            str(min(self.sizes.workers, 4)),
            "--weights",
            weights,
            "--tag",
            "check",
            "--pred_dir",
            pred_dir,
            "--amp",
            amp,
        ]
        if scales:
            argv += ["--scales", scales]
        if model == "rsepm":
            argv += ["--backbone", self.sizes.rsepm_backbone, "--conf_th", "-1"]
        else:
            argv += ["--decoder", "deeplabv3+", "--backbone", self.sizes.seg_backbone, "--output_stride", "8"]
        status, wall, peak, tail = run_probed(name.replace(" ", "_"), script, argv, self.work, env_extra=env_extra)
        row = {
            "name": name,
            "kind": "infer",
            "model": model,
            "amp": amp,
            "launcher": f"{device} --gpus {gpus}",
            "wall_s": wall,
            "peak_mem_gib": None if peak is None else peak / 2**30,
            "command": f"python {script} " + " ".join(argv),
        }
        if status != 0:
            return {**row, "status": "fail", "note": f"exit {status}: {tail[-600:]}"}, None
        return {**row, "status": "ok"}, os.path.join(pred_dir, "predictions", "check", domain)

    def infer_flops(self, model):
        layout = SeedLayout(self.data, "validation", self.info)
        sizes = np.array([layout.read_image(i).shape[:2] for i in layout.ids], dtype=np.float64)
        height, width = (int(round(v)) for v in sizes.mean(axis=0))
        n = self.info.num_classes
        if model == "rsepm":
            net = RSEPM(self.sizes.rsepm_backbone, n, output_stride=16)
            options = {"interpolation": "nearest"}
        else:
            net = build_network("deeplabv3+", self.sizes.seg_backbone, n, output_stride=8)
            options = {}
        kind = "rsepm" if model == "rsepm" else "seg"
        scales = tuple(float(v) for v in self.sizes.infer_scales.split(","))
        count = flops.inference_flops(net, kind, height, width, scales, self.device, **options)
        if self.cuda:
            torch.cuda.empty_cache()
        return count

    def inference(self, model, weights):
        device = "cuda" if self.cuda else "cpu"
        per_image = None
        for amp in ("off", "bf16"):
            if not self.wanted(f"infer {model} speed {amp}"):
                continue
            row, folder = self.infer(
                model, amp, "validation", device, weights, f"speed {amp}", scales=self.sizes.infer_scales
            )
            if folder is not None:
                per_image = per_image or self.infer_flops(model)
                ips = inference_speed(folder, self.sizes.warmup)
                mfu, peak_tf = self.mfu(ips, per_image, amp)
                row.update(images_per_s=ips, gflop_per_image=per_image / 1e9, mfu=mfu, peak_tflops=peak_tf)
            self.add(row)
        if not self.wanted(f"infer {model} match"):
            return
        scales = self.sizes.match_scales
        ref_row, ref = self.infer(model, "off", "train", "cpu", weights, "match cpu fp32", scales=scales)
        if ref is None:
            return self.add(ref_row)
        runs = [("fp32", "off", {"NVIDIA_TF32_OVERRIDE": "0"}, True)]
        if self.cuda:
            runs += [("tf32", "off", {}, False)]
        runs += [("bf16", "bf16", {}, False)]
        for label, amp, env, strict in runs:
            if not self.wanted(f"infer {model} match {device} {label}"):
                continue
            row, folder = self.infer(
                model, amp, "train", device, weights, f"match {device} {label} vs cpu", env_extra=env, scales=scales
            )
            if folder is not None:
                try:
                    worst, mean = seed_difference(ref, folder)
                    row.update(max_abs_diff=worst, mean_abs_diff=mean)
                    if strict and worst > MATCH_TOL:
                        row.update(status="fail", note=f"max |diff| {worst:.3g} > {MATCH_TOL}")
                    elif not strict:
                        row.update(note="reported, not checked")
                except ValueError as e:
                    row.update(status="fail" if strict else "ok", note=str(e))
            self.add(row)


def markdown(result):
    def num(v, fmt):
        return "" if v is None else format(v, fmt)

    lines = [
        f"# gpu_check ({result['mode']}): {result['device']}, {result['gpus']} GPU(s), torch {result['torch']}",
        "",
        "| check | launcher | status | images/s | peak mem GiB | GFLOP/image | MFU % (peak TFLOP/s) "
        "| seed max/mean abs diff vs CPU | wall s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        mfu = "" if r.get("mfu") is None else f"{100 * r['mfu']:.1f} ({r['peak_tflops']:g})"
        diff = "" if r.get("max_abs_diff") is None else f"{r['max_abs_diff']:.2e} / {r['mean_abs_diff']:.2e}"
        status = r["status"] + (f": {r['note'][:80]}" if r.get("note") and r["status"] != "ok" else "")
        lines.append(
            f"| {r['name']} | {r['launcher']} | {status} | {num(r.get('images_per_s'), '.1f')} | "
            f"{num(r.get('peak_mem_gib'), '.2f')} | {num(r.get('gflop_per_image'), '.1f')} | {mfu} | "
            f"{diff} | {num(r.get('wall_s'), '.0f')} |"
        )
    lines += [
        "",
        "MFU: counted convolution/matmul FLOPs (torch.utils.flop_counter) x images/s over the dense "
        "tensor-core peak of the device (tools/engine/flops.py; TF32 peak for --amp off). Sizes: "
        + json.dumps(result["sizes"]),
        "",
    ]
    if result["failed"]:
        lines.append("FAILED: " + ", ".join(result["failed"]))
    return "\n".join(lines) + "\n"


def main(args):
    """Runs the checks; returns the result (written to --out/result.json): exit status 1 when a
    check failed (its "failed" list)."""
    cuda = torch.cuda.is_available() and not args.smoke
    if not cuda and not args.smoke:
        raise SetupError("no CUDA device visible; run with --smoke for the CPU code path")
    sizes = SMOKE if args.smoke else FULL
    if args.iterations:
        sizes.iterations = args.iterations
    gpu_ids = [int(i) for i in args.gpus.split(",")] if args.gpus else list(range(torch.cuda.device_count()))
    if args.gpus and cuda:
        os.environ["CUDA_VISIBLE_DEVICES"] = args.gpus  # the children number the chosen GPUs from 0
    work = tempfile.mkdtemp(prefix="gpu_check_")
    start = time.perf_counter()
    try:
        data = os.path.join(work, "TOY")
        print(f"gpu_check: synthetic data in {data}", flush=True)
        make_toy_dataset(
            data,
            seed=0,
            num_train=sizes.match_images,
            num_train_aug=sizes.batch * (sizes.warmup + sizes.iterations),
            num_validation=sizes.infer_images,
            num_test=0,
            min_size=sizes.image_min,
            max_size=sizes.image_max,
            progress=True,
        )
        check = Check(args, sizes, work, data, cuda, gpu_ids or [0])
        n = len(check.gpu_ids)
        use_torchrun = args.torchrun
        for model in ("rsepm", "deeplabv3+", "deeplabv2"):
            for amp in ("off", "bf16", "fp16"):
                check.train(model, amp, "single")
            if use_torchrun:
                check.train(model, "bf16", f"torchrunx{n if cuda else 1}")
            if cuda and n > 1:
                check.train(model, "bf16", f"dpx{n}")
        for model, trained in (("rsepm", "train rsepm single"), ("seg", "train deeplabv3+ single")):
            # the float32 run's weights, or the bf16 run's when only that one ran (--smoke, --only)
            weights = next(
                (
                    r.get("weights")
                    for r in sorted(check.rows, key=lambda r: r.get("amp") != "off")
                    if r["name"].startswith(trained) and r.get("weights")
                ),
                None,
            )
            if weights and os.path.isfile(weights):
                check.inference(model, weights)
            elif check.wanted(f"infer {model}"):
                check.add(
                    {
                        "name": f"infer {model}",
                        "kind": "infer",
                        "launcher": "",
                        "status": "fail",
                        "note": f"no weights: '{trained}' did not run or failed",
                    }
                )
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"gpu_check: kept {work}")
    failed = [r["name"] for r in check.rows if r["status"] == "fail"]
    result = {
        "mode": "smoke" if args.smoke else "cuda",
        "device": check.device_name,
        "gpus": n if cuda else 0,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "sizes": asdict(sizes),
        "rs_start": RS_START,
        "mix_start": MIX_START,
        "match_tolerance": MATCH_TOL,
        "total_s": time.perf_counter() - start,
        "rows": check.rows,
        "failed": failed,
    }
    os.makedirs(args.out, exist_ok=True)
    write_json(os.path.join(args.out, "result.json"), result)
    table = markdown(result)
    with atomic_output(os.path.join(args.out, "result.md"), "w") as f:
        f.write(table)
    print(table)
    if failed:
        print("gpu_check FAILED: " + "; ".join(failed), file=sys.stderr)
    return result


if __name__ == "__main__":
    cli(main, get_args_parser())
