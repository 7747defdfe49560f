"""Robustness by transformation, beyond the paper: test accuracy against one affine
transformation at a time, at growing strength.

The paper's affNIST test (section 5.2) mixes rotation, shear, scale and translation in
one test set. Here each acts alone on the test digits, so a curve per transformation
shows where a network's accuracy falls away:

=============  =========================  ==============================================
name           strengths (steps K)        what each test digit gets
=============  =========================  ==============================================
rotation       0..60 degrees, K+1 points  rotated by +-strength, the sign drawn per image
shear          0..0.6, K+1 points         x += +-strength * y, the sign drawn per image
scale          0.6..1.4, 2K+1 points      scaled by the factor along both axes (1: none)
translation    0..12 pixels, K+1 points   moved by strength pixels in a direction drawn per
                                          image, rounded to whole pixels on each axis
=============  =========================  ==============================================

Rotation, shear and scale are about the digit's centre, sampled bilinearly by
affnist.warp; a translation is warp with an integer move, an exact shift of the pixels.
Whatever leaves the canvas is lost, translation included (ink within the middle 20x20
of a 28x28 digit stays on 40x40 for moves of up to 10 pixels along each axis; on 28x28,
up to 4). The signs and directions come from ``default_rng(seed)``, drawn once per
image and kept for every strength, so a curve follows the same images.

The canvas is the networks' input (H = W). A digit smaller than it (MNIST's 28x28 on
the 40x40 canvas of a network trained on expanded MNIST) is put at its centre: strength
0 of every transformation is exactly the centred digit, not the test set as is
(expanded MNIST's test digits sit at random offsets; affNIST's are transformed already),
so the curves start from the accuracy on centred digits.
"""
from typing import NamedTuple

import numpy as np

from minicaps.data.affnist import AffineParams, warp

# the strongest of each: degrees, shear s, the scale factor's distance from 1, pixels
STRONGEST = {"rotation": 60.0, "shear": 0.6, "scale": 0.4, "translation": 12.0}
TRANSFORMATIONS = tuple(STRONGEST)
IDENTITY = {"rotation": 0.0, "shear": 0.0, "scale": 1.0, "translation": 0.0}
# Steps K past this draw no new curve (100 points from none to the strongest), while each
# step costs a pass over the whole test set per transformation.
MAX_STEPS = 100


class Directions(NamedTuple):
    """Per image (N,): the sign of its rotation and of its shear (+-1), and the
    direction of its move (radians, 0 = to the right, pi/2 = down)."""
    rotation_sign: np.ndarray
    shear_sign: np.ndarray
    angle: np.ndarray


def draw_directions(n, seed=0):
    """Directions for n images from default_rng(seed): rotation signs, shear signs,
    then move directions uniform in [0, 2 pi)."""
    rng = np.random.default_rng(seed)
    rotation_sign = rng.choice([-1.0, 1.0], size=n)
    shear_sign = rng.choice([-1.0, 1.0], size=n)
    return Directions(rotation_sign, shear_sign, rng.uniform(0, 2 * np.pi, size=n))


def strengths(name, steps):
    """The strengths of one transformation at ``steps`` steps from none to the strongest:
    K+1 evenly spaced (translation: rounded to whole pixels, repeats dropped); scale 2K+1
    factors from 0.6 to 1.4 around 1."""
    if name not in STRONGEST:
        raise ValueError(f"unknown transformation {name!r}, expected one of "
                         f"{', '.join(TRANSFORMATIONS)}")
    if int(steps) != steps or not 1 <= steps <= MAX_STEPS:
        raise ValueError(f"steps must be an integer from 1 to {MAX_STEPS}, got {steps!r}")
    strongest = STRONGEST[name]
    if name == "scale":             # k / K, not linspace: exactly 1 at k = 0
        return 1.0 + strongest * np.arange(-steps, steps + 1) / steps
    grid = strongest * np.arange(steps + 1) / steps
    return np.unique(np.rint(grid)) if name == "translation" else grid


