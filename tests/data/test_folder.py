"""Image folders (minicaps.data.folder): what comes back against what the test wrote, the seeded
split, conversions, bad data, the CLI, and a run on a folder equal to a run on the arrays."""
import hashlib
import os
import struct
import zlib

import numpy as np
import pytest

PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

from minicaps import cli  # noqa: E402
from minicaps.cli.evaluation_data import read_test_folder  # noqa: E402
from minicaps.cli.options import PRESETS  # noqa: E402
from minicaps.data.dataset import DataError, Dataset  # noqa: E402
from minicaps.data.folder import load_image_folder, parse_image_size, read_image  # noqa: E402
from minicaps.gradcheck import tiny_config  # noqa: E402
from minicaps.training.run import train  # noqa: E402

from synthetic import bars  # noqa: E402

QUIET = dict(log=lambda line: None)                      # for the folder reader
TRAIN_QUIET = dict(progress=False, log=lambda line: None)
MB = 1 << 20
MNIST_ROOT = os.environ.get("MINICAPS_DATA")


@pytest.fixture
def tiny(monkeypatch):
    """--preset tiny: a CapsNet small enough to train on a folder in a second."""
    monkeypatch.setitem(PRESETS, "tiny", {"config": {"conv1_channels": 8, "primary_maps": 4,
                                                         "decoder_sizes": (16,)},
                                              "epochs": 1, "lr": 1e-3})


def write(folder, images, labels, names=("h", "v", "d"), suffix=".png"):
    """images[k] as folder/<names[labels[k]]>/<k:05d><suffix>; returns the paths."""
    paths = []
    for k, (image, label) in enumerate(zip(images, labels)):
        path = folder / names[label] / f"{k:05d}{suffix}"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path)
        paths.append(path)
    return paths


def class_major(images, labels):
    """The order a folder is found in: by class, then by file name (here: the index)."""
    order = np.argsort(labels, kind="stable")
    return images[order], labels[order]


def folder_order(images, labels, seed=0):
    """The order a folder's split comes back in: class_major, shuffled as documented (a
    permutation from numpy's default_rng([seed, 1]))."""
    images, labels = class_major(images, labels)
    order = np.random.default_rng([seed, 1]).permutation(len(labels))
    return images[order], labels[order]


def test_train_and_test_folders_come_back_as_written(tmp_path):
    x, y = bars(40, 0)
    xt, yt = bars(20, 1)
    write(tmp_path / "train", x, y)
    write(tmp_path / "test", xt, yt)
    data = load_image_folder(tmp_path, **QUIET)
    assert data.classes == ("d", "h", "v")        # sorted folder names: d=2, h=0, v=1
    relabel = np.array([1, 2, 0])                  # bars' label -> position of its name
    for got_x, got_y, want_x, want_y in ((data.x_train, data.y_train, x, relabel[y]),
                                         (data.x_test, data.y_test, xt, relabel[yt])):
        want_x, want_y = folder_order(want_x, want_y)
        np.testing.assert_array_equal(got_x, want_x)
        np.testing.assert_array_equal(got_y, want_y)
        assert got_x.dtype == np.uint8 and got_y.dtype == np.int64
    assert data.info["split"] == "train/ and test/ folders" and data.info["color"] == "gray"
    # not class by class: the first images hold every class, so --limit-train 9 does too
    assert set(data.y_train[:9].tolist()) == {0, 1, 2}
    assert set(data.y_test[:9].tolist()) == {0, 1, 2}


def test_limits_on_a_folder_keep_every_class(tmp_path):
    from minicaps.training.splits import prepare_data
    x, y = bars(60, 0)
    write(tmp_path, x, y)
    train, _, test = prepare_data(load_image_folder(tmp_path, test_fraction=0.5, **QUIET),
                                  limit_train=12, limit_test=12)
    assert np.bincount(train.labels, minlength=3).min() >= 2
    assert np.bincount(test.labels, minlength=3).min() >= 2


def test_train_and_val_folders_are_a_split_and_val_beside_test_validates(tmp_path):
    x, y = bars(30, 0)
    xv, yv = bars(12, 1)
    xt, yt = bars(15, 2)
    write(tmp_path / "train", x, y)
    write(tmp_path / "val", xv, yv)
    lines = []
    data = load_image_folder(tmp_path, log=lines.append)
    assert data.classes == ("d", "h", "v") and data.x_val is None
    assert sorted(map(bytes, data.x_test)) == sorted(map(bytes, xv))
    assert "val/ to test on" in lines[-2] and "12 test images" in lines[-1]
    write(tmp_path / "test", xt, yt)
    (tmp_path / "extra").mkdir()
    lines = []
    data = load_image_folder(tmp_path, log=lines.append)
    assert sorted(map(bytes, data.x_test)) == sorted(map(bytes, xt))
    assert sorted(map(bytes, data.x_val)) == sorted(map(bytes, xv))
    assert sorted(map(bytes, data.x_train)) == sorted(map(bytes, x))
    np.testing.assert_array_equal(data.y_val, np.array([1, 2, 0])[yv][  # by the images
        [next(k for k in range(12) if (xv[k] == img).all()) for img in data.x_val]])
    assert "val/ to validate on" in lines[-2] and "ignoring the other folders (extra)" in lines[-2]


