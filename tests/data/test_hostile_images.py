"""Hostile and odd pictures for `minicaps predict`: each is read under a memory cap and a
time limit (tests/limits.py), and must give either the right digit or a ValueError that
names the file and says what is wrong.

The expected digits come from clean copies of the same drawing (white ink on black, small
enough to read as it is), and the expected sizes from the pictures' own dimensions.
"""
import re
import struct
import zlib

import numpy as np
import pytest

import minicaps as mc
from minicaps import cli
from minicaps.io.checkpoint import save_checkpoint
from minicaps.gradcheck import randomize_params, tiny_config

Image = pytest.importorskip("PIL.Image", reason='needs Pillow: pip install "minicaps[viz]"')
from PIL import ImageDraw   # noqa: E402
from minicaps.data.pictures import load_digit, mnist_style, read_grayscale  # noqa: E402

CAP = 160 << 20     # address space a case may add: reading is meant to stay under ~100 MB
SMALL_CAP = 64 << 20    # for a picture whose decoding at full size would take more than this
SECONDS = 20


def seven(size, ink=255, paper=0):
    """A thick '7' in the middle of a gray (W, H) picture, drawn to scale."""
    image = Image.new("L", size, paper)
    w, h = size
    s = min(w, h) / 120
    ImageDraw.Draw(image).line([(w / 2 - 35 * s, h / 2 - 40 * s), (w / 2 + 25 * s, h / 2 - 40 * s),
                                (w / 2 - 10 * s, h / 2 + 40 * s)], fill=ink, width=round(9 * s))
    return image


def clean_digit(size=(600, 400)):
    """The digit of the drawing, read from white ink on black at a size read as it is."""
    return mnist_style(np.asarray(seven(size), dtype=np.float64) / 255)


