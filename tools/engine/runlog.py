"""The logs of a training run: running means between log lines (MeanMeter) and RunLogger, which
writes TensorBoard events (scalars, image panels, IoU tables, the flags as hparams;
docs/formats.md#tensorboard), log.jsonl and log.txt under models/{tag}/logs on rank 0.
"""
import json
import os
import time

from core.errors import OutputError
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
            kept = [line for line in f if _parsed_iteration(line) is not None
                    and _parsed_iteration(line) <= iteration]
        with atomic_output(self.jsonl_path, "w") as f:
            f.writelines(kept)

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
