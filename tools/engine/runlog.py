"""The record of a training run, in one object: RunLogger takes each iteration's scalars (add: device
sums and a NaN/inf watch, no host sync), reads them back once per log line (write_line: the NaN
verdict, the running means, one log.jsonl record, a log.txt line and TensorBoard scalars) and keeps
the epoch's means (epoch_means). It also writes the image panels, IoU tables and the flags as
hparams (docs/formats.md#tensorboard), under models/{tag}/logs on rank 0.

NaN/inf pattern: a sync per iteration stalls a GPU's queue, so a bad step reaches the in-memory
weights, but never a file: the verdict is read at every log line and before every resume
checkpoint (fold), raising NonFiniteError naming the iteration and its terms, and
tools.engine.resume_state.save_resume refuses weights that are not finite as well. The script lets
the error end the run (exit status non-zero) and does NOT save on the way out; resume.pth (written
atomically) still holds the last good state, ready for --resume once the cause is fixed (e.g. a
lower --lr). check_finite is the immediate form (one sync per call).
"""

import json
import math
import os
import time

import torch
import torch.distributed as dist

from core.errors import NonFiniteError, OutputError
from core.io import atomic_output


class MeanMeter:
    """Running means of named scalars between two log lines."""

    def __init__(self):
        self.sums, self.counts = {}, {}

    def update(self, values):
        for name, value in values.items():
            self.sums[name] = self.sums.get(name, 0.0) + float(value)
            self.counts[name] = self.counts.get(name, 0) + 1

    def state_dict(self):
        """Plain values for resume.pth (sums and counts of the line in progress)."""
        return {"sums": dict(self.sums), "counts": dict(self.counts)}

    def load_state_dict(self, state):
        """Restore state_dict(); None (a resume file without meters) starts empty."""
        state = state or {}
        self.sums = {k: float(v) for k, v in state.get("sums", {}).items()}
        self.counts = {k: int(v) for k, v in state.get("counts", {}).items()}

    def means(self, reset=True):
        result = {n: self.sums[n] / self.counts[n] for n in self.sums}
        if reset:
            self.sums, self.counts = {}, {}
        return result


