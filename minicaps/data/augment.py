"""The training images' augmentations: the paper's random shifts, random crops and
horizontal flips.

    shift: out[n, i, j] = images[n, i - dy[n], j - dx[n]]       |dy|, |dx| <= max_shift
    crop:  out[n, i, j] = images[n, cy[n] + i, cx[n] + j]      0 <= cy <= H - crop
    flip:  out[n, i, j] = images[n, i, W - 1 - j]              where flip[n]

Training draws a crop offset and a coin per image; testing uses the centre crop and no
flip (smallNORB's protocol: 48x48 images, random 32x32 crops to train on, the centre
32x32 to test on). Images (N, H, W) or (N, H, W, C), NumPy or CuPy, any dtype.
"""
import numpy as np

from minicaps.backend import get_xp


def check_crop(crop, size):
    """``crop`` must fit in images of ``size`` (H, W)."""
    if crop is None:
        return
    if not isinstance(crop, (int, np.integer)) or isinstance(crop, bool) or crop < 1:
        raise ValueError(f"crop must be an integer >= 1 (the side of the square cut out), "
                         f"got {crop!r}")
    if crop > min(size):
        raise ValueError(f"crop {crop} is bigger than the {size[0]}x{size[1]} images: give a "
                         f"crop of at most {min(size)}")


def draw_crops(n, crop, rng, size):
    """(cy, cx): n top-left corners uniform over the positions where a crop x crop square
    fits in (H, W) images."""
    check_crop(crop, size)
    cy = rng.integers(0, size[0] - crop + 1, size=n)
    cx = rng.integers(0, size[1] - crop + 1, size=n)
    return cy, cx


def crop_images(images, cy, cx, crop):
    """out[n] = images[n, cy[n]:cy[n] + crop, cx[n]:cx[n] + crop]."""
    xp = get_xp(images)
    n = images.shape[0]
    rows = cy[:, None] + xp.arange(crop)                   # (n, crop)
    cols = cx[:, None] + xp.arange(crop)
    return images[xp.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


def center_crop(images, crop):
    """The crop x crop square in the middle (rounded up and left where the margin is odd)."""
    if crop is None:
        return images
    h, w = images.shape[1:3]
    check_crop(crop, (h, w))
    top, left = (h - crop) // 2, (w - crop) // 2
    return images[:, top:top + crop, left:left + crop]


def draw_flips(n, rng):
    """n coins: True where the image is mirrored left to right."""
    return rng.random(n) < 0.5


def flip_images(images, flip):
    """images[n] mirrored left to right where flip[n]."""
    xp = get_xp(images)
    where = flip.reshape((-1,) + (1,) * (images.ndim - 1))
    return xp.where(where, images[:, :, ::-1], images)


# --- shifts (the paper's only augmentation) ---------------------------------------------

def random_shift(images, max_shift=2, rng=None):
    """Shift each image by integers dy, dx uniform in [-max_shift, max_shift], zero-padded.

    images: (N, H, W) or (N, H, W, C); output[n, i, j] = images[n, i - dy, j - dx] (zero
    where that is outside). rng: a numpy Generator or a seed. The paper's only augmentation.
    """
    rng = np.random.default_rng(rng)
    images = np.asarray(images)
    dy, dx = draw_shifts(len(images), max_shift, rng, images.shape[1:3])
    return shift_images(images, dy, dx, max_shift)


def draw_shifts(n, max_shift, rng, size):
    """(dy, dx): two arrays of n integers uniform in [-max_shift, max_shift] from ``rng``
    (the draw random_shift makes), checked against the images' ``size`` (H, W)."""
    m = int(max_shift)
    if not 0 <= m < min(size):
        raise ValueError(f"max_shift must be in 0..{min(size) - 1} for {size[0]}x{size[1]} "
                         f"images, got {max_shift}")
    dy, dx = rng.integers(-m, m + 1, size=(2, n))
    return dy, dx


def shift_images(images, dy, dx, max_shift):
    """images[n] shifted by (dy[n], dx[n]) with zeros shifted in, |dy|, |dx| <= max_shift:
    out[n, i, j] = images[n, i - dy[n], j - dx[n]], read from the images zero-padded by
    max_shift on every side. NumPy or CuPy arrays (all on one device)."""
    xp = get_xp(images)
    n, h, w = images.shape[:3]
    m = int(max_shift)
    padded = xp.zeros((n, h + 2 * m, w + 2 * m) + images.shape[3:], dtype=images.dtype)
    padded[:, m:m + h, m:m + w] = images
    rows = (m - dy)[:, None] + xp.arange(h)                  # (n, h): i - dy + m
    cols = (m - dx)[:, None] + xp.arange(w)
    return padded[xp.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]
