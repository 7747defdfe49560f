"""Run folders under hostile conditions: links planted in place of a run's own files, a run
stopped while it writes its first checkpoints, a full disk, and a resume that would change
the test set. Each case checks the files it must not touch by their SHA-256, and the
error by its type and what its message says.
"""
import errno
import json
import shutil

import numpy as np
import pytest

import minicaps.training.run
from minicaps.io import writer
from minicaps import cli
from minicaps.cli.options import PRESETS
from minicaps.training import runfolder
from minicaps.io.checkpoint import load_checkpoint, read_epoch

from limits import file_hashes
from synthetic import synthetic_mnist
from tiny_runs import run_tiny

MB = 1 << 20


def plant_link(folder, name, target):
    link = folder / name
    if link.exists() or link.is_symlink():
        link.unlink()
    link.symlink_to(target)
    return link


def savez_stopping_at(call, error):
    """np.savez that writes a little, then raises ``error`` on its ``call``-th use (1: the
    first), as a Ctrl-C or a full disk would in the middle of a checkpoint."""
    real, calls = np.savez, []

    def savez(file, *args, **kwds):
        calls.append(1)
        if len(calls) == call:
            file.write(b"PK\x03\x04 half a checkpoint")
            raise error
        return real(file, *args, **kwds)
    return savez


# --- a run folder's own files are never followed out of it ----------------------------------

@pytest.mark.parametrize("name", [runfolder.LOCK_FILE, "metrics.jsonl"])
def test_a_fresh_run_into_a_folder_holding_only_a_link_leaves_its_target(tmp_path, victim,
                                                                       bounded, name):
    out = tmp_path / "run"
    out.mkdir()
    link = plant_link(out, name, victim)
    before = file_hashes(victim.parent)
    with bounded(memory=512 * MB, seconds=30):
        with pytest.raises(runfolder.RunFolderError,
                           match=rf"{link} is a symbolic link .*Delete the link"):
            run_tiny(out)
    assert file_hashes(victim.parent) == before
    assert link.is_symlink()


@pytest.mark.parametrize("name", [runfolder.LOCK_FILE, "metrics.jsonl", "last.npz", "best.npz"])
def test_a_resume_in_a_folder_holding_a_link_leaves_its_target(run_dir, victim, bounded, name):
    resume = run_dir / "last.npz"
    if name == "last.npz":          # the run goes on from a copy kept beside the folder
        resume = shutil.copy(resume, run_dir.parent / "kept.npz")
    link = plant_link(run_dir, name, victim)
    before = file_hashes(victim.parent)
    with bounded(memory=512 * MB, seconds=30):
        with pytest.raises(runfolder.RunFolderError, match=rf"{link} is a symbolic link"):
            run_tiny(run_dir, epochs=2, resume=resume)
    assert file_hashes(victim.parent) == before


def test_a_link_in_place_of_a_temp_file_is_removed_not_followed(run_dir, victim, bounded):
    link = plant_link(run_dir, ".last.npz.abc123.tmp", victim)
    before = file_hashes(victim.parent)
    with bounded(memory=512 * MB, seconds=30):
        run_tiny(run_dir, epochs=2, resume=run_dir / "last.npz")
    assert not link.is_symlink() and not link.exists()
    assert file_hashes(victim.parent) == before
    assert read_epoch(run_dir / "last.npz") == 2


def test_a_picture_written_where_a_link_stands_replaces_the_link(run_dir, victim, bounded):
    from minicaps import viz
    plots = run_dir / "plots"
    plots.mkdir()
    link = plant_link(plots, "curves.png", victim)
    before = file_hashes(victim.parent)
    with bounded(memory=1024 * MB, seconds=30):
        viz.render(["curves"], plots, metrics=run_dir / "metrics.jsonl", warn=None)
    assert file_hashes(victim.parent) == before
    assert not link.is_symlink() and link.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- a run stopped while it writes its first checkpoints --------------------------------------

@pytest.fixture
def fake_mnist(monkeypatch):
    data = synthetic_mnist(8, 4)
    monkeypatch.setattr("minicaps.data.mnist.load_mnist", lambda *a, **k: data)
    monkeypatch.setitem(PRESETS, "tiny", {"config": {"conv1_channels": 8, "primary_maps": 4,
                                                         "decoder_sizes": (16,)},
                                              "epochs": 1, "lr": 1e-3})
    return data