def test_split_folders_in_capitals_and_split_folders_without_train(tmp_path):
    x, y = bars(12, 0)
    write(tmp_path / "a" / "Train", x, y)
    write(tmp_path / "a" / "Test", x[:6], y[:6])
    data = load_image_folder(tmp_path / "a", **QUIET)
    assert data.classes == ("d", "h", "v") and len(data.y_test) == 6
    write(tmp_path / "b" / "test", x, y)
    write(tmp_path / "b" / "val", x, y)
    with pytest.raises(DataError, match="holds test/, val/ but no train/"):
        load_image_folder(tmp_path / "b", **QUIET)
    write(tmp_path / "b" / "extra", x, y)                   # whatever else is beside them
    with pytest.raises(DataError, match="holds test/, val/ but no train/"):
        load_image_folder(tmp_path / "b", **QUIET)
    write(tmp_path / "c" / "val", x, y)
    with pytest.raises(DataError, match=r"one class folder \(val\).*put a train/ folder"):
        load_image_folder(tmp_path / "c", **QUIET)


def test_a_lone_train_folder_is_a_class_and_says_what_to_add(tmp_path):
    x, y = bars(9, 0)
    write(tmp_path / "train", x, y)
    with pytest.raises(DataError, match=r"one class folder \(train\).*put a test/ \(or val/\)"):
        load_image_folder(tmp_path, **QUIET)
    write(tmp_path, x[:3], [0, 0, 0], names=("bus",))    # CIFAR-100 has a class "train"
    data = load_image_folder(tmp_path, test_fraction=0.4, **QUIET)
    assert data.classes == ("bus", "train")


def test_a_test_folder_may_lack_a_class_but_not_add_one(tmp_path):
    x, y = bars(30, 0)
    write(tmp_path / "train", x, y)
    write(tmp_path / "test", x[y != 2], y[y != 2])
    data = load_image_folder(tmp_path, **QUIET)
    assert len(data.classes) == 3 and 0 not in data.y_test      # "d" is class 0
    write(tmp_path / "test", x[:1], [0], names=("cat",))
    with pytest.raises(DataError, match="class folders that .* does not: cat"):
        load_image_folder(tmp_path, **QUIET)


def test_the_seeded_split_holds_out_a_share_of_every_class(tmp_path):
    x, y = bars(90, 0)
    write(tmp_path, x, y)
    a = load_image_folder(tmp_path, test_fraction=0.2, seed=3, **QUIET)
    b = load_image_folder(tmp_path, test_fraction=0.2, seed=3, **QUIET)
    c = load_image_folder(tmp_path, test_fraction=0.2, seed=4, **QUIET)
    counts = np.bincount(y, minlength=3)[[2, 0, 1]]           # per class in sorted name order
    np.testing.assert_array_equal(np.bincount(a.y_test, minlength=3),
                                  [max(1, round(0.2 * n)) for n in counts])
    assert len(a.y_train) + len(a.y_test) == 90
    np.testing.assert_array_equal(a.x_test, b.x_test)
    assert a.info["test_files_sha256"] == b.info["test_files_sha256"]
    assert a.info["test_files_sha256"] != c.info["test_files_sha256"]
    # the recorded hash is of the held-out files' names: recomputed from the images
    everything = x
    names = sorted(f"{('h', 'v', 'd')[label]}/{k:05d}.png"
                   for k, label in enumerate(y)
                   if any((img == x[k]).all() for img in a.x_test))
    assert hashlib.sha256("\n".join(names).encode()).hexdigest() == a.info["test_files_sha256"]
    # training and test images are disjoint and together all of them
    joined = np.concatenate([a.x_train, a.x_test])
    assert sorted(map(bytes, joined)) == sorted(map(bytes, everything))


@pytest.mark.parametrize("own_split", [False, True])
def test_the_test_images_alone_are_the_test_split_of_the_whole(tmp_path, monkeypatch, own_split):
    """only="test" (what evaluate reads) gives the test split a full read gives, in the
    same order and with the same hash, and decodes no other picture."""
    import minicaps.data.folder
    x, y = bars(40, 0)
    if own_split:
        write(tmp_path / "train", x[:30], y[:30])
        write(tmp_path / "test", x[30:], y[30:])
    else:
        write(tmp_path, x, y)
    whole = load_image_folder(tmp_path, test_fraction=0.25, seed=5, **QUIET)
    decoded, read = [], minicaps.data.folder.read_image
    monkeypatch.setattr(minicaps.data.folder, "read_image",
                        lambda path, *a: decoded.append(path) or read(path, *a))
    alone = load_image_folder(tmp_path, test_fraction=0.25, seed=5, only="test", **QUIET)
    np.testing.assert_array_equal(alone.x_test, whole.x_test)
    np.testing.assert_array_equal(alone.y_test, whole.y_test)
    held_out = 10 if own_split else sum(max(1, round(0.25 * n)) for n in np.bincount(y))
    assert len(decoded) == len(whole.y_test) == held_out
    assert len(alone.y_train) == 0 and alone.x_train.shape[1:] == whole.x_train.shape[1:]
    # the same record of the split; how many pictures failed to decode only a full read knows
    assert alone.info == {k: v for k, v in whole.info.items() if k != "undecodable"}


