"""The paper's robustness test (Sabour et al. 2017, section 5.2): train on expanded MNIST,
test on affNIST.

Expanded MNIST: "each example is an MNIST digit placed randomly on a black background of
40x40 pixels". The authors' generator (research/capsules/input_data/mnist/mnist_shift.py,
``--shift=6 --pad=6``) pads each 28x28 digit by 6 pixels and writes it at every shift of
-6..6 pixels on each axis: 169 placements of each of the 60,000 training digits. Here the
training digits are centred on 40x40 (``expanded_mnist``) and training shifts each one by
integers uniform in -6..6 every epoch (``TRAIN_SHIFT``, the run's ``--shift``): each epoch
draws one of those 169 placements per digit, uniformly. The validation set places each test
digit at a seeded random one of its 169 places.

affNIST (Tijmen Tieleman, https://www.cs.toronto.edu/~tijmen/affNIST/): MNIST digits on
40x40 under "various reasonable affine transformations", "with significant translations
involved"; its test set transforms each of the 10,000 MNIST test digits 32 times (320,000
images), in Matlab files that ``scipy.io.loadmat`` reads: a struct ``affNISTdata`` whose
field ``image`` holds one 40x40 picture per column (1600 x N uint8, each column the
picture's rows one after another) and ``label_int`` the classes (also ``label_one_of_n``
and the transformations). No SHA-256 of the files is published, so ``load_affnist_test``
checks what can be checked: the layout, 320,000 pictures of 40x40, labels 0..9 and 32 of
each MNIST test digit's class (the class counts), and ``label_one_of_n`` against
``label_int``, each file read without trusting it (affnist_mat.read_affnist_mat). Put
``test.mat`` from ``32x/transformed/test.mat.zip`` at ``<root>/affnist/test.mat`` (or the
32 files of ``test_batches`` in ``<root>/affnist/test_batches/``), root being the data
folder (``$MINICAPS_DATA``).

Without those files ``affnist_test`` generates a stand-in from the MNIST test digits, each
scaled, sheared and rotated about its centre with bilinear resampling, then moved, named
after its ranges everywhere it goes:

- "affnist-like" (the default; ``AFFNIST_LIKE``): the ranges of TensorFlow Federated's
  affNIST-like transformations (tensorflow_federated/python/simulation/datasets/emnist,
  ``get_infinite``: "approximately equivalent to the one described at" the affNIST page):
  rotation uniform in +-20 degrees, shear uniform in +-0.2, horizontal and vertical scale
  each log-uniform in 0.8..1.25, a move uniform in +-5 pixels on each axis (not whole
  pixels); a move that would push ink off the 40x40 canvas is shortened until none leaves.
- "affnist-wide" (``AFFNIST_WIDE``, a harder variant; called "affnist-generated" by
  checkpoints written before it had this name): rotation +-20 degrees, shear +-0.2, scales
  uniform in 0.8..1.2, and a whole-pixel move uniform over every position that keeps all of
  the ink on the canvas: up to 18 pixels across, past anything training shows.
"""
import os
from typing import NamedTuple

import numpy as np

from minicaps.data.affnist_mat import AFFNIST_TEST_SIZE, CANVAS, MAX_MAT_BYTES, read_affnist_mat
from minicaps.data.dataset import DataError, DataNotFoundError, Dataset, data_root
from minicaps.io.files import data_file
from minicaps.data.registry import ALIASES

DIGIT = 28
MAX_OFFSET = CANVAS - DIGIT          # 12: the digit's top-left corner at 0..12, centre +-6
TRAIN_SHIFT = 6                      # expanded MNIST's shifts: -6..6 on each axis, each epoch
EXPANDED_SEED = 40                   # the validation set's placements (expanded_mnist)
GENERATED_SEED = 320                 # the transformations of the generated affNIST test set
CLASSES = tuple(str(d) for d in range(10))

