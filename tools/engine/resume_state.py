"""What a training run leaves on disk besides its logs: the resume checkpoint (models/{tag}/resume.pth
with weights, optimiser, schedule, scaler, EMA, sampler position, every rank's RNG states and the
identity of the dataset), the run configuration (config.json) and the final weights
(docs/formats.md#experiment-folder).
"""

import hashlib
import json
import os
import platform
import random
import subprocess
import sys
import time

import numpy as np
import torch
import torch.distributed as dist

from core.errors import MissingFileError, NonFiniteError, ResumeError  # noqa: F401  (re-exported)
from core.io import write_json
from core.weights import save_atomically, save_weights, unwrap
from tools.paths import REPO_ROOT, model_dir, model_path

RESUME_FORMAT = "rsepm-resume-1"

# Flags that may change when a run is resumed: where files are, how many workers load them, how
# often the run logs, saves and validates. Every other flag (batch size, epochs, lr, weight decay,
# backbone, method flags, ... and any flag a new script adds) shapes the run and must keep the value
# recorded in resume.pth (docs/formats.md#experiment-folder).
RESUMABLE_FLAGS = frozenset(
    {
        "resume",
        "num_workers",
        "log_interval",
        "save_interval",
        "val_every",
        "val_domain",
        "val_images",
        "vis_images",
        "gpus",
        "pred_dir",
        "root_dir",
        "tag",
        "pretrained",
        "max_image_pixels",
    }
)


def resume_path(pred_dir, tag):
    return os.path.join(model_dir(pred_dir, tag), "resume.pth")


def config_path(pred_dir, tag):
    return os.path.join(model_dir(pred_dir, tag), "config.json")


