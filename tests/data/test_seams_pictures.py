"""Seams of pictures, `minicaps predict` and image folders: each hostile case gets one clear
error naming what was wrong (or a warning naming what was left out), within a time limit
and a memory cap, and leaves the files it was given as they were.

- predict --pretrained: every positional argument is a picture;
- a named pipe, named as a picture or a checkpoint, is refused before it is opened;
- folders that cannot be read are said, by name, never skipped in silence;
- a picture whose data ends before its pixels do is unreadable, whatever Pillow's
  LOAD_TRUNCATED_IMAGES says;
- the errors name the file and the cause (a picture too big, permission denied, a class
  folder that cannot be read), and a folder nested 1,100 deep is walked quickly.

Where the test runs as root, who reads anything, "cannot be read" is made by failing the
calls that would read the file or folder (``unreadable``); otherwise by its mode.
"""
import builtins
import io
import os
import re
import struct
import zlib

import numpy as np
import pytest

import minicaps as mc
from minicaps import cli
from minicaps.io.checkpoint import save_checkpoint
from minicaps.data.dataset import DataError
from minicaps.gradcheck import randomize_params, tiny_config

from limits import file_hashes

Image = pytest.importorskip("PIL.Image", reason='needs Pillow: pip install "minicaps[viz]"')
from PIL import ImageDraw, ImageFile  # noqa: E402
from minicaps.data.folder import load_image_folder, read_image  # noqa: E402
from minicaps.data.folder_files import picture_files  # noqa: E402
from minicaps.data.pictures import load_digit, read_grayscale  # noqa: E402
from hostile_cases import one_line_error

MB = 1 << 20
SECONDS = 10
QUIET = dict(log=lambda line: None)
CHECKPOINT = "(checkpoint|weights) file"      # what a checkpoint reader says it expected


# --- pictures and networks the cases use --------------------------------------------------------