def test_ctrl_c_in_the_first_checkpoint_write_then_the_same_command_works(
        tmp_path, capsys, bounded, fake_mnist, monkeypatch):
    out = tmp_path / "run"
    argv = ["train", "--preset", "tiny", "--out", str(out), "--batch-size", "4",
            "--no-progress"]
    monkeypatch.setattr(writer.np, "savez", savez_stopping_at(1, KeyboardInterrupt()))
    with bounded(memory=1024 * MB, seconds=60):
        assert cli.main(argv) == 130
    err = capsys.readouterr().err
    assert "start the run again" in err, err
    assert not (out / "last.npz").exists()
    monkeypatch.undo()
    fake_mnist_again = synthetic_mnist(8, 4)
    monkeypatch.setattr("minicaps.data.mnist.load_mnist", lambda *a, **k: fake_mnist_again)
    monkeypatch.setitem(PRESETS, "tiny", {"config": {"conv1_channels": 8, "primary_maps": 4,
                                                         "decoder_sizes": (16,)},
                                              "epochs": 1, "lr": 1e-3})
    with bounded(memory=1024 * MB, seconds=60):
        code = cli.main(argv)                   # the same command, as the message says
    assert code == 0, capsys.readouterr().err
    assert read_epoch(out / "last.npz") == 1
    epochs = [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").open()]
    assert epochs == [1]                        # the stopped attempt's line went


def test_a_folder_whose_checkpoints_were_deleted_is_not_taken_for_leftovers(run_dir, bounded):
    """metrics.jsonl of several epochs and no checkpoint: a run someone kept the log of. A
    fresh run is refused, and the message offers no --resume of a file that is not there."""
    line = (run_dir / "metrics.jsonl").read_text()
    (run_dir / "metrics.jsonl").write_text(line + line.replace('"epoch": 1', '"epoch": 2'))
    (run_dir / "last.npz").unlink()
    (run_dir / "best.npz").unlink()
    before = file_hashes(run_dir)
    with bounded(memory=512 * MB, seconds=30):
        with pytest.raises(runfolder.RunFolderError, match="already holds a run") as refused:
            run_tiny(run_dir)
    assert "--resume" not in str(refused.value) and "--overwrite" in str(refused.value)
    assert file_hashes(run_dir) == before


@pytest.fixture
def scores(monkeypatch):
    """The test accuracy of epoch k is scores[k - 1]: evaluate's own numbers otherwise."""
    given, real = [0.9, 0.5, 0.4], minicaps.training.run.evaluate
    calls = []

    def evaluate(*args, **kw):
        result = real(*args, **kw)
        result["accuracy"] = given[len(calls)]
        calls.append(1)
        return result
    monkeypatch.setattr(minicaps.training.run, "evaluate", evaluate)
    return given


def test_a_best_npz_lost_to_ctrl_c_is_written_again_on_resume(tmp_path, bounded, scores,
                                                            monkeypatch):
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(writer.np, "savez", savez_stopping_at(2, KeyboardInterrupt()))
        with bounded(memory=512 * MB, seconds=30):
            with pytest.raises(KeyboardInterrupt):
                run_tiny(out, average=None)         # last.npz written, best.npz stopped
    assert (out / "last.npz").exists() and not (out / "best.npz").exists()
    assert not list(out.glob("*.tmp"))
    with bounded(memory=512 * MB, seconds=30):
        run_tiny(out, epochs=2, average=None, resume=out / "last.npz")
    best = load_checkpoint(out / "best.npz")        # epoch 1 (0.9) beats epoch 2 (0.5)
    assert best.epoch == 1 and best.extra["best_accuracy"] == scores[0]
    assert best.metrics["test_accuracy"] == scores[0]


def test_a_best_npz_left_behind_by_ctrl_c_catches_up_on_resume(tmp_path, bounded, scores,
                                                               monkeypatch):
    """Stopped while epoch 2, the best (0.9 after 0.5), went into best.npz: last.npz holds
    epoch 2, best.npz still epoch 1. Resumed, best.npz is epoch 2 again, not the 0.4 of 3."""
    out = tmp_path / "run"
    scores[:] = [0.5, 0.9, 0.4]
    with monkeypatch.context() as m:
        m.setattr(writer.np, "savez", savez_stopping_at(4, KeyboardInterrupt()))
        with bounded(memory=512 * MB, seconds=30):
            with pytest.raises(KeyboardInterrupt):
                run_tiny(out, epochs=2, average=None)
    assert read_epoch(out / "last.npz") == 2 and read_epoch(out / "best.npz") == 1
    with bounded(memory=512 * MB, seconds=30):
        run_tiny(out, epochs=3, average=None, resume=out / "last.npz")
    best = load_checkpoint(out / "best.npz")
    assert best.epoch == 2 and best.metrics["test_accuracy"] == 0.9


# --- a full disk ---------------------------------------------------------------------------------

def fake_disk(monkeypatch, free):
    import collections
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**12, 10**12 - free, free))


