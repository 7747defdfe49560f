"""Seams of a checkpoint's settings found by a hostile pass: values out of the range train
writes (crop, shift, limit_test, val_size), a settings.model that disagrees with the file's
model, and a metrics.jsonl line nested too deep to decode."""
import numpy as np
import pytest

from minicaps.io.checkpoint import load_checkpoint
from minicaps.viz import read_metrics

from hostile_cases import one_line_error, rewrite_meta

MB = 1 << 20


def set_setting(name, value):
    def change(meta):
        meta.setdefault("extra", {}).setdefault("settings", {})[name] = value
    return change


BAD = {"crop huge": ("crop", 10 ** 9), "crop bool": ("crop", True),
       "shift huge": ("shift", 10 ** 9), "limit_test huge": ("limit_test", 10 ** 40),
       "limit_test zero": ("limit_test", 0), "val_size negative": ("val_size", -1),
       "val_size huge": ("val_size", 2 ** 31), "model cnn": ("model", "cnn")}


@pytest.mark.parametrize("name, value", BAD.values(), ids=BAD)
def test_a_setting_out_of_range_is_refused_at_load_naming_file_and_field(run_dir, name,
                                                                         value):
    path = run_dir / "last.npz"
    rewrite_meta(path, set_setting(name, value))
    with pytest.raises(ValueError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message and f"extra.settings.{name}" in message, message
    assert "\n" not in message


@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_a_huge_crop_is_one_line_naming_the_file(run_dir, capsys, bounded, command):
    path = run_dir / "best.npz"
    rewrite_meta(path, set_setting("crop", 10 ** 9))
    argv = [command, str(path)] + (["--no-progress"] if command == "evaluate" else
                                   [str(run_dir / "nothing.png")])
    err = one_line_error(capsys, argv, bounded)
    assert f"{path}" in err and "extra.settings.crop" in err, err


def test_a_model_disagreement_names_both(run_dir):
    path = run_dir / "last.npz"
    rewrite_meta(path, set_setting("model", "cnn"))
    with pytest.raises(ValueError, match="'cnn'.*'capsnet'|'capsnet'.*'cnn'"):
        load_checkpoint(path)


@pytest.mark.parametrize("name, value", [("crop", 10), ("crop", 1), ("shift", 10),
                                         ("limit_test", 2 ** 31 - 1), ("val_size", 0),
                                         ("model", "capsnet")])
def test_settings_in_range_still_load(run_dir, name, value):     # the tiny run: 10x10
    path = run_dir / "last.npz"
    rewrite_meta(path, set_setting(name, value))
    load_checkpoint(path)


def test_a_checkpoint_without_settings_still_loads(run_dir):
    path = run_dir / "last.npz"
    rewrite_meta(path, lambda meta: meta.update(extra=None))
    assert load_checkpoint(path).extra == {}


def test_a_too_deeply_nested_metrics_line_is_skipped_naming_it(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"epoch": 1, "test_accuracy": 0.5}\n' + "[" * 100000 + "]" * 100000
                       + "\n")
    warned = []
    rows = read_metrics(metrics, warn=warned.append)
    assert [r["epoch"] for r in rows] == [1]
    assert len(warned) == 1 and f"{metrics}, line 2" in warned[0], warned


def test_a_checkpoint_without_settings_cannot_be_resumed(run_dir):
    """Nothing in it says how the run trained, so nothing could check a resume: refused,
    and the folder left as it was."""
    from tiny_runs import run_tiny
    from limits import file_hashes
    path = run_dir / "last.npz"
    rewrite_meta(path, lambda meta: meta.update(extra=None))
    before = file_hashes(run_dir)
    with pytest.raises(ValueError, match=r"last\.npz keeps no training settings"):
        run_tiny(run_dir, epochs=2, resume=path)
    assert file_hashes(run_dir) == before


@pytest.mark.parametrize("model", [["capsnet"], {"a": 1}])
def test_a_model_tag_that_is_no_name_is_one_line(run_dir, capsys, bounded, model):
    """A list or a dict where the settings name the network: refused like any other bad
    field, not a TypeError from looking it up."""
    path = run_dir / "last.npz"
    rewrite_meta(path, set_setting("model", model))
    err = one_line_error(capsys, ["evaluate", str(path), "--no-progress"], bounded)
    assert "extra.settings.model" in err and str(path) in err


@pytest.mark.parametrize("name, value", [
    ("dataset", None), ("lr", None), ("batch_size", None), ("seed", None), ("dtype", None),
    ("model", None), ("lr_decay", {}), ("lr_decay", 1.5), ("decay_steps", 10 ** 400),
    ("limit_train", {}), ("n_test", [100]), ("n_train", 10 ** 30), ("dtype", ["float32"]),
])
@pytest.mark.parametrize("command", ["evaluate", "predict", "export-weights"])
def test_damaged_settings_are_one_line_in_every_command(run_dir, tmp_path, capsys, bounded,
                                                        name, value, command):
    """A value train never writes (null where it always writes one, a dict, a count no
    int32 holds) is damage, said alike by every command, naming the file and the field."""
    from PIL import Image
    path = run_dir / "last.npz"
    rewrite_meta(path, set_setting(name, value))
    picture = tmp_path / "p.png"
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(picture)
    argv = {"evaluate": ["evaluate", str(path), "--no-progress"],
            "predict": ["predict", str(path), str(picture)],
            "export-weights": ["export-weights", str(path), str(tmp_path / "w.npz")]}[command]
    err = one_line_error(capsys, argv, bounded)
    assert f"extra.settings.{name}" in err and str(path) in err, err
    assert not (tmp_path / "w.npz").exists()