def affine_params(name, strength, directions):
    """AffineParams applying ``name`` alone at ``strength`` to each image."""
    n = len(directions.angle)
    fields = dict(rotation=np.zeros(n), shear=np.zeros(n), scale_y=np.ones(n),
                  scale_x=np.ones(n), ty=np.zeros(n), tx=np.zeros(n))
    if name == "rotation":
        fields["rotation"] = strength * directions.rotation_sign
    elif name == "shear":
        fields["shear"] = strength * directions.shear_sign
    elif name == "scale":
        fields["scale_y"] = fields["scale_x"] = np.full(n, float(strength))
    elif name == "translation":
        fields["ty"] = np.rint(strength * np.sin(directions.angle)) + 0.0   # no -0.0
        fields["tx"] = np.rint(strength * np.cos(directions.angle)) + 0.0
    else:
        raise ValueError(f"unknown transformation {name!r}, expected one of "
                         f"{', '.join(TRANSFORMATIONS)}")
    return AffineParams(**fields)


def check_canvas(image_shape, size):
    """A ValueError unless images of image_shape (h, w[, C]) can be centred exactly on a
    size x size canvas: no bigger than it, and as many pixels left as right."""
    h, w = image_shape[:2]
    if h > size or w > size or (size - h) % 2 or (size - w) % 2:
        raise ValueError(f"{h}x{w} test images cannot be centred pixel for pixel on the "
                         f"networks' {size}x{size} input: robustness needs images of that "
                         f"size, or smaller by an even number of pixels")


def transformed(images, params, size):
    """images (N, h, w) or (N, h, w, C) uint8 warped onto size x size by params, each
    channel alike."""
    images = np.asarray(images)
    check_canvas(images.shape[1:], size)
    if images.ndim == 3:
        return warp(images, params, size)
    return np.stack([warp(images[..., c], params, size) for c in range(images.shape[3])],
                    axis=-1)


def accuracy(model, images, labels, batch_size=256):
    """The share of uint8 images the model classifies as labels."""
    from minicaps.data.dataset import to_model_input
    predicted = model.predict(to_model_input(images, model.dtype), batch_size=batch_size)
    return float(np.mean(predicted == np.asarray(labels)))


def robustness(models, images, labels, size, steps=4, seed=0, batch_size=256, log=None):
    """Each model's accuracy on the images under each transformation alone, at each of
    its strengths. Returns rows {"transformation", "strength", "accuracy": [one per
    model]}, transformation by transformation; ``log(row)`` as each is done. Every model
    reads the same transformed images; the identity's images are scored once."""
    directions = draw_directions(len(labels), seed)
    rows, plain = [], None
    for name in TRANSFORMATIONS:
        for strength in strengths(name, steps):
            if strength == IDENTITY[name] and plain is not None:
                scores = plain
            else:
                pictures = transformed(images, affine_params(name, strength, directions), size)
                scores = [accuracy(m, pictures, labels, batch_size) for m in models]
                if strength == IDENTITY[name]:
                    plain = scores
            row = {"transformation": name, "strength": float(strength), "accuracy": scores}
            rows.append(row)
            if log is not None:
                log(row)
    return rows


def at_each_strength(images, size, steps=4, seed=0, k=0):
    """{transformation: image k at each of its strengths (S, size, size[, C]) uint8}, with
    the sign and direction robustness() gives it."""
    chosen = Directions(*(d[k:k + 1] for d in draw_directions(len(images), seed)))
    return {name: np.concatenate([transformed(images[k:k + 1],
                                              affine_params(name, s, chosen), size)
                                  for s in strengths(name, steps)])
            for name in TRANSFORMATIONS}


def strength_text(name, strength):
    """A strength as the table prints it: '30 degrees', '0.2', 'x1.2', '4 pixels'."""
    if name == "rotation":
        return f"{strength:g} degrees"
    if name == "translation":
        return f"{strength:g} pixels"
    return f"x{strength:g}" if name == "scale" else f"{strength:g}"
