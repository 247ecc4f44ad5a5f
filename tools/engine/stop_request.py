"""The stop request a scheduler's SIGTERM/SIGUSR1 raises (docs/reliability.md#running-under-a-scheduler-that-preempts):
a flag the training loop reads between iterations."""

import os
import signal
import sys
import threading

import torch
import torch.distributed as dist

STOP_SIGNALS = ("SIGTERM", "SIGUSR1")  # what SLURM and torchrun send before they kill a job


class StopRequest:
    """SIGTERM / SIGUSR1 as a flag that the run loop reads between iterations: the handler only
    notes the signal's name, so the step or the save in progress completes (TrainingRun.record
    then saves the resume state and stops). A second signal ends the process at once with the
    signal's default action, and so does the first one when the run has not stopped `grace`
    seconds after it (an iteration that cannot finish: a blocked read, a hung device), so a
    scheduler's or `timeout`'s SIGTERM always ends the run. install() works in the main thread only
    (Python's rule; elsewhere the signals keep their handlers); restore() puts the previous
    handlers back."""

    GRACE_SECONDS = float(os.environ.get("RSEPM_STOP_GRACE_S", "300"))

    def __init__(self, grace=None):
        self.name, self.previous, self.timer = None, {}, None
        self.grace = self.GRACE_SECONDS if grace is None else grace

    def install(self):
        if threading.current_thread() is threading.main_thread():
            for name in STOP_SIGNALS:
                number = getattr(signal, name, None)  # Windows has no SIGUSR1
                if number is not None:
                    self.previous[number] = signal.signal(number, self._note)
        return self

    def _note(self, number, frame):
        if self.name is not None:  # the second signal: the default action, now
            signal.signal(number, signal.SIG_DFL)
            os.kill(os.getpid(), number)
            return
        self.name = signal.Signals(number).name
        if self.grace > 0:
            self.timer = threading.Timer(self.grace, self._give_up, args=(number,))
            self.timer.daemon = True
            self.timer.start()

    def _give_up(self, number):
        """No iteration boundary was reached `grace` seconds after the signal: end now. The resume
        state saved last (the periodic or the epoch's) is what a restart continues from."""
        print(
            f"\n{signal.Signals(number).name} {self.grace:g} s ago and no iteration could finish since: "
            "ending now without saving (the last resume state stays)",
            file=sys.stderr,
            flush=True,
        )
        os._exit(128 + number)

    def restore(self):
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        for number, handler in self.previous.items():
            signal.signal(number, signal.SIG_DFL if handler is None else handler)  # None: set outside Python
        self.previous = {}

    def agreed(self, ctx):
        """The signal's name if any rank got one (None otherwise), the same on every rank. Under
        DDP one all-reduce and host sync: call it where the ranks already synchronise (log lines)."""
        if ctx is None or not ctx.distributed:
            return self.name
        flag = torch.tensor([1.0 if self.name else 0.0], device=ctx.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return (self.name or "a signal to another rank") if flag.item() else None