def check_finite(scalars, iteration, ctx=None, monitor=None):
    """The NaN/inf check of one step's scalars (name -> 0-d tensor or number).

    With a LossMonitor (TrainingRun.record): the scalars join its device-side sums and NaN watch,
    no host sync; the monitor raises NonFiniteError naming `iteration` at its next read (every log
    line and before every save). Returns None.
    Without: checked now, one host sync for all terms, and returned as {name: float}. Under DDP the
    verdict is shared (all-reduce), so every rank stops together instead of hanging.
    """
    if monitor is not None:
        monitor.add(scalars, iteration)
        return None
    names = list(scalars)
    values = torch.stack([torch.as_tensor(scalars[k]).detach().float().reshape(()) for k in names])
    numbers = values.cpu().tolist()
    offending = [f"{n}={v}" for n, v in zip(names, numbers) if not math.isfinite(v)]
    stop = bool(offending)
    if ctx is not None and ctx.distributed:
        flag = torch.tensor(int(stop), device=values.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        stop = bool(flag.item())
    if stop:
        raise _non_finite(iteration, offending)
    return dict(zip(names, numbers))


def _non_finite(iteration, offending):
    where = ", ".join(offending) if offending else "on another process"
    return NonFiniteError(
        f"iteration {iteration}: non-finite loss {where}; the run stops "
        f"here and the last resume checkpoint is left as it was"
    )


class LossMonitor:
    """Sums of the logged scalars and a NaN/inf watch, kept on the device between log lines.

    add(scalars, iteration) costs a few small kernels and no host sync: scalars (name -> 0-d
    tensor or number) are stacked and added to float64 sums, and the first iteration with a
    non-finite value is kept (with its values) in device tensors. check(ctx) and means(ctx) read
    them back (one transfer each; under DDP an all-reduce shares the verdict, every rank calls
    them at the same iterations) and raise NonFiniteError naming that iteration and its terms.
    """

    def __init__(self):
        self.groups = {}  # names tuple -> [sums (K,) float64, count, first bad values (K,)]
        self.first_bad = None  # 0-d int64 on the device: first non-finite iteration, -1 if none

    def add(self, scalars, iteration):
        names = tuple(scalars)
        device = next((v.device for v in scalars.values() if torch.is_tensor(v)), torch.device("cpu"))
        values = torch.stack([torch.as_tensor(scalars[k], device=device).detach().reshape(()).double() for k in names])
        if self.first_bad is None:
            self.first_bad = torch.full((), -1, dtype=torch.int64, device=device)
        group = self.groups.setdefault(names, [torch.zeros_like(values), 0, torch.zeros_like(values)])
        newly = (~torch.isfinite(values)).any() & (self.first_bad < 0)
        self.first_bad = torch.where(newly, torch.full_like(self.first_bad, int(iteration)), self.first_bad)
        group[2] = torch.where(newly, values, group[2])
        group[0] += values
        group[1] += 1

    def check(self, ctx=None):
        """Raise NonFiniteError if any value added so far was NaN or inf (one host sync)."""
        self._read(ctx, sums=False)

    def means(self, ctx=None):
        """check(), then return {name: mean since the last call} as floats and start afresh
        (the check and the sums come back in one transfer)."""
        totals, counts = self.totals(ctx)
        return {n: totals[n] / counts[n] for n in totals}

    def totals(self, ctx=None):
        """check(), then return ({name: sum}, {name: count}) since the last call and start afresh."""
        packed = self._read(ctx, sums=True)
        totals, counts, offset = {}, {}, 0
        for names, (_, count, _) in self.groups.items():
            for n, v in zip(names, packed[offset : offset + len(names)]):
                totals[n], counts[n] = totals.get(n, 0.0) + v, counts.get(n, 0) + count
            offset += len(names)
        self.groups = {}
        return totals, counts

    def _read(self, ctx, sums):
        """Copy the verdict (and the sums) to the host; raise if a value was not finite."""
        if self.first_bad is None:
            return []
        shared = self.first_bad.reshape(1).clone()
        if ctx is not None and ctx.distributed:
            dist.all_reduce(shared, op=dist.ReduceOp.MAX)  # >= 0 on any rank: every rank stops
        parts = [shared.double(), self.first_bad.reshape(1).double()]
        parts += [g[0] for g in self.groups.values()] if sums else []
        packed = torch.cat(parts).tolist()
        if packed[0] >= 0:
            own = packed[1] >= 0
            offending = [
                f"{n}={v}"
                for names, (_, _, bad) in self.groups.items()
                for n, v in zip(names, bad.tolist())
                if own and not math.isfinite(v)
            ]
            raise _non_finite(int(packed[1] if own else packed[0]), offending)
        return packed[2:]


class RunLogger:
    """TensorBoard scalars, a JSONL file (one object per log step) and a plain text log.

    Files in log_dir: log.jsonl, log.txt and TensorBoard event files. With enabled=False (ranks
    other than 0) nothing is created, written or printed. The logs are appended a
    line at a time (flushed), not written atomically: they are records, not pipeline inputs.
    purge_after: iteration of a resumed run; JSONL records and TensorBoard events after it (from
    the interrupted run, to be redone) are dropped so each iteration appears once.
    """

    def __init__(self, log_dir, enabled=True, purge_after=None):
        self.enabled = enabled
        # every rank records (the NaN verdict is shared); rank 0 writes
        self.sums, self.line_meter, self.epoch_meter = LossMonitor(), MeanMeter(), MeanMeter()
        # FLOPs per image / (peak FLOP/s of all devices): images_per_s times it is the model-FLOP
        # utilisation, logged as `mfu` beside images_per_s (set by TrainingRun on CUDA; None: off)
        self.mfu_scale = None
        self.log_dir = log_dir
        self.last_scalars = {}  # TensorBoard tag -> last value: the metrics of hparams()
        self.last_time = time.perf_counter()
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter  # only rank 0 needs tensorboard

        self.jsonl_path = os.path.join(log_dir, "log.jsonl")
        try:  # a read-only or full disk: one line naming the folder, not a traceback
            os.makedirs(log_dir, exist_ok=True)
            if purge_after is not None:
                self._purge_jsonl(purge_after)
            self.writer = SummaryWriter(log_dir, purge_step=None if purge_after is None else purge_after + 1)
            self.jsonl = open(self.jsonl_path, "a", encoding="utf-8")
            self.text = open(os.path.join(log_dir, "log.txt"), "a", encoding="utf-8")
        except OSError as e:
            if isinstance(e, OutputError):
                raise
            raise OutputError(f"{log_dir}: cannot write the logs ({e})") from e

    def _purge_jsonl(self, iteration):
        if not os.path.isfile(self.jsonl_path):
            return
        with open(self.jsonl_path, encoding="utf-8") as f:
            kept = [line for line in f if _parsed_iteration(line) is not None and _parsed_iteration(line) <= iteration]
        with atomic_output(self.jsonl_path, "w") as f:
            f.writelines(kept)

    # --- recording: one call per iteration, one per log line ------------------------------------
    def add(self, scalars, iteration):
        """One iteration's scalars (name -> 0-d tensor or number: loss terms, statistics): added up
        on the device and watched for NaN/inf, no host sync."""
        self.sums.add(scalars, iteration)

    def fold(self, ctx=None):
        """Read the device sums back (one host sync; raises NonFiniteError naming the first bad
        iteration) into the running means of the log line and of the epoch."""
        totals, counts = self.sums.totals(ctx)
        for meter in (self.line_meter, self.epoch_meter):
            for name, total in totals.items():
                meter.sums[name] = meter.sums.get(name, 0.0) + total
                meter.counts[name] = meter.counts.get(name, 0) + counts[name]

    def write_line(self, iteration, epoch, ctx=None, extra=None, images=None):
        """The log line: fold, then the means since the last line with `extra` (e.g. the learning
        rate) written by log(). Returns every mean, names starting with "_" included (kept off the
        record: e.g. the progress bar's loss)."""
        self.fold(ctx)
        means = self.line_meter.means()
        self.log(
            iteration,
            epoch,
            {**{k: v for k, v in means.items() if not k.startswith("_")}, **(extra or {})},
            images=images,
        )
        return means

    def epoch_means(self):
        """The means of the epoch's iterations (folded at its last log line); starts the next epoch."""
        return self.epoch_meter.means()

    def state_dict(self):
        """The running means in progress (call fold() first), for resume.pth."""
        return {"line": self.line_meter.state_dict(), "epoch": self.epoch_meter.state_dict()}

    def load_state_dict(self, state):
        """Restore state_dict(); None (a resume file without them) starts empty."""
        state = state or {}
        self.line_meter.load_state_dict(state.get("line"))
        self.epoch_meter.load_state_dict(state.get("epoch"))

    # --- writing ------------------------------------------------------------------------------
    def info(self, message):
        """Print a line and append it to log.txt (rank 0 only)."""
        if self.enabled:
            print(message, flush=True)
            self.text.write(message + "\n")
            self.text.flush()

    def log(self, iteration, epoch, scalars, images=None):
        """Record one log step. scalars: name -> number (loss terms, lr, fractions, ...).

        images: images processed since the previous log() call (all ranks together), which
        adds `images_per_s` measured over the same span.
        """
        now = time.perf_counter()
        scalars = {k: float(v) for k, v in scalars.items()}
        if images is not None:
            scalars["images_per_s"] = images / max(now - self.last_time, 1e-9)
            if self.mfu_scale:  # host numbers only: no sync with the device
                scalars["mfu"] = scalars["images_per_s"] * self.mfu_scale
        self.last_time = now
        if not self.enabled:
            return
        record = {"iteration": int(iteration), "epoch": int(epoch), **scalars}
        self.jsonl.write(json.dumps(record) + "\n")
        self.jsonl.flush()
        for name, value in scalars.items():
            self.writer.add_scalar(f"train/{name}", value, iteration)
            self.last_scalars[f"train/{name}"] = value
        self.writer.flush()
        terms = " ".join(f"{k} {v:.4g}" for k, v in scalars.items())
        self.info(f"[ep {epoch} it {iteration}] {terms}")

    def images(self, iteration, panels):
        """TensorBoard images: panels {tag: uint8 RGB (H, W, 3)} (tools/engine/panels.py)."""
        if not self.enabled:
            return
        for tag, image in panels.items():
            self.writer.add_image(tag, image, iteration, dataformats="HWC")
        self.writer.flush()

    def markdown(self, iteration, tag, text):
        """TensorBoard text (Markdown), e.g. the per-class IoU table of a validation."""
        if self.enabled:
            self.writer.add_text(tag, text, iteration)
            self.writer.flush()

    def hparams(self, flags):
        """The run's flags as TensorBoard hparams, in this run's own event file (add_hparams would
        open a second run folder). Its metrics are the scalar tags logged so far: the plugin shows
        the last value of each. Flags that are not numbers, strings or booleans are shown as text."""
        if not self.enabled:
            return
        from torch.utils.tensorboard.summary import hparams

        values = {k: v if isinstance(v, (bool, int, float, str)) else json.dumps(v) for k, v in flags.items()}
        for summary in hparams(values, dict(self.last_scalars)):
            self.writer.file_writer.add_summary(summary)
        self.writer.flush()

    def close(self):
        if self.enabled:
            self.writer.close()
            self.jsonl.close()
            self.text.close()
            self.enabled = False


def _parsed_iteration(line):
    """The record's iteration; None for a line cut short by a crash (dropped by the purge)."""
    try:
        return int(json.loads(line)["iteration"])
    except (ValueError, KeyError, TypeError):
        return None
