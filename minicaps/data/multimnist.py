"""MultiMNIST as Sabour, Frosst & Hinton (2017, section 6) make it, generated on the fly.

The paper: "We generate the MultiMNIST training and test dataset by overlaying a digit on
top of another digit from the same set (training or test) but different class. Each digit
is shifted up to 4 pixels in each direction resulting in a 36x36 image. [...] For each
digit in the MNIST dataset we generate 1K MultiMNIST examples. So the training set size
is 60M and the test set size is 10M." Their code (tensorflow/models,
research/capsules/input_data/mnist/mnist_shift.py) pads each 28x28 digit by 4 to 36x36,
shifts each of the two digits by its own integers dy, dx uniform in [-4, 4], adds the
pixels and clips at 255. So does this module:

    images[m] = min(255, place(digit a, shifts[m, 0]) + place(digit b, shifts[m, 1]))

with each placed digit also returned alone: the reconstruction target of its own capsule.

60M pairs of 36x36 are 78 GB, so nothing here holds an epoch: an epoch of
``pairs_per_digit`` pairs per digit is ``pairs_per_digit`` rounds, and a round pairs every
digit once, in a random order, with a partner of another class (``draw_round``, a few
bytes per digit); ``iterate_epoch`` turns rounds into batches of images as they are needed.

Overlap. The paper goes on: "Considering a digit in a 28x28 image is bounded in a 20x20
box, two digits bounding boxes on average have 80% overlap." Its measure is the area two
boxes share over the area of one box (the boxes are the same size, 20x20);
``bbox_overlap`` applies it to the digits' own ink boxes, over the smaller box. With
the paper's generator (each digit shifted on its own, so the two are up to 8 pixels apart)
the mean is 72.6%: exactly (1 - (240/81)/20)**2 = 0.7257 for 20x20 boxes, and 72.7% on
real MNIST test pairs. 80% is what the same measure gives for digits at most 4 pixels
apart in each direction (79.0% for 20x20 boxes, 79.6% on real MNIST): the paper's sentence
read as one digit shifted against the other. tests/data/test_multimnist.py checks both.
"""
from typing import NamedTuple

import numpy as np

DIGIT = 28
MAX_SHIFT = 4                          # "shifted up to 4 pixels in each direction"
CANVAS = DIGIT + 2 * MAX_SHIFT         # 36
PAPER_PAIRS_PER_DIGIT = 1000           # "for each digit ... 1K MultiMNIST examples"
MAX_PAIRS_PER_DIGIT = 10 * PAPER_PAIRS_PER_DIGIT   # 600 million pairs an epoch at most
TEST_SEED = 36                         # the seed of the fixed test set (make_test_set)


class Pairs(NamedTuple):
    """Which digits make each pair and where they go (a plan: indices, no pixels).

    first, second: (M,) int64 indices into the images; their labels differ.
    shifts: (M, 2, 2) int8, shifts[m, k] = (dy, dx) of digit k (0: first, 1: second).
    """
    first: np.ndarray
    second: np.ndarray
    shifts: np.ndarray


class MultiBatch(NamedTuple):
    """Pairs made into pictures.

    images: (M, 36, 36) uint8, the two shifted digits added and clipped at 255.
    digits: (M, 2, 36, 36) uint8, each shifted digit alone: digits[:, k] is what the
        capsule of labels[:, k] should reconstruct.
    labels: (M, 2) int64, the classes of the first and the second digit (never equal).
    """
    images: np.ndarray
    digits: np.ndarray
    labels: np.ndarray


# --- pictures from a plan (pure functions) ---------------------------------------------------

def place(images, shifts, max_shift=MAX_SHIFT):
    """Each image on a canvas padded by max_shift, moved by its shift.

    images (N, H, W) uint8, shifts (N, 2) integers (dy, dx) in [-max_shift, max_shift]
    -> (N, H + 2 max_shift, W + 2 max_shift): out[n, m + dy + i, m + dx + j] = images[n, i, j].
    """
    images = np.asarray(images)
    shifts = np.asarray(shifts)
    m = int(max_shift)
    if images.ndim != 3 or shifts.shape != (len(images), 2):
        raise ValueError(f"expected images (N, H, W) and shifts (N, 2), got {images.shape} "
                         f"and {shifts.shape}")
    if shifts.size and np.abs(shifts).max() > m:
        raise ValueError(f"shifts must be in [-{m}, {m}], got up to {np.abs(shifts).max()}")
    n, h, w = images.shape
    out = np.zeros((n, h + 2 * m, w + 2 * m), images.dtype)
    rows = (m + shifts[:, 0])[:, None] + np.arange(h)            # (n, h)
    cols = (m + shifts[:, 1])[:, None] + np.arange(w)            # (n, w)
    out[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]] = images
    return out