def rng_state(device=None):
    """This process's generator states in plain types (loadable with weights_only=True)."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if device is not None and torch.device(device).type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state, device=None):
    random.setstate(_as_tuple(state["python"]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and device is not None and torch.device(device).type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def _as_tuple(value):
    """random.setstate needs tuples all the way down; a loaded checkpoint may hold lists."""
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def _gather(obj, ctx):
    """[obj of rank 0, obj of rank 1, ...] on every rank (just [obj] without DDP)."""
    if ctx is None or not ctx.distributed:
        return [obj]
    gathered = [None] * ctx.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def run_settings(args):
    """The flags that shape a run, as plain values: vars(args) minus RESUMABLE_FLAGS."""
    values = vars(args) if not isinstance(args, dict) else dict(args)
    settings = {k: v for k, v in values.items() if k not in RESUMABLE_FLAGS}
    return json.loads(json.dumps(settings, default=str))  # tuples -> lists, devices -> strings


def check_settings(path, saved, current):
    """Refuse (ResumeError) a resume whose run-shaping flags differ from those in `path`.

    saved: the checkpoint's record (None for a resume file written before the record existed);
    current: run_settings(args). Returns warning lines: an old file cannot be checked, and a flag
    known to only one side (added or removed since) cannot be compared.
    """
    if saved is None:
        return [
            f"{path} records no flags (written by an older version): the flags of this run "
            f"cannot be checked against those it started with"
        ]
    changed = [(k, saved[k], current[k]) for k in sorted(set(saved) & set(current)) if saved[k] != current[k]]
    if changed:
        listed = "; ".join(f"--{k} was {_flag_text(a)}, now {_flag_text(b)}" for k, a, b in changed)
        old = " ".join(f"--{k} {_flag_text(a)}" for k, a, _ in changed)
        raise ResumeError(
            f"{path}: cannot resume with changed settings ({listed}); the schedule and "
            f"state would no longer match. Pass the old value(s) ({old}) to continue, or "
            f"start a new --tag (or leave out --resume) for a run with the new ones"
        )
    unknown = sorted(set(saved) ^ set(current))
    return (
        [
            f"{path}: flag(s) {', '.join('--' + k for k in unknown)} known to only one of the "
            f"checkpoint and this version; not compared"
        ]
        if unknown
        else []
    )


def dataset_identity(dataset):
    """What a run trains on, cheap enough to recompute for 10,582 images (os.stat only, no reads):
    the kept ids in order with the byte size and modification time (ns) of each id's image and of
    the label file the dataset reads (xml tags, mask or pseudo mask, relation-label map; -1:
    missing). The time makes a file replaced by another of the same size count as a change.

    Returns {"count", "sha256", "files": [[id, image bytes, label bytes, image mtime, label mtime],
    ...]}, or None for a dataset that does not say where its files are (a test's TensorDataset).
    """
    layout = getattr(dataset, "layout", None)
    if layout is None or not hasattr(dataset, "ids"):
        return None
    # RelationLabelDataset: label_path; SegmentationDataset: mask_path; ClassificationDataset: the xml
    label = getattr(dataset, "label_path", None) or getattr(dataset, "mask_path", None) or layout.xml_path
    files = []
    for i in dataset.ids:
        (image_size, image_time), (label_size, label_time) = _file_stat(layout.image_path(i)), _file_stat(label(i))
        files.append([i, image_size, label_size, image_time, label_time])
    digest = hashlib.sha256(json.dumps(files).encode()).hexdigest()
    return {"count": len(files), "sha256": digest, "files": files}


def _file_stat(path):
    """(bytes, modification time in ns) of a file; (-1, -1) when it is missing."""
    try:
        info = os.stat(path)
        return info.st_size, info.st_mtime_ns
    except OSError:
        return -1, -1


def check_dataset(path, saved, current):
    """Refuse (ResumeError) a resume on a dataset other than the one `path` was trained on,
    naming the counts and the first id that differs. saved/current: dataset_identity() values
    (saved None: a file written before the record existed, a warning line is returned)."""
    if current is None:
        return []
    if saved is None:
        return [
            f"{path} records no dataset identity (written by an older version): the images of "
            f"this run cannot be checked against those it started with"
        ]
    if saved["sha256"] == current["sha256"]:
        return []
    if saved["files"] and len(saved["files"][0]) == 3:  # an older record: sizes only, compared as such
        sized = [f[:3] for f in current["files"]]
        if json.dumps(saved["files"]) == json.dumps(sized):
            return [
                f"{path} records the files' sizes but not their modification times (an older version): a "
                "file replaced by one of the same size cannot be told apart"
            ]
        current = dict(current, files=sized)
    old, new = {f[0]: f[1:] for f in saved["files"]}, {f[0]: f[1:] for f in current["files"]}
    gone, added = [i for i in old if i not in new], [i for i in new if i not in old]
    if gone or added:
        first = ([f"{gone[0]} is gone ({len(gone)} in all)"] if gone else []) + (
            [f"{added[0]} is new ({len(added)} in all)"] if added else []
        )
        detail = "; ".join(first)
    else:
        changed = next((i for i in new if old[i] != new[i]), None)
        if changed is None:
            detail = "the same files in another order"
        else:
            (image_a, label_a, *times_a), (image_b, label_b, *times_b) = old[changed], new[changed]
            if image_a != image_b or label_a != label_b:
                kind, a, b = ("image", image_a, image_b) if image_a != image_b else ("label file", label_a, label_b)
                detail = f"the {kind} of {changed} was {a} bytes, now {b}"
            else:
                kind = "image" if times_a[:1] != times_b[:1] else "label file"
                detail = (
                    f"the {kind} of {changed} was replaced (same size, modified "
                    f"{'after' if times_b > times_a else 'before'} the run started)"
                )
    raise ResumeError(
        f"{path}: cannot resume on another dataset: the run started on {saved['count']} images "
        f"(sha256 {saved['sha256'][:12]}), this one has {current['count']} (sha256 "
        f"{current['sha256'][:12]}); first difference: {detail}. Resume with the images and "
        f"labels the run started with, or start a new --tag (or leave out --resume)"
    )


def _flag_text(value):
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


def save_resume(
    path,
    model,
    optimizer,
    scheduler=None,
    scaler=None,
    ema=None,
    epoch=0,
    step=0,
    iteration=0,
    sampler=None,
    extra=None,
    ctx=None,
    settings=None,
    dataset=None,
):
    """Write everything needed to continue the run bit for bit, atomically.

    Call on EVERY rank under DDP (it gathers each rank's RNG states); only rank 0 writes.
    epoch: current epoch; step: batches already done in it; iteration: optimiser steps so far.
    extra: a dict of plain values (numbers, strings, lists) for the script.
    settings: run_settings(args), checked by load_resume against the resuming run's flags.
    dataset: dataset_identity() of the training set, checked by load_resume likewise.
    Raises NonFiniteError, writing nothing, when a weight is NaN/inf (the previous file stays).
    """
    names, params = zip(*unwrap(model).named_parameters())
    finite = torch.stack([torch.isfinite(p).all() for p in params]).cpu()  # one host sync
    if not finite.all():
        bad = [n for n, ok in zip(names, finite.tolist()) if not ok]
        raise NonFiniteError(
            f"iteration {iteration}: non-finite weights in {', '.join(bad[:5])}"
            f"{' ...' if len(bad) > 5 else ''}; {path} not written, it keeps the "
            f"last good state"
        )
    rng_states = _gather(rng_state(ctx.device if ctx else None), ctx)
    if ctx is not None and not ctx.is_main:
        return
    state = {
        "format": RESUME_FORMAT,
        "epoch": int(epoch),
        "step": int(step),
        "iteration": int(iteration),
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "ema": ema.state_dict() if ema is not None else None,
        "sampler": sampler.state_dict() if sampler is not None else None,
        "rng": rng_states,
        "extra": extra or {},
        "settings": settings,
        "dataset": dataset,
    }
    save_atomically(state, path)


def load_resume(
    path,
    model,
    optimizer=None,
    scheduler=None,
    scaler=None,
    ema=None,
    sampler=None,
    ctx=None,
    settings=None,
    dataset=None,
):
    """Restore a save_resume checkpoint into the given objects (each optional but the model).

    settings: run_settings(args) of the resuming run; a run-shaping flag that differs from the
    checkpoint's record raises ResumeError naming the flag and both values (check_settings).
    dataset: dataset_identity() of the resuming run; another dataset raises ResumeError naming
    the counts and the first id that differs (check_dataset).
    Returns dict(epoch, step, iteration, extra, warnings). Raises ValueError naming the file when it is
    not a resume checkpoint or the run's seed / dataset size / process count changed.
    """
    device = ctx.device if ctx else torch.device("cpu")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise MissingFileError(f"{path}: resume checkpoint not found") from None
    except Exception as e:  # pickle/zip/EOF errors alike
        raise ResumeError(f"{path}: not a readable resume checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or state.get("format") != RESUME_FORMAT:
        raise ResumeError(
            f"{path}: not a resume checkpoint of this project (format "
            f"{state.get('format') if isinstance(state, dict) else type(state).__name__!r})"
        )
    warnings = check_settings(path, state.get("settings"), settings) if settings is not None else []
    warnings += check_dataset(path, state.get("dataset"), dataset)
    if sampler is not None and state["sampler"] is not None:
        sampler.check_compatible(state["sampler"], path)
    rank = ctx.rank if ctx else 0
    if len(state["rng"]) <= rank:
        raise ResumeError(f"{path}: saved by {len(state['rng'])} process(es), this is rank {rank}")
    unwrap(model).load_state_dict(state["model"])
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state["scheduler"] is not None:
        scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state["scaler"] and scaler.is_enabled():
        scaler.load_state_dict(state["scaler"])
    if ema is not None and state["ema"] is not None:
        ema.load_state_dict(state["ema"])
    set_rng_state(state["rng"][rank], device)
    return {
        "epoch": state["epoch"],
        "step": state["step"],
        "iteration": state["iteration"],
        "extra": state["extra"],
        "warnings": warnings,
    }


def git_commit():
    """(commit hash, dirty flag) of the repository, or (None, None) outside git."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
        return commit, bool(status.strip())
    except (OSError, subprocess.SubprocessError):
        return None, None


def run_config(args, ctx=None, **extra):
    """The run's full configuration for config.json: every argument plus the environment."""
    commit, dirty = git_commit()
    config = {
        "args": vars(args) if not isinstance(args, dict) else dict(args),
        "seed": getattr(args, "seed", None) if not isinstance(args, dict) else args.get("seed"),
        "command": sys.argv,
        "world_size": ctx.world_size if ctx else 1,
        "device": str(ctx.device) if ctx else "cpu",
        "weight_decay_in_momentum_slot": False,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torchvision": _version("torchvision"),
            "numpy": np.__version__,
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
        },
        "git_commit": commit,
        "git_dirty": dirty,
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    config.update(extra)
    # values json cannot write (a torch.device in args, ...) become strings, so that the final
    # write after hours of training cannot fail on them
    return json.loads(json.dumps(config, default=str))


def _version(module):
    try:
        return __import__(module).__version__
    except ImportError:
        return None


def save_final(pred_dir, tag, model, config, strategy="last"):
    """Write models/{tag}/{strategy}.pth (flat state_dict) and config.json beside it."""
    weights = model_path(pred_dir, tag, strategy)
    save_weights(model, weights)
    write_json(config_path(pred_dir, tag), config)
    return weights
