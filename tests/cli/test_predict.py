"""Your own picture: MNIST-style preparation (minicaps.data.pictures) and `minicaps predict`.

The pictures are drawn by the tests with Pillow; the network is the gradient checker's tiny
10x10, 3-class one with random weights (predict only has to run it and print its lengths).
"""
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

import minicaps as mc
from minicaps import cli
from minicaps.io.checkpoint import load_checkpoint, save_checkpoint
from minicaps.gradcheck import randomize_params, tiny_config

Image = pytest.importorskip("PIL.Image", reason='needs Pillow: pip install "minicaps[viz]"')
from PIL import ImageDraw   # noqa: E402
from minicaps.data.pictures import (INK, center_by_mass, load_digit, mnist_style,
                                    read_grayscale)  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def center_of_mass(a):
    return np.array([a.sum(axis=1) @ np.arange(a.shape[0]), a.sum(axis=0) @ np.arange(a.shape[1])]) / a.sum()


def ink_box(a):
    rows, cols = np.nonzero(a > INK * a.max())
    return rows.max() - rows.min() + 1, cols.max() - cols.min() + 1


def draw_seven(path=None, size=(160, 120), mode="RGB", ink=(20, 20, 40), paper=(250, 245, 235),
               offset=(30, 10)):
    """A thick '7', dark on light paper, away from the middle of a W x H picture."""
    image = Image.new(mode, size, paper)
    draw = ImageDraw.Draw(image)
    ox, oy = offset
    draw.line([(ox + 10, oy + 15), (ox + 70, oy + 15), (ox + 35, oy + 95)], fill=ink, width=9)
    if path is not None:
        image.save(path)
    return image


def read_grayscale_of(image):
    return np.asarray(image.convert("L"), dtype=np.float64) / 255


# --- preparation ---------------------------------------------------------------------------

def test_an_mnist_style_digit_stays_as_it_is():
    digit = mnist_style(read_grayscale_of(draw_seven()))
    again = mnist_style(digit)
    assert again.shape == (28, 28) and again.dtype == np.float32
    np.testing.assert_allclose(again, digit, atol=1e-6)
    # shifted by two pixels, it comes back to the same place
    np.testing.assert_allclose(mnist_style(np.roll(digit, (-2, 2), axis=(0, 1))), digit, atol=1e-6)


@pytest.mark.mnist
@pytest.mark.skipif(not os.environ.get("MINICAPS_DATA"), reason="set MINICAPS_DATA to the MNIST files")
def test_real_mnist_digits_are_unchanged():
    from minicaps.data.mnist import load_mnist
    x_test = load_mnist(download=False).x_test[:100] / 255.0
    out = np.stack([mnist_style(a) for a in x_test])
    assert np.abs(out - x_test).max(axis=(1, 2)).mean() < 0.02     # MNIST is already MNIST-style


def test_a_photo_like_picture_becomes_an_mnist_digit():
    gray = read_grayscale_of(draw_seven())
    out = mnist_style(gray)
    assert out.shape == (28, 28) and out.min() >= 0 and out.max() <= 1
    assert out.max() == pytest.approx(1, abs=0.05)
    np.testing.assert_allclose(center_of_mass(out), (14, 14), atol=0.75)
    assert max(ink_box(out)) in (19, 20, 21)                  # fitted into 20 x 20
    assert out[:3].max() == out[:, :3].max() == 0              # background black, ink white
    assert gray[0, 0] > 0.9 and out.mean() < 0.3


def test_aspect_ratio_is_kept():
    bar = np.zeros((100, 300))
    bar[20:80, 140:150] = 1                                   # 60 tall, 10 wide
    out = mnist_style(bar)
    h, w = ink_box(out)
    assert h in (19, 20, 21) and 2 <= w <= 5


def test_light_and_dark_backgrounds_give_the_same_digit():
    gray = read_grayscale_of(draw_seven())
    np.testing.assert_allclose(mnist_style(gray), mnist_style(1 - gray), atol=1e-6)


def test_other_sizes_fit_the_same_proportions():
    out = mnist_style(read_grayscale_of(draw_seven()), size=(10, 10))
    assert out.shape == (10, 10) and max(ink_box(out)) in (6, 7, 8)    # 20/28 of 10


def test_center_by_mass_crops_at_the_edges():
    patch = np.zeros((5, 30))
    patch[2, 0] = 1                                           # mass at the far left
    out = center_by_mass(patch, (28, 28))
    assert out.shape == (28, 28) and out[14, 14] == 1 and out.sum() == 1


def test_blank_picture_is_an_error():
    with pytest.raises(ValueError, match="blank"):
        mnist_style(np.full((30, 30), 0.8))


