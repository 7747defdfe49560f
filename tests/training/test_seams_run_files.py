"""The files of a run folder (.minicaps.lock, metrics.jsonl, last.npz, best.npz) when
something else stands in their place: a hard link to a file outside the folder, a named
pipe, a device, a folder, or a link swapped in while the run trains. Each is refused, by
name and kind, before anything is written through it or read from it; the files outside
are checked by their SHA-256, the waits by a time limit and the reads by a memory cap.
"""
import os

import pytest

import minicaps.training.run
from minicaps.training import runfolder

from hostile_cases import one_line_error
from limits import file_hashes
from tiny_runs import VICTIM_TEXT, run_tiny

MB = 1 << 20
LOCK = runfolder.LOCK_FILE


def hard_link(folder, name, target):
    path = folder / name
    if path.exists():
        path.unlink()
    os.link(target, path)
    return path


def pipe(folder, name):
    path = folder / name
    if path.exists():
        path.unlink()
    os.mkfifo(path)
    return path


def zero_device(folder, name):
    """A character device like /dev/zero at folder/name (endless bytes); skip where
    mknod is not allowed."""
    import stat
    path = folder / name
    if path.exists():
        path.unlink()
    try:
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 5))
    except (PermissionError, OSError) as e:
        pytest.skip(f"cannot make a device file here ({e})")
    return path


def train_argv(out, *more):
    return ["train", "--preset", "quick", "--epochs", "1", "--out", str(out), "--no-progress",
            *more]


# --- hard links: what is written there would land in a file outside the folder --------------

@pytest.mark.parametrize("name", [LOCK, "metrics.jsonl"])
def test_a_fresh_run_refuses_a_hard_link_in_place_of_its_file(tmp_path, victim, bounded, name):
    out = tmp_path / "c1a"
    out.mkdir()
    hard_link(out, name, victim)
    with bounded(memory=512 * MB, seconds=30):
        with pytest.raises(runfolder.RunFolderError,
                           match=rf"{out / name} is a hard link to another file.*--out"):
            run_tiny(out)
    assert victim.read_bytes() == VICTIM_TEXT


def test_the_lock_refuses_a_hard_link_planted_after_the_first_check(tmp_path, victim, bounded,
                                                                    monkeypatch):
    out = tmp_path / "c1a"
    out.mkdir()
    real = runfolder.check_room

    def then_plant(folder, overwrite=False):
        real(folder, overwrite)
        hard_link(out, LOCK, victim)
    monkeypatch.setattr(runfolder, "check_room", then_plant)
    with bounded(memory=512 * MB, seconds=30):
        with pytest.raises(runfolder.RunFolderError, match="hard link to another file"):
            run_tiny(out)
    assert victim.read_bytes() == VICTIM_TEXT


@pytest.mark.parametrize("name", [LOCK, "metrics.jsonl", "best.npz"])
def test_a_resume_refuses_a_hard_link_in_place_of_its_file(run_dir, victim, bounded, name):
    hard_link(run_dir, name, victim)
    before = file_hashes(victim.parent)
    with bounded(memory=512 * MB, seconds=30):
        with pytest.raises(runfolder.RunFolderError,
                           match=rf"{run_dir / name} is a hard link to another file"):
            run_tiny(run_dir, epochs=2, resume=run_dir / "last.npz")
    assert file_hashes(victim.parent) == before


# --- a link swapped in while the run trains ---------------------------------------------------

@pytest.mark.parametrize("swap", ["symlink", "hard link"])
def test_metrics_swapped_for_a_link_between_epochs_is_not_followed(tmp_path, victim, bounded,
                                                                   swap):
    out = tmp_path / "c1d"

    def after_an_epoch(line):
        if line.startswith("epoch 1/"):
            metrics = out / "metrics.jsonl"
            metrics.unlink()
            if swap == "symlink":
                metrics.symlink_to(victim)
            else:
                os.link(victim, metrics)
    with bounded(memory=512 * MB, seconds=60):
        with pytest.raises(runfolder.RunFolderError, match=rf"{out / 'metrics.jsonl'} is a"):
            run_tiny(out, epochs=3, log=after_an_epoch)
    assert victim.read_bytes() == VICTIM_TEXT


