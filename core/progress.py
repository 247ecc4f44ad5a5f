"""Progress of the long loops: a tqdm bar on a terminal, plain lines in a log file.

tqdm redraws one line with carriage returns; written to a file that is one line that grows for
the whole run (and with `disable=None` tqdm writes nothing at all when stderr is not a terminal).
`progress()` returns a tqdm bar when stderr is a terminal and otherwise a `LineProgress`, which
prints separate, newline-terminated lines to stderr, readable with `tail`:

    pretrain_toy: 120/400 (30%) 1.2 it/s, elapsed 1m40s, eta 3m53s, loss=0.412

at most one every RSEPM_PROGRESS_INTERVAL seconds (default 30; 0: a line at every update) and
one at the end, with the last `set_postfix` values. `disable=True` silences both kinds (ranks
other than 0, progress=False). Only time is read: nothing here touches a random number
generator or the order of the items.
"""

import os
import sys
import time

INTERVAL_VARIABLE = "RSEPM_PROGRESS_INTERVAL"
DEFAULT_INTERVAL = 30.0


def line_interval():
    """Seconds between two progress lines: RSEPM_PROGRESS_INTERVAL, or 30 when unset or not a
    number >= 0 (a typo must not stop a long run; it is reported once on stderr)."""
    text = os.environ.get(INTERVAL_VARIABLE, "").strip()
    if not text:
        return DEFAULT_INTERVAL
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        global _warned
        if not _warned:
            _warned = True
            print(
                f"warning: {INTERVAL_VARIABLE}={text!r} is not a number of seconds >= 0; progress lines "
                f"every {DEFAULT_INTERVAL:g} s",
                file=sys.stderr,
                flush=True,
            )
        return DEFAULT_INTERVAL
    return value


_warned = False


def _is_terminal(stream):
    try:
        return stream.isatty()
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False


def progress(
    iterable=None, total=None, desc=None, unit="it", disable=False, initial=0, file=None, interval=None, **tqdm_kwargs
):
    """A progress bar over `iterable` (or updated by hand with `update(n)` when None).

    On a terminal: `tqdm(iterable, total=..., desc=..., unit=..., disable=..., initial=...,
    **tqdm_kwargs)`. Otherwise a LineProgress with the same interface (iteration, update(n),
    set_postfix(...), set_description(...), close(), `with`, the attributes n and total),
    printing a line at most every `interval` seconds (default: line_interval()). `file`: the
    stream, stderr when None. `disable`: True prints nothing; None is False here (tqdm's None,
    "off when not a terminal", is what this helper replaces). tqdm_kwargs the plain lines do not
    need (dynamic_ncols, ...) are accepted and ignored there.
    """
    stream = sys.stderr if file is None else file
    if _is_terminal(stream):
        from tqdm import tqdm

        return tqdm(
            iterable,
            total=total,
            desc=desc,
            unit=unit,
            disable=bool(disable),
            initial=initial,
            file=file,
            **tqdm_kwargs,
        )
    return LineProgress(
        iterable,
        total=total,
        desc=desc,
        unit=unit,
        disable=bool(disable),
        initial=initial,
        file=stream,
        interval=interval,
    )


def format_seconds(seconds):
    """5s, 1m40s, 2h03m07s."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{seconds:02d}s"
    if minutes:
        return f"{minutes}m{seconds:02d}s"
    return f"{seconds}s"


def _format_value(value):
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


class LineProgress:
    """tqdm's interface as the project uses it, printing whole lines (see the module docstring)."""

    def __init__(
        self, iterable=None, total=None, desc=None, unit="it", disable=False, initial=0, file=None, interval=None
    ):
        if total is None and iterable is not None:
            try:
                total = len(iterable)
            except (TypeError, AttributeError):
                total = None
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.disable = disable
        self.n = self.initial = initial
        self.file = sys.stderr if file is None else file
        self.interval = line_interval() if interval is None else interval
        self.postfix = ""
        self.closed = False
        self.start_t = self.last_print_t = time.monotonic()
        self.last_print_n = initial

    def __iter__(self):
        if self.disable:
            yield from self.iterable
            return
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __len__(self):
        return self.total if self.total is not None else len(self.iterable)

    def update(self, n=1):
        """Count `n` more; print a line when `interval` seconds have passed since the last one."""
        self.n += n
        if self.disable or self.closed:
            return
        now = time.monotonic()
        if now - self.last_print_t >= self.interval and self.n != self.last_print_n:
            self._print(now)

    def set_postfix(self, ordered_dict=None, refresh=True, **kwargs):
        """Values shown at the end of the next line (tqdm's `key=value, ...`); prints nothing itself."""
        values = dict(ordered_dict or {}, **kwargs)
        self.postfix = ", ".join(f"{key}={_format_value(value)}" for key, value in values.items())

    def set_postfix_str(self, s="", refresh=True):
        self.postfix = str(s)

    def set_description(self, desc=None, refresh=True):
        self.desc = desc

    def refresh(self):
        """tqdm redraws here; a line is printed only on update() and close()."""

    def close(self):
        """Print the end line once (unless disabled)."""
        if self.closed:
            return
        self.closed = True
        if not self.disable:
            self._print(time.monotonic(), end=True)

    def line(self, now=None, end=False):
        """The text of a progress line at time `now` (the end line has no eta)."""
        now = time.monotonic() if now is None else now
        elapsed = now - self.start_t
        done = self.n - self.initial
        rate = done / elapsed if elapsed > 0 else None
        text = f"{self.desc}: " if self.desc else ""
        if self.total:
            text += f"{self.n}/{self.total} ({100 * self.n / self.total:.0f}%)"
        else:
            text += f"{self.n}"
        if rate is None or done <= 0:
            text += f" ? {self.unit}/s"
        elif rate >= 1:
            text += f" {rate:.1f} {self.unit}/s"
        else:
            text += f" {1 / rate:.1f} s/{self.unit}"
        text += f", elapsed {format_seconds(elapsed)}"
        if not end and rate and self.total and self.n < self.total:
            text += f", eta {format_seconds((self.total - self.n) / rate)}"
        if self.postfix:
            text += f", {self.postfix}"
        return text

    def _print(self, now, end=False):
        self.last_print_t, self.last_print_n = now, self.n
        try:
            self.file.write(self.line(now, end) + "\n")
            self.file.flush()
        except (OSError, ValueError):  # a closed or broken stderr must not stop the run
            pass
