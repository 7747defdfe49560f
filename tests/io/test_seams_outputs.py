"""Hostile cases at the files the commands write outside a run: export-weights OUT,
predict --save-reconstruction, the pictures of plot --out. Each goes through one writer
(writer.replace_file): the target must be a regular file (or nothing yet), never one
of the command's own inputs nor a checkpoint, and it is replaced whole or not at all."""
import errno
import os
import stat

import numpy as np
import pytest

from hostile_cases import one_line_error
from limits import file_hashes
from minicaps.io import writer
from minicaps.io.weights import export_weights


def _digit(path):
    from PIL import Image
    pixels = np.zeros((28, 28), np.uint8)
    pixels[6:22, 12:16] = 255
    Image.fromarray(pixels).save(path)
    return path


def _device(path):
    """A character device node of our own at ``path`` (root only), else skip."""
    try:
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3))
    except (PermissionError, OSError) as e:
        pytest.skip(f"cannot make a device node here: {e}")
    return path


# --- predict --save-reconstruction -------------------------------------------------------------

def test_save_reconstruction_replaces_a_link_not_the_file_it_points_to(run_dir, tmp_path,
                                                                       capsys, bounded):
    from minicaps import cli
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "rec").write_bytes(b"the user's own file")
    before = file_hashes(outside)
    (tmp_path / "p2").mkdir()
    os.symlink(outside / "rec", tmp_path / "p2" / "rec.png")
    digit = _digit(tmp_path / "digit.png")
    with bounded(seconds=60):
        code = cli.main(["predict", str(run_dir / "best.npz"), str(digit),
                         "--save-reconstruction", str(tmp_path / "p2" / "rec.png")])
    assert code == 0, capsys.readouterr().err
    assert file_hashes(outside) == before
    written = tmp_path / "p2" / "rec.png"
    assert not written.is_symlink() and written.read_bytes()[:4] == b"\x89PNG"


def test_save_reconstruction_never_replaces_its_input_picture(run_dir, tmp_path, capsys,
                                                              bounded):
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    digit = _digit(pictures / "victim_digit.png")
    before = file_hashes(pictures)
    err = one_line_error(capsys, ["predict", str(run_dir / "best.npz"), str(digit),
                                  "--save-reconstruction", str(digit)], bounded)
    assert "victim_digit.png" in err and "reads" in err
    assert file_hashes(pictures) == before


@pytest.mark.parametrize("name", ["other.npz", "looks_like_a_picture.png"])
def test_save_reconstruction_never_turns_a_checkpoint_into_a_picture(run_dir, tmp_path, capsys,
                                                                     bounded, name):
    import shutil
    keep = tmp_path / "keep"
    keep.mkdir()
    shutil.copy(run_dir / "last.npz", keep / name)
    before = file_hashes(keep)
    digit = _digit(tmp_path / "digit.png")
    err = one_line_error(capsys, ["predict", str(run_dir / "best.npz"), str(digit),
                                  "--save-reconstruction", str(keep / name)], bounded)
    assert name in err and "another name" in err
    assert file_hashes(keep) == before


def test_save_reconstruction_on_a_full_disk_keeps_the_old_file(run_dir, tmp_path, capsys,
                                                               bounded, monkeypatch):
    from PIL import Image
    digit = _digit(tmp_path / "digit.png")
    Image.init()

    def full(im, fp, filename):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setitem(Image.SAVE, "PNG", full)
    out = tmp_path / "out"
    out.mkdir()
    (out / "rec.png").write_bytes(b"\x89PNG\r\n\x1a\n the previous reconstruction")
    before = file_hashes(out)
    err = one_line_error(capsys, ["predict", str(run_dir / "best.npz"), str(digit),
                                  "--save-reconstruction", str(out / "rec.png")], bounded)
    assert "disk full" in err and "rec.png" in err and ".tmp" not in err
    assert file_hashes(out) == before and sorted(os.listdir(out)) == ["rec.png"]


# --- export-weights ----------------------------------------------------------------------------

def test_export_weights_never_writes_over_its_own_checkpoint(run_dir, capsys, bounded):
    before = file_hashes(run_dir)
    err = one_line_error(capsys, ["export-weights", str(run_dir / "best.npz"),
                                  str(run_dir / "best.npz")], bounded)
    assert "best.npz" in err and "wrote" not in err
    assert file_hashes(run_dir) == before


def test_export_weights_never_replaces_another_runs_checkpoint(run_dir, tmp_path, capsys,
                                                               bounded):
    import shutil
    other = tmp_path / "ew"
    other.mkdir()
    shutil.copy(run_dir / "last.npz", other / "last.npz")
    before = file_hashes(other)
    err = one_line_error(capsys, ["export-weights", str(run_dir / "best.npz"),
                                  str(other / "last.npz")], bounded)
    assert "last.npz" in err and "checkpoint" in err and "another name" in err
    assert file_hashes(other) == before


