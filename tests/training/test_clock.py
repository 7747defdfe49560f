"""The training clock leaves out pauses: a process stopped by SIGTSTP and continued by
SIGCONT counts the time between as paused, measured against the wall clock of the process
that paused it; an epoch's seconds leave the pause out."""
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from minicaps.training import clock

from tiny_runs import run_tiny

posix_only = pytest.mark.skipif(not hasattr(signal, "SIGTSTP"), reason="needs POSIX signals")
with_proc = pytest.mark.skipif(not os.path.exists("/proc/self/stat"),
                               reason="reads a process's state from /proc")

CHILD = textwrap.dedent("""
    import json, sys, time
    from minicaps.training import clock
    with clock.pauses_left_out():
        wall, work = time.perf_counter(), clock.now()
        print("ready", flush=True)
        sys.stdin.readline()              # the parent says when it has paused and continued us
        wall, work = time.perf_counter() - wall, clock.now() - work
    print(json.dumps({"wall": wall, "work": work, "paused": clock.paused_seconds()}), flush=True)
""")


def _state(pid):
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


@posix_only
@with_proc
@pytest.mark.parametrize("orphaned", [False, True])
def test_a_pause_by_sigtstp_is_left_out_of_the_working_time(orphaned):
    # orphaned: the child in a session of its own, its process group orphaned (as a run
    # started with nohup ... & from a shell that has exited), where the kernel discards
    # a SIGTSTP left to its default action
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, start_new_session=orphaned)
    try:
        assert child.stdout.readline().strip() == "ready"
        child.send_signal(signal.SIGTSTP)
        deadline = time.monotonic() + 10
        while os.path.exists(f"/proc/{child.pid}") and _state(child.pid) != "T":
            assert time.monotonic() < deadline, "the child did not stop on SIGTSTP"
            time.sleep(0.01)
        stopped_at = time.monotonic()
        time.sleep(1.0)
        held = time.monotonic() - stopped_at          # it was stopped all this time, at least
        child.send_signal(signal.SIGCONT)
        out, _ = child.communicate("go\n", timeout=30)
    finally:
        child.kill()
    got = json.loads(out.strip().splitlines()[-1])
    # the parent held it stopped for `held` s: at least that much was paused, and the
    # working time is the wall time less exactly the pause
    assert got["paused"] >= held
    assert got["paused"] <= got["wall"]
    assert got["work"] == pytest.approx(got["wall"] - got["paused"], abs=1e-3)


@posix_only
def test_an_epochs_seconds_leave_out_a_pause(tmp_path, monkeypatch):
    # The real SIGTSTP handler, with the stop itself replaced by a 1 s sleep (stopping
    # the test process would stop the tests); the pause is asked for during the epoch,
    # from the progress line after its first batch.
    if signal.getsignal(signal.SIGTSTP) is not signal.SIG_DFL:
        pytest.skip("SIGTSTP is handled by someone else here: train leaves it alone")
    monkeypatch.setattr(clock, "_stop_process", lambda: time.sleep(1.0))
    monkeypatch.setenv("MINICAPS_PROGRESS_SECONDS", "0")
    lines, asked = [], []

    def log(line):
        lines.append(line)
        if line.startswith("epoch 1/1:") and not asked:
            asked.append(line)
            signal.raise_signal(signal.SIGTSTP)

    before = clock.paused_seconds()
    start = time.perf_counter()
    run = run_tiny(tmp_path / "run", log=log, progress=True)
    wall = time.perf_counter() - start
    assert asked and clock.paused_seconds() - before >= 1.0
    assert run.history[0]["epoch_seconds"] <= wall - 1.0
    assert run.history[0]["paused_seconds"] >= 1.0                    # and the metrics say so
    assert any(line.startswith("(paused 1.") and "during epoch 1" in line for line in lines)
    assert signal.getsignal(signal.SIGTSTP) is signal.SIG_DFL       # put back after the run


def test_without_the_handler_sigtstp_is_left_as_it_was():
    if not hasattr(signal, "SIGTSTP"):
        pytest.skip("needs POSIX signals")
    mine = lambda signum, frame: None
    old = signal.signal(signal.SIGTSTP, mine)
    try:
        with clock.pauses_left_out() as p:
            assert not p.installed and signal.getsignal(signal.SIGTSTP) is mine
        assert signal.getsignal(signal.SIGTSTP) is mine
    finally:
        signal.signal(signal.SIGTSTP, old)


def test_a_second_sigtstp_during_a_pause_is_not_counted_twice(monkeypatch):
    # the stop replaced by a 0.2 s sleep, during which a second SIGTSTP comes in
    calls = []

    def stop():
        calls.append(len(calls))
        if len(calls) == 1:
            clock._stop(signal.SIGTSTP, None)     # the nested handler: stops, counts nothing
        time.sleep(0.2)

    monkeypatch.setattr(clock, "_stop_process", stop)
    before = clock.paused_seconds()
    start = time.perf_counter()
    clock._stop(signal.SIGTSTP, None)
    wall = time.perf_counter() - start
    assert len(calls) == 2
    assert 0.4 <= clock.paused_seconds() - before <= wall      # once: 0.4 s in all, not 0.6


def test_progress_counts_time_by_the_training_clock(monkeypatch):
    # a pause counted while the bar runs does not lower its images per second
    from minicaps.training.progress import Progress
    t = [100.0]
    monkeypatch.setattr(clock.time, "perf_counter", lambda: t[0])
    monkeypatch.setattr(clock, "_paused", 0.0)
    bar = Progress(100, "epoch 1/1", log=lambda line: None, stream=io.StringIO())
    bar.update(50)
    t[0] += 60.0                       # a minute passes, 50 s of it paused
    monkeypatch.setattr(clock, "_paused", 50.0)
    assert bar.line().startswith("epoch 1/1: 50/100 imgs, 5 img/s")     # 50 images in 10 s
