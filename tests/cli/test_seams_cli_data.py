"""Command lines, data files and picture folders under hostile input: options after a
picture, a data file that is a pipe or a folder, a picture too deep to open, sizes asked
for that no one could train, two runs on two folders of one name, and an affNIST file
declaring more than the real one holds. Each case runs under ``bounded`` (tests/limits.py);
where files are involved, their SHA-256 is checked unchanged."""
import gzip
import os
import shutil

import numpy as np
import pytest

from minicaps import cli
from minicaps.cli.command_line import parse_command_line
from minicaps.data.affnist import find_affnist_test, load_affnist_test
from minicaps.data.dataset import DataError
from minicaps.data.mnist import load_mnist
from minicaps.data.folder import load_image_folder

from hostile_cases import one_line_error
from limits import file_hashes
from bombs import mat_bomb
from tiny_runs import quiet, run_tiny

MB = 1 << 20
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
               "t10k-labels-idx1-ubyte")


def write_png(path, side=10, seed=0):
    from PIL import Image
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


# --- F12: options after a picture ----------------------------------------------------------------

def test_predict_parses_options_between_pictures():
    """`predict digit.png --pretrained d2.png`: both are pictures; without --pretrained
    the first positional is still the checkpoint, wherever the options stand."""
    args = parse_command_line(["predict", "digit.png", "--pretrained", "d2.png"])
    assert args.command == "predict" and args.pretrained
    assert [args.checkpoint, *args.image] == ["digit.png", "d2.png"]
    args = parse_command_line(["predict", "run.npz", "a.png", "--weights", "trained",
                                   "b.png"])
    assert (args.checkpoint, args.image, args.weights) == ("run.npz", ["a.png", "b.png"],
                                                          "trained")


