"""The run loop of the training programs (train_rsepm.py, train_seg.py, train_affinity.py and the
tests' miniature tests/ddp_worker.py): TrainingRun, which ties the schedule, mixed precision,
resume, logs and final weights together.

The parts it uses live in focused modules: tools/engine/distributed.py (processes, seeds, data order),
tools/engine/optim.py (optimiser, schedule, EMA), tools/engine/amp.py (mixed precision),
tools/engine/data_loading.py (data order, loader), tools/engine/resume_state.py (resume checkpoint,
config.json, final weights) and tools/engine/runlog.py (each iteration's record: sums, NaN check,
means, log lines, TensorBoard); the flags the scripts share are in
tools/engine/script_parts.py. tests/ddp_worker.py is a runnable miniature of a training script built from them.
"""

import os
import time

from core.errors import DatasetError, Preempted
from core.io import write_json
from core.safety import hold_output, remove_stale_temp_files
from core.weights import save_weights
from tools.engine.amp import make_grad_scaler, resolve_amp_dtype
from tools.engine.data_loading import close_loader, loader_dataset, set_loader_epoch
from tools.engine.distributed import cleanup_distributed
from tools.engine.flops import peak_tflops
from tools.engine.optim import PolyLR
from tools.engine.resume_state import (
    config_path,
    dataset_identity,
    load_resume,
    resume_path,
    run_config,
    run_settings,
    save_final,
    save_resume,
)
from tools.engine.runlog import RunLogger
from tools.engine.stop_request import StopRequest
from tools.paths import model_dir, model_path

_PROGRESS = "_progress_loss"  # record()'s progress_loss among the monitored scalars, not logged


def device_peak_flops(device, amp):
    """The tensor-core peak FLOP/s of a CUDA device for --amp (tools/engine/flops.py PEAK_TFLOPS);
    None on the CPU or a GPU the table does not know."""
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        return None
    mode = {"auto": "bf16", "none": "off", "fp32": "off"}.get(str(amp), str(amp))
    peak = peak_tflops(torch.cuda.get_device_name(device), mode if mode in ("off", "bf16", "fp16") else "off")
    return None if peak is None else peak * 1e12


def count_flops(count, device, amp):
    """count() (a tools/engine/flops.py counter) when the device's peak is known, else None: the
    count runs one forward and backward, spent only where an MFU can be shown. The random state
    is kept: the counters seed their own networks, and the run's draws must not change."""
    import torch

    if not device_peak_flops(device, amp):
        return None
    devices = [torch.device(device)] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        return count()