# The generated stand-ins of the affNIST test set (see the module's docstring for sources):
# name -> {parameter: (low, high)} and how each is drawn.
AFFNIST_LIKE = {"rotation": (-20.0, 20.0),      # degrees, counter-clockwise on the screen
                "shear": (-0.2, 0.2),           # x += shear * y, about the digit's centre
                "scale_y": (0.8, 1.25),         # log-uniform
                "scale_x": (0.8, 1.25),
                "move": (-5.0, 5.0)}            # pixels on each axis, uniform, shortened if
                                                # ink would leave the canvas
AFFNIST_WIDE = {"rotation": (-20.0, 20.0),
                "shear": (-0.2, 0.2),
                "scale_y": (0.8, 1.2),          # uniform
                "scale_x": (0.8, 1.2)}          # and a whole-pixel move anywhere ink fits
AFFNIST_RANGES = AFFNIST_WIDE                   # draw_affine's ranges
GENERATED = {"affnist-like": AFFNIST_LIKE, "affnist-wide": AFFNIST_WIDE}
OLD_NAMES = ALIASES   # in checkpoints written before the rename

AFFNIST_COPIES = 32                  # transformations of each test digit in the real set
MNIST_TEST_COUNTS = (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009)
_WORK = 64                           # canvas on which a digit is transformed before it moves


# --- expanded MNIST --------------------------------------------------------------------------

def place_on_canvas(images, offsets, size=CANVAS):
    """images (N, h, w) on black (N, size, size) canvases, each with its top-left corner
    at offsets[n] = (oy, ox): out[n, oy + i, ox + j] = images[n, i, j]."""
    images, offsets = np.asarray(images), np.asarray(offsets)
    n, h, w = images.shape
    if offsets.shape != (n, 2):
        raise ValueError(f"expected offsets ({n}, 2), got {offsets.shape}")
    if n and (offsets.min() < 0 or offsets[:, 0].max() > size - h
              or offsets[:, 1].max() > size - w):
        raise ValueError(f"offsets must keep the {h}x{w} images on the {size}x{size} canvas")
    out = np.zeros((n, size, size), images.dtype)
    rows = offsets[:, :1] + np.arange(h)
    cols = offsets[:, 1:] + np.arange(w)
    out[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]] = images
    return out


def expand(images, rng, size=CANVAS):
    """Each 28x28 image at a random place on a size x size black canvas: offsets drawn
    from rng as integers uniform in 0..size-28 per axis. Returns (canvases, offsets)."""
    images = np.asarray(images)
    max_offset = size - images.shape[1]
    offsets = rng.integers(0, max_offset + 1, size=(len(images), 2))
    return place_on_canvas(images, offsets, size), offsets


def centre(images, size=CANVAS):
    """Each 28x28 image at the centre of a black size x size canvas (offset (size-28)/2)."""
    images = np.asarray(images)
    offset = (size - images.shape[1]) // 2
    return place_on_canvas(images, np.full((len(images), 2), offset), size)


def expanded_mnist(mnist, seed=EXPANDED_SEED):
    """The paper's training set for section 5.2, and its like-for-like test set: the
    training digits centred on 40x40, to be shifted by up to TRAIN_SHIFT = 6 pixels each
    epoch (the run's shift: one of the authors' 169 placements of each digit, drawn
    anew every epoch), and the test digits each at one random place within 6 pixels of the
    centre (expand, from default_rng(seed))."""
    x_test, _ = expand(mnist[2], np.random.default_rng(seed))
    return Dataset(centre(mnist[0]), np.asarray(mnist[1]), x_test, np.asarray(mnist[3]),
                   CLASSES, "expanded-mnist",
                   {"canvas": CANVAS, "max_offset": MAX_OFFSET, "seed": seed,
                    "train": "centred, shifted by up to 6 pixels each epoch",
                    "shift": TRAIN_SHIFT})


# --- affine transformations ------------------------------------------------------------------

class AffineParams(NamedTuple):
    """One transformation per image, arrays (N,): scale, then shear, then rotate, all about
    the digit's centre, then move the centre by (ty, tx) pixels from the canvas centre."""
    rotation: np.ndarray      # degrees, counter-clockwise as seen on the screen
    shear: np.ndarray         # x += shear * y (x to the right, y down)
    scale_y: np.ndarray
    scale_x: np.ndarray
    ty: np.ndarray
    tx: np.ndarray