def test_evaluate_finds_the_split_of_a_run_that_skipped_an_undecodable_picture(
        tmp_path, capsys, tiny):
    """Trained with --bad-images skip past a picture whose header reads but whose pixels
    do not: its split was drawn without it, so evaluate, which draws before decoding, must
    notice and read the folder as the run did."""
    x, y = bars(30, 0)
    write(tmp_path / "f", x, y)
    image = np.random.default_rng(0).integers(0, 256, (10, 10), dtype=np.uint8)
    cut = tmp_path / "f" / "h" / "00000-cut.png"
    Image.fromarray(image).save(cut)
    cut.write_bytes(cut.read_bytes()[:60])                 # the header, not the pixels
    out = tmp_path / "run"
    assert cli.main(["train", "--data-dir", str(tmp_path / "f"), "--image-size", "20",
                     "--bad-images", "skip", "--preset", "tiny", "--batch-size", "9",
                     "--out", str(out), "--no-progress"]) == 0
    trained = capsys.readouterr().out
    assert "skipping" in trained and "27 training and 3 test images" in trained
    assert cli.main(["evaluate", str(out / "last.npz"), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    # the three the run held out, as a full read (the run's own) splits the folder; the
    # first read, drawn before decoding, holds other pictures
    from minicaps.io.checkpoint import load_checkpoint
    from minicaps.data.dataset import to_model_input
    held_out = load_image_folder(tmp_path / "f", image_size=20, bad_images="skip", **QUIET)
    first = load_image_folder(tmp_path / "f", image_size=20, bad_images="skip", only="test",
                              **QUIET)
    assert sorted(map(bytes, first.x_test)) != sorted(map(bytes, held_out.x_test))
    checkpoint = load_checkpoint(out / "last.npz")
    info = checkpoint.extra["settings"]["data_info"]
    assert info["undecodable"] == 1
    read = read_test_folder(tmp_path / "f", info)
    np.testing.assert_array_equal(read.x_test, held_out.x_test)
    model, _ = checkpoint.model_with("auto")
    right = int((model.predict(to_model_input(held_out.x_test, model.dtype))
                 == held_out.y_test).sum())
    assert "on 3 " in printed and f"({right}/3, " in printed


def test_colour_gray_and_sizes(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (3, 8, 6, 3)).astype(np.uint8)
    gray = rng.integers(0, 256, (3, 8, 6)).astype(np.uint8)
    for k in range(3):
        (tmp_path / "a").mkdir(exist_ok=True)
        (tmp_path / "b").mkdir(exist_ok=True)
        Image.fromarray(rgb[k]).save(tmp_path / "a" / f"{k}.png")
        Image.fromarray(gray[k]).save(tmp_path / "b" / f"{k}.png")
    # one image in colour: all read as RGB, gray ones with three equal channels
    data = load_image_folder(tmp_path, test_fraction=0.4, **QUIET)
    images = np.concatenate([data.x_train, data.x_test])
    labels = np.concatenate([data.y_train, data.y_test])
    assert images.shape[1:] == (8, 6, 3) and data.info["color"] == "rgb"
    assert sorted(map(bytes, images[labels == 0])) == sorted(map(bytes, rgb))
    assert sorted(map(bytes, images[labels == 1])) == sorted(
        map(bytes, np.repeat(gray[..., None], 3, axis=3)))
    # gray asked for: colour by ITU-R 601 luma, as Pillow's "L" rounds it
    data = load_image_folder(tmp_path, color="gray", test_fraction=0.4, **QUIET)
    images = np.concatenate([data.x_train, data.x_test])
    labels = np.concatenate([data.y_train, data.y_test])
    r, g, b = (rgb[..., c].astype(np.int64) for c in range(3))
    luma = ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(np.uint8)
    assert sorted(map(bytes, images[labels == 0])) == sorted(map(bytes, luma))
    # resized: a flat picture stays flat, and the shape is the one asked for
    flat = np.full((30, 20, 3), 77, np.uint8)
    Image.fromarray(flat).save(tmp_path / "a" / "big.png")
    with pytest.raises(DataError, match=r"2 different sizes .*8x6 \(6 images\).*--image-size"):
        load_image_folder(tmp_path, **QUIET)
    data = load_image_folder(tmp_path, image_size=(12, 10), test_fraction=0.4, **QUIET)
    assert data.x_train.shape[1:] == (12, 10, 3)
    assert any((img == 77).all() for img in np.concatenate([data.x_train, data.x_test]))


def test_sixteen_bit_alpha_and_jpeg(tmp_path):
    deep = (np.arange(24, dtype=np.uint16).reshape(4, 6) * 2500)
    path = tmp_path / "deep.png"
    Image.fromarray(deep).save(path)
    np.testing.assert_array_equal(read_image(path, (4, 6), "gray"),
                                  np.round(deep / 257).astype(np.uint8))
    rgba = np.zeros((5, 5, 4), np.uint8)
    rgba[..., :3], rgba[..., 3] = 200, 0                       # invisible, but there
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    assert (read_image(tmp_path / "alpha.png", (5, 5), "rgb") == 200).all()
    smooth = np.tile(np.linspace(0, 255, 64).astype(np.uint8), (64, 1))
    Image.fromarray(smooth).save(tmp_path / "smooth.jpg", quality=95)
    back = read_image(tmp_path / "smooth.jpg", (64, 64), "gray").astype(int)
    assert np.abs(back - smooth).max() <= 4                    # lossy, but close


def test_sixteen_bits_scale_alike_in_every_picture(tmp_path):
    """A dark 16-bit picture stays dark: 16 bits are always divided by 257, not by what
    one picture happens to hold."""
    dark = np.arange(64, dtype=np.uint16).reshape(8, 8) * 4            # 0..252 of 65535
    bright = dark * 257
    for name, pixels in (("a", dark), ("b", bright)):
        for k in range(2):
            (tmp_path / name).mkdir(exist_ok=True)
            Image.fromarray(pixels).save(tmp_path / name / f"{k}.png")
    data = load_image_folder(tmp_path, test_fraction=0.5, **QUIET)
    images = np.concatenate([data.x_train, data.x_test])
    labels = np.concatenate([data.y_train, data.y_test])
    assert (images[labels == 0] == np.round(dark / 257)).all()        # 0 or 1
    assert (images[labels == 1] == dark).all()


def test_a_jpeg_is_turned_as_its_exif_orientation_says(tmp_path):
    stored = np.tile(np.linspace(0, 255, 16), (8, 1)).astype(np.uint8)   # 8 high, 16 wide
    stored[:2] = 255                                                       # a bright top
    exif = Image.Exif()
    exif[0x0112] = 6                                  # "turn 90 degrees clockwise to view"
    path = tmp_path / "a" / "phone.jpg"
    path.parent.mkdir()
    Image.fromarray(stored).save(path, quality=100, exif=exif)
    as_stored = np.asarray(Image.open(path).convert("L"))              # Pillow, no EXIF
    shown = np.rot90(as_stored, k=-1)                                   # clockwise: 16 x 8
    np.testing.assert_array_equal(read_image(path, (16, 8), "gray"), shown)
    # in a folder it counts as 16 x 8, the size of the portraits beside it
    (tmp_path / "b").mkdir()
    for k in range(2):
        Image.fromarray(shown).save(tmp_path / "b" / f"{k}.png")
    Image.fromarray(shown).save(tmp_path / "a" / "plain.png")
    data = load_image_folder(tmp_path, test_fraction=0.5, **QUIET)
    assert data.x_train.shape[1:] == (16, 8)
    images = np.concatenate([data.x_train, data.x_test])
    assert all((img == shown).all() for img in images)
    # shrunk (the JPEG decoded at a smaller scale): the same as the stored picture without
    # EXIF shrunk to the stored shape, then turned (within the two passes' rounding)
    plain = tmp_path / "plain.jpg"
    Image.fromarray(stored).save(plain, quality=100)
    small = read_image(path, (8, 4), "gray").astype(int)
    assert small.shape == (8, 4)
    turned = np.rot90(read_image(plain, (4, 8), "gray"), k=-1).astype(int)
    assert np.abs(small - turned).max() <= 1


def test_jpeg_capitals_and_subfolders_are_read_and_gray_palettes_stay_gray(tmp_path):
    rng = np.random.default_rng(0)
    gray = [rng.integers(0, 256, (6, 6)).astype(np.uint8) for _ in range(4)]
    (tmp_path / "a" / "deeper").mkdir(parents=True)
    (tmp_path / "b").mkdir()
    Image.fromarray(gray[0]).save(tmp_path / "a" / "x.JPG", quality=100)
    Image.fromarray(gray[1]).save(tmp_path / "a" / "deeper" / "y.jpeg", quality=100)
    for k in (2, 3):
        paletted = Image.fromarray(gray[k]).convert("P")       # a palette of grays
        assert paletted.mode == "P"
        paletted.save(tmp_path / "b" / f"{k}.PNG")
    data = load_image_folder(tmp_path, test_fraction=0.5, **QUIET)
    assert data.info["color"] == "gray" and data.x_train.shape[1:] == (6, 6)
    images = np.concatenate([data.x_train, data.x_test])
    labels = np.concatenate([data.y_train, data.y_test])
    assert np.bincount(labels).tolist() == [2, 2]
    assert sorted(map(bytes, images[labels == 1])) == sorted(map(bytes, gray[2:]))
    jpegs = [np.asarray(Image.open(p).convert("L")) for p in
             (tmp_path / "a" / "x.JPG", tmp_path / "a" / "deeper" / "y.jpeg")]
    assert sorted(map(bytes, images[labels == 0])) == sorted(map(bytes, jpegs))


def test_names_that_are_not_utf8(tmp_path):
    good = good_folder(tmp_path)
    odd = os.fsdecode(b"caf\xe9.png")                     # a Latin-1 name on a UTF-8 disk
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(good / "h" / odd)
    data = load_image_folder(good, **QUIET)              # a file: counted by its bytes
    assert len(data.y_train) + len(data.y_test) == 13
    (good / os.fsdecode(b"cl\xe9")).mkdir()
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(good / os.fsdecode(b"cl\xe9") / "0.png")
    with pytest.raises(DataError, match="not UTF-8: rename it"):
        load_image_folder(good, **QUIET)


def test_names_that_are_not_utf8_print(tmp_path, capsys):
    """What is said of such a file prints: its odd byte as \\xNN, not a crash in print."""
    good = good_folder(tmp_path / "f")
    (good / "h" / os.fsdecode(b"notes\xe9.txt")).write_text("not an image")
    said = []
    load_image_folder(good, log=said.append)
    line = next(line for line in said if "notes" in line)
    assert "notes\\xe9.txt" in line and line.encode("utf-8")     # strict UTF-8 encodes
    (good / "v" / os.fsdecode(b"bad\xe9.png")).write_bytes(b"not a picture")
    assert cli.main(["train", "--data-dir", str(good), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "bad\\xe9.png" in err and err.encode("utf-8")


def test_headers_tell_a_gray_palette_without_decoding_it(tmp_path, monkeypatch):
    from minicaps.data.folder import _read_headers
    gray = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).convert("P")
    coloured = Image.new("P", (8, 8))
    coloured.putpalette([0, 0, 0, 255, 0, 0])
    gray.save(tmp_path / "g.png")
    coloured.save(tmp_path / "c.png")
    loads = []
    monkeypatch.setattr(Image.Image, "load", lambda self: loads.append(self))
    headers, _ = _read_headers([(tmp_path / "g.png", 0), (tmp_path / "c.png", 1)], "error",
                               lambda line: None)
    assert [mode for _, mode in headers] == ["L", "P"] and loads == []


def test_one_image_per_class_says_why_none_is_left_to_test(tmp_path):
    write(tmp_path, np.zeros((2, 8, 8), np.uint8), [0, 1])
    with pytest.raises(DataError, match="no test images are left .each class has a single "
                                        "image.*add images, or give DIR/train and DIR/test"):
        load_image_folder(tmp_path, **QUIET)


def test_image_size_parsing():
    assert parse_image_size("32") == (32, 32) and parse_image_size("24x40") == (24, 40)
    assert parse_image_size(None) is None and parse_image_size((5, 6)) == (5, 6)
    for bad in ("0", "abc", "3x4x5", 5000, (3,), 2.5, True):
        with pytest.raises(ValueError):
            parse_image_size(bad)


# --- bad data: a clear answer naming what is wrong --------------------------------------------

def good_folder(tmp_path, n=12):
    x, y = bars(n, 0)
    write(tmp_path, x, y)
    return tmp_path


def test_an_unreadable_image_is_named_or_skipped(tmp_path):
    folder = good_folder(tmp_path)
    bad = folder / "h" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"nonsense" * 10)
    with pytest.raises(DataError, match=f"{bad}.*--bad-images skip"):
        load_image_folder(folder, **QUIET)
    said = []
    data = load_image_folder(folder, bad_images="skip", log=said.append)
    assert len(data.y_train) + len(data.y_test) == 12
    assert any("skipping" in line and str(bad) in line for line in said)


def test_a_cut_off_image_is_named(tmp_path):
    folder = good_folder(tmp_path)
    image = np.random.default_rng(0).integers(0, 256, (40, 40), dtype=np.uint8)
    path = folder / "v" / "cut.png"
    Image.fromarray(image).save(path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DataError, match=str(path)):
        load_image_folder(folder, image_size=10, **QUIET)


def png_header_only(width, height):
    """A PNG that promises width x height 8-bit gray pixels and holds almost none."""
    def chunk(kind, body):
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 10)) + chunk(b"IEND", b""))


