"""Progress of a long loop, wherever its output goes.

- in a terminal: a tqdm bar on stderr;
- in a Jupyter notebook: tqdm's notebook bar (tqdm.auto);
- anywhere else (output to a file, nohup, a pipe, CI): a plain line through ``log`` after
  the first batch and then at least every ``every`` seconds (PROGRESS_SECONDS, or
  $MINICAPS_PROGRESS_SECONDS), saying the images done, images per second, the running
  loss and accuracy, and the time left.

    with Progress(total=60000, desc="epoch 1/50", log=print) as p:
        for batch in ...:
            p.update(len(batch))
            if p.wants_stats():
                p.show(loss=..., acc=...)
"""
import math
import os
import sys

from minicaps.training.clock import now as clock_now

PROGRESS_SECONDS = 30.0


def in_notebook():
    """Whether this runs in a Jupyter kernel (where a notebook bar renders)."""
    shell = sys.modules.get("IPython")
    try:
        return shell is not None and type(shell.get_ipython()).__name__ == "ZMQInteractiveShell"
    except AttributeError:
        return False


def _every():
    try:
        value = float(os.environ.get("MINICAPS_PROGRESS_SECONDS", PROGRESS_SECONDS))
    except ValueError:
        return PROGRESS_SECONDS
    return value if math.isfinite(value) and value >= 0 else PROGRESS_SECONDS


class Progress:
    """A bar (terminal, notebook) or plain lines (anything else) over ``total`` items.

    enabled=False shows nothing. ``stream``: where the bar would go (stderr); plain lines
    go through ``log``. ``clock``: a time source (tests); the training clock by default,
    which leaves out the time a run spent paused (clock.py)."""

    def __init__(self, total, desc, enabled=True, log=print, every=None, stream=None,
                 unit="img", clock=None):
        self.total, self.desc, self.log, self.unit = total, desc, log, unit
        self.clock = clock_now if clock is None else clock
        self.every = _every() if every is None else every
        self.done, self.stats = 0, {}
        self.start = self.last_line = self.clock()
        self.bar = None
        self.lines = False
        stream = sys.stderr if stream is None else stream
        if not enabled:
            return
        if in_notebook():
            from tqdm.auto import tqdm
            self.bar = tqdm(total=total, desc=desc, unit=unit, leave=False)
        elif hasattr(stream, "isatty") and stream.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=total, desc=desc, unit=unit, leave=False, file=stream)
        else:
            self.lines = True

    @property
    def active(self):
        return self.bar is not None or self.lines

    def update(self, n):
        self.done += n
        if self.bar is not None:
            self.bar.update(n)

    def wants_stats(self, step=None):
        """Whether show() would display now: every 10th step for a bar (step given), the
        first update and then every ``every`` seconds for plain lines."""
        if self.bar is not None:
            return step is None or step % 10 == 0 or self.done >= self.total
        if self.lines:
            return self.last_line == self.start or self.clock() - self.last_line >= self.every
        return False

    def show(self, **stats):
        """Show the running statistics (e.g. loss=0.12, acc=0.95) beside the count."""
        self.stats = stats
        if self.bar is not None:
            self.bar.set_postfix({k: f"{v:.4f}" for k, v in stats.items()}, refresh=False)
        elif self.lines and self.done < self.total:
            self.last_line = self.clock()
            self.log(self.line())

    def line(self):
        seconds = max(self.clock() - self.start, 1e-9)
        rate = self.done / seconds
        left = (self.total - self.done) / rate if rate > 0 else float("nan")
        stats = "".join(f", {name} {value:.4f}" for name, value in self.stats.items())
        return (f"{self.desc}: {self.done}/{self.total} {self.unit}s, {rate:.0f} {self.unit}/s"
                f"{stats}, {_duration(left)} left")

    def close(self):
        if self.bar is not None:
            self.bar.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _duration(seconds):
    if not math.isfinite(seconds):
        return "?"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