def test_export_weights_may_replace_a_weights_file(run_dir, tmp_path):
    first = export_weights(run_dir / "best.npz", tmp_path / "w.npz", dtype="float16")
    again = export_weights(run_dir / "best.npz", first, dtype="float32")
    assert again.stat().st_size > 0 and stat.S_ISREG(os.lstat(again).st_mode)


def test_export_weights_leaves_a_device_node_a_device(run_dir, tmp_path, capsys, bounded):
    node = _device(tmp_path / "mynull")
    err = one_line_error(capsys, ["export-weights", str(run_dir / "best.npz"), str(node)],
                         bounded)
    assert "mynull" in err and "character device" in err
    assert stat.S_ISCHR(os.lstat(node).st_mode)


def test_export_weights_leaves_a_named_pipe_a_pipe(run_dir, tmp_path, capsys, bounded):
    pipe = tmp_path / "pipe.npz"
    os.mkfifo(pipe)
    err = one_line_error(capsys, ["export-weights", str(run_dir / "best.npz"), str(pipe)],
                         bounded, seconds=30)
    assert "pipe.npz" in err and "named pipe" in err
    assert stat.S_ISFIFO(os.lstat(pipe).st_mode)


def test_export_weights_into_a_read_only_folder_names_the_target(run_dir, tmp_path, capsys,
                                                                 bounded, monkeypatch):
    def denied(folder, name, write):  # root writes anywhere: deny as a read-only folder would
        raise PermissionError(errno.EACCES, "Permission denied", f".{name}.abc123.tmp")
    monkeypatch.setattr(writer, "_write_temp", denied)
    err = one_line_error(capsys, ["export-weights", str(run_dir / "best.npz"),
                                  str(tmp_path / "w.npz")], bounded)
    assert "w.npz" in err and "permission denied" in err.lower() and ".tmp" not in err
    assert "[Errno" not in err


# --- plot --out and the shared writer ----------------------------------------------------------

def test_plot_out_a_named_pipe_says_out_must_be_a_folder(run_dir, tmp_path, capsys, bounded):
    pipe = tmp_path / "fifo"
    os.mkfifo(pipe)
    err = one_line_error(capsys, ["plot", str(run_dir / "best.npz"), "--kind", "curves",
                                  "--out", str(pipe), "--no-progress"], bounded, seconds=30)
    assert "fifo" in err and "--out" in err and "folder" in err and "[Errno" not in err
    assert stat.S_ISFIFO(os.lstat(pipe).st_mode)


def test_plot_out_a_device_says_out_must_be_a_folder(run_dir, tmp_path, capsys, bounded):
    node = _device(tmp_path / "mynull")
    err = one_line_error(capsys, ["plot", str(run_dir / "best.npz"), "--kind", "curves",
                                  "--out", str(node), "--no-progress"], bounded)
    assert "mynull" in err and "folder" in err and "[Errno" not in err
    assert stat.S_ISCHR(os.lstat(node).st_mode)


def test_plot_into_a_read_only_folder_names_the_picture(run_dir, tmp_path, capsys, bounded,
                                                        monkeypatch):
    def denied(folder, name, write):
        raise PermissionError(errno.EACCES, "Permission denied", f".{name}.xyz.tmp")
    monkeypatch.setattr(writer, "_write_temp", denied)
    err = one_line_error(capsys, ["plot", str(run_dir / "best.npz"), "--kind", "curves",
                                  "--out", str(tmp_path / "pics"), "--no-progress"], bounded)
    assert "curves.png" in err and "permission denied" in err.lower() and ".tmp" not in err


def test_a_full_disk_names_the_file_and_keeps_the_old_one(tmp_path):
    target = tmp_path / "curves.png"
    target.write_bytes(b"old picture")

    def full(f):
        f.write(b"half a pict")
        raise OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(OSError, match=r"disk full writing .*curves\.png") as caught:
        writer.replace_file(target, full)
    assert caught.value.errno == errno.ENOSPC and ".tmp" not in str(caught.value)
    assert target.read_bytes() == b"old picture" and os.listdir(tmp_path) == ["curves.png"]


def test_the_writer_refuses_a_folder_in_the_targets_place(tmp_path):
    (tmp_path / "robustness.json").mkdir()
    with pytest.raises(ValueError, match=r"robustness\.json.*a folder"):
        writer.replace_file(tmp_path / "robustness.json", lambda f: f.write(b"{}"))
    assert (tmp_path / "robustness.json").is_dir()
