"""Tests for minicaps.data.multimnist: pictures against per-pixel loops, shifts read back from
the pictures, plans counted, and the overlap against a closed form and real MNIST."""
import os
from pathlib import Path

import numpy as np
import pytest

from minicaps.data import multimnist as mm
from minicaps.data.mnist import load_mnist

MNIST_ROOT = os.environ.get("MINICAPS_DATA")


def strokes(n, seed):
    """n digit-like uint8 images (28x28): a few random bright strokes inside MNIST's
    central 20x20 box (rows and columns 4..23), black elsewhere, and labels 0..9."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, 28, 28), np.uint8)
    for image in images:
        for _ in range(3):
            r, c = rng.integers(4, 24, 2)
            image[r, 4:24] = np.maximum(image[r, 4:24], rng.integers(60, 256))
            image[4:24, c] = np.maximum(image[4:24, c], rng.integers(60, 256))
    return images, rng.integers(0, 10, n)


def naive_pair(a, b, shift_a, shift_b):
    """The merged 36x36 picture, pixel by pixel, as the paper describes it."""
    out = np.zeros((36, 36), int)
    for image, (dy, dx) in ((a, shift_a), (b, shift_b)):
        for i in range(28):
            for j in range(28):
                out[4 + dy + i, 4 + dx + j] += int(image[i, j])
    return np.minimum(out, 255)


def test_pairs_are_summed_and_clipped_like_a_pixel_loop():
    images, labels = strokes(30, 0)
    labels = np.arange(30) % 10
    first, second = np.arange(10), np.arange(10, 20) + 1          # classes c and c + 1
    shifts = np.random.default_rng(1).integers(-4, 5, (10, 2, 2))
    batch = mm.make_pairs(images, labels, first, second, shifts)
    assert batch.images.shape == (10, 36, 36) and batch.images.dtype == np.uint8
    assert batch.digits.shape == (10, 2, 36, 36) and batch.digits.dtype == np.uint8
    assert batch.labels.dtype == np.int64
    np.testing.assert_array_equal(batch.labels, np.stack([labels[first], labels[second]], 1))
    for m in range(10):
        expected = naive_pair(images[first[m]], images[second[m]], shifts[m, 0], shifts[m, 1])
        np.testing.assert_array_equal(batch.images[m], expected)
        # each digit alone is the same loop with the other one left out
        blank = np.zeros((28, 28), np.uint8)
        np.testing.assert_array_equal(batch.digits[m, 0],
                                      naive_pair(images[first[m]], blank, shifts[m, 0], (0, 0)))
        np.testing.assert_array_equal(batch.digits[m, 1],
                                      naive_pair(blank, images[second[m]], (0, 0), shifts[m, 1]))
    assert (batch.images.astype(int) == 255).any()                # the clip was exercised
    assert batch.images.max() <= 255 and batch.images.min() >= 0


def test_shifts_read_back_from_the_ink_boxes():
    images, labels = strokes(200, 2)
    plan = mm.plan_epoch(labels, 3, np.random.default_rng(3))
    batch = mm.make_pairs(images, labels, *plan)
    for k, index in ((0, plan.first), (1, plan.second)):
        moved = mm.ink_boxes(batch.digits[:, k])                  # on the 36x36 canvas
        still = mm.ink_boxes(images[index]) + 4                   # unshifted, padded by 4
        dy, dx = moved[:, 0] - still[:, 0], moved[:, 2] - still[:, 2]
        assert (moved[:, 1] - still[:, 1] == dy).all() and (moved[:, 3] - still[:, 3] == dx).all()
        np.testing.assert_array_equal(np.stack([dy, dx], 1), plan.shifts[:, k])
        assert np.abs(dy).max() == 4 and np.abs(dx).max() == 4   # bounds reached, not passed
        assert set(np.unique(dy)) == set(range(-4, 5))


def test_the_two_classes_always_differ_and_same_class_pairs_are_refused():
    _, labels = strokes(500, 4)
    plan = mm.plan_epoch(labels, 4, np.random.default_rng(5))
    assert (labels[plan.first] != labels[plan.second]).all()
    # every other class turns up as a partner of class 0
    assert set(labels[plan.second[labels[plan.first] == 0]]) == set(range(1, 10))
    images = np.zeros((500, 28, 28), np.uint8)
    same = int(np.flatnonzero(labels == labels[0])[1])
    with pytest.raises(ValueError, match="two digits of class"):
        mm.make_pairs(images, labels, [0], [same], np.zeros((1, 2, 2), int))
    with pytest.raises(ValueError, match="at least two classes"):
        mm.draw_round(np.zeros(5, int), np.random.default_rng(0))


def test_partners_are_drawn_uniformly_from_the_other_classes():
    labels = np.repeat(np.arange(10), [50, 450] + [50] * 8)       # class 1 is 9x as common
    plan = mm.plan_epoch(labels, 40, np.random.default_rng(6))
    partner = labels[plan.second[labels[plan.first] == 0]]        # 2,000 partners of class 0
    share = np.mean(partner == 1)
    assert abs(share - 450 / 850) < 0.04                          # 450 of the 850 others


def test_each_base_digit_is_first_pairs_per_digit_times_once_a_round():
    _, labels = strokes(300, 7)
    plan = mm.plan_epoch(labels, 5, np.random.default_rng(8))
    assert len(plan.first) == 1500 and plan.shifts.shape == (1500, 2, 2)
    np.testing.assert_array_equal(np.bincount(plan.first, minlength=300), np.full(300, 5))
    for r in range(5):                                             # each round: a permutation
        np.testing.assert_array_equal(np.sort(plan.first[r * 300:(r + 1) * 300]), np.arange(300))
    assert not np.array_equal(plan.first[:300], np.arange(300))    # in a random order


def test_the_plan_is_reproducible_from_the_seed_and_differs_for_another():
    _, labels = strokes(200, 9)
    a = mm.plan_epoch(labels, 2, np.random.default_rng(10))
    b = mm.plan_epoch(labels, 2, np.random.default_rng(10))
    c = mm.plan_epoch(labels, 2, np.random.default_rng(11))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.second, c.second) and not np.array_equal(a.shifts, c.shifts)


def test_iterate_epoch_yields_the_plans_pairs_in_bounded_batches():
    images, labels = strokes(50, 12)
    whole = mm.make_pairs(images, labels, *mm.plan_epoch(labels, 3, np.random.default_rng(13)))
    batches = list(mm.iterate_epoch(images, labels, 3, 16, np.random.default_rng(13)))
    assert max(len(b.images) for b in batches) == 16
    assert [len(b.images) for b in batches] == [16, 16, 16, 2] * 3   # no batch spans rounds
    for field in range(3):
        np.testing.assert_array_equal(np.concatenate([b[field] for b in batches]), whole[field])


def test_the_test_set_is_fixed_by_its_seed_and_refuses_to_grow_past_its_budget():
    images, labels = strokes(100, 14)
    a, b = mm.make_test_set(images, labels), mm.make_test_set(images, labels)
    assert a.images.shape == (100, 36, 36)
    np.testing.assert_array_equal(a.images, b.images)
    assert not np.array_equal(a.images, mm.make_test_set(images, labels, seed=1).images)
    assert mm.make_test_set(images, labels, pairs_per_digit=2).images.shape == (200, 36, 36)
    with pytest.raises(ValueError, match="iterate_epoch"):
        mm.make_test_set(images, labels, pairs_per_digit=1000, max_bytes=1 << 20)


def test_bad_arguments_say_what_is_wrong():
    images, labels = strokes(10, 15)
    with pytest.raises(ValueError, match=r"\[-4, 4\]"):
        mm.place(images[:1], np.array([[5, 0]]))
    with pytest.raises(ValueError, match="uint8"):
        mm.make_pairs(images.astype(float), labels, [0], [1], np.zeros((1, 2, 2), int))
    with pytest.raises(ValueError, match="pairs_per_digit"):
        mm.plan_epoch(labels, 0, np.random.default_rng(0))


# --- overlap ---------------------------------------------------------------------------------

def test_overlap_of_hand_made_boxes():
    a = np.zeros((3, 36, 36), np.uint8)
    b = np.zeros((3, 36, 36), np.uint8)
    a[0, 0:10, 0:10] = 1; b[0, 5:15, 5:15] = 1        # 25 shared of 100
    a[1, 0:10, 0:20] = 1; b[1, 0:4, 0:5] = 1          # the small box inside: 1
    a[2, 0:5, 0:5] = 1; b[2, 6:9, 6:9] = 1            # apart: 0
    np.testing.assert_allclose(mm.bbox_overlap(a, b), [0.25, 1.0, 0.0])
    assert mm.bbox_overlap(a[:1] * 0, b[:1])[0] == 0  # a blank digit shares nothing


def square_boxes_mean(max_shift, relative_only):
    """The exact mean overlap of two 20x20 boxes, over the shifts: per axis the boxes
    share 20 - |d| rows, d the difference of the two shifts."""
    s = np.arange(-max_shift, max_shift + 1)
    d = (s[:, None] - (0 if relative_only else s[None, :])).ravel()
    per_axis = np.mean(1 - np.abs(d) / 20)
    return per_axis ** 2                                  # the axes are independent


def test_overlap_of_20x20_boxes_matches_the_closed_form():
    """The paper's reasoning: MNIST digits bounded by 20x20 boxes. Shifting both digits
    (its generator) gives 72.57%; one against the other by up to 4 gives 79.0%, its 80%."""
    images = np.zeros((400, 28, 28), np.uint8)
    images[:, 4:24, 4:24] = 200
    labels = np.arange(400) % 10
    plan = mm.plan_epoch(labels, 20, np.random.default_rng(16))     # 8,000 pairs
    batch = mm.make_pairs(images, labels, *plan)
    overlap = mm.bbox_overlap(batch.digits[:, 0], batch.digits[:, 1])
    d = np.abs(plan.shifts[:, 0].astype(int) - plan.shifts[:, 1])
    np.testing.assert_allclose(overlap, np.prod(1 - d / 20, axis=1))   # pair by pair
    assert square_boxes_mean(4, False) == pytest.approx(0.7257, abs=1e-4)
    assert square_boxes_mean(4, True) == pytest.approx(0.7901, abs=1e-4)
    assert overlap.mean() == pytest.approx(square_boxes_mean(4, False), abs=0.01)


@pytest.mark.mnist
@pytest.mark.skipif(not MNIST_ROOT or not any(
    (Path(MNIST_ROOT) / sub / "t10k-images-idx3-ubyte.gz").is_file() for sub in ("", "mnist")),
    reason="set MINICAPS_DATA to a folder with the four MNIST files")
def test_overlap_on_real_mnist_is_the_papers_measure():
    """The fixed test set (10,000 pairs of MNIST's test digits): 72.6% measured with the
    paper's generator; 79.6%, the paper's "80%", for digits at most 4 pixels apart."""
    x_test, y_test = load_mnist(download=False)[2:]
    pairs = mm.make_test_set(x_test, y_test)
    assert (pairs.labels[:, 0] != pairs.labels[:, 1]).all()
    overlap = mm.bbox_overlap(pairs.digits[:, 0], pairs.digits[:, 1])
    assert overlap.mean() == pytest.approx(0.726, abs=0.01)
    plan = mm.plan_epoch(y_test, 1, np.random.default_rng(mm.TEST_SEED))
    plan.shifts[:, 0] = 0                                  # the second moves against the first
    relative = mm.make_pairs(x_test, y_test, *plan)
    near = mm.bbox_overlap(relative.digits[:, 0], relative.digits[:, 1]).mean()
    assert near == pytest.approx(0.80, abs=0.01)


def test_pair_scores_against_a_loop():
    from minicaps.data.multimnist import pair_scores
    rng = np.random.default_rng(5)
    lengths = rng.random((200, 10))
    labels = np.stack([rng.choice(10, 2, replace=False) for _ in range(200)])
    # make some pairs right on purpose: their labels the two longest
    lengths[:60][np.arange(60)[:, None], labels[:60]] += 1.0
    both = one = 0
    for row, pair in zip(lengths, labels):
        longest = sorted(range(10), key=lambda j: -row[j])[:2]
        right = sum(j in pair for j in longest)
        both += right == 2
        one += right >= 1
    scores = pair_scores(lengths, labels)
    assert scores == {"both": both / 200, "one or more": one / 200, "n": 200}
    assert scores["both"] >= 0.3
    with pytest.raises(ValueError, match=r"labels \(N, 2\)"):
        pair_scores(lengths, labels[:, :1])