def affine_matrix(rotation, shear, scale_y, scale_x):
    """The 2x2 matrix taking (row, col) offsets from the digit's centre to offsets on the
    canvas: rotate @ shear @ scale, written in (x, y) with y down, then reordered."""
    t = np.deg2rad(rotation)
    rotate = np.array([[np.cos(t), np.sin(t)], [-np.sin(t), np.cos(t)]])   # (x, y), y down
    xy = rotate @ np.array([[1.0, shear], [0.0, 1.0]]) @ np.diag([scale_x, scale_y])
    return xy[::-1, ::-1]                                                   # (row, col)


def warp(digits, params, size=CANVAS):
    """digits (N, h, w) uint8 transformed onto (N, size, size) uint8 canvases by params,
    sampled bilinearly (zeros outside), rounded to the nearest integer.

    out[p] = digit[A^-1 (p - c_out - t) + c_in] with A = affine_matrix, c the centres
    ((h-1)/2, (w-1)/2) and ((size-1)/2, (size-1)/2), t = (ty, tx). The identity puts the
    digit at offset (size-h)/2 unchanged; an integer t moves the result by whole pixels.
    """
    from scipy.ndimage import affine_transform
    digits = np.asarray(digits)
    n, h, w = digits.shape
    c_in = np.array([(h - 1) / 2, (w - 1) / 2])
    c_out = np.full(2, (size - 1) / 2)
    out = np.empty((n, size, size), np.uint8)
    for k in range(n):
        inverse = np.linalg.inv(affine_matrix(params.rotation[k], params.shear[k],
                                              params.scale_y[k], params.scale_x[k]))
        shift = np.array([params.ty[k], params.tx[k]], dtype=float)
        sampled = affine_transform(digits[k].astype(np.float64), inverse,
                                   offset=c_in - inverse @ (c_out + shift),
                                   output_shape=(size, size), order=1, mode="constant",
                                   cval=0.0, prefilter=False)
        out[k] = np.clip(np.rint(sampled), 0, 255)
    return out


def draw_affine(digits, rng, ranges=AFFNIST_WIDE, size=CANVAS, chunk=2000):
    """AffineParams for each digit, the "affnist-wide" way. From rng, in this order and for
    all digits at once: rotation, shear, scale_y, scale_x uniform in ranges, then two
    fractions uniform in [0, 1) that pick integers ty, tx uniformly among the moves keeping
    all the transformed digit's ink (pixels > 0) on the size x size canvas (an MNIST digit
    always fits; ink wider than the canvas is centred and cut). chunk bounds the memory,
    not the result."""
    digits = np.asarray(digits)
    n = len(digits)
    drawn = {name: rng.uniform(*ranges[name], size=n) for name in AFFNIST_WIDE}
    where = rng.random((2, n))
    params = AffineParams(**drawn, ty=np.zeros(n), tx=np.zeros(n))
    low, high = move_bounds(digits, params, size, chunk)
    moves = low + np.floor(where * (high - low + 1))
    return params._replace(ty=moves[0], tx=moves[1])


def draw_affnist_like(digits, rng, ranges=AFFNIST_LIKE, size=CANVAS, chunk=2000):
    """AffineParams for each digit, the "affnist-like" way. From rng, in this order and for
    all digits at once: rotation and shear uniform in ranges, scale_y and scale_x
    log-uniform (exp of a uniform draw between the logs of the ends), then the moves ty,
    tx uniform in ranges["move"], each brought back within move_bounds when it would push
    ink off the canvas (with bilinear resampling a fractional move inside the bounds keeps
    all the ink)."""
    digits = np.asarray(digits)
    n = len(digits)
    drawn = {name: rng.uniform(*ranges[name], size=n) for name in ("rotation", "shear")}
    for name in ("scale_y", "scale_x"):
        drawn[name] = np.exp(rng.uniform(*np.log(ranges[name]), size=n))
    moves = rng.uniform(*ranges["move"], size=(2, n))
    params = AffineParams(**drawn, ty=np.zeros(n), tx=np.zeros(n))
    low, high = move_bounds(digits, params, size, chunk)
    moves = np.clip(moves, low, high)
    return params._replace(ty=moves[0], tx=moves[1])