# ---------------------------------------------------------------------------------------------
# The bookkeeping of a run, shared by the training scripts
# ---------------------------------------------------------------------------------------------
class TrainingRun:
    """Everything around the optimisation step that the training scripts do the same way.

    Builds the poly schedule and the grad scaler, resumes from models/{tag}/resume.pth
    (--resume), writes config.json, opens the logs and the progress bar; then `epochs()` drives
    the data order, `step(loss)` applies one optimiser step, `record(...)` checks and logs the
    step's scalars and writes the periodic resume checkpoints, and `finish()` saves the final
    weights. Epochs count from 1 (`epochs()` yields 1..max_epoch). SIGTERM or SIGUSR1 (a
    scheduler's notice) makes the run save its resume state after the current iteration and raise
    Preempted (docs/reliability.md#running-under-a-scheduler-that-preempts). Usage:

        with TrainingRun(args, ctx, network, optimizer, loader, ema, desc="train_x", **extra) as run:
            for epoch in run.epochs():
                model.train()
                for batch in loader:
                    with autocast_context(ctx.device, run.amp_dtype): losses = ...
                    run.step(total_loss)
                    run.record(epoch, losses, images=batch_size)  # NaN check, no sync
            return run.finish()
    """

    def __init__(
        self,
        args,
        ctx,
        network,
        optimizer,
        loader,
        ema=None,
        desc="train",
        flops_per_image=None,
        epoch_check=None,
        **config_extra,
    ):
        self.args, self.ctx, self.network, self.optimizer, self.loader, self.ema = (
            args,
            ctx,
            network,
            optimizer,
            loader,
            ema,
        )
        if ctx.is_main:  # one live run per tag: a second (a requeued job, a repeated sweep entry) is refused
            hold_output(model_dir(args.pred_dir, args.tag), "--tag")
        self.iterations_per_epoch = len(loader)  # len(loader) shrinks when a resumed epoch skips batches
        self.max_iterations = args.max_epoch * self.iterations_per_epoch
        self.scheduler = PolyLR(optimizer, self.max_iterations)
        self.amp_dtype = resolve_amp_dtype(ctx.device, args.amp)
        self.scaler = make_grad_scaler(ctx.device, self.amp_dtype)
        self.resume_file = resume_path(args.pred_dir, args.tag)
        # one bad file is a counted skip, not the end of the run (core/train_datasets.py)
        self.skipped = {}  # "path: problem" -> times met
        dataset = loader_dataset(loader)  # under the persistent-worker wrapper, if any
        self.dataset_identity = dataset_identity(dataset)  # recorded in resume.pth, checked on resume
        # a skipping dataset (core/train_datasets.py): the files it found bad before training
        self.skipped.update(dict.fromkeys(getattr(dataset, "bad_files", ()), 1))
        if ctx.is_main:  # temporaries of writes killed in earlier runs (a resume.pth one is hundreds of MB)
            folder = model_dir(args.pred_dir, args.tag)
            remove_stale_temp_files(folder)
            remove_stale_temp_files(os.path.join(folder, "logs"))
        self.epoch, self.step_in_epoch, self.iteration, self.saved_epoch = 0, 0, 0, None
        self.images_since_log, warnings, log_state = 0, [], None
        # the epoch's means for epoch_check(epoch, means) -> warning lines (a collapsed run says so)
        self.epoch_check, self.run_warnings, self.best = epoch_check, [], {}
        resumed = args.resume and os.path.isfile(self.resume_file)
        if resumed:  # refused when a run-shaping flag changed (tools/engine/resume_state.py check_settings)
            state = load_resume(
                self.resume_file,
                network,
                optimizer,
                self.scheduler,
                self.scaler,
                ema,
                loader.sampler,
                ctx,
                settings=run_settings(args),
                dataset=self.dataset_identity,
            )
            self.epoch, self.step_in_epoch, self.iteration = state["epoch"], state["step"], state["iteration"]
            # the log means in progress, so that a resumed run logs what an uninterrupted one does
            log_state = state["extra"].get("log") or {"line": state["extra"].get("log_meter")}  # older files
            self.images_since_log = int(state["extra"].get("images_since_log", 0))
            self.skipped.update(state["extra"].get("skipped", {}))
            self.run_warnings = list(state["extra"].get("run_warnings", []))
            self.best = dict(state["extra"].get("best", {}))
            warnings = state["warnings"]
        self.config = run_config(
            args,
            ctx,
            tag=args.tag,
            iterations_per_epoch=self.iterations_per_epoch,
            max_iterations=self.max_iterations,
            amp_dtype=str(self.amp_dtype),
            **config_extra,
        )
        if self.dataset_identity is not None:  # the per-file list stays in resume.pth
            self.config["dataset_identity"] = {k: self.dataset_identity[k] for k in ("count", "sha256")}
        if ctx.is_main:
            write_json(config_path(args.pred_dir, args.tag), self.config)
        # purge_after: a fresh run drops an earlier run's records of the same tag
        self.logger = RunLogger(
            os.path.join(model_dir(args.pred_dir, args.tag), "logs"), enabled=ctx.is_main, purge_after=self.iteration
        )
        peak = device_peak_flops(ctx.device, args.amp)
        if flops_per_image and peak:  # MFU on each log line, as nanoGPT prints it (docs/formats.md#tensorboard)
            self.logger.mfu_scale = flops_per_image / (peak * ctx.world_size)
            self.logger.info(
                f"model FLOPs: {flops_per_image / 1e9:.0f} GFLOP per image per step; peak "
                f"{peak / 1e12:.0f} TFLOP/s per device ({args.amp}): the log shows mfu"
            )
        self.logger.info(f"tag {args.tag}")
        self.logger.info(
            f"{self.iterations_per_epoch} iterations/epoch x {args.max_epoch} epochs, batch "
            f"{args.batch_size}, device {ctx.device}, world size {ctx.world_size}, amp "
            f"{self.amp_dtype}" + (f", {self._resumed_where()}" if resumed else "")
        )
        self.logger.load_state_dict(log_state)  # the log line and epoch in progress, as saved
        for line in warnings:
            self.logger.info(f"warning: {line}")
        from core.progress import progress

        self.progress = progress(
            total=self.max_iterations, initial=self.iteration, desc=desc, disable=not ctx.is_main, dynamic_ncols=True
        )
        self.last_time = time.perf_counter()
        # installed last: a constructor that raised would leave them installed (no __exit__)
        self.stop, self.stop_agreed = StopRequest().install(), None

    def _resumed_where(self):
        done = f"resumed after epoch {self.epoch}"
        if self.step_in_epoch:
            done += f" and {self.step_in_epoch} iterations of epoch {self.epoch + 1}"
        return f"{done} (iteration {self.iteration})"

    def epochs(self):
        """Yield the remaining epochs as people count them (1..max_epoch), each with its data order
        set (skipping the batches a resumed epoch already did); a resume checkpoint is written
        after each. self.epoch stays the number of finished epochs, as resume.pth records it."""
        for index in range(self.epoch, self.args.max_epoch):
            self.epoch = index
            set_loader_epoch(self.loader, index, skip_batches=self.step_in_epoch)
            yield index + 1
            self.step_in_epoch = 0
            if self.saved_epoch != index + 1:  # record() saved it at the last iteration, before validation
                self.save_resume(index + 1, 0)
            if self._stop_requested() and index + 1 < self.args.max_epoch:
                raise self._preempted()

    def step(self, loss):
        """Backward and one optimiser step (with the grad scaler, the schedule and the EMA)."""
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.network)
        self.step_in_epoch, self.iteration = self.step_in_epoch + 1, self.iteration + 1

    def record(self, epoch, scalars, images, progress_loss=None, skipped=None):
        """After step(): the NaN/inf check of the step's scalars, the progress bar, an averaged log
        line every --log_interval iterations and at the end of each epoch, a resume checkpoint
        every --save_interval iterations, and after a SIGTERM/SIGUSR1 a resume checkpoint and
        Preempted (at an epoch's end, epochs() stops after its save). epoch: as epochs() yields it (from 1).
        skipped: the batch's batch["skipped"] (problems of the files dropped from it).

        scalars (and progress_loss): name -> 0-d tensor (or number), loss terms and statistics.
        The run's RunLogger sums them on the device and watches for NaN/inf without a host sync;
        the values come to the host once per log line, and the check runs before every save, so a
        non-finite value stops the run (NonFiniteError naming its iteration) before it is saved.
        """
        for problem in skipped or ():
            if problem not in self.skipped:
                self.logger.info(f"warning: skipped {problem}")
            self.skipped[problem] = self.skipped.get(problem, 0) + 1
        images = images * self.ctx.world_size
        self.images_since_log += images
        if progress_loss is not None:
            scalars = {**scalars, _PROGRESS: progress_loss}
        self.logger.add(scalars, self.iteration - 1)  # iteration - 1: step() has already counted this one
        self.progress.update(1)
        end_of_epoch = self.step_in_epoch == self.iterations_per_epoch
        if self.iteration % self.args.log_interval == 0 or end_of_epoch:
            means = self.logger.write_line(
                self.iteration,
                epoch,
                self.ctx,
                images=self.images_since_log,
                extra={"lr": self.scheduler.get_last_lr()[0]},
            )
            now = time.perf_counter()
            rate = self.images_since_log / max(now - self.last_time, 1e-9)
            shown = means.get(_PROGRESS)
            self.progress.set_postfix(loss=f"{shown if shown is not None else 0:.3f}", ep=epoch, img_s=f"{rate:.1f}")
            self.last_time, self.images_since_log = now, 0
            if self.ctx.distributed:  # every rank must stop at the same iteration (save_resume gathers)
                self.stop_agreed = self.stop.agreed(self.ctx)
        if end_of_epoch:  # the epoch's resume state before validation and panels, which may stop the run
            # (the log line above has just folded the sums: its NaN check ran before this save)
            epoch_means = self.logger.epoch_means()
            for line in self.epoch_check(epoch, epoch_means) if self.epoch_check else []:
                self.warn(f"epoch {epoch}: {line}")
            self.save_resume(self.epoch + 1, 0)
            self.saved_epoch = self.epoch + 1
        if self._stop_requested() and not end_of_epoch:  # at an epoch's end: epochs(), after its save
            self.logger.fold(self.ctx)
            self.save_resume(self.epoch, self.step_in_epoch)
            raise self._preempted()
        if self.iteration % self.args.save_interval == 0 and not end_of_epoch:
            self.logger.fold(self.ctx)  # NaN check before the save; the means travel in resume.pth
            self.save_resume(self.epoch, self.step_in_epoch)  # self.epoch: finished epochs, as resume.pth counts

    def _stop_requested(self):
        """The signal's name or None, no sync: under DDP the value agreed at the last log line, so a signal
        waits up to --log_interval iterations (trained and saved, not lost)."""
        return self.stop_agreed if self.ctx.distributed else self.stop.name

    def _preempted(self):
        line = (
            f"stopped by {self._stop_requested()} after iteration {self.iteration}: resume state saved "
            f"to {self.resume_file}; run again with --resume true"
        )
        self.logger.info(line)
        return Preempted(line)

    def save_resume(self, epoch, step):
        save_resume(
            self.resume_file,
            self.network,
            self.optimizer,
            self.scheduler,
            self.scaler,
            self.ema,
            epoch,
            step,
            self.iteration,
            self.loader.sampler,
            ctx=self.ctx,
            extra={
                "log": self.logger.state_dict(),
                "images_since_log": self.images_since_log,
                "skipped": self.skipped,
                "run_warnings": self.run_warnings,
                "best": self.best,
            },
            settings=run_settings(self.args),
            dataset=self.dataset_identity,
        )

    def draw_panels(self, draw):
        """TensorBoard image panels at a validation or an epoch's end (--vis_images): draw() runs a
        forward pass of its own (tools/engine/panels.py) on rank 0, so no training iteration syncs."""
        if self.ctx.is_main and getattr(self.args, "vis_images", 0) > 0:
            self.logger.images(self.iteration, draw())

    def warn(self, line):
        """A warning about the run itself (e.g. a collapse): a log line, a TensorBoard text entry
        (warnings/run) and config.json's "warnings" at the end."""
        self.run_warnings.append(line)
        self.logger.info(f"warning: {line}")
        self.logger.markdown(self.iteration, "warnings/run", line)

    def note_best(self, name, value, epoch, **details):
        """Keep the best (highest) `value` of a validation metric with its epoch (config.json's "best"
        at the end; the end of the log names it)."""
        if name not in self.best or value > self.best[name]["value"]:
            self.best[name] = {"value": float(value), "epoch": int(epoch), **details}

    def skip(self, problem):
        """Count and log a file that validation or the panels could not use (listed at the end, as
        the training split's)."""
        if problem not in self.skipped:
            self.logger.info(f"warning: skipped {problem}")
        self.skipped[problem] = self.skipped.get(problem, 0) + 1

    def raise_if_skipped(self):
        """After the weights are saved: a run that skipped files ends with DatasetError listing
        them (non-zero exit), so that training on less data is never silent."""
        if self.skipped:
            listed = "; ".join(f"{p} ({n}x)" if n > 1 else p for p, n in list(self.skipped.items())[:10])
            more = f"; ... ({len(self.skipped) - 10} more)" if len(self.skipped) > 10 else ""
            raise DatasetError(
                f"training finished and saved {model_path(self.args.pred_dir, self.args.tag)}, "
                f"but skipped {len(self.skipped)} bad file(s): {listed}{more}; fix or remove them "
                f"(rank {self.ctx.rank})"
            )

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        """Close the progress bar, logs and loader workers also when the run stops on an error (NaN,
        Ctrl-C)."""
        close_loader(self.loader)
        self.progress.close()
        self.logger.close()
        self.stop.restore()
        return False

    def finish(self):
        """Write last.pth with config.json on rank 0, close logs, leave the group. With an EMA,
        last.pth holds the EMA weights (as the authors' trainer saves them, docs/method.md#ema)
        and online.pth the online network; config.json's "saved_weights" says which."""
        self.progress.close()
        self.config["saved_weights"] = "online" if self.ema is None else "ema"
        self.config["warnings"], self.config["best"] = list(self.run_warnings), dict(self.best)
        for name, best in self.best.items():
            self.logger.info(f"best {name}: {best['value']:.2f} at epoch {best['epoch']}")
        if self.run_warnings:
            self.logger.info(f"{len(self.run_warnings)} warning(s) about this run; the first: {self.run_warnings[0]}")
        if self.ctx.is_main:
            if self.ema is not None:
                save_weights(self.network, model_path(self.args.pred_dir, self.args.tag, "online"))
            final = self.network if self.ema is None else self.ema.module
            save_final(self.args.pred_dir, self.args.tag, final, self.config)
            self.logger.hparams(self.config["args"])  # the flags beside the final metrics
            self.logger.info(f"saved {model_path(self.args.pred_dir, self.args.tag)}")
        self.logger.close()
        self.stop.restore()
        cleanup_distributed()
        self.raise_if_skipped()
        return {
            "tag": self.args.tag,
            "iterations": self.iteration,
            "weights": model_path(self.args.pred_dir, self.args.tag),
            "network": self.network,
            "rank": self.ctx.rank,
        }