def test_a_picture_that_promises_too_much_is_refused_undecoded(tmp_path, bounded):
    folder = good_folder(tmp_path)
    huge = folder / "d" / "huge.png"
    huge.write_bytes(png_header_only(60_000, 60_000))          # 3.6 GB of pixels
    with bounded(memory=256 * MB, seconds=20):
        with pytest.raises(DataError, match=str(huge)):
            load_image_folder(folder, image_size=10, **QUIET)


def test_a_big_photo_is_read_and_a_giant_refused_undecoded(tmp_path, bounded):
    """A picture 4600 pixels a side (84 MB decoded, over predict's 80 MB) is read; one
    whose header promises 12000 a side (720 MB to read, under Pillow's own bomb limit) is
    refused from its header, under a 256 MB memory cap."""
    from minicaps.data.folder import MAX_PICTURE_BYTES
    big = np.zeros((4600, 4600, 3), np.uint8)
    big[:2300, :, 0] = 255                                   # red above, black below
    Image.fromarray(big).save(tmp_path / "big.png", compress_level=1)
    small = read_image(tmp_path / "big.png", (4, 4), "rgb")
    assert (small[0, :, 0] == 255).all() and (small[3] == 0).all()    # blended between
    assert (small[..., 1:] == 0).all()
    (tmp_path / "giant.png").write_bytes(png_header_only(12_000, 12_000))
    # read as RGB: 1 byte a pixel decoded and 4 in the RGB copy, 720 MB; yet fewer pixels
    # than Pillow's own bomb limit, so that it is this bound that refuses it
    assert 12_000 ** 2 * 5 > MAX_PICTURE_BYTES and 12_000 ** 2 < Image.MAX_IMAGE_PIXELS * 2
    with bounded(memory=256 * MB, seconds=20):
        with pytest.raises(ValueError, match="12000 x 12000 pixels would take .* MB to read"):
            read_image(tmp_path / "giant.png", (10, 10), "rgb")


