"""Progress shows wherever the output goes: a bar in a terminal or a notebook, plain lines
(at least every 30 s) into a file."""
import io
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

from minicaps.training import progress
from minicaps.training.progress import Progress

ROOT = Path(__file__).resolve().parents[2]


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_without_a_terminal_a_line_comes_first_and_then_every_30_seconds():
    clock, lines = Clock(), []
    p = Progress(1000, "epoch 1/2", log=lines.append, every=30, stream=io.StringIO(),
                 clock=clock)
    shown_at = []
    for t in (0.5, 10, 29.9, 31, 45, 60.9, 61.5, 95):
        clock.now = t
        p.update(10)
        if p.wants_stats():
            p.show(**{"running loss": 0.25})
            shown_at.append(t)
    assert shown_at == [0.5, 31, 61.5, 95]      # the first batch, then 30 s after each line
    # the last line, worked out by hand: 80 images in 95 s, 920 left at that rate
    rate = 80 / 95
    assert lines[-1] == (f"epoch 1/2: 80/1000 imgs, {rate:.0f} img/s, running loss 0.2500, "
                         f"{round(920 / rate) // 60} min {round(920 / rate) % 60:02d} s left")


def test_no_line_once_everything_is_done():
    lines = []
    p = Progress(10, "x", log=lines.append, stream=io.StringIO(), clock=Clock())
    p.update(10)
    if p.wants_stats():
        p.show(loss=1.0)
    assert lines == []        # the caller's summary line follows at once


def test_in_a_terminal_it_is_a_bar_and_no_lines():
    lines, stream = [], Terminal()
    with Progress(100, "epoch 1/1", log=lines.append, stream=stream) as p:
        p.update(50)
        p.show(loss=0.5)
        assert p.bar is not None and not p.lines
    assert lines == [] and "epoch 1/1" in stream.getvalue()


def test_in_a_notebook_it_is_the_notebook_bar(monkeypatch):
    made = []

    class NotebookBar:
        def __init__(self, **kw):
            made.append(kw)

        def update(self, n):
            pass

        def close(self):
            pass

    class ZMQInteractiveShell:
        pass

    monkeypatch.setitem(sys.modules, "IPython",
                        types.SimpleNamespace(get_ipython=lambda: ZMQInteractiveShell()))
    import tqdm.auto
    monkeypatch.setattr(tqdm.auto, "tqdm", NotebookBar)
    with Progress(100, "epoch 1/1", log=pytest.fail, stream=io.StringIO()) as p:
        p.update(10)
    assert made and made[0]["total"] == 100


def test_disabled_shows_nothing():
    lines, stream = [], Terminal()
    with Progress(100, "x", enabled=False, log=lines.append, stream=stream) as p:
        p.update(10)
        assert not p.wants_stats()
    assert lines == [] and stream.getvalue() == ""


def test_a_run_writing_to_a_file_shows_progress_before_its_first_epoch_ends(tmp_path):
    """A real process, its output going to a file (as under nohup): a progress line with
    the images done, img/s, running loss and time left comes before the epoch's line."""
    script = textwrap.dedent(f"""
        import sys
        sys.path[:0] = [{str(ROOT)!r}, {str(ROOT / 'tests')!r}]
        from minicaps.gradcheck import tiny_config
        from minicaps.training.run import train
        from synthetic import bars_data
        train(tiny_config(), epochs=1, out_dir={str(tmp_path / 'run')!r}, batch_size=20,
              lr=0.01, data=bars_data(200, 20))
    """)
    with open(tmp_path / "out.txt", "w") as out:
        subprocess.run([sys.executable, "-c", script], stdout=out, stderr=subprocess.STDOUT,
                       check=True, timeout=120)
    lines = (tmp_path / "out.txt").read_text().splitlines()
    first_progress = next(k for k, line in enumerate(lines)
                          if line.startswith("epoch 1/1: 20/200 imgs,"))
    epoch_line = next(k for k, line in enumerate(lines) if line.startswith("epoch 1/1: train loss"))
    assert first_progress < epoch_line
    assert all(word in lines[first_progress]
               for word in ("img/s", "running loss", "running acc", "left"))


def test_the_interval_can_be_set_from_the_environment(monkeypatch):
    monkeypatch.setenv("MINICAPS_PROGRESS_SECONDS", "5")
    assert Progress(10, "x", stream=io.StringIO()).every == 5
    monkeypatch.setenv("MINICAPS_PROGRESS_SECONDS", "soon")
    assert Progress(10, "x", stream=io.StringIO()).every == progress.PROGRESS_SECONDS
