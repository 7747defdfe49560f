"""The training clock: seconds of work, leaving out the time a run spent paused.

A run in a terminal pauses with Ctrl-Z and goes on with ``fg``; one in the background with
``kill -TSTP PID`` and ``kill -CONT PID``. While ``pauses_left_out()`` is in effect (train
sets it), the stop signal (SIGTSTP) is caught, the process stops itself, and the time
until it is continued is added to ``paused_seconds()``; ``now()`` leaves it out. So an
epoch's seconds, images per second and time left (epoch.py, progress.py) count the work,
not the pause, and runs compared "at equal time" (minicaps curves) stay comparable when one
was paused. SIGSTOP (``kill -STOP``) cannot be caught: a pause made with it is counted as
training time.
"""
import os
import signal
import threading
import time

_paused = 0.0          # seconds spent stopped by SIGTSTP while the handler was in place
_stopping = False      # inside _stop: a second SIGTSTP then stops without counting again


def paused_seconds():
    """Seconds this process has spent paused (SIGTSTP until SIGCONT) under pauses_left_out."""
    return _paused


def now():
    """time.perf_counter() less the pauses so far: differences of now() are working time.
    (Read again if a pause was counted between the two reads.)"""
    while True:
        paused = _paused
        t = time.perf_counter()
        if paused == _paused:
            return t - paused


def _stop_process():
    os.kill(os.getpid(), signal.SIGSTOP)              # stopped here until SIGCONT


def _stop(signum, frame):
    """SIGTSTP's handler: stop the process, and count the time until SIGCONT continues it.

    It stops itself with SIGSTOP, not by raising SIGTSTP again with the default action:
    the kernel discards that one in an orphaned process group (a run started with
    ``nohup ... &`` from a shell that has since exited), so such a run would go on. A
    SIGTSTP that comes while this one is still counting stops the process again, and the
    outer call counts the whole time once."""
    global _paused, _stopping
    if _stopping:
        _stop_process()
        return
    _stopping = True
    try:
        start = time.perf_counter()
        _stop_process()
        _paused += time.perf_counter() - start
    finally:
        _stopping = False


class pauses_left_out:
    """``with pauses_left_out(): ...``: SIGTSTP is counted as a pause (see the module) for
    the block, where that can be done: on POSIX, from the main thread, and only when
    nobody else handles SIGTSTP already (a shell's job control or an application's handler
    is left as it is). The previous handler comes back at the end."""

    def __enter__(self):
        self.installed = False
        tstp = getattr(signal, "SIGTSTP", None)
        if tstp is None or threading.current_thread() is not threading.main_thread():
            return self
        if signal.getsignal(tstp) is signal.SIG_DFL:
            signal.signal(tstp, _stop)
            self.installed = True
        return self

    def __exit__(self, *exc):
        # put back the default, unless someone installed a handler of their own meanwhile
        if self.installed and signal.getsignal(signal.SIGTSTP) is _stop:
            signal.signal(signal.SIGTSTP, signal.SIG_DFL)
        return False
