"""Hostile cases at the command line's edges: what --save-reconstruction may replace, a
picture named -w.png given after --, --out naming a file, an extra positional, and the
operating system's errors (a file in a path's folder place, a name or path too long,
permission denied) said as one plain line, and Pillow's warnings kept off the screen."""
import errno
import os
import struct

import numpy as np
import pytest

from hostile_cases import one_line_error
from limits import file_hashes
from minicaps import cli
from minicaps.cli import evaluate as evaluate_command
from minicaps.io.files import output_folder


def _digit(path):
    from PIL import Image
    pixels = np.zeros((28, 28), np.uint8)
    pixels[6:22, 12:16] = 255
    Image.fromarray(pixels).save(path, format="PNG")
    return path


# --- predict --save-reconstruction: only a PNG, over nothing but a PNG (F5) --------------------

@pytest.mark.parametrize("name", ["myscript.py", "hl.txt", "new_file.py"])
def test_save_reconstruction_refuses_a_name_not_ending_png(run_dir, tmp_path, capsys, bounded,
                                                           name):
    keep = tmp_path / "keep"
    keep.mkdir()
    if name != "new_file.py":
        (keep / name).write_text("print('the user's own source')\n")
    before = file_hashes(keep)
    digit = _digit(tmp_path / "digit.png")
    err = one_line_error(capsys, ["predict", str(run_dir / "best.npz"), str(digit),
                                  "--save-reconstruction", str(keep / name)], bounded)
    assert name in err and ".png" in err and "--save-reconstruction" in err
    assert file_hashes(keep) == before


def test_save_reconstruction_refuses_a_png_name_holding_no_png(run_dir, tmp_path, capsys,
                                                               bounded):
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "notes.png").write_text("not a picture at all\n")
    before = file_hashes(keep)
    digit = _digit(tmp_path / "digit.png")
    err = one_line_error(capsys, ["predict", str(run_dir / "best.npz"), str(digit),
                                  "--save-reconstruction", str(keep / "notes.png")], bounded)
    assert "notes.png" in err and "not a PNG" in err
    assert file_hashes(keep) == before


def test_save_reconstruction_replaces_an_older_png(run_dir, tmp_path, capsys):
    digit = _digit(tmp_path / "digit.png")
    old = _digit(tmp_path / "rec.PNG")
    before = old.read_bytes()
    assert cli.main(["predict", str(run_dir / "best.npz"), str(digit),
                     "--save-reconstruction", str(old)]) == 0, capsys.readouterr().err
    assert old.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and old.read_bytes() != before


# --- everything after -- is a positional (F7) --------------------------------------------------

@pytest.mark.parametrize("argv", [["--pretrained", "--", "-w.png"],
                                  ["--", "CKPT", "-w.png"],
                                  ["CKPT", "--", "-w.png"],
                                  ["CKPT", "--", "--help"]])
def test_predict_reads_a_picture_named_like_an_option_after_double_dash(run_dir, tmp_path,
                                                                       monkeypatch, capsys, argv):
    monkeypatch.chdir(tmp_path)
    name = argv[-1]
    _digit(tmp_path / name)
    argv = [str(run_dir / "best.npz") if a == "CKPT" else a for a in argv]
    assert cli.main(["predict", *argv]) == 0, capsys.readouterr().err
    assert capsys.readouterr().out.startswith(f"{name}: predicted")


def test_predict_option_still_wants_its_value_before_double_dash(run_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["predict", str(run_dir / "best.npz"), "--save-reconstruction", "--", "x.png"])
    assert stop.value.code == 2
    assert "--save-reconstruction" in capsys.readouterr().err


# --- an extra positional is the subcommand's error ---------------------------------------------

def test_extra_positional_is_reported_under_the_subcommand(capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["evaluate", "a.npz", "b.npz"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1
    assert err.startswith("minicaps evaluate: error:") and "b.npz" in err
    assert "minicaps evaluate --help" in err


# --- --out naming a file -----------------------------------------------------------------------

def test_out_naming_a_file_says_it_is_a_file_and_must_be_a_folder(tmp_path):
    digit = _digit(tmp_path / "digit.png")
    with pytest.raises(ValueError) as refused:
        output_folder(digit)
    said = str(refused.value)
    assert "digit.png is a file" in said and "must be a folder" in said
    assert "not a regular file" not in said


# --- the operating system's errors, said plainly -----------------------------------------------

def test_a_file_in_a_folders_place_is_named(run_dir, capsys, bounded):
    before = file_hashes(run_dir)
    err = one_line_error(capsys, ["export-weights", str(run_dir / "best.npz"),
                                  str(run_dir / "best.npz" / "x.npz")], bounded)
    assert "[Errno" not in err and "best.npz is a file" in err and "folder" in err
    assert file_hashes(run_dir) == before


LONG_NAME = "a" * 300


@pytest.mark.parametrize("where", ["export-weights", "predict", "save-reconstruction",
                                   "train --out", "long path"])
def test_a_name_or_path_too_long_gives_its_length_and_the_limit(run_dir, tmp_path, capsys,
                                                                bounded, where):
    digit = _digit(tmp_path / "digit.png")
    ckpt = str(run_dir / "best.npz")
    long_path = str(tmp_path / "/".join(["b" * 200] * 25)) + ".npz"   # > PATH_MAX (4096)
    argv = {"export-weights": ["export-weights", ckpt, str(tmp_path / LONG_NAME) + ".npz"],
            "predict": ["predict", ckpt, str(tmp_path / LONG_NAME) + ".png"],
            "save-reconstruction": ["predict", ckpt, str(digit), "--save-reconstruction",
                                    str(tmp_path / LONG_NAME) + ".png"],
            "train --out": ["train", "--out", str(tmp_path / LONG_NAME), "--epochs", "1"],
            "long path": ["export-weights", ckpt, long_path]}[where]
    err = one_line_error(capsys, argv, bounded)
    assert "[Errno" not in err and "too long" in err, err
    if where == "long path":
        assert f"({len(long_path)} bytes" in err and "4096" in err
    else:
        assert "300" in err or "304" in err, err
        assert "255" in err


def test_permission_denied_is_said_plainly(run_dir, tmp_path, capsys, bounded, monkeypatch):
    """Root reads a mode-600 file of another user anyway, so the refusal is staged."""
    victim = tmp_path / "mnist" / "train-images-idx3-ubyte"

    def refused(args):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(victim))
    monkeypatch.setattr(evaluate_command, "load_checkpoint", refused)
    err = one_line_error(capsys, ["evaluate", str(run_dir / "best.npz")], bounded)
    assert "[Errno" not in err and "permission denied" in err.lower()
    assert str(victim) in err and "chmod" in err


# --- Pillow's warnings stay off the screen -----------------------------------------------------

def test_a_tiff_with_corrupt_exif_gives_one_line_and_no_warning(tmp_path, capsys, bounded,
                                                                recwarn):
    tiff = tmp_path / "hdr_tif.tif"         # one IFD entry announced, 10 of its 12 bytes there
    tiff.write_bytes(b"II*\x00\x08\x00\x00\x00" + struct.pack("<H", 1)
                     + b"\x00\x01\x03\x00\x01\x00\x00\x00\x10\x00")
    assert len(tiff.read_bytes()) == 20
    err = one_line_error(capsys, ["predict", "--pretrained", str(tiff)], bounded)
    assert "hdr_tif.tif" in err and "Warning" not in err
    assert [str(w.message) for w in recwarn] == []
