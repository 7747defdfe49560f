"""The metadata of checkpoints and weights files, as evaluate, predict, plot and compare
read it: a field of the wrong type or shape is one line naming the file and the field,
never a traceback; two networks trained on other classes are not scored on one set of
labels; the shipped weights are checked against their SHA-256.

Every case runs under ``bounded`` (tests/limits.py) and checks that the files it was
given are unchanged (their SHA-256).
"""
import hashlib
import shutil

import numpy as np
import pytest

from minicaps import cli
from minicaps.io import weights as pretrained
from minicaps.io.checkpoint import load_checkpoint
from minicaps.data.dataset import Dataset
from minicaps.data.registry import MNIST_CLASSES
from minicaps.gradcheck import tiny_config
from minicaps.io.weights import export_weights, load_pretrained
from minicaps.training.run import train

from limits import file_hashes
from synthetic import synthetic_mnist
from hostile_cases import one_line_error, rewrite_meta

MB = 1 << 20
DIGITS = synthetic_mnist(16, 8)
LETTERS = tuple("abcdefghij")
needs_shipped = pytest.mark.skipif(not pretrained.SHIPPED.is_file(),
                                   reason="the shipped weights file is not in this checkout")


def tiny_run(out, classes, name):
    """A 1-epoch run of a tiny CapsNet on 28x28 synthetic digits named ``classes``."""
    config = tiny_config(input_shape=(28, 28, 1), num_classes=10)
    train(config, epochs=1, out_dir=out, batch_size=8, lr=0.01, shift=0, progress=False,
          data=Dataset(*DIGITS, classes=classes, name=name), log=lambda line: None)
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A run on digits ("mnist"), one on letters, and a weights file of the first."""
    root = tmp_path_factory.mktemp("runs")
    digits = tiny_run(root / "digits", MNIST_CLASSES, "mnist")
    letters = tiny_run(root / "letters", LETTERS, "letters")
    unnamed = tiny_run(root / "unnamed", (), "shapes")        # classes not known
    export_weights(digits / "last.npz", root / "weights.npz")
    return {"checkpoint": digits / "last.npz", "letters": letters / "last.npz",
            "unnamed": unnamed / "last.npz", "weights": root / "weights.npz"}


@pytest.fixture
def fake_mnist(monkeypatch):
    monkeypatch.setattr("minicaps.data.mnist.load_mnist", lambda *a, **k: DIGITS)


@pytest.fixture
def picture(tmp_path):
    from PIL import Image
    path = tmp_path / "picture" / "seven.png"
    path.parent.mkdir()
    Image.fromarray(DIGITS[2][0]).save(path)
    return path


def damaged_copy(runs, kind, change, folder):
    """A copy of the run's ``kind`` file ("checkpoint" or "weights") in its own folder,
    its metadata changed by ``change``."""
    folder.mkdir()
    path = folder / f"{kind}.npz"
    shutil.copy(runs[kind], path)
    rewrite_meta(path, change)
    return path


def commands(path, good, picture, out):
    """Each command that reads a checkpoint, given ``path``."""
    return {"evaluate": ["evaluate", str(path), "--no-progress"],
            "predict": ["predict", str(path), str(picture)],
            "plot": ["plot", str(path), "--kind", "confusion", "--out", str(out)],
            "compare first": ["compare", str(path), str(good), "--out", str(out)],
            "compare second": ["compare", str(good), str(path), "--out", str(out)]}


def settings(meta):
    """The run's settings in a checkpoint's or a weights file's metadata."""
    return meta["extra"]["settings"] if "extra" in meta else meta["provenance"]["settings"]


BAD_FIELDS = [   # (file, change, the field the error names)
    ("checkpoint", lambda m: m["extra"].update(settings="mnist"), "extra.settings"),
    ("checkpoint", lambda m: settings(m).update(classes=["0", "1"]), "extra.settings.classes"),
    ("checkpoint", lambda m: settings(m).update(classes=7), "extra.settings.classes"),
    ("checkpoint", lambda m: settings(m).update(data_info="digits"),
     "extra.settings.data_info"),
    ("checkpoint", lambda m: settings(m).update(dataset=["mnist"]), "extra.settings.dataset"),
    ("checkpoint", lambda m: settings(m).update(crop="20"), "extra.settings.crop"),
    ("checkpoint", lambda m: m["metrics"].update(test_accuracy="0.99"),
     "metrics.test_accuracy"),
    ("checkpoint", lambda m: m["metrics"].update(avg_test_accuracy="high"),
     "metrics.avg_test_accuracy"),
    ("weights", lambda m: m["provenance"].update(settings="mnist"), "provenance.settings"),
    ("weights", lambda m: settings(m).update(classes=[1] * 10),
     "provenance.settings.classes"),
    ("weights", lambda m: settings(m).update(data_info=[]), "provenance.settings.data_info"),
    ("weights", lambda m: m["provenance"].update(test_accuracy="99%"),
     "provenance.test_accuracy"),
    ("weights", lambda m: m["provenance"].update(epoch=[1]), "provenance.epoch"),
    ("weights", lambda m: m["provenance"].update(step="many"), "provenance.step"),
    ("weights", lambda m: m["provenance"].update(command=42), "provenance.command"),
]


