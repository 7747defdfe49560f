"""Your own picture of a digit, prepared the way MNIST's digits were.

MNIST (LeCun et al.) fitted each digit's bounding box into 20x20 pixels keeping its aspect
ratio, with anti-aliasing, then placed it in a 28x28 field so that its centre of mass sat
in the middle. A network trained on MNIST expects exactly that: white ink on black, in
[0, 1]. ``mnist_style`` does the same to any grayscale array; ``load_digit`` reads a PNG
(or a JPEG, GIF, BMP, TIFF, WebP or PNM picture) and calls it. Pillow is in the viz extra:
``pip install "minicaps[viz]"``.

A picture comes from whoever runs ``minicaps predict``, so reading one is bounded: what
Pillow would hold to decode it is worked out from its header and the picture refused
above MAX_BYTES; a JPEG is decoded at 1/2, 1/4 or 1/8 scale where that is enough; and
every picture is shrunk in Pillow to at most MAX_SIDE pixels a side before NumPy sees it
(the digit ends up 20 pixels tall anyway). A picture whose data ends before its pixels do
is refused, not read with the rest left black or gray as Pillow would: a JPEG from its
length (check_jpeg_length), a PNG from what its data inflates to (check_png_rows), and
any other with Pillow's LOAD_TRUNCATED_IMAGES off. Only a regular file is opened.
"""
import math
import warnings
from pathlib import Path

import numpy as np

from minicaps.data.picture_bytes import (FORMATS, MAX_SIDE, bytes_to_decode, check_jpeg_length,
                                         check_png_rows, jpeg_coefficient_bytes, working_mode)
from minicaps.io.files import regular_file

VIZ_EXTRA = 'pip install "minicaps[viz]"'
INK = 0.2          # a pixel is ink when it is above this fraction of the brightest one
MAX_BYTES = 80_000_000    # read_grayscale refuses a file, or a decoding, that needs more
SHRINK = "shrink the picture first: a digit needs no more than a few hundred pixels a side"
LUMA = (0.299, 0.587, 0.114)       # ITU-R 601, as PIL's "L"


def load_pil():
    try:
        from PIL import Image
    except ImportError as e:
        raise ImportError(f"reading images needs Pillow: {VIZ_EXTRA}") from e
    return Image


def read_grayscale(path):
    """A picture file as a float32 (H, W) array in [0, 1], 1 = white, at most MAX_SIDE
    pixels a side (a bigger picture is box-averaged down by a whole factor).

    Colour is averaged to luminance; transparent pixels are laid on white (a drawing
    exported with a transparent background is dark ink on nothing). Raises ValueError for
    a file that is not a picture this reads, one whose decoding would need more than
    MAX_BYTES (refused from its header, undecoded), and one with NaN or infinite pixels
    (a float TIFF can hold them).
    """
    Image = load_pil()
    path = Path(path)
    if path.is_file() and path.stat().st_size > MAX_BYTES:
        raise ValueError(f"{path}: a file of {path.stat().st_size / 1e6:.0f} MB is more than "
                         f"this reads ({MAX_BYTES / 1e6:.0f} MB); {SHRINK}")
    image = open_picture(Image, path)
    try:
        width, height = image.size
        coefficients = jpeg_coefficient_bytes(image, path)    # at full size, whatever the scale
        _draft(image)
        need = bytes_to_decode(image) + coefficients
        if need > MAX_BYTES:
            raise ValueError(f"{path}: {width} x {height} pixels would take {need / 1e6:.0f} MB "
                             f"to decode, more than this reads ({MAX_BYTES / 1e6:.0f} MB); {SHRINK}")
        try:
            decode_picture(image, path)
            small = _shrink(image, working_mode(image))
            pixels, mode = np.asarray(small), small.mode   # a copy: small may be image itself
        except (OSError, SyntaxError, ValueError) as e:     # a damaged or cut-off file
            raise unreadable_picture(path, e) from e
    finally:
        image.close()       # the file, and the memory of the full-size picture
    return _gray(pixels, mode, path)