def seven(path, size=(60, 80)):
    """A white '7' on black, as a gray PNG (or JPEG, by the suffix)."""
    image = Image.new("L", size, 0)
    w, h = size
    ImageDraw.Draw(image).line([(w * 0.2, h * 0.2), (w * 0.8, h * 0.2), (w * 0.4, h * 0.85)],
                               fill=255, width=max(2, w // 10))
    image.save(path)
    return path


def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bytes(width, height, data, color_type=0, bit_depth=8, interlace=0):
    """A PNG of the given header around the zlib stream ``data`` (its IDAT)."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, interlace)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data)
            + chunk(b"IEND", b""))


ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
         (0, 1, 1, 2))      # (first column, first row, column step, row step) of each pass


def interlaced_png(pixels, passes=7):
    """8-bit gray ``pixels`` as an Adam7-interlaced PNG (Pillow writes none), the data of
    its first ``passes`` passes only."""
    rows = []
    for x0, y0, dx, dy in ADAM7[:passes]:
        sub = pixels[y0::dy, x0::dx]
        if sub.size:
            rows += [b"\x00" + row.tobytes() for row in sub]
    h, w = pixels.shape
    return png_bytes(w, h, zlib.compress(b"".join(rows)), interlace=1)


def jpeg_claiming(path, width, height):
    """A 16 x 16 gray JPEG whose frame header (SOF0) claims width x height pixels."""
    buffer = io.BytesIO()
    Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16)).save(buffer, "JPEG")
    data = bytearray(buffer.getvalue())
    sof = data.find(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    path.write_bytes(bytes(data))
    return path


def class_folder(root, counts=(6, 6)):
    """root/<a, b, ...>/<k>.png, counts[c] small gray pictures in class c; root."""
    rng = np.random.default_rng(0)
    for c, n in enumerate(counts):
        folder = root / "abcdefgh"[c]
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(n):
            pixels = rng.integers(0, 256, (10, 10), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{k}.png")
    return root


def tiny_checkpoint(path, settings=None):
    model = randomize_params(mc.CapsNet(tiny_config(), seed=0, device="cpu"),
                             np.random.default_rng(2))
    extra = {"settings": settings} if settings else None
    return save_checkpoint(path, model, mc.Adam(), epoch=1, step=1,
                           rng_state=np.random.default_rng(0), extra=extra)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """The tiny 10x10, 3-class CapsNet with random weights, as if trained on MNIST."""
    return tiny_checkpoint(tmp_path_factory.mktemp("run") / "tiny.npz")


@pytest.fixture(scope="module")
def folder_checkpoint(tmp_path_factory):
    """The same network, as if trained on an image folder of 10x10 gray pictures."""
    settings = {"dataset": "pets", "classes": ["a", "b", "c"],
                "data_info": {"folder": "/nonexistent/pets", "image_size": [10, 10],
                              "color": "gray"}}
    return tiny_checkpoint(tmp_path_factory.mktemp("run") / "pets.npz", settings)


def said(path, text):
    """A pattern matching ``path`` followed by ``text``, both as written."""
    return re.escape(f"{path}{text}")


@pytest.fixture
def unreadable(monkeypatch, request):
    """unreadable(path): the file or folder at path cannot be read by this process: by its
    mode (restored afterwards), or where the test runs as root by failing the calls that
    read it (open, os.scandir, os.listdir) with PermissionError."""
    if os.geteuid() != 0:
        def take_away(path):
            mode = path.stat().st_mode
            path.chmod(0)
            request.addfinalizer(lambda: path.chmod(mode))
        return take_away
    denied = set()

    def guard(call):
        def guarded(target=".", *args, **kw):
            if not isinstance(target, int) and os.path.abspath(os.fspath(target)) in denied:
                raise PermissionError(13, "Permission denied", os.fspath(target))
            return call(target, *args, **kw)
        return guarded
    monkeypatch.setattr(builtins, "open", guard(builtins.open))
    monkeypatch.setattr(os, "scandir", guard(os.scandir))
    monkeypatch.setattr(os, "listdir", guard(os.listdir))
    return lambda path: denied.add(os.path.abspath(path))


# --- 4. predict --pretrained: every positional is a picture ----------------------------------

def test_predict_pretrained_reads_every_positional_as_a_picture(tmp_path, capsys, bounded):
    first, second = seven(tmp_path / "a.png"), seven(tmp_path / "b.png", size=(90, 70))
    with bounded(memory=1024 * MB, seconds=60):
        code = cli.main(["predict", "--pretrained", str(first), str(second)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    lines = captured.out.splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(first), str(second)]
    assert all(line.split("\t")[1] in "0123456789" for line in lines)


# --- 5. a named pipe is refused before it is opened --------------------------------------------

@pytest.fixture
def pipe(tmp_path):
    """pipe(name): a named pipe that nothing writes to (opening it to read would wait)."""
    def make(name):
        path = tmp_path / name
        os.mkfifo(path)
        return path
    return make


def test_a_pipe_named_as_a_picture_is_refused_by_predict(checkpoint, pipe, capsys, bounded):
    fifo = pipe("digit.png")
    for argv in (["predict", str(checkpoint), str(fifo)], ["predict", "--pretrained", str(fifo)]):
        err = one_line_error(capsys, argv, bounded)
        assert f"{fifo}: not a picture file but a named pipe" in err


def test_a_pipe_among_pictures_is_said_and_the_others_read(checkpoint, pipe, tmp_path, capsys,
                                                           bounded):
    fifo, picture = pipe("digit.png"), seven(tmp_path / "seven.png")
    with bounded(memory=512 * MB, seconds=SECONDS):
        assert cli.main(["predict", str(checkpoint), str(fifo), str(picture)]) == 2
    captured = capsys.readouterr()
    assert captured.out.startswith(f"{picture}\t")
    assert f"{fifo}: not a picture file but a named pipe" in captured.err


@pytest.mark.parametrize("read", [read_grayscale, load_digit,
                                  lambda path: read_image(path, (10, 10), "gray")],
                         ids=["read_grayscale", "load_digit", "read_image"])
def test_the_picture_readers_refuse_a_pipe(pipe, bounded, read):
    fifo = pipe("digit.png")
    with bounded(memory=256 * MB, seconds=SECONDS):
        with pytest.raises(ValueError, match=said(fifo, ": not a picture file but a named pipe")):
            read(fifo)


@pytest.mark.parametrize("argv", [
    ["predict", "{pipe}", "{picture}"],
    ["evaluate", "{pipe}", "--no-progress"],
    ["plot", "{pipe}"],
    ["compare", "{pipe}", "{checkpoint}"],
    ["compare", "{checkpoint}", "{pipe}"],
    ["export-weights", "{pipe}", "{out}"],
    ["train", "--resume", "{pipe}", "--data-dir", "{folder}", "--out", "{out}", "--no-progress"],
], ids=lambda argv: argv[0] + (" second" if argv[1] == "{checkpoint}" else ""))
def test_a_pipe_named_as_a_checkpoint_is_refused(checkpoint, pipe, tmp_path, capsys, bounded,
                                                 argv):
    fifo, picture = pipe("last.npz"), seven(tmp_path / "seven.png")
    folder = class_folder(tmp_path / "pets")
    before = file_hashes(tmp_path)
    names = {"{pipe}": fifo, "{picture}": picture, "{checkpoint}": checkpoint,
             "{folder}": folder, "{out}": tmp_path / "out"}
    err = one_line_error(capsys, [str(names.get(a, a)) for a in argv], bounded)
    assert f"{fifo}: not a checkpoint file but a named pipe" in err
    assert file_hashes(tmp_path) == before and not (tmp_path / "out").exists()


def test_the_checkpoint_readers_refuse_a_pipe_and_a_folder(pipe, tmp_path, bounded):
    from minicaps.io.checkpoint import load_checkpoint, read_epoch
    from minicaps.io.weights import load_any, load_weights
    fifo = pipe("last.npz")
    for read in (load_checkpoint, load_any, load_weights, read_epoch):
        with bounded(memory=256 * MB, seconds=SECONDS):
            with pytest.raises(ValueError, match=said(fifo, ": not a ") + CHECKPOINT + " but a "
                                                 "named pipe"):
                read(fifo)
            with pytest.raises(ValueError, match=said(tmp_path, ": not a ") + CHECKPOINT + " but a "
                                                 "folder"):
                read(tmp_path)


def test_a_missing_checkpoint_is_still_said_missing(tmp_path, capsys, bounded):
    err = one_line_error(capsys, ["evaluate", str(tmp_path / "gone.npz")], bounded)
    assert f"{tmp_path / 'gone.npz'}: no such checkpoint file" in err


# --- 9. folders that cannot be read are said ---------------------------------------------------

@pytest.fixture
def nested(tmp_path, unreadable):
    """15 pictures: 6 in a/, 6 in b/ and 3 in b/more/, which cannot be read."""
    root = class_folder(tmp_path / "pets")
    more = root / "b" / "more"
    more.mkdir()
    for k in range(3):
        Image.fromarray(np.full((10, 10), 40 * k, np.uint8)).save(more / f"{k}.png")
    unreadable(more)
    return root, more


def test_an_unreadable_subfolder_is_refused_by_name(nested, bounded):
    root, more = nested
    with bounded(memory=256 * MB, seconds=SECONDS):
        with pytest.raises(DataError, match=said(more, ": a folder that cannot be read (Permission "
                                                       "denied)") + ".*--bad-images skip"):
            load_image_folder(root, **QUIET)


def test_an_unreadable_subfolder_is_skipped_with_a_warning_naming_it(nested, bounded):
    root, more = nested
    said = []
    with bounded(memory=256 * MB, seconds=SECONDS):
        data = load_image_folder(root, bad_images="skip", log=said.append)
    assert len(data.y_train) + len(data.y_test) == 12
    warnings = [line for line in said if line.startswith("warning: skipping")]
    assert len(warnings) == 1 and str(more) in warnings[0] and "cannot be read" in warnings[0]


def test_train_and_predict_say_an_unreadable_subfolder(nested, checkpoint, tmp_path, capsys,
                                                       bounded):
    root, more = nested
    err = one_line_error(capsys, ["train", "--data-dir", str(root), "--out", str(tmp_path / "run"),
                                  "--no-progress"], bounded)
    assert f"{more}: a folder that cannot be read" in err
    assert not (tmp_path / "run").exists()
    err = one_line_error(capsys, ["predict", str(checkpoint), str(root)], bounded)
    assert f"{more}: a folder that cannot be read" in err


def test_an_unreadable_class_folder_is_said_unreadable_not_empty(tmp_path, unreadable, bounded):
    root = class_folder(tmp_path / "pets", counts=(4, 4, 4))
    unreadable(root / "c")
    for bad_images in ("error", "skip"):           # a class left out would shift the labels
        with bounded(memory=256 * MB, seconds=SECONDS):
            with pytest.raises(DataError, match=re.escape(f"class folder {root / 'c'} cannot be "
                                                          "read (Permission denied)")):
                load_image_folder(root, bad_images=bad_images, **QUIET)


# --- weak: pictures whose data ends before their pixels do -------------------------------------

@pytest.fixture
def short_pictures(tmp_path):
    """A PNG claiming 1 x 5,000,000 pixels with 100 bytes of data, and a 16 x 16 JPEG whose
    header claims 13000 x 13000."""
    tall = tmp_path / "tall.png"
    data = zlib.compress(b"\x00\x80" * 40)      # 40 rows of the 5 million
    tall.write_bytes(png_bytes(1, 5_000_000, data))
    assert len(data) < 100
    return tall, jpeg_claiming(tmp_path / "claim.jpg", 13000, 13000)


@pytest.mark.parametrize("which", [0, 1], ids=["png", "jpeg"])
def test_a_picture_short_of_its_data_is_unreadable(short_pictures, bounded, which):
    path = short_pictures[which]
    before = file_hashes(path.parent)
    for read in (read_grayscale, lambda p: read_image(p, (10, 10), "gray")):
        with bounded(memory=160 * MB, seconds=SECONDS):
            with pytest.raises(ValueError, match=re.escape(f"{path}: not an image that can be "
                                                           "read (") + ".*ends before"):
                read(path)
    assert file_hashes(path.parent) == before


def test_a_folder_picture_short_of_its_data_is_named_or_skipped(short_pictures, tmp_path, bounded):
    root = class_folder(tmp_path / "pets")
    for k, path in enumerate(short_pictures):
        path.rename(root / "a" / f"short{k}{path.suffix}")
    with bounded(memory=256 * MB, seconds=SECONDS):
        with pytest.raises(DataError, match=r"short[01]\.(png|jpg): not an image that can be read"):
            load_image_folder(root, image_size=10, **QUIET)
        said = []
        data = load_image_folder(root, image_size=10, bad_images="skip", log=said.append)
    assert len(data.y_train) + len(data.y_test) == 12
    assert sum("warning: skipping" in line and "short" in line for line in said) == 2


def test_predict_pretrained_refuses_the_jpeg_short_of_its_data(short_pictures, capsys, bounded):
    _, claim = short_pictures
    err = one_line_error(capsys, ["predict", "--pretrained", str(claim)], bounded, memory=1024 * MB)
    assert f"{claim}: not an image that can be read" in err


def test_an_interlaced_png_short_of_its_later_passes_is_unreadable(tmp_path, bounded):
    pixels = np.random.default_rng(3).integers(0, 256, (13, 11), dtype=np.uint8)
    whole, cut = tmp_path / "whole.png", tmp_path / "cut.png"
    whole.write_bytes(interlaced_png(pixels))
    cut.write_bytes(interlaced_png(pixels, passes=5))
    with bounded(memory=160 * MB, seconds=SECONDS):
        np.testing.assert_array_equal(read_image(whole, (13, 11), "gray"), pixels)
        with pytest.raises(ValueError, match=r"cut\.png: not an image that can be read"):
            read_image(cut, (13, 11), "gray")


def test_truncated_pictures_stay_unreadable_with_load_truncated_images_on(tmp_path, monkeypatch,
                                                                        bounded):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)   # as some programs set it
    pixels = np.random.default_rng(4).integers(0, 256, (40, 40), dtype=np.uint8)
    for name in ("cut.png", "cut.jpg"):
        path = tmp_path / name
        Image.fromarray(pixels).save(path)
        path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])
        for read in (read_grayscale, lambda p: read_image(p, (40, 40), "gray")):
            with bounded(memory=160 * MB, seconds=SECONDS):
                with pytest.raises(ValueError, match=said(path, ": not an image that can be read")):
                    read(path)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True          # left as the program set it


@pytest.mark.parametrize("mode, options", [
    ("1", {}), ("L", {}), ("P", {"bits": 1}), ("P", {"bits": 4}), ("P", {}), ("LA", {}),
    ("I;16", {}), ("RGB", {}), ("RGBA", {}),
    ("L", {"format": "JPEG"}), ("RGB", {"format": "JPEG", "progressive": True}),
    ("RGB", {"format": "JPEG", "subsampling": 0}),
])
@pytest.mark.parametrize("size", [(1, 1), (37, 5), (5, 300)])
def test_whole_pictures_of_every_kind_are_still_read(tmp_path, mode, options, size):
    rng = np.random.default_rng(5)
    rgb = Image.fromarray(rng.integers(0, 256, size[::-1] + (3,), dtype=np.uint8))
    if mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65536, size[::-1], dtype=np.uint16))
    elif mode == "P":
        image = rgb.quantize(2 ** options.get("bits", 8))
    else:
        image = rgb.convert(mode)
    path = tmp_path / ("picture.jpg" if options.get("format") == "JPEG" else "picture.png")
    image.save(path, **options)
    with Image.open(path) as saved:
        assert saved.mode == mode
        if path.suffix == ".jpg":
            saved.draft("L", saved.size)        # libjpeg decodes a colour JPEG to gray
        pixels = np.asarray(saved) if mode == "I;16" else np.asarray(saved.convert("L"))
    if mode == "I;16":          # 16 bits are scaled by 257 (folder._to_mode)
        pixels = np.round(pixels / 257.0).astype(np.uint8)
    np.testing.assert_array_equal(read_image(path, pixels.shape, "gray"), pixels)
    assert read_grayscale(path).shape == pixels.shape


# --- weak: errors name the file and the cause --------------------------------------------------

def test_predict_names_a_picture_too_big_once(folder_checkpoint, tmp_path, capsys, bounded):
    folder = tmp_path / "pictures"
    folder.mkdir()
    huge = folder / "huge.png"
    huge.write_bytes(png_bytes(10000, 10000, b"", color_type=2))     # the header says it all
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(folder / "small.png")
    with bounded(memory=256 * MB, seconds=SECONDS):
        assert cli.main(["predict", str(folder_checkpoint), str(folder)]) == 2
    captured = capsys.readouterr()
    assert captured.out.startswith(f"{folder / 'small.png'}\t")
    assert captured.err.count("would take") == 1
    assert f"{huge}: 10000 x 10000 pixels would take" in captured.err
    with pytest.raises(ValueError, match="^" + said(huge, ": 10000 x 10000 pixels would take")):
        read_image(huge, (10, 10), "gray")


def test_a_picture_that_cannot_be_read_says_permission_denied(tmp_path, unreadable, capsys,
                                                              checkpoint, bounded):
    root = class_folder(tmp_path / "pets")
    locked = root / "a" / "0.png"
    unreadable(locked)
    with bounded(memory=256 * MB, seconds=SECONDS):
        with pytest.raises(ValueError, match=said(locked, ": permission denied")):
            read_grayscale(locked)
        with pytest.raises(DataError, match=said(locked, ": permission denied")):
            load_image_folder(root, **QUIET)
    err = one_line_error(capsys, ["predict", str(checkpoint), str(locked)], bounded)
    assert f"{locked}: permission denied" in err


@pytest.fixture
def deep(tmp_path):
    """A class folder b/ holding a picture 1,100 folders down (and a/, b/ 3 pictures each);
    removed from the bottom up, since a recursive removal would run out of stack."""
    root = class_folder(tmp_path / "pets", counts=(3, 3))
    chain = [root / "b"]
    for _ in range(1100):
        chain.append(chain[-1] / "d")
    for folder in chain[1:]:
        folder.mkdir()          # one at a time: os.makedirs recurses
    bottom = chain[-1] / "x.png"
    Image.fromarray(np.full((10, 10), 200, np.uint8)).save(bottom)
    yield root, bottom
    bottom.unlink()
    for folder in reversed(chain[1:]):
        folder.rmdir()


def test_a_folder_1100_deep_is_walked_quickly(deep, bounded):
    root, bottom = deep
    with bounded(memory=256 * MB, seconds=SECONDS):
        data = load_image_folder(root, **QUIET)
        found = picture_files(root / "b")
    assert len(data.y_train) + len(data.y_test) == 7
    assert found[-1] == bottom and len(found) == 4