@pytest.mark.parametrize("command", ["evaluate", "predict", "plot", "compare first",
                                     "compare second"])
@pytest.mark.parametrize("kind, change, field", BAD_FIELDS)
def test_metadata_of_the_wrong_type_is_one_line_naming_file_and_field(
        runs, fake_mnist, picture, tmp_path, capsys, bounded, command, kind, change, field):
    path = damaged_copy(runs, kind, change, tmp_path / "bad")
    before = file_hashes(path.parent)
    argv = commands(path, runs["checkpoint"], picture, tmp_path / "plots")[command]
    err = one_line_error(capsys, argv, bounded)
    assert f"{path}: damaged checkpoint metadata: {field} is" in err, err
    assert file_hashes(path.parent) == before


@pytest.mark.parametrize("command", ["evaluate", "predict", "plot"])
def test_pretrained_with_damaged_metadata_is_one_line(runs, fake_mnist, picture, tmp_path,
                                                      capsys, bounded, monkeypatch, command):
    """--pretrained loads whatever file is at the shipped place (its SHA-256 made to match,
    so that the metadata is what is checked)."""
    path = damaged_copy(runs, "weights", lambda m: settings(m).update(classes=3),
                        tmp_path / "shipped")
    monkeypatch.setattr(pretrained, "SHIPPED", path)
    monkeypatch.setattr(pretrained, "SHIPPED_SHA256",
                        hashlib.sha256(path.read_bytes()).hexdigest())
    argv = {"evaluate": ["evaluate", "--pretrained", "--no-progress"],
            "predict": ["predict", "--pretrained", str(picture)],
            "plot": ["plot", "--pretrained", "--kind", "confusion", "--out",
                     str(tmp_path / "plots")]}[command]
    before = file_hashes(path.parent)
    err = one_line_error(capsys, argv, bounded)
    assert f"{path}: damaged checkpoint metadata: provenance.settings.classes is '3'" in err
    assert file_hashes(path.parent) == before


# --- the random generator's state --------------------------------------------------------------

def huge_rng_state(meta):
    meta["rng_state"]["state"]["state"] = 10 ** 400


def test_a_huge_integer_in_the_rng_state_is_refused_naming_the_file(runs, tmp_path, bounded):
    path = damaged_copy(runs, "checkpoint", huge_rng_state, tmp_path / "bad")
    before = file_hashes(path.parent)
    with bounded(memory=256 * MB, seconds=30):
        with pytest.raises(ValueError, match="bad RNG state") as info:
            load_checkpoint(path)
    assert str(path) in str(info.value)
    assert file_hashes(path.parent) == before


@pytest.mark.parametrize("command", ["evaluate", "predict", "plot", "compare first",
                                     "compare second"])
def test_a_huge_integer_in_the_rng_state_is_one_line(runs, fake_mnist, picture, tmp_path,
                                                     capsys, bounded, command):
    path = damaged_copy(runs, "checkpoint", huge_rng_state, tmp_path / "bad")
    before = file_hashes(path.parent)
    argv = commands(path, runs["checkpoint"], picture, tmp_path / "plots")[command]
    err = one_line_error(capsys, argv, bounded)
    assert f"{path}: bad RNG state" in err
    assert file_hashes(path.parent) == before


def test_training_on_from_a_huge_rng_state_is_refused(runs, tmp_path, bounded):
    path = damaged_copy(runs, "checkpoint", huge_rng_state, tmp_path / "bad")
    before = file_hashes(path.parent)
    with bounded(memory=512 * MB, seconds=30):
        with pytest.raises(ValueError, match=f"{path}: bad RNG state"):
            train(epochs=2, out_dir=tmp_path / "on", resume=path, batch_size=8, lr=0.01,
                  shift=0, progress=False, data=Dataset(*DIGITS, classes=MNIST_CLASSES,
                                                        name="mnist"), log=lambda line: None)
    assert file_hashes(path.parent) == before


# --- compare: two networks, one set of labels --------------------------------------------------

@needs_shipped
@pytest.mark.parametrize("order", ["digits first", "letters first"])
def test_compare_refuses_networks_of_other_classes_in_either_order(runs, fake_mnist, tmp_path,
                                                                    capsys, bounded, order):
    """The shipped network (its file names no classes: MNIST's digits) against one trained
    on the letters a-j: refused the same way whichever comes first."""
    pair = [str(pretrained.SHIPPED), str(runs["letters"])]
    if order == "letters first":
        pair.reverse()
    before = file_hashes(runs["letters"].parent)
    err = one_line_error(capsys, ["compare", *pair, "--dataset", "mnist", "--out",
                                  str(tmp_path)], bounded, memory=1024 * MB)
    assert "0, 1, 2" in err and "a, b, c" in err and "the same classes" in err, err
    assert all(path in err for path in pair)
    assert file_hashes(runs["letters"].parent) == before
    assert not (tmp_path / "compare.png").exists()