def make_pairs(images, labels, first, second, shifts, max_shift=MAX_SHIFT):
    """The MultiBatch of pairs (images[first[m]], images[second[m]]) shifted by shifts[m].

    images (N, 28, 28) uint8, labels (N,); first, second (M,) indices with
    labels[first] != labels[second]; shifts (M, 2, 2) as in Pairs.
    """
    images, labels = np.asarray(images), np.asarray(labels)
    first, second = np.asarray(first), np.asarray(second)
    shifts = np.asarray(shifts)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise ValueError(f"expected uint8 images (N, H, W), got {images.dtype} {images.shape}")
    if len(labels) != len(images):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    if first.shape != second.shape or first.ndim != 1 or shifts.shape != first.shape + (2, 2):
        raise ValueError(f"expected first, second (M,) and shifts (M, 2, 2), got "
                         f"{first.shape}, {second.shape}, {shifts.shape}")
    pair_labels = np.stack([labels[first], labels[second]], axis=1).astype(np.int64)
    same = pair_labels[:, 0] == pair_labels[:, 1]
    if same.any():
        m = int(np.argmax(same))
        raise ValueError(f"pair {m} puts two digits of class {pair_labels[m, 0]} together "
                         f"(images {first[m]} and {second[m]}): MultiMNIST pairs two classes")
    a = place(images[first], shifts[:, 0], max_shift)
    b = place(images[second], shifts[:, 1], max_shift)
    merged = np.minimum(a.astype(np.uint16) + b, 255).astype(np.uint8)
    return MultiBatch(merged, np.stack([a, b], axis=1), pair_labels)


# --- plans: which digit meets which, drawn from a numpy Generator ---------------------------

def draw_round(labels, rng, max_shift=MAX_SHIFT):
    """One round: every digit once as the first of a pair, in a random order, each with a
    partner drawn uniformly from the digits of the other classes, and the shifts.

    The draws from rng, in order: the order of the digits, the partners, the shifts.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer) or \
            (labels.size and labels.min() < 0):
        raise ValueError(f"expected labels (N,) of integers >= 0, got {labels.dtype} "
                         f"{labels.shape}")
    n = len(labels)
    counts = np.bincount(labels)
    if n == 0 or (counts > 0).sum() < 2:
        raise ValueError("MultiMNIST needs digits of at least two classes")
    order = np.argsort(labels, kind="stable")             # the digits, class by class
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    first = rng.permutation(n)
    c = labels[first]
    # u-th digit of another class: skip the block of class c in the sorted order
    u = rng.integers(0, n - counts[c])
    second = order[np.where(u < starts[c], u, u + counts[c])]
    shifts = rng.integers(-max_shift, max_shift + 1, size=(n, 2, 2)).astype(np.int8)
    return Pairs(first.astype(np.int64), second.astype(np.int64), shifts)


def plan_epoch(labels, pairs_per_digit, rng, max_shift=MAX_SHIFT):
    """pairs_per_digit rounds (draw_round) in one Pairs: each digit is the first of exactly
    pairs_per_digit pairs. Holds 17 bytes per pair: for small epochs; iterate_epoch draws
    the same rounds one at a time."""
    rounds = [draw_round(labels, rng, max_shift) for _ in range(_count(pairs_per_digit))]
    return Pairs(*(np.concatenate(parts) for parts in zip(*rounds)))


def iterate_epoch(images, labels, pairs_per_digit, batch_size, rng, max_shift=MAX_SHIFT):
    """Yield MultiBatch of at most batch_size pairs, round by round: the pairs of
    plan_epoch(labels, pairs_per_digit, rng) in the same order, never more than one round's
    plan and one batch of pictures in memory. A batch does not span two rounds."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for _ in range(_count(pairs_per_digit)):
        plan = draw_round(labels, rng, max_shift)
        for start in range(0, len(plan.first), batch_size):
            part = slice(start, start + batch_size)
            yield make_pairs(images, labels, plan.first[part], plan.second[part],
                             plan.shifts[part], max_shift)


