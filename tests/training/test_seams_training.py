"""Seams of training found by a hostile pass: ranks started with a bad or a different option
(every rank ends within seconds, the message printed once), a Ctrl-C in a resume into a new
folder (nothing left behind that refuses the same command), checkpoint settings of the wrong
type, and a resumed metrics.jsonl that held out-of-order lines."""
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from minicaps.io.checkpoint import load_checkpoint, read_meta
from tiny_runs import run_tiny

try:
    import mpi4py  # noqa: F401
    MPIEXEC = shutil.which("mpiexec")
except ImportError:
    MPIEXEC = None
needs_mpi = pytest.mark.skipif(MPIEXEC is None, reason="needs mpi4py and mpiexec")
BOUND = 15            # seconds within which every rank must be gone
TRAIN = ["train", "--preset", "quick", "--limit-train", "200", "--limit-test", "100",
         "--no-progress", "--epochs", "2"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
       "MINICAPS_THREADS": "1", "MINICAPS_PEER_TIMEOUT": "5",
       "MINICAPS_DATA": os.environ.get("MINICAPS_DATA", "/work/shared/data/mnist")}


def two_ranks(tmp_path, first, second):
    """rc, output and seconds of `mpiexec -n 1 minicaps FIRST : -n 1 minicaps SECOND`."""
    minicaps = [sys.executable, "-m", "minicaps"]
    command = [MPIEXEC, "-n", "1", *minicaps, *first, ":", "-n", "1", *minicaps, *second]
    start = time.monotonic()
    process = subprocess.Popen(command, cwd=tmp_path, env=ENV, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=BOUND)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, 9)
        process.communicate()
        pytest.fail(f"the ranks were still running after {BOUND} s")
    return process.returncode, output, time.monotonic() - start


@needs_mpi
def test_a_bad_option_on_one_rank_ends_every_rank_with_one_message(tmp_path):
    rc, output, seconds = two_ranks(tmp_path, TRAIN + ["--out", "mm1"],
                                    TRAIN + ["--out", "mm1", "--batch-size", "0"])
    assert rc == 2 and seconds < BOUND
    assert output.count("--batch-size") == 1, output
    assert not (tmp_path / "mm1").exists()


@needs_mpi
@pytest.mark.parametrize("option", [["--seed", "3"], ["--limit-train", "300"]])
def test_ranks_started_with_different_options_are_refused(tmp_path, option):
    rc, output, seconds = two_ranks(tmp_path, TRAIN + ["--out", "mm"],
                                    TRAIN + ["--out", "mm"] + option)
    assert rc == 2 and seconds < BOUND
    assert output.count("different options") == 1, output
    assert option[0] in output
    assert not (tmp_path / "mm").exists()


class Interrupt:
    """A log that stops the run with a KeyboardInterrupt at its first line starting with
    ``at``: Ctrl-C at that point."""

    def __init__(self, at):
        self.at = at

    def __call__(self, line):
        if line.startswith(self.at):
            raise KeyboardInterrupt


def test_ctrl_c_in_a_resume_into_a_new_folder_leaves_it_as_it_was(run_dir, tmp_path):
    new = tmp_path / "rb2"
    with pytest.raises(KeyboardInterrupt):
        run_tiny(new, epochs=3, resume=run_dir / "last.npz", log=Interrupt("wrote"))
    assert not new.exists() or not any(new.iterdir())       # nothing: "nothing was saved"
    run = run_tiny(new, epochs=3, resume=run_dir / "last.npz")      # the same command
    assert run.epoch == 3 and (new / "best.npz").is_file()


def test_the_cli_says_nothing_was_saved_and_the_same_command_works(run_dir, tmp_path, capsys):
    from minicaps.cli import train as train_command
    new = tmp_path / "rb2"
    assert not (new / "last.npz").exists()
    assert "nothing was saved" in train_command._how_to_go_on(new / "last.npz")


def with_settings(path, **changes):
    """A copy of the checkpoint ``path`` whose extra.settings has ``changes``."""
    out = path.parent / "changed.npz"
    with np.load(path, allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    meta = json.loads(arrays["meta"].tobytes().decode("utf-8"))
    meta["extra"]["settings"].update(changes)
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    np.savez(out, **arrays)
    return out


@pytest.mark.parametrize("field, value", [
    ("batch_size", "100"), ("batch_size", 0), ("seed", 10 ** 40), ("lr", "0.1"),
    ("lr", float("inf")), ("shift", -1), ("average", "yes"), ("model", 5),
    ("model", "nope"), ("flip", "yes"), ("dataset", 5)])
def test_checkpoint_settings_of_the_wrong_type_are_refused(run_dir, field, value):
    bad = with_settings(run_dir / "last.npz", **{field: value})
    with pytest.raises(ValueError, match=f"changed.npz.*extra.settings.{field}"):
        read_meta(bad)


def test_the_settings_train_writes_still_load(run_dir):
    assert load_checkpoint(with_settings(run_dir / "last.npz")).epoch == 1


def test_a_resume_keeps_the_metrics_of_epochs_1_to_n_in_order(run_dir, tmp_path):
    out = tmp_path / "run3"
    run_tiny(out, epochs=2)
    metrics = out / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    metrics.write_text("\n".join([lines[0], lines[1], lines[0]]) + "\n")   # a stray epoch 1
    said = []
    run_tiny(out, epochs=3, resume=out / "last.npz", log=said.append)
    epochs = [json.loads(line)["epoch"] for line in metrics.read_text().splitlines()]
    assert epochs == [1, 2, 3]
    assert any("1 line" in line and "metrics.jsonl" in line for line in said), said


def test_a_resume_says_when_the_metrics_history_was_short(tmp_path):
    out = tmp_path / "run4"
    run_tiny(out, epochs=2)
    (out / "metrics.jsonl").write_text("")
    said = []
    run_tiny(out, epochs=3, resume=out / "last.npz", log=said.append)
    assert any("metrics.jsonl" in line and "epoch" in line for line in said), said