def move_bounds(digits, params, size=CANVAS, chunk=2000):
    """(low, high), each (2, N): the whole-pixel moves (ty, tx) of each transformed digit
    (params' moves aside) that keep all its ink (pixels > 0) on the size x size canvas.
    Ink wider than the canvas: low = high, the move that centres it."""
    n = len(digits)
    low, high = np.zeros((2, n)), np.zeros((2, n))
    margin = (_WORK - size) // 2
    for start in range(0, n, chunk):
        part = slice(start, start + chunk)
        still = AffineParams(*(f[part] for f in params[:4]), ty=np.zeros(len(digits[part])),
                             tx=np.zeros(len(digits[part])))
        big = warp(digits[part], still, _WORK)                    # no ink cut on 64x64
        for axis, ink in enumerate((big.any(axis=2), big.any(axis=1))):
            first = ink.argmax(1)
            last = _WORK - 1 - ink[:, ::-1].argmax(1)
            lo, hi = margin - first, margin + size - 1 - last    # keep first..last on canvas
            blank = ~ink.any(1)
            lo[blank] = hi[blank] = 0
            wide = hi < lo                     # ink wider than the canvas: centre it, cut both
            lo[wide] = hi[wide] = np.floor((lo[wide] + hi[wide]) / 2)
            low[axis, part], high[axis, part] = lo, hi
    return low, high


DRAWS = {"affnist-like": draw_affnist_like, "affnist-wide": draw_affine}


def generate_affnist(digits, labels, seed=GENERATED_SEED, copies=1, name="affnist-like"):
    """A generated affNIST stand-in (name: "affnist-like" or "affnist-wide", GENERATED):
    copies transformations of each digit (pass MNIST's test split), copy after copy, from
    default_rng(seed). Returns (images (N*copies, 40, 40) uint8, labels (N*copies,) int64,
    AffineParams of every image)."""
    name = OLD_NAMES.get(name, name)
    if name not in GENERATED:
        raise ValueError(f"a generated affNIST set is one of {', '.join(GENERATED)}, "
                         f"got {name!r}")
    digits, labels = np.asarray(digits), np.asarray(labels)
    rng = np.random.default_rng(seed)
    params = [DRAWS[name](digits, rng, GENERATED[name]) for _ in range(int(copies))]
    images = np.concatenate([warp(digits, p) for p in params])
    all_params = AffineParams(*(np.concatenate(f) for f in zip(*params)))
    return images, np.tile(labels.astype(np.int64), int(copies)), all_params


# --- the real affNIST and the sets that stand in for it --------------------------------------

def find_affnist_test(root=None):
    """The real affNIST test files under the data folder: [<root>/affnist/test.mat], or
    the 32 files <root>/affnist/test_batches/1.mat..32.mat, or None."""
    base = data_root(root) / "affnist"
    if data_file(base / "test.mat"):
        return [base / "test.mat"]
    batches = [base / "test_batches" / f"{i}.mat" for i in range(1, AFFNIST_COPIES + 1)]
    if data_file(batches[0]):
        missing = [p.name for p in batches if not data_file(p)]
        if missing:
            raise DataError(f"{base / 'test_batches'}: {len(missing)} of the 32 test batches "
                            f"are missing ({', '.join(missing[:4])}...)")
        return batches
    return None