@needs_shipped
@pytest.mark.parametrize("order", ["digits first", "unnamed first"])
def test_compare_refuses_a_network_of_other_classes_than_the_test_set(runs, fake_mnist,
                                                                      tmp_path, capsys,
                                                                      bounded, order):
    """The shipped digits against a network whose classes are not known, tested on
    Fashion-MNIST: the digits network is not scored against the clothes' labels."""
    pair = [str(pretrained.SHIPPED), str(runs["unnamed"])]
    if order == "unnamed first":
        pair.reverse()
    err = one_line_error(capsys, ["compare", *pair, "--dataset", "fashion-mnist", "--out",
                                  str(tmp_path)], bounded, memory=1024 * MB)
    assert "T-shirt/top, Trouser" in err and "0, 1, 2" in err and str(pretrained.SHIPPED) in err
    assert not (tmp_path / "compare.png").exists()


@needs_shipped
def test_compare_accepts_two_networks_of_the_same_digits(runs, fake_mnist, tmp_path, capsys,
                                                         bounded):
    """The shipped network (no classes in its file) and a run that names 0-9: compared."""
    with bounded(memory=1024 * MB, seconds=60):
        code = cli.main(["compare", str(runs["checkpoint"]), str(pretrained.SHIPPED),
                         "--out", str(tmp_path)])
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "compare.png").is_file()


# --- the shipped weights: checked against their SHA-256 ----------------------------------------

@pytest.fixture
def edited_shipped(tmp_path, monkeypatch):
    """A copy of the shipped weights with one weight changed, re-zipped, at the shipped place."""
    with np.load(pretrained.SHIPPED) as npz:
        members = {k: npz[k] for k in npz.files}
    members["param/conv1.b"] = members["param/conv1.b"] + np.float16(0.5)
    path = tmp_path / "weights" / "capsnet-mnist.npz"
    path.parent.mkdir()
    np.savez(path, **members)
    monkeypatch.setattr(pretrained, "SHIPPED", path)
    return path


@needs_shipped
def test_the_shipped_weights_match_their_sha256():
    digest = hashlib.sha256(pretrained.SHIPPED.read_bytes()).hexdigest()
    assert digest == pretrained.SHIPPED_SHA256


@needs_shipped
def test_edited_shipped_weights_are_refused_by_load_pretrained(edited_shipped, bounded):
    before = file_hashes(edited_shipped.parent)
    with bounded(memory=512 * MB, seconds=30):
        with pytest.raises(ValueError, match="shipped weights .* damaged") as info:
            load_pretrained()
    assert str(edited_shipped) in str(info.value) and "reinstall" in str(info.value)
    assert file_hashes(edited_shipped.parent) == before


@needs_shipped
@pytest.mark.parametrize("command", ["evaluate", "predict", "plot"])
def test_edited_shipped_weights_are_one_line_with_pretrained(edited_shipped, fake_mnist,
                                                             picture, tmp_path, capsys,
                                                             bounded, command):
    argv = {"evaluate": ["evaluate", "--pretrained", "--no-progress"],
            "predict": ["predict", "--pretrained", str(picture)],
            "plot": ["plot", "--pretrained", "--kind", "confusion", "--out",
                     str(tmp_path / "plots")]}[command]
    err = one_line_error(capsys, argv, bounded)
    assert "shipped weights" in err and "damaged" in err and "reinstall" in err, err


@pytest.fixture
def letters_folder(tmp_path):
    """An image folder of the letters a-j, two 28x28 pictures each."""
    from PIL import Image
    rng = np.random.default_rng(0)
    for letter in LETTERS:
        (tmp_path / "letters" / letter).mkdir(parents=True)
        for k in range(2):
            picture = rng.integers(0, 256, (28, 28), dtype=np.uint8)
            Image.fromarray(picture).save(tmp_path / "letters" / letter / f"{k}.png")
    return tmp_path / "letters"


@needs_shipped
@pytest.mark.parametrize("command", ["evaluate", "plot"])
def test_the_shipped_digits_are_not_scored_against_a_folder_of_letters(letters_folder, tmp_path,
                                                                       capsys, bounded, command):
    """The shipped file names no classes, but it was trained on MNIST: its 0-9 are not the
    folder's a-j, whatever the count of classes says."""
    argv = [command, "--pretrained", "--data-dir", str(letters_folder)]
    if command == "plot":
        argv += ["--out", str(tmp_path / "pictures")]
    err = one_line_error(capsys, argv, bounded, memory=1024 * MB)
    assert "a, b, c" in err and "0, 1, 2" in err, err
    assert not (tmp_path / "pictures").exists()