# --- a named pipe or a device: opening or reading it would wait, or never end -----------------

@pytest.mark.parametrize("make, kind", [(pipe, "a named pipe"),
                                        (zero_device, "a character device")])
def test_a_fresh_run_refuses_metrics_that_are_no_file(tmp_path, bounded, make, kind):
    out = tmp_path / "rf"
    out.mkdir()
    path = make(out, "metrics.jsonl")
    with bounded(memory=256 * MB, seconds=20):
        with pytest.raises(runfolder.RunFolderError, match=rf"{path} is {kind}.*--out"):
            run_tiny(out)


@pytest.mark.parametrize("make, kind", [(pipe, "a named pipe"),
                                        (zero_device, "a character device")])
def test_a_resume_refuses_metrics_that_are_no_file(run_dir, bounded, make, kind):
    path = make(run_dir, "metrics.jsonl")
    with bounded(memory=256 * MB, seconds=20):
        with pytest.raises(runfolder.RunFolderError, match=rf"{path} is {kind}"):
            run_tiny(run_dir, epochs=2, resume=run_dir / "last.npz")


@pytest.mark.parametrize("make, kind", [(pipe, "a named pipe"),
                                        (zero_device, "a character device")])
def test_the_metrics_readers_look_before_they_read(tmp_path, bounded, make, kind):
    """Past the checks of claim (the file swapped in after them), the readers themselves
    neither wait on a pipe nor read a device without end."""
    path = make(tmp_path, "metrics.jsonl")
    with bounded(memory=256 * MB, seconds=20):
        with pytest.raises(runfolder.RunFolderError, match=kind):
            runfolder._leftover_metrics(tmp_path)
        with pytest.raises(runfolder.RunFolderError, match=kind):
            minicaps.training.resume.truncate_metrics(path, 1)


# --- through the CLI: one line naming the file and what it is ---------------------------------

@pytest.mark.parametrize("name, make, kind", [
    (LOCK, pipe, "a named pipe"),
    (LOCK, zero_device, "a character device"),
    (LOCK, lambda out, name: (out / name).mkdir(), "a folder"),
    ("metrics.jsonl", lambda out, name: (out / name).mkdir(), "a folder"),
    ("metrics.jsonl", pipe, "a named pipe"),
])
def test_the_cli_says_in_one_line_what_stands_in_place_of_a_run_file(
        tmp_path, capsys, bounded, monkeypatch, name, make, kind):
    monkeypatch.setattr(minicaps.training.run, "load_data", pytest.fail)
    out = tmp_path / "rf"
    out.mkdir()
    make(out, name)
    err = one_line_error(capsys, train_argv(out), bounded, memory=256 * MB, seconds=20)
    assert f"{out / name} is {kind}" in err and "--out" in err and "Errno" not in err


def test_overwrite_with_a_folder_for_last_npz_names_it(run_dir, capsys, bounded, monkeypatch):
    monkeypatch.setattr(minicaps.training.run, "load_data", pytest.fail)
    (run_dir / "last.npz").unlink()
    (run_dir / "last.npz").mkdir()
    (run_dir / "last.npz" / "kept").write_bytes(b"the user's")
    err = one_line_error(capsys, train_argv(run_dir, "--overwrite"), bounded,
                         memory=256 * MB, seconds=20)
    assert f"{run_dir / 'last.npz'} is a folder" in err and "Errno" not in err
    assert (run_dir / "last.npz" / "kept").read_bytes() == b"the user's"


def test_a_run_still_writes_and_truncates_its_own_metrics(run_dir, bounded):
    """The checks leave the ordinary case alone: a resume drops the lines after its
    checkpoint's epoch and appends its own."""
    metrics = run_dir / "metrics.jsonl"
    with metrics.open("a") as f:
        f.write('{"epoch": 7}\n{"torn')
    with bounded(memory=512 * MB, seconds=60):
        run_tiny(run_dir, epochs=2, resume=run_dir / "last.npz")
    epochs = [line.split(",")[0] for line in metrics.read_text().splitlines()]
    assert epochs == ['{"epoch": 1', '{"epoch": 2']
    assert not (run_dir / LOCK).exists()


# --- a run folder swapped for a link while the run writes -------------------------------------