def test_a_folder_too_big_for_memory_is_refused_before_decoding(tmp_path, bounded):
    folder = good_folder(tmp_path)
    with bounded(memory=128 * MB, seconds=20):
        with pytest.raises(ValueError, match=r"reading 12 images of 4000x4000x1 .* needs about"):
            load_image_folder(folder, image_size=4000, **QUIET)


@pytest.mark.parametrize("layout, message", [
    ("loose", "holds 2 images but no class subfolders"),
    ("empty", "has no subfolders"),
    ("one", "one class folder"),
    ("empty-class", "class folder .*empty.* has no .png, .jpg or .jpeg images"),
    ("missing", "is not a folder"),
])
def test_folders_without_classes_are_refused(tmp_path, layout, message):
    x, y = bars(4, 0)
    root = tmp_path / "data"
    root.mkdir()
    if layout == "loose":
        Image.fromarray(x[0]).save(root / "a.png")
        Image.fromarray(x[1]).save(root / "b.png")
    elif layout == "one":
        write(root, x, np.zeros(4, int))
    elif layout == "empty-class":
        write(root, x, y)
        (root / "empty").mkdir()
    elif layout == "missing":
        root = tmp_path / "nowhere"
    with pytest.raises(DataError, match=message):
        load_image_folder(root, **QUIET)