def load_affnist_test(root=None, sha256=None, max_bytes=MAX_MAT_BYTES):
    """The real affNIST test set: (images (320000, 40, 40) uint8, labels int64, files).

    sha256: {file name: hex digest} to check (none is published). Raises
    DataNotFoundError when the files are not there, DataError when they are not the
    whole transformed test set (the just_centered test.mat has 10,000 pictures).
    """
    files = find_affnist_test(root)
    if files is None:
        raise DataNotFoundError(
            f"affNIST test files not found in {data_root(root) / 'affnist'}: put test.mat "
            "from https://www.cs.toronto.edu/~tijmen/affNIST/32x/transformed/test.mat.zip "
            "there (or the folder test_batches/)")
    parts = [read_affnist_mat(f, max_bytes, (sha256 or {}).get(f.name)) for f in files]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    where = files[0].parent
    if len(images) != AFFNIST_TEST_SIZE:
        raise DataError(f"{where}: {len(images)} test pictures, expected {AFFNIST_TEST_SIZE} "
                        "(32 transformations of each MNIST test digit); the untransformed "
                        "just_centered/test.mat has 10,000")
    counts = np.bincount(labels, minlength=10)
    if tuple(counts) != tuple(AFFNIST_COPIES * c for c in MNIST_TEST_COUNTS):
        raise DataError(f"{where}: class counts {counts.tolist()}, expected 32 times MNIST's "
                        f"test counts {list(MNIST_TEST_COUNTS)}")
    return images, labels, files


class AffNISTTest(NamedTuple):
    """A test set of 40x40 digits: name "affnist" (the real files), "affnist-like" or
    "affnist-wide" (generated)."""
    images: np.ndarray
    labels: np.ndarray
    name: str
    info: dict


def affnist_test(mnist=None, root=None, seed=GENERATED_SEED, copies=1, generate=True,
                 name="affnist"):
    """The test set ``name`` says: "affnist", the real files when they are there
    (load_affnist_test), else (with generate) the "affnist-like" stand-in; or a generated
    set asked for by its name ("affnist-like", "affnist-wide"; generate_affnist), made
    from MNIST's test split: copies transformations of each of the 10,000 test digits (the
    real set has 32)."""
    name = OLD_NAMES.get(name, name)
    if name not in ("affnist", *GENERATED):
        raise ValueError(f"an affNIST test set is one of affnist, {', '.join(GENERATED)}; "
                         f"got {name!r}")
    if name == "affnist":
        try:
            images, labels, files = load_affnist_test(root)
            return AffNISTTest(images, labels, "affnist",
                               {"files": [os.fspath(f) for f in files]})
        except DataNotFoundError:
            if not generate:
                raise
        name = "affnist-like"
    if mnist is None:
        from minicaps.data.mnist import load_mnist
        mnist = load_mnist(root)
    images, labels, _ = generate_affnist(mnist[2], mnist[3], seed, copies, name)
    moves = ("uniform in +-5 pixels, shortened where ink would leave the 40x40 canvas"
             if name == "affnist-like" else
             "whole pixels, uniform over the moves keeping all the ink on the 40x40 canvas")
    return AffNISTTest(images, labels, name,
                       {"generated": True, "seed": seed, "copies": copies,
                        "ranges": dict(GENERATED[name]), "resampling": "bilinear",
                        "translation": moves})


def affnist_dataset(mnist=None, root=None, seed=EXPANDED_SEED, test_seed=GENERATED_SEED,
                    copies=1, generate=True, test="affnist"):
    """Section 5.2 as one Dataset: train on expanded MNIST (expanded_mnist's training
    split: centred digits that training shifts by up to TRAIN_SHIFT pixels), validate on
    expanded MNIST's test split (the paper stopped training at about 99.2% there), test on
    the affine set ``test`` names (affnist_test). Its name is the test set's: "affnist",
    "affnist-like" or "affnist-wide"; info says which (test, test_info: affnist_test's
    info), how the training set was placed (train_seed) and the shift its training takes
    (shift)."""
    if mnist is None:
        from minicaps.data.mnist import load_mnist
        mnist = load_mnist(root)
    train = expanded_mnist(mnist, seed)
    test = affnist_test(mnist, root, test_seed, copies, generate, test)
    info = {"train": "expanded-mnist", "canvas": CANVAS, "max_offset": MAX_OFFSET,
            "train_seed": seed, "shift": TRAIN_SHIFT, "test": test.name,
            "test_info": test.info}
    return Dataset(train.x_train, train.y_train, test.images, test.labels, CLASSES,
                   test.name, info, x_val=train.x_test, y_val=train.y_test)