def png(path, width, height, color_type=2, rows=None):
    """A PNG of 8-bit samples (color type 0 gray, 2 RGB), written row by row so that a
    huge one costs little: every row is ``rows`` (default zeros), or the header alone with
    rows=False."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n"
                + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)))
        if rows is not False:
            row = b"\x00" + (rows or bytes(width * {0: 1, 2: 3}[color_type]))
            z = zlib.compressobj(9)
            data = b"".join(z.compress(row) for _ in range(height)) + z.flush()
            f.write(chunk(b"IDAT", data))
        f.write(chunk(b"IEND", b""))
    return path


def megabytes(message):
    return int(re.search(r"would take (\d+) MB", message).group(1))


@pytest.fixture(scope="module")
def big_png(tmp_path_factory):
    """7000 x 7000 RGB, white: 196 MB in Pillow (RGB takes 4 bytes a pixel), 200 KB on disk."""
    return png(tmp_path_factory.mktemp("big") / "wall.png", 7000, 7000, rows=b"\xff" * 21000)


@pytest.fixture(scope="module")
def big_jpegs(tmp_path_factory):
    """The seven on 6000 x 4000 pixels of white, as a baseline and a progressive 4:4:4 JPEG."""
    folder = tmp_path_factory.mktemp("jpeg")
    image = seven((6000, 4000), ink=0, paper=255).convert("RGB")
    image.save(folder / "baseline.jpg", quality=90)
    image.save(folder / "progressive.jpg", quality=90, progressive=True, subsampling=0)
    return folder / "baseline.jpg", folder / "progressive.jpg"


# --- too big ---------------------------------------------------------------------------------

def test_a_7000_by_7000_png_is_refused_from_its_header(bounded, big_png):
    with bounded(memory=SMALL_CAP, seconds=SECONDS):      # decoding it would need 196 MB
        with pytest.raises(ValueError, match=r"wall\.png: 7000 x 7000 pixels would take \d+ MB "
                                             r"to decode, .*shrink the picture") as refused:
            read_grayscale(big_png)
    assert 196 <= megabytes(str(refused.value)) <= 200          # 7000 * 7000 * 4 bytes


def test_an_absurd_header_is_refused(bounded, tmp_path):
    absurd = png(tmp_path / "absurd.png", 2**31 - 1, 2**31 - 1, rows=False)
    with bounded(memory=SMALL_CAP, seconds=SECONDS):
        with pytest.raises(ValueError, match=r"absurd\.png: .*4611686014132420609 pixels.*shrink"):
            read_grayscale(absurd)


def test_a_picture_one_pixel_wide_counts_its_rows(bounded, tmp_path):
    # 12 million 1-byte pixels, but each row also costs Pillow an 8-byte pointer: 108 MB
    tall = png(tmp_path / "tall.png", 1, 12_000_000, color_type=0, rows=False)
    with bounded(memory=SMALL_CAP, seconds=SECONDS):
        with pytest.raises(ValueError, match=r"tall\.png: 1 x 12000000 pixels would take") as refused:
            read_grayscale(tall)
    assert 108 <= megabytes(str(refused.value)) <= 110


def test_a_huge_file_is_refused_before_it_is_opened(bounded, tmp_path):
    huge = png(tmp_path / "huge.png", 100, 100, color_type=0)
    with open(huge, "r+b") as f:            # sparse: 200 MB long, nothing written
        f.truncate(200_000_000)
    with bounded(memory=SMALL_CAP, seconds=SECONDS):
        with pytest.raises(ValueError, match=r"huge\.png: a file of 200 MB is more than this reads"):
            read_grayscale(huge)


def test_a_progressive_jpeg_counts_its_coefficients(bounded, big_jpegs):
    # libjpeg keeps every DCT coefficient of a progressive JPEG, 2 bytes each, whatever the
    # scale it decodes at: 6000 x 4000 x 3 components x 2 bytes = 144 MB
    _, progressive = big_jpegs
    with bounded(memory=SMALL_CAP, seconds=SECONDS):
        with pytest.raises(ValueError, match=r"progressive\.jpg: 6000 x 4000 pixels") as refused:
            read_grayscale(progressive)
    assert 144 <= megabytes(str(refused.value)) <= 146


def test_predict_refuses_a_big_png_in_one_line(bounded, big_png, capsys, tmp_path):
    model = randomize_params(mc.CapsNet(tiny_config(), seed=0, device="cpu"), np.random.default_rng(2))
    ckpt = save_checkpoint(tmp_path / "tiny.npz", model, mc.Adam(), epoch=1, step=1,
                           rng_state=np.random.default_rng(0))
    with bounded(memory=CAP, seconds=SECONDS):
        assert cli.main(["predict", str(ckpt), str(big_png)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("minicaps predict: error: ") and err.count("\n") == 1
    assert "wall.png: 7000 x 7000 pixels" in err and "shrink" in err and "Traceback" not in err


# --- big, but read within the bound -------------------------------------------------------------

def test_a_big_jpeg_is_decoded_small(bounded, big_jpegs):
    baseline, _ = big_jpegs
    with bounded(memory=SMALL_CAP, seconds=SECONDS):     # whole, it would take 96 MB
        digit = load_digit(baseline)[..., 0]
    assert np.abs(digit - clean_digit()).max() < 0.1
    assert np.corrcoef(digit.ravel(), clean_digit().ravel())[0, 1] > 0.99


def test_a_big_gray_png_is_read_within_the_bound(bounded, tmp_path):
    path = tmp_path / "poster.png"
    seven((7000, 7000), ink=0, paper=255).save(path)       # 49 MB decoded: accepted
    with bounded(memory=CAP, seconds=SECONDS):
        gray = read_grayscale(path)
        digit = mnist_style(gray)
    assert gray.dtype == np.float32 and max(gray.shape) <= 1024
    assert np.corrcoef(digit.ravel(), clean_digit().ravel())[0, 1] > 0.99


# --- damaged and not pictures -------------------------------------------------------------------

def test_a_truncated_png_is_refused(bounded, tmp_path):
    whole = tmp_path / "whole.png"
    seven((300, 200)).save(whole)
    cut = tmp_path / "cut.png"
    cut.write_bytes(whole.read_bytes()[:-200])
    with bounded(memory=CAP, seconds=SECONDS):
        with pytest.raises(ValueError, match=r"cut\.png: not an image that can be read"):
            read_grayscale(cut)


@pytest.mark.parametrize("name, content", [("empty.png", b""), ("notes.png", b"a digit, 7\n"),
                                           ("figure.png", b"%!PS-Adobe-3.0 EPSF-3.0\n"
                                                          b"%%BoundingBox: 0 0 10 10\n")])
def test_what_is_not_a_picture_this_reads_is_refused(bounded, tmp_path, name, content):
    path = tmp_path / name          # an EPS would have Pillow run Ghostscript: not read
    path.write_bytes(content)
    with bounded(memory=CAP, seconds=SECONDS):
        with pytest.raises(ValueError, match=rf"{re.escape(name)}: not an image that can be read"
                                             r".*this reads .*PNG"):
            read_grayscale(path)


@pytest.mark.parametrize("bad, size", [(np.nan, (60, 40)), (np.inf, (60, 40)), (-np.inf, (60, 40)),
                                       (np.nan, (3000, 2000))])   # shrunk 3 times: still NaN
def test_a_float_tiff_with_non_finite_pixels_is_refused(bounded, tmp_path, bad, size):
    pixels = np.asarray(seven(size), dtype=np.float32) / 255
    pixels[5, 7] = bad
    path = tmp_path / "float.tif"
    Image.fromarray(pixels).save(path)
    with Image.open(path) as image:
        assert image.mode == "F"
    with bounded(memory=CAP, seconds=SECONDS):
        with pytest.raises(ValueError, match=r"float\.tif: the picture has pixels that are NaN or infinite"):
            read_grayscale(path)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_mnist_style_refuses_non_finite_pixels(bounded, bad):
    gray = np.asarray(seven((60, 40)), dtype=np.float64) / 255
    gray[30, 20] = bad
    with bounded(memory=CAP, seconds=SECONDS):
        with pytest.raises(ValueError, match="pixels that are NaN or infinite"):
            mnist_style(gray)


# --- backgrounds -----------------------------------------------------------------------------

@pytest.mark.parametrize("name, ink, paper", [("dark_on_grey", 13, 115), ("light_on_grey", 217, 115),
                                              ("black_on_white", 0, 255), ("white_on_black", 255, 0)])
def test_every_background_gives_the_same_digit(bounded, tmp_path, name, ink, paper):
    path = tmp_path / f"{name}.png"
    seven((600, 400), ink=ink, paper=paper).save(path)
    with bounded(memory=CAP, seconds=SECONDS):
        digit = load_digit(path)[..., 0]
    np.testing.assert_allclose(digit, clean_digit(), atol=1e-5)


def test_paper_lit_unevenly_keeps_its_dark_ink(bounded):
    # the border (the edge of the sheet, in shadow) is darker than the paper inside it:
    # the paper departs from it upwards, but far less than the ink does downwards
    y, x = np.mgrid[:400, :600]
    light = 0.95 - 0.25 * np.hypot((y - 200) / 200, (x - 300) / 300) / np.sqrt(2)
    ink = np.asarray(seven((600, 400)), dtype=np.float64) / 255
    photo = light * (1 - 0.9 * ink)
    with bounded(memory=CAP, seconds=SECONDS):
        digit = mnist_style(photo)
    assert np.corrcoef(digit.ravel(), clean_digit().ravel())[0, 1] > 0.98


@pytest.mark.parametrize("name, size", [("flat.png", (300, 200)), ("dot.png", (1, 1))])
def test_a_picture_of_one_grey_is_blank(bounded, tmp_path, name, size):
    path = tmp_path / name
    Image.new("L", size, 128).save(path)
    with bounded(memory=CAP, seconds=SECONDS):
        with pytest.raises(ValueError, match=rf"{re.escape(name)}: the image is blank"):
            load_digit(path)
