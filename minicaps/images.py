"""Your own picture of a digit, prepared the way MNIST's digits were.

MNIST (LeCun et al.) fitted each digit's bounding box into 20x20 pixels keeping its aspect
ratio, with anti-aliasing, then placed it in a 28x28 field so that its centre of mass sat
in the middle. A network trained on MNIST expects exactly that: white ink on black, in
[0, 1]. ``mnist_style`` does the same to any grayscale array; ``load_digit`` reads a PNG
(or any image Pillow reads) and calls it. Pillow is in the viz extra:
``pip install "minicaps[viz]"``.
"""
import warnings
from pathlib import Path

import numpy as np

VIZ_EXTRA = 'pip install "minicaps[viz]"'
INK = 0.2          # a pixel is ink when it is above this fraction of the brightest one
MAX_PIXELS = 50_000_000   # read_grayscale refuses bigger pictures before decoding them


def _pil():
    try:
        from PIL import Image
    except ImportError as e:
        raise ImportError(f"reading images needs Pillow: {VIZ_EXTRA}") from e
    return Image


def read_grayscale(path):
    """A picture file as a float (H, W) array in [0, 1], 1 = white.

    Colour is averaged to luminance; transparent pixels are laid on white (a drawing
    exported with a transparent background is dark ink on nothing). Raises ValueError for
    a file that is not an image Pillow can read, or one of more than MAX_PIXELS pixels
    (its float copies would take gigabytes; it is refused from its header, undecoded).
    """
    Image = _pil()
    path = Path(path)
    try:
        with warnings.catch_warnings():     # Pillow warns of big pictures: refused below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)        # reads the header only
    except FileNotFoundError:
        raise
    except Image.DecompressionBombError as e:      # far above MAX_PIXELS
        raise ValueError(f"{path}: {e}; shrink the picture first") from e
    except (OSError, SyntaxError, ValueError) as e:   # PIL.UnidentifiedImageError: OSError
        raise _unreadable(path, e) from e
    with image:
        width, height = image.size
        if width * height > MAX_PIXELS:
            raise ValueError(f"{path}: {width} x {height} pixels is more than this reads "
                             f"({MAX_PIXELS // 1_000_000} megapixels); shrink the picture "
                             f"first: a digit needs no more than a few hundred pixels a side")
        try:
            image.load()
            if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
                a = np.asarray(image, dtype=np.float64)
                return np.clip(a / (65535.0 if a.max() > 255 else 255.0), 0, 1)
            rgba = np.asarray(image.convert("RGBA"), dtype=np.float64) / 255
        except (OSError, SyntaxError, ValueError) as e:     # a damaged or cut-off file
            raise _unreadable(path, e) from e
    gray = rgba[..., :3] @ np.array([0.299, 0.587, 0.114])      # ITU-R 601 luma, as PIL's "L"
    alpha = rgba[..., 3]
    on_white = alpha * gray + (1 - alpha)
    if np.ptp(on_white) < 1e-3 and np.ptp(alpha) > 0:   # e.g. white ink on transparency
        return alpha
    return on_white


def _unreadable(path, e):
    why = "" if str(path) in str(e) else f" ({e})"
    return ValueError(f"{path}: not an image that can be read{why}")


def mnist_style(gray, size=(28, 28), box=None):
    """A grayscale (H, W) array, any size, as an MNIST digit (size) float32 in [0, 1].

    1. white ink on black: inverted if the border (the background) is mostly light;
    2. the background level subtracted and the brightest ink scaled to 1;
    3. cropped to the ink's bounding box (pixels above INK of the brightest), with a
       margin for the faint edge;
    4. resized so that the bounding box fits a box x box square (20 for 28x28), keeping
       the aspect ratio;
    5. placed so that its centre of mass is at (H/2, W/2) in pixel indices, (14, 14)
       in 28x28, where MNIST's are.
    """
    Image = _pil()
    gray = np.asarray(gray, dtype=np.float64)
    if gray.ndim != 2 or min(gray.shape) < 1:
        raise ValueError(f"expected a 2-D grayscale image, got shape {gray.shape}")
    H, W = size
    box = box or max(1, round(20 * min(H, W) / 28))
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    if np.median(border) > 0.5:
        gray, border = 1 - gray, 1 - border
    ink = np.clip(gray - np.median(border), 0, None)
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
    small = Image.fromarray(ink.astype(np.float32)).resize((new_w, new_h), Image.Resampling.LANCZOS)
    small = np.clip(np.asarray(small, dtype=np.float64), 0, 1)
    return center_by_mass(small, size).astype(np.float32)


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


def save_gray(images, path, scale=4):
    """Write float images in [0, 1], (H, W) each (or (H, W, C)), side by side with a
    1-pixel gray gap, each pixel drawn as scale x scale, as a PNG."""
    Image = _pil()
    images = [np.asarray(a, dtype=np.float64) for a in images]
    images = [a.mean(axis=-1) if a.ndim == 3 else a for a in images]
    h = max(a.shape[0] for a in images)
    gap = np.full((h, 1), 0.5)
    strip = np.concatenate(sum(([np.pad(a, ((0, h - a.shape[0]), (0, 0))), gap]
                                for a in images), [])[:-1], axis=1)
    pixels = np.round(255 * np.clip(strip, 0, 1)).astype(np.uint8)
    pixels = np.kron(pixels, np.ones((scale, scale), dtype=np.uint8))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format="PNG")
    return path