def test_cli_predict_pretrained_after_a_picture_reads_both(tmp_path, capsys, bounded):
    a, b = write_png(tmp_path / "digit.png", 28), write_png(tmp_path / "d2.png", 28, 1)
    with bounded(memory=2 << 30, seconds=60):
        code = cli.main(["predict", str(a), "--pretrained", str(b)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert str(a) in out and str(b) in out


# --- W5: a data file that is there but is no regular file ----------------------------------------

def no_download(*args, **kwargs):
    raise AssertionError("a download was tried")


@pytest.mark.parametrize("kind", ["pipe", "folder"])
def test_an_mnist_file_that_is_a_pipe_or_folder_is_refused_by_name(tmp_path, monkeypatch,
                                                                     capsys, bounded, kind):
    monkeypatch.setattr("minicaps.data.download.fetch", no_download)
    for name in MNIST_FILES[1:]:
        (tmp_path / (name + ".gz")).write_bytes(gzip.compress(b""))
    bad = tmp_path / MNIST_FILES[0]
    os.mkfifo(bad) if kind == "pipe" else bad.mkdir()
    what = "a named pipe" if kind == "pipe" else "a folder"
    before = file_hashes(tmp_path)
    with bounded(memory=256 * MB, seconds=10):
        with pytest.raises(DataError, match=rf"{bad}: not a data file but {what}"):
            load_mnist(tmp_path)
    err = one_line_error(capsys, ["train", "--data-root", str(tmp_path), "--out",
                                  str(tmp_path / "run"), "--no-progress"], bounded, seconds=10)
    assert str(bad) in err and what in err
    assert not (tmp_path / "mnist").exists() and not (tmp_path / "run").exists()
    assert file_hashes(tmp_path) == before


def test_the_other_datasets_refuse_a_data_file_that_is_a_pipe(tmp_path, monkeypatch, bounded):
    from minicaps.data.cifar10 import ARCHIVE, load_cifar10
    from minicaps.data.smallnorb import FILES as NORB_FILES, load_smallnorb
    from minicaps.data.svhn import FILES as SVHN_FILES, load_svhn
    monkeypatch.setattr("minicaps.data.download.fetch", no_download)
    cases = [(load_cifar10, ARCHIVE), (load_svhn, SVHN_FILES["train"]),
             (load_smallnorb, next(iter(NORB_FILES.values())))]
    for load, name in cases:
        os.mkfifo(tmp_path / name)
        with bounded(memory=256 * MB, seconds=10):
            with pytest.raises(DataError, match=rf"{tmp_path / name}: not a data file but "
                                                r"a named pipe"):
                load(tmp_path)
    (tmp_path / "affnist").mkdir()
    os.mkfifo(tmp_path / "affnist" / "test.mat")
    with pytest.raises(DataError, match=r"affnist/test\.mat: not a data file but a named pipe"):
        find_affnist_test(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [ARCHIVE, SVHN_FILES["train"], next(iter(NORB_FILES.values())), "affnist"])


# --- W6: a picture whose path is too long to open ------------------------------------------------

def too_deep_picture(root):
    """root/a/b/<deep folders>/<name>.png whose path is longer than PATH_MAX (4096): the
    folders are made one inside the other through file descriptors. Its class folder."""
    for k, name in enumerate(("a", "b")):
        (root / name).mkdir(parents=True)
        write_png(root / name / "0.png", seed=2 * k)
        write_png(root / name / "1.png", seed=2 * k + 1)
    fd = os.open(root / "a", os.O_RDONLY)
    length = len(str(root / "a"))
    try:
        while length < 3900:          # the folder's path stays under 4000 characters
            os.mkdir("d" * 100, dir_fd=fd)
            inner = os.open("d" * 100, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd, length = inner, length + 101
        png = (root / "a" / "0.png").read_bytes()
        name = "p" * 196 + ".png"                 # and the picture's goes past 4096
        out = os.open(name, os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(out, png)
        os.close(out)
    finally:
        os.close(fd)
    return root / "a"


@pytest.fixture
def deep_folder(tmp_path):
    root = tmp_path / "pictures"
    too_deep_picture(root)
    yield root
    shutil.rmtree(root)       # rmtree walks by descriptors: the deep path goes too


def test_a_picture_too_deep_to_open_is_said_and_refused(deep_folder, capsys, bounded):
    with bounded(memory=256 * MB, seconds=20):
        with pytest.raises(DataError, match=r"a path too long to open \(ENAMETOOLONG") as info:
            load_image_folder(deep_folder, log=quiet)
    assert "leads nowhere" not in str(info.value)
    warnings = []
    with bounded(memory=256 * MB, seconds=20):
        data = load_image_folder(deep_folder, bad_images="skip", log=warnings.append,
                                 test_fraction=0.5)
    assert len(data.y_train) + len(data.y_test) == 4
    assert any("too long to open" in w for w in warnings), warnings
    err = one_line_error(capsys, ["predict", "--pretrained", str(deep_folder)], bounded,
                         memory=2 << 30)
    assert "too long to open" in err


# --- W7: sizes asked for that no one could train -------------------------------------------------

def test_cli_image_size_3000_is_refused_before_reading_a_picture(tmp_path, capsys, bounded,
                                                                  monkeypatch):
    import minicaps.data.folder
    folder = tmp_path / "pictures"
    for name in ("a", "b"):
        (folder / name).mkdir(parents=True)
        write_png(folder / name / "0.png")

    def no_reading(*args, **kwargs):
        raise AssertionError("the pictures were read")
    monkeypatch.setattr(minicaps.data.folder, "load_image_folder", no_reading)
    err = one_line_error(capsys, ["train", "--data-dir", str(folder), "--image-size", "3000",
                                  "--out", str(tmp_path / "run"), "--no-progress"], bounded,
                         seconds=10)
    assert "the network for 3000x3000" in err and "--image-size" in err
    assert not (tmp_path / "run").exists()


def test_train_advice_under_memory_pressure_names_only_trains_options(tmp_path, monkeypatch,
                                                                      bounded):
    """Room for a training batch of 20 and little more: the evaluation batch does not
    fit, and no option of train sets it."""
    from minicaps import backend
    from minicaps.nn.registry import build_model
    model = build_model(run_tiny.__globals__["CONFIG"])      # the model train builds
    room = model.batch_bytes(30, training=True)
    monkeypatch.setattr(backend, "available_memory", lambda device=None: room)
    with bounded(memory=512 * MB, seconds=20):
        with pytest.raises(ValueError) as info:
            run_tiny(tmp_path / "run")
    message = str(info.value)
    assert "free memory" in message and "--" not in message, message


def test_cli_pairs_per_digit_1e9_is_refused_by_name(capsys, bounded):
    with bounded(memory=256 * MB, seconds=10):
        with pytest.raises(SystemExit) as info:
            cli.main(["train", "--dataset", "multimnist", "--pairs-per-digit", "1000000000"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "--pairs-per-digit" in err and "1000" in err
    assert err.count("\n") == 1


# --- W8: compare on folders ----------------------------------------------------------------------

def picture_folder(folder, seed=0):
    for k, name in enumerate(("a", "b", "c")):
        (folder / name).mkdir(parents=True)
        for i in range(6):
            write_png(folder / name / f"{i}.png", seed=seed + 10 * k + i)
    return folder


@pytest.fixture(scope="module")
def two_folder_runs(tmp_path_factory):
    """Two tiny runs on copies of one picture folder (same classes), and a third on another
    folder of the same base name."""
    base = tmp_path_factory.mktemp("folders")
    first = picture_folder(base / "one" / "pics")
    second = base / "two" / "pics"
    shutil.copytree(first, second)
    other = picture_folder(base / "three" / "pics", seed=100)
    runs = []
    for k, folder in enumerate((first, second, other)):
        data = load_image_folder(folder, test_fraction=0.5, log=quiet)
        runs.append(run_tiny(base / f"run{k}", data=data, batch_size=3).out_dir / "last.npz")
    return base, (first, second, other), runs


def test_compare_runs_on_copies_of_one_folder_with_data_dir(two_folder_runs, tmp_path, capsys,
                                                            bounded):
    base, (first, _, _), (a, b, _) = two_folder_runs
    before = file_hashes(base)
    err = one_line_error(capsys, ["compare", str(a), str(b), "--out", str(tmp_path)], bounded,
                         memory=1 << 30)
    assert "--data-dir" in err
    with bounded(memory=1 << 30, seconds=30):
        code = cli.main(["compare", str(a), str(b), "--data-dir", str(first), "--out",
                         str(tmp_path)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "test images" in out
    assert file_hashes(base) == before


def test_compare_refuses_two_folders_of_one_name_without_data_dir(two_folder_runs, tmp_path,
                                                                  capsys, bounded):
    base, (_, _, other), (a, _, c) = two_folder_runs
    err = one_line_error(capsys, ["compare", str(a), str(c), "--out", str(tmp_path)], bounded,
                         memory=1 << 30)
    assert "--data-dir" in err and str(other) in err
    err = one_line_error(capsys, ["robustness", str(a), str(c), "--out", str(tmp_path)],
                         bounded, memory=1 << 30)
    assert "--data-dir" in err


# --- W3: an affNIST variable declaring more than the real one holds ------------------------------

def test_an_affnist_variable_declaring_1e9_bytes_is_refused_naming_what_fits(tmp_path, bounded):
    """Under the 1 GiB file limit, but more than affNISTdata of the real test.mat (320,000
    pictures of 1600 bytes, their labels and transformations) can hold."""
    path = mat_bomb(tmp_path / "affnist" / "test.mat", 10, declared=1_000_000_000)
    before = file_hashes(tmp_path)
    with bounded(memory=256 * MB, seconds=10):
        with pytest.raises(DataError, match=r"test\.mat: a compressed variable declares "
                                            r"1000000008 bytes once decompressed, more than "
                                            r"the \d+ bytes") as info:
            load_affnist_test(tmp_path)
    assert str(path) in str(info.value)
    assert "test.mat's affNISTdata: 320,000 40x40 pictures" in str(info.value)
    assert file_hashes(tmp_path) == before