def open_picture(Image, path):
    """The picture at path, its header read and nothing decoded. ValueError naming it
    for what is not a picture this reads: a named pipe or a folder, a file this user may
    not read, a JPEG too short for the pixels its header claims (check_jpeg_length)."""
    regular_file(path, "picture file")      # a named pipe would keep Pillow waiting
    try:
        # Pillow warns of big pictures (weighed later) and of damaged headers (a corrupt
        # EXIF block): the picture is then read or refused in one line, not warned about
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = Image.open(path, formats=[f for f in FORMATS if f != "MPO"])  # a JPEG
    except FileNotFoundError:
        raise
    except PermissionError:
        raise ValueError(f"{path}: permission denied: this user may not read the file; give "
                         f"it read access (chmod u+r)") from None
    except Image.DecompressionBombError as e:      # far above MAX_BYTES
        raise ValueError(f"{path}: {str(e).rstrip('.')}; {SHRINK}") from e
    except (OSError, SyntaxError, ValueError) as e:   # PIL.UnidentifiedImageError: OSError
        raise unreadable_picture(path, e) from e
    try:
        check_jpeg_length(image, path)
    except OSError as e:
        image.close()
        raise unreadable_picture(path, e) from e
    return image


def decode_picture(image, path):
    """Decode ``image``'s pixels (Image.load), or an OSError where its data ends before
    they do: Pillow's LOAD_TRUNCATED_IMAGES is kept off meanwhile, whatever the program
    set, and a PNG's rows are counted first (check_png_rows)."""
    from PIL import ImageFile
    if image.format == "PNG":
        check_png_rows(image, path)
    setting, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, False
    try:
        with warnings.catch_warnings():     # as in open_picture: read or refused, not warned about
            warnings.simplefilter("ignore")
            image.load()
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = setting


def unreadable_picture(path, e):
    why = "" if str(path) in str(e) else f" ({e})"
    return ValueError(f"{path}: not an image that can be read{why}; this reads "
                      f"{', '.join(sorted(FORMATS))} files")


def _draft(image):
    """Have a JPEG decoded at 1/2, 1/4 or 1/8 scale (libjpeg's scaled IDCT), as small as
    keeps its longer side at least MAX_SIDE, and in gray if it is in colour. Other
    formats are decoded whole."""
    factor = max(image.size) / MAX_SIDE
    if image.format in ("JPEG", "MPO") and (factor >= 2 or image.mode == "RGB"):
        size = tuple(max(1, math.ceil(n / max(factor, 1))) for n in image.size)
        image.draft("L" if image.mode == "RGB" else image.mode, size)




def _shrink(image, mode):
    """``image`` in ``mode``, box-averaged by the smallest whole factor that brings its
    longer side to MAX_SIDE or less (Image.reduce weighs colour by alpha)."""
    if image.mode != mode:
        image = image.convert(mode)
    factor = math.ceil(max(image.size) / MAX_SIDE)
    return image.reduce(factor) if factor > 1 else image


def _gray(pixels, mode, path):
    """The pixels of a shrunk picture (mode I, F, L, RGB or RGBA) as float32 gray in [0, 1]."""
    a = pixels.astype(np.float32)
    if not np.isfinite(a).all():
        raise ValueError(f"{path}: the picture has pixels that are NaN or infinite; "
                         f"save it with finite values (0 black to 1, 255 or 65535 white)")
    if mode in ("I", "F"):
        return np.clip(a / (65535.0 if a.max() > 255 else 255.0), 0, 1)
    if mode == "L":
        return a / 255
    gray = (a[..., 0] * LUMA[0] + a[..., 1] * LUMA[1] + a[..., 2] * LUMA[2]) / 255
    if mode == "RGB":
        return gray
    alpha = a[..., 3] / 255
    on_white = alpha * gray + (1 - alpha)
    if np.ptp(on_white) < 1e-3 and np.ptp(alpha) > 0:   # e.g. white ink on transparency
        return alpha
    return on_white