def swap_for_link(folder, target):
    """Move ``folder`` aside (to FOLDER.moved) and put a link to ``target`` in its place."""
    moved = folder.with_name(folder.name + ".moved")
    os.rename(folder, moved)
    os.symlink(target, folder)
    return moved


def test_a_write_into_a_folder_swapped_for_a_link_stays_in_the_folder_it_opened(tmp_path):
    """The temp file is made, renamed and removed by the folder's descriptor: the write
    lands in the folder as it was opened (moved aside), never in the link's target."""
    from minicaps.io.writer import replace_file
    run, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    run.mkdir()
    elsewhere.mkdir()
    (elsewhere / "last.npz").write_bytes(b"someone else's")
    before = file_hashes(elsewhere)

    def swapped_then_written(f):
        swap_for_link(run, elsewhere)
        f.write(b"the run's checkpoint")
    replace_file(run / "last.npz", swapped_then_written, archive=True)
    assert file_hashes(elsewhere) == before
    moved = tmp_path / "run.moved"
    assert (moved / "last.npz").read_bytes() == b"the run's checkpoint"
    assert [p.name for p in moved.iterdir()] == ["last.npz"]          # no temp file left


def test_a_failed_write_into_a_swapped_folder_leaves_no_temp_file(tmp_path):
    from minicaps.io.writer import replace_file
    run, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    run.mkdir()
    elsewhere.mkdir()

    def swapped_then_stopped(f):
        swap_for_link(run, elsewhere)
        f.write(b"half")
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        replace_file(run / "last.npz", swapped_then_stopped, archive=True)
    assert list((tmp_path / "run.moved").iterdir()) == [] and list(elsewhere.iterdir()) == []


def test_releasing_the_lock_of_a_swapped_folder_removes_no_other_file(tmp_path):
    """The lock is removed only when the name still leads to the lock this run holds."""
    run, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    run.mkdir()
    elsewhere.mkdir()
    (elsewhere / ".minicaps.lock").write_bytes(VICTIM_TEXT)
    lock = runfolder.claim(run, fresh=True, log=lambda line: None)
    swap_for_link(run, elsewhere)
    lock.release()
    assert (elsewhere / ".minicaps.lock").read_bytes() == VICTIM_TEXT


def test_a_run_folder_swapped_for_a_link_mid_run_stops_the_run(tmp_path):
    """After epoch 1 the folder is moved aside and a link to another folder holding files of
    the same names put in its place: epoch 2 writes nothing there and stops, naming it."""
    out, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    elsewhere.mkdir()
    for name in ("last.npz", "best.npz", "metrics.jsonl"):
        (elsewhere / name).write_bytes(VICTIM_TEXT)
    before = file_hashes(elsewhere)

    def swap_after_epoch_1(line):
        if line.startswith("epoch 1/"):
            swap_for_link(out, elsewhere)
    with pytest.raises(runfolder.RunFolderError, match=r"was moved or replaced while the run"):
        run_tiny(out, epochs=2, log=swap_after_epoch_1)
    assert file_hashes(elsewhere) == before
    moved = tmp_path / "run.moved"
    assert {p.name for p in moved.iterdir()} >= {"last.npz", "best.npz", "metrics.jsonl"}


def test_a_folder_swapped_for_a_link_to_a_hard_link_of_its_lock_still_stops_the_run(tmp_path):
    """The lock's name may still lead to the lock held (a hard link of it put in the other
    folder): the folder itself is not the one claimed, so the run stops all the same."""
    out, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    elsewhere.mkdir()
    for name in ("last.npz", "best.npz", "metrics.jsonl"):
        (elsewhere / name).write_bytes(VICTIM_TEXT)

    def swap_after_epoch_1(line):
        if line.startswith("epoch 1/"):
            moved = swap_for_link(out, elsewhere)
            os.link(moved / ".minicaps.lock", elsewhere / ".minicaps.lock")
    before = {n: (elsewhere / n).read_bytes() for n in ("last.npz", "best.npz", "metrics.jsonl")}
    with pytest.raises(runfolder.RunFolderError, match=r"was moved or replaced while the run"):
        run_tiny(out, epochs=2, log=swap_after_epoch_1)
    assert {n: (elsewhere / n).read_bytes() for n in before} == before