def test_other_files_and_hidden_ones_are_left_out(tmp_path):
    folder = good_folder(tmp_path)
    (folder / "h" / "notes.txt").write_text("not an image")
    (folder / "h" / ".hidden.png").write_bytes(b"junk")
    (folder / ".cache").mkdir()
    said = []
    data = load_image_folder(folder, log=said.append)
    assert len(data.y_train) + len(data.y_test) == 12 and len(data.classes) == 3
    assert any("ignoring 1 file that" in line and "notes.txt" in line for line in said)


def test_links_to_folders_are_followed_once_and_broken_ones_said(tmp_path):
    folder = good_folder(tmp_path / "f")                   # 12 images in 3 classes
    extra = tmp_path / "elsewhere"
    x, _ = bars(2, 5)
    for k in range(2):
        extra.mkdir(exist_ok=True)
        Image.fromarray(x[k]).save(extra / f"{k}.png")
    (folder / "h" / "more").symlink_to(extra, target_is_directory=True)
    (folder / "h" / "loop").symlink_to(folder / "h", target_is_directory=True)
    (folder / "v" / "gone.png").symlink_to(tmp_path / "nothing.png")
    said = []
    data = load_image_folder(folder, log=said.append)
    images = np.concatenate([data.x_train, data.x_test])
    assert len(images) == 14                               # 12, and the 2 behind the link
    assert sum(any((img == e).all() for img in images) for e in x) == 2
    assert any("1 link that leads nowhere" in line and "gone.png" in line for line in said)


def test_a_picture_reached_twice_is_read_once_or_refused_across_classes(tmp_path):
    folder = good_folder(tmp_path / "f")                   # 12 images in 3 classes
    some_h = sorted((folder / "h").iterdir())[0]
    (folder / "h" / "again.png").symlink_to(some_h)        # the same class: once
    said = []
    data = load_image_folder(folder, log=said.append)
    assert len(data.y_train) + len(data.y_test) == 12
    assert any("1 picture reached twice through links, read once" in line for line in said)
    (folder / "v" / "stolen.png").symlink_to(some_h)       # another class: two labels
    with pytest.raises(DataError, match="one picture .linked. in .*h and .*v"):
        load_image_folder(folder, **QUIET)
    (folder / "v" / "stolen.png").unlink()
    os.link(some_h, folder / "v" / "hard.png")             # a hard link: the same picture
    with pytest.raises(DataError, match="one picture .linked. in .*h and .*v"):
        load_image_folder(folder, **QUIET)
    (folder / "v" / "hard.png").unlink()
    os.mkfifo(folder / "v" / "pipe.png")                  # not a file: said, never opened
    said = []
    load_image_folder(folder, log=said.append)
    assert any("ignoring 1 file that" in line and "pipe.png" in line for line in said)
    x, y = bars(12, 0)                                     # one picture in train/ and test/
    write(tmp_path / "s" / "train", x, y)
    write(tmp_path / "s" / "test", x[:3], y[:3])
    leaked = sorted((tmp_path / "s" / "train" / "h").iterdir())[0]
    (tmp_path / "s" / "test" / "h").mkdir(exist_ok=True)
    (tmp_path / "s" / "test" / "h" / "leak.png").symlink_to(leaked)
    with pytest.raises(DataError, match="one picture .linked. in .*train/h and .*test/h"):
        load_image_folder(tmp_path / "s", **QUIET)


def test_options_are_checked(tmp_path):
    folder = good_folder(tmp_path)
    for kw, message in ((dict(color="cmyk"), "color must be"),
                        (dict(test_fraction=1.0), "test_fraction"),
                        (dict(bad_images="ignore"), "bad_images"),
                        (dict(seed=-1), "seed")):
        with pytest.raises(ValueError, match=message):
            load_image_folder(folder, **kw, **QUIET)


# --- training on a folder ------------------------------------------------------------------------

def test_a_run_on_a_folder_equals_the_run_on_its_arrays(tmp_path):
    """Images written as PNGs and read back train bit for bit as the arrays they came from
    (in the folder's order: by class, then by name, shuffled with the seed)."""
    x, y = bars(60, 0)
    xt, yt = bars(30, 1)
    names = ("c0", "c1", "c2")
    write(tmp_path / "pngs" / "train", x, y, names)
    write(tmp_path / "pngs" / "test", xt, yt, names)
    folder = load_image_folder(tmp_path / "pngs", **QUIET)
    arrays = Dataset(*folder_order(x, y), *folder_order(xt, yt), classes=names)
    kw = dict(epochs=1, batch_size=20, lr=0.01, shift=1, **TRAIN_QUIET)
    a = train(tiny_config(), out_dir=tmp_path / "a", data=folder, **kw)
    b = train(tiny_config(), out_dir=tmp_path / "b", data=arrays, **kw)
    for name, value in a.model.params.items():
        np.testing.assert_array_equal(value, b.model.params[name])
    assert a.history[0]["test_accuracy"] == b.history[0]["test_accuracy"]