def test_modes_read_alike(tmp_path):
    rgb = draw_seven(tmp_path / "rgb.png")
    rgb.convert("L").save(tmp_path / "l.png")
    transparent = Image.new("RGBA", rgb.size, (0, 0, 0, 0))     # black ink on nothing
    ink = np.asarray(rgb.convert("L")) < 128
    transparent.putalpha(Image.fromarray((ink * 255).astype(np.uint8)))
    transparent.save(tmp_path / "rgba.png")
    Image.fromarray((np.asarray(rgb.convert("L"), dtype=np.uint16) * 257)).save(tmp_path / "i16.png")
    digits = {name: load_digit(tmp_path / f"{name}.png") for name in ("rgb", "l", "rgba", "i16")}
    for name, digit in digits.items():
        assert digit.shape == (28, 28, 1) and digit.dtype == np.float32, name
        assert np.corrcoef(digit.ravel(), digits["rgb"].ravel())[0, 1] > 0.95, name
    assert load_digit(tmp_path / "rgb.png", (12, 12, 3)).shape == (12, 12, 3)


def test_a_non_image_is_a_value_error(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("not a picture")
    with pytest.raises(ValueError, match="notes.png"):
        read_grayscale(path)
    draw_seven(tmp_path / "whole.png")
    whole = (tmp_path / "whole.png").read_bytes()
    cut = tmp_path / "cut.png"           # the header and the first half of the pixel data
    cut.write_bytes(whole[:len(whole) // 2])
    assert read_grayscale(tmp_path / "whole.png").shape == (120, 160)
    with pytest.raises(ValueError, match="cut.png: not an image that can be read"):
        read_grayscale(cut)


def png_header_only(path, width, height):
    """A PNG whose header claims width x height 8-bit gray pixels, with no pixel data."""
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))
    path.write_bytes(b"\x89PNG\r\n\x1a\n"
                     + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IEND", b""))
    return path


def test_a_picture_too_big_to_read_is_refused_from_its_header(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    big = png_header_only(tmp_path / "poster.png", 10_000, 8_000)     # 80 MB of 8-bit gray
    with pytest.raises(ValueError, match=r"poster.png: 10000 x 8000 pixels .* 80 MB .* shrink"):
        read_grayscale(big)
    with Image.open(big) as image:            # the header is all that was there to read
        assert image.size == (10_000, 8_000)
    below = png_header_only(tmp_path / "below.png", 10_000, 7_900)    # 79 MB: decoded, and cut
    with pytest.raises(ValueError, match=r"below.png: not an image that can be read"):
        read_grayscale(below)
    huge = png_header_only(tmp_path / "bomb.png", 20_000, 20_000)     # Pillow's own limit too
    with pytest.raises(ValueError, match=r"bomb.png: .*400000000 pixels.* shrink"):
        read_grayscale(huge)


# --- `minicaps predict` --------------------------------------------------------------------

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    model = randomize_params(mc.CapsNet(tiny_config(), seed=0, device="cpu"), np.random.default_rng(2))
    path = tmp_path_factory.mktemp("run") / "tiny.npz"
    return save_checkpoint(path, model, mc.Adam(), epoch=1, step=1, rng_state=np.random.default_rng(0))


def test_predict_prints_every_length_and_the_class(checkpoint, tmp_path, capsys):
    picture = tmp_path / "seven.png"
    draw_seven(picture)
    assert cli.main(["predict", str(checkpoint), str(picture)]) == 0
    printed = capsys.readouterr().out.splitlines()
    model = load_checkpoint(checkpoint).model
    lengths = model.predict_lengths(load_digit(picture, model.config.input_shape)[None])[0]
    pred = int(lengths.argmax())
    assert printed[0] == f"{picture}: predicted {pred}"
    rows = [line.split() for line in printed[2:5]]
    assert [int(r[0]) for r in rows] == [0, 1, 2]
    np.testing.assert_allclose([float(r[1]) for r in rows], lengths, atol=1e-4)
    assert printed[2 + pred].endswith("<- predicted")


def test_predict_grayscale_and_save_reconstruction(checkpoint, tmp_path, capsys):
    picture, recon = tmp_path / "gray.png", tmp_path / "out" / "recon.png"
    draw_seven(picture, mode="L", ink=30, paper=230, offset=(60, 5))
    assert cli.main(["predict", str(checkpoint), str(picture), "--save-reconstruction", str(recon)]) == 0
    assert "predicted" in capsys.readouterr().out
    with Image.open(recon) as image:
        assert image.format == "PNG" and image.size == ((2 * 10 + 1) * 4, 10 * 4)


def test_predict_a_non_image_exits_2_in_one_line(checkpoint, tmp_path, capsys):
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"\x89PNG but not really")
    assert cli.main(["predict", str(checkpoint), str(junk)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("minicaps predict: error:") and "junk.png" in err and err.count("\n") == 1
    assert cli.main(["predict", str(checkpoint), str(tmp_path / "missing.png")]) == 2
    assert "missing.png" in capsys.readouterr().err


def test_predict_from_the_shell_has_no_traceback(checkpoint, tmp_path):
    blank = tmp_path / "blank.png"
    Image.new("L", (40, 40), 255).save(blank)
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    result = subprocess.run([sys.executable, "-m", "minicaps", "predict", str(checkpoint), str(blank)],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "blank" in result.stderr and "Traceback" not in result.stderr