def make_test_set(images, labels, pairs_per_digit=1, seed=TEST_SEED, max_bytes=1 << 31):
    """The fixed MultiMNIST test set: plan_epoch from default_rng(seed), made whole.

    Pass MNIST's test split. The paper used 1,000 pairs per test digit (10M pairs, 39 GB
    of pictures here): with pairs_per_digit=1000 use iterate_epoch(..., default_rng(seed))
    instead, which yields the same pairs in batches. pairs_per_digit=1 gives 10,000 pairs
    (39 MB). Refuses to make more than max_bytes of pictures.
    """
    n_pairs = len(images) * _count(pairs_per_digit)
    h, w = np.shape(images)[1:3]
    size = n_pairs * 3 * (h + 2 * MAX_SHIFT) * (w + 2 * MAX_SHIFT)   # merged + 2 digits
    if size > max_bytes:
        raise ValueError(f"{n_pairs} pairs need {size / 2**30:.1f} GiB of pictures, over "
                         f"max_bytes={max_bytes}: use iterate_epoch with "
                         f"np.random.default_rng({seed}) to go through them in batches")
    plan = plan_epoch(labels, pairs_per_digit, np.random.default_rng(seed))
    return make_pairs(images, labels, *plan)


def _count(pairs_per_digit):
    if (int(pairs_per_digit) != pairs_per_digit or pairs_per_digit < 1
            or pairs_per_digit > MAX_PAIRS_PER_DIGIT):
        raise ValueError(f"pairs_per_digit must be an integer from 1 to "
                         f"{MAX_PAIRS_PER_DIGIT} (the paper: 1000), got {pairs_per_digit}")
    return int(pairs_per_digit)


# --- overlap ---------------------------------------------------------------------------------

def ink_boxes(images):
    """The bounding box of the pixels > 0 of each image, half-open: (N, 4) int64 rows
    (top, bottom, left, right), ink in rows top..bottom-1, columns left..right-1.
    A blank image gets (0, 0, 0, 0)."""
    images = np.asarray(images)
    rows, cols = images.any(axis=2), images.any(axis=1)      # (N, H), (N, W)
    h, w = rows.shape[1], cols.shape[1]
    top, left = rows.argmax(1), cols.argmax(1)
    bottom, right = h - rows[:, ::-1].argmax(1), w - cols[:, ::-1].argmax(1)
    blank = ~rows.any(1)
    boxes = np.stack([top, bottom, left, right], axis=1).astype(np.int64)
    boxes[blank] = 0
    return boxes


def bbox_overlap(first, second):
    """The paper's overlap of two digits: the area their ink boxes share over the area of
    the smaller box, for each pair. first, second (M, H, W): the two shifted digits of
    each pair (MultiBatch.digits[:, 0] and [:, 1]) -> (M,) float64 in [0, 1].
    For two 20x20 boxes (the paper's reasoning) it is the shared area over 400."""
    a, b = ink_boxes(first), ink_boxes(second)
    height = np.clip(np.minimum(a[:, 1], b[:, 1]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    width = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 2], b[:, 2]), 0, None)
    area_a = (a[:, 1] - a[:, 0]) * (a[:, 3] - a[:, 2])
    area_b = (b[:, 1] - b[:, 0]) * (b[:, 3] - b[:, 2])
    smaller = np.minimum(area_a, area_b)
    return np.divide(height * width, smaller, out=np.zeros(len(a)), where=smaller > 0)


# --- scoring ---------------------------------------------------------------------------------

def pair_scores(lengths, labels):
    """How the paper counts MultiMNIST (section 6): a pair is right when its two labels are
    the two longest capsules. lengths (N, J), labels (N, 2) -> {"both": fraction of pairs
    with both right, "one or more": fraction with at least one of the two longest among the
    labels, "n"}. NumPy or CuPy; the numbers come back as floats."""
    from minicaps.backend import get_xp, to_numpy
    xp = get_xp(lengths)
    if lengths.ndim != 2 or labels.ndim != 2 or labels.shape != (lengths.shape[0], 2):
        raise ValueError(f"need lengths (N, J) and labels (N, 2), got {tuple(lengths.shape)} "
                         f"and {tuple(labels.shape)}")
    hits = pair_hits(lengths, labels)
    both, some = (float(v) for v in to_numpy(xp.stack([(hits == 2).mean(), (hits >= 1).mean()])))
    return {"both": both, "one or more": some, "n": int(lengths.shape[0])}


def pair_hits(lengths, labels):
    """How many of each pair's two labels are among its two longest capsules: (N,) of 0, 1
    or 2, on the device the lengths are on (no wait for the host)."""
    from minicaps.backend import get_xp
    xp = get_xp(lengths)
    top2 = xp.argsort(-lengths, axis=1)[:, :2]                             # (N, 2)
    return (top2[:, :, None] == labels[:, None, :]).any(axis=2).sum(axis=1)