def mnist_style(gray, size=(28, 28), box=None):
    """A grayscale (H, W) array, any size, as an MNIST digit (size) float32 in [0, 1].

    1. white ink on black: the background level is the border's median, and the ink is
       on whichever side of it has more contrast (``_ink``), dark or light;
    2. the background level subtracted and the brightest ink scaled to 1;
    3. cropped to the ink's bounding box (pixels above INK of the brightest), with a
       margin for the faint edge;
    4. resized so that the bounding box fits a box x box square (20 for 28x28), keeping
       the aspect ratio;
    5. placed so that its centre of mass is at (H/2, W/2) in pixel indices, (14, 14)
       in 28x28, where MNIST's are.
    Raises ValueError for NaN or infinite pixels and for a picture with no ink.
    """
    Image = load_pil()
    with np.errstate(over="ignore"):
        gray = np.asarray(gray, dtype=np.float32)
    if gray.ndim != 2 or min(gray.shape) < 1:
        raise ValueError(f"expected a 2-D grayscale image, got shape {gray.shape}")
    if not np.isfinite(gray).all():
        raise ValueError("the image has pixels that are NaN or infinite (as float32); "
                         "only finite pixel values can be prepared")
    H, W = size
    box = box or max(1, round(20 * min(H, W) / 28))
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    ink = _ink(gray, np.median(border))
    if ink.max() <= 1e-3:
        raise ValueError("the image is blank: no ink found")
    ink /= ink.max()
    rows, cols = np.nonzero(ink > INK)
    h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
    scale = box / max(h, w)
    # the crop keeps a margin worth one output pixel around the ink, so that the faint
    # anti-aliased edge comes along; what lies further out (specks, noise) is dropped
    m = max(1, int(np.ceil(1 / scale)))
    top, left = max(rows.min() - m, 0), max(cols.min() - m, 0)
    ink = ink[top:rows.max() + m + 1, left:cols.max() + m + 1]
    new_h, new_w = (max(1, round(n * scale)) for n in ink.shape)
    small = Image.fromarray(ink).resize((new_w, new_h), Image.Resampling.LANCZOS)
    small = np.clip(np.asarray(small, dtype=np.float32), 0, 1)
    return center_by_mass(small, size).astype(np.float32)


def _ink(gray, background):
    """How far each pixel lies from the background level on the ink's side, >= 0.

    The ink is the side with more contrast. With t half the picture's largest departure
    from the background, the sums of what lies more than t above it and more than t below
    it are compared: a threshold that high passes the ink, which stands far from the
    background, and not what stands near it on the other side (uneven light on paper, a
    grey background's noise). It asks nothing of the background's own level, so white on
    black, black on white, and dark or light ink on mid-grey are all read alike.
    """
    off = gray - np.float32(background)
    t = max(off.max(), -off.min()) / 2
    above = np.clip(off - t, 0, None).sum(dtype=np.float64)
    below = np.clip(-off - t, 0, None).sum(dtype=np.float64)
    return np.clip(off if above >= below else -off, 0, None)


def center_by_mass(patch, size):
    """Paste patch into a zero field of ``size`` with its centre of mass at (H/2, W/2)
    in pixel indices (MNIST's digits average (14.0, 14.0)), shifted by whole pixels and
    cropped at the edges."""
    H, W = size
    h, w = patch.shape
    mass = patch.sum()
    cy = (patch.sum(axis=1) @ np.arange(h)) / mass
    cx = (patch.sum(axis=0) @ np.arange(w)) / mass
    top, left = int(round(H / 2 - cy)), int(round(W / 2 - cx))
    out = np.zeros((H, W))
    y0, x0 = max(top, 0), max(left, 0)                      # the overlap, in the field
    y1, x1 = min(top + h, H), min(left + w, W)
    if y1 > y0 and x1 > x0:
        out[y0:y1, x0:x1] = patch[y0 - top:y1 - top, x0 - left:x1 - left]
    return out


def load_digit(path, input_shape=(28, 28, 1)):
    """Read a picture and prepare it for a network with ``input_shape`` (H, W, C):
    float32 (H, W, C) in [0, 1] (the gray digit repeated over C channels)."""
    H, W, C = input_shape
    try:
        digit = mnist_style(read_grayscale(path), (H, W))
    except ValueError as e:
        raise ValueError(str(e) if str(path) in str(e) else f"{path}: {e}") from e
    return np.repeat(digit[..., None], C, axis=-1)


def save_gray(images, path, scale=4, inputs=()):
    """Write float images in [0, 1], (H, W) each (or (H, W, C)), side by side with a
    1-pixel gray gap, each pixel drawn as scale x scale, as a PNG (checkpoint.replace_file:
    never over one of the ``inputs`` the command read)."""
    from minicaps.io.writer import replace_file
    Image = load_pil()
    images = [np.asarray(a, dtype=np.float64) for a in images]
    images = [a.mean(axis=-1) if a.ndim == 3 else a for a in images]
    h = max(a.shape[0] for a in images)
    gap = np.full((h, 1), 0.5)
    strip = np.concatenate(sum(([np.pad(a, ((0, h - a.shape[0]), (0, 0))), gap]
                                for a in images), [])[:-1], axis=1)
    pixels = np.round(255 * np.clip(strip, 0, 1)).astype(np.uint8)
    pixels = np.kron(pixels, np.ones((scale, scale), dtype=np.uint8))
    path = Path(path)
    replace_file(path, lambda f: Image.fromarray(pixels).save(f, format="PNG"), inputs=inputs)
    return path