def test_the_cli_trains_evaluates_and_predicts_on_a_folder(tmp_path, capsys, tiny):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 60, (30, 28, 28, 3)).astype(np.uint8)
    labels = np.arange(30) % 3
    for image, label in zip(images, labels):              # a colour square per class
        image[4:12, 4:12, label] = 255
    write(tmp_path / "pets", images, labels, names=("bird", "cat", "dog"))
    out = tmp_path / "run"
    code = cli.main(["train", "--data-dir", str(tmp_path / "pets"), "--preset", "tiny",
                     "--batch-size", "9", "--out", str(out), "--no-progress",
                     "--test-fraction", "0.2", "--flip"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "3 classes (bird, cat, dog), 24 training and 6 test images of 28x28 rgb" in printed
    assert "input 28x28x3" in printed
    assert cli.main(["evaluate", str(out / "last.npz"), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "on 6 " in printed and all(f" {name} " in printed for name in ("bird", "cat", "dog"))
    picture = tmp_path / "pets" / "cat" / "00001.png"
    assert cli.main(["predict", str(out / "last.npz"), str(picture)]) == 0
    printed = capsys.readouterr().out
    assert "predicted" in printed and "bird" in printed and "dog" in printed
    # a folder that is not there: one line, exit status 2
    with pytest.raises(SystemExit) as exit:
        cli.main(["train", "--data-dir", str(tmp_path / "nope"), "--out", str(tmp_path / "x")])
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert "nope" in err and err.count("\n") == 1


def test_a_folder_named_mnist_is_read_as_its_pictures_and_a_changed_split_is_refused(
        tmp_path, capsys, monkeypatch, tiny, drawn):
    import minicaps.data.folder
    from minicaps.io.checkpoint import load_checkpoint
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (20, 28, 28, 3)).astype(np.uint8)
    write(tmp_path / "mnist", images, np.arange(20) % 2, names=("red", "blue"))
    monkeypatch.chdir(tmp_path)                 # --data-dir mnist: the run's dataset "mnist"
    assert cli.main(["train", "--data-dir", "mnist", "--preset", "tiny",
                     "--batch-size", "6", "--out", "run", "--no-progress"]) == 0
    capsys.readouterr()
    checkpoint = load_checkpoint(tmp_path / "run" / "last.npz")
    assert checkpoint.extra["settings"]["dataset"] == "mnist"
    picture = tmp_path / "mnist" / "blue" / "00001.png"
    assert cli.main(["predict", "run/last.npz", str(picture)]) == 0
    printed = capsys.readouterr().out
    # the lengths predict prints are the network's on the picture's own RGB pixels
    model, _ = checkpoint.model_with("auto")
    x = np.asarray(Image.open(picture).convert("RGB"))[None] / 255.0
    lengths = model.predict_lengths(x.astype(model.dtype), batch_size=1)[0]
    for name, length in zip(("blue", "red"), lengths):
        assert f"{name}  {length:.4f}" in printed
    # plot names the classes
    assert cli.main(["plot", "run/last.npz", "--kind", "confusion", "--out", "plots"]) == 0
    axes = drawn["confusion.png"].axes[0]
    assert [t.get_text() for t in axes.get_yticklabels()] == ["blue", "red"]
    capsys.readouterr()
    # ten pictures more in a class: it holds out two now, so evaluate refuses the run,
    # having decoded the test share alone (the run skipped no picture: no full read)
    for k in range(10):
        Image.fromarray(images[k]).save(tmp_path / "mnist" / "red" / f"new{k}.png")
    decoded, read = [], minicaps.data.folder.read_image
    monkeypatch.setattr(minicaps.data.folder, "read_image",
                        lambda path, *a: decoded.append(path) or read(path, *a))
    assert cli.main(["evaluate", "run/last.npz", "--no-progress"]) == 2
    assert "has changed since the run was trained" in capsys.readouterr().err
    assert len(decoded) == 3                     # 2 of red's 20 and 1 of blue's 10


def test_a_run_resumes_on_its_folder_as_it_was_and_not_once_changed(tmp_path, capsys, tiny):
    x, y = bars(24, 0)
    write(tmp_path / "f", x, y)
    out = tmp_path / "run"
    argv = ["train", "--data-dir", str(tmp_path / "f"), "--image-size", "20", "--preset",
            "tiny", "--batch-size", "6", "--out", str(out), "--no-progress"]
    assert cli.main(argv) == 0
    assert cli.main(argv + ["--epochs", "2", "--resume", str(out / "last.npz")]) == 0
    capsys.readouterr()
    # renamed (as many images as before): the held-out names are others
    for path in sorted((tmp_path / "f" / "h").iterdir()):
        path.rename(path.with_name("renamed-" + path.name))
    assert cli.main(argv + ["--epochs", "3", "--resume", str(out / "last.npz")]) == 2
    assert "has changed since" in capsys.readouterr().err
    # more images: said the same way, before the count of training images differs
    x2, y2 = bars(12, 1)
    for k, (image, label) in enumerate(zip(x2, y2)):
        Image.fromarray(image).save(tmp_path / "f" / ("h", "v", "d")[label] / f"new{k}.png")
    assert cli.main(argv + ["--epochs", "3", "--resume", str(out / "last.npz")]) == 2
    assert "has changed since" in capsys.readouterr().err


def test_evaluate_refuses_a_folder_split_otherwise_since(tmp_path, capsys, tiny):
    x, y = bars(24, 0)
    write(tmp_path / "f" / "train", x[:18], y[:18])
    write(tmp_path / "f" / "val", x[18:], y[18:])
    out = tmp_path / "run"
    assert cli.main(["train", "--data-dir", str(tmp_path / "f"), "--image-size", "20",
                     "--preset", "tiny", "--batch-size", "6", "--out", str(out),
                     "--no-progress"]) == 0
    assert cli.main(["evaluate", str(out / "last.npz"), "--no-progress"]) == 0
    assert "on 6 " in capsys.readouterr().out
    write(tmp_path / "f" / "test", x[:4], y[:4])       # now val/ validates and test/ tests
    assert cli.main(["evaluate", str(out / "last.npz"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "was split by train/ and val/ folders" in err and "train/ and test/ and val/" in err


def test_predict_on_many_pictures_gives_a_line_each(tmp_path, capsys, tiny):
    from minicaps.io.checkpoint import load_checkpoint
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (12, 20, 20, 3)).astype(np.uint8)
    write(tmp_path / "pets", images, np.arange(12) % 3, names=("bird", "cat", "dog"))
    out = tmp_path / "run"
    assert cli.main(["train", "--data-dir", str(tmp_path / "pets"), "--preset", "tiny",
                     "--batch-size", "6", "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    assert cli.main(["predict", str(out / "last.npz"), str(tmp_path / "pets")]) == 0
    lines = capsys.readouterr().out.splitlines()
    pictures = sorted((tmp_path / "pets").rglob("*.png"))
    assert [line.split("\t")[0] for line in lines] == [str(p) for p in pictures]
    # each line's class and length: the network's own on the picture's RGB pixels
    model, _ = load_checkpoint(out / "last.npz").model_with("auto")
    x = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in pictures]) / 255.0
    lengths = model.predict_lengths(x.astype(model.dtype))
    for line, row in zip(lines, lengths):
        j = int(row.argmax())
        assert line.split("\t")[1:] == [("bird", "cat", "dog")[j], f"length {row[j]:.4f}"]
    # a picture that cannot be read is said, and the others still get their line
    (tmp_path / "junk.png").write_bytes(b"not a picture")
    assert cli.main(["predict", str(out / "last.npz"), str(pictures[0]),
                     str(tmp_path / "junk.png"), str(pictures[1])]) == 2
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 2 and "junk.png" in captured.err
    assert "1 of 3 pictures could not be read" in captured.err
    assert cli.main(["predict", str(out / "last.npz"), str(tmp_path / "pets"),
                     "--save-reconstruction", str(tmp_path / "r.png")]) == 2
    assert "goes with one picture" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--image-size", "32"], "--image-size read an image folder: give --data-dir"),
    (["--color", "gray", "--bad-images", "skip"], "--color, --bad-images read an image folder"),
    (["--test-fraction", "0.2"], "--test-fraction read an image folder"),
    (["--data-dir", "{folder}", "--dataset", "cifar10"], "both name the data: give one"),
])
def test_folder_options_go_with_a_folder(tmp_path, capsys, argv, message):
    folder = good_folder(tmp_path / "f")
    argv = [a.replace("{folder}", str(folder)) for a in argv]
    assert cli.main(["train", *argv, "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_without_pillow_the_cli_says_so_in_one_line(tmp_path, capsys, monkeypatch):
    import minicaps.data.folder

    def no_pillow():
        raise ImportError('reading images needs Pillow: pip install "minicaps[viz]"')
    monkeypatch.setattr(minicaps.data.folder, "load_pil", no_pillow)
    folder = good_folder(tmp_path / "f")
    assert cli.main(["train", "--data-dir", str(folder), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err == ('minicaps train: error: reading images needs Pillow: '
                   'pip install "minicaps[viz]"\n')


def test_a_test_fraction_beside_a_split_of_its_own_is_said_unused(tmp_path, capsys, tiny):
    x, y = bars(12, 0)
    write(tmp_path / "f" / "train", x, y)
    write(tmp_path / "f" / "val", x[:6], y[:6])
    assert cli.main(["train", "--data-dir", str(tmp_path / "f"), "--test-fraction", "0.3",
                     "--image-size", "20", "--preset", "tiny", "--batch-size", "6",
                     "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "split of its own (train/ and val/), so --test-fraction is not used" in printed
    assert "12 training and 6 test images" in printed


@pytest.mark.mnist
@pytest.mark.skipif(not MNIST_ROOT, reason="set MINICAPS_DATA to the MNIST files")
def test_mnist_written_as_pngs_reads_back_exactly(tmp_path):
    from minicaps.data.mnist import load_mnist
    x, y, xt, yt = load_mnist(download=False)
    write(tmp_path / "train", x[:500], y[:500], names=tuple(str(k) for k in range(10)))
    write(tmp_path / "test", xt[:200], yt[:200], names=tuple(str(k) for k in range(10)))
    data = load_image_folder(tmp_path, **QUIET)
    for got, want in ((data.x_train, folder_order(x[:500], y[:500])[0]),
                      (data.x_test, folder_order(xt[:200], yt[:200])[0])):
        np.testing.assert_array_equal(got, want)