def test_a_full_disk_mid_run_names_the_file_the_need_and_the_intact_checkpoint(
        run_dir, bounded, monkeypatch):
    before = file_hashes(run_dir)
    last = run_dir / "last.npz"
    monkeypatch.setattr(writer.np, "savez", savez_stopping_at(
        1, OSError(errno.ENOSPC, "No space left on device")))
    with bounded(memory=512 * MB, seconds=30):
        with pytest.raises(OSError) as full:
            run_tiny(run_dir, epochs=2, resume=last)
    said = str(full.value)
    assert f"could not write {last}: the disk is full" in said
    assert "needs about" in said and "free" in said
    assert f"{last} is as it was: the previous checkpoint is intact" in said
    assert f"go on from epoch 1 with --resume {last}" in said
    assert "[Errno" not in said
    assert read_epoch(last) == 1 and file_hashes(run_dir)["last.npz"] == before["last.npz"]
    assert not list(run_dir.glob("*.tmp"))


def test_a_full_disk_while_logging_the_epoch_says_so_and_how_to_go_on(run_dir, bounded,
                                                                     monkeypatch):
    before = file_hashes(run_dir)

    real_open = runfolder.open_run_file

    def full_open(path, mode):
        if "a" in mode:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, mode)
    monkeypatch.setattr(runfolder, "open_run_file", full_open)
    with bounded(memory=512 * MB, seconds=30):
        with pytest.raises(OSError, match=r"could not add epoch 2's line to .*metrics\.jsonl: "
                                          r"the disk is full.*go on from epoch 1 with --resume"):
            run_tiny(run_dir, epochs=2, resume=run_dir / "last.npz")
    assert file_hashes(run_dir) == before


def test_a_full_disk_through_the_cli_is_one_line(tmp_path, capsys, bounded, fake_mnist,
                                                  monkeypatch):
    out = tmp_path / "run"
    monkeypatch.setattr(writer.np, "savez", savez_stopping_at(
        1, OSError(errno.ENOSPC, "No space left on device")))
    with bounded(memory=1024 * MB, seconds=60):
        code = cli.main(["train", "--preset", "tiny", "--out", str(out), "--batch-size", "4",
                         "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert f"could not write {out / 'last.npz'}: the disk is full" in err
    assert "start the run again" in err


def test_a_resume_needs_room_for_one_temp_copy_not_three_checkpoints(run_dir, bounded,
                                                                    monkeypatch):
    """last.npz and best.npz are there: each new one replaces its old one, so one copy
    more at a time is all the disk must hold (here 1.5 checkpoints free)."""
    size = (run_dir / "last.npz").stat().st_size
    fake_disk(monkeypatch, int(1.5 * size))
    with bounded(memory=512 * MB, seconds=30):
        run_tiny(run_dir, epochs=2, resume=run_dir / "last.npz")
    assert read_epoch(run_dir / "last.npz") == 2


def test_a_fresh_run_still_needs_room_for_three_checkpoints(tmp_path, run_dir, bounded,
                                                          monkeypatch):
    size = (run_dir / "last.npz").stat().st_size
    fake_disk(monkeypatch, int(1.5 * size))
    with bounded(memory=512 * MB, seconds=30):
        with pytest.raises(runfolder.RunFolderError, match="the checkpoints need about"):
            run_tiny(tmp_path / "fresh")
    assert not (tmp_path / "fresh" / "last.npz").exists()


# --- a resume measures on the test set the run began with -------------------------------------

@pytest.mark.parametrize("limit_test", [10, 5])
def test_a_resume_with_another_limit_test_is_refused(run_dir, bounded, limit_test):
    before = file_hashes(run_dir)
    with bounded(memory=512 * MB, seconds=30):
        with pytest.raises(ValueError, match=rf"limit_test={limit_test} \(checkpoint None\)"):
            run_tiny(run_dir, epochs=2, resume=run_dir / "last.npz", limit_test=limit_test)
    assert file_hashes(run_dir) == before


def test_a_best_npz_tied_by_the_resumed_epoch_is_left_as_it_is(tmp_path, bounded, scores):
    """Epoch 2 ties epoch 1 (0.9 and 0.9): a tie is no new best, so best.npz holds epoch 1,
    and resuming from epoch 2 leaves it so; it was not left behind by a stop."""
    out = tmp_path / "run"
    scores[:] = [0.9, 0.9, 0.4]
    with bounded(memory=512 * MB, seconds=30):
        run_tiny(out, epochs=2, average=None)
    assert read_epoch(out / "best.npz") == 1
    before = file_hashes(out)["best.npz"]
    with bounded(memory=512 * MB, seconds=30):
        run_tiny(out, epochs=3, average=None, resume=out / "last.npz")
    assert read_epoch(out / "best.npz") == 1
    assert file_hashes(out)["best.npz"] == before
