"""Tests for minicaps.data.affnist and affnist_mat: placements read back, the warp against a
bilinear loop written from the definition, drawn transformations inside their ranges, and
the reader of the real .mat files on files written here in the real layout, good and
damaged."""
import hashlib

import numpy as np
import pytest
from scipy.io import savemat

from minicaps.data import affnist as af
from minicaps.data.affnist_mat import MAX_MAT_BYTES, read_affnist_mat
from minicaps.data.dataset import DataError, DataNotFoundError, Dataset


def digits(n, seed):
    """n digit-like uint8 28x28 images: random strokes inside MNIST's central 20x20 box."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, 28, 28), np.uint8)
    for image in images:
        r, c = rng.integers(4, 24, 2)
        image[r, 4:24] = rng.integers(60, 256)
        image[4:24, c] = rng.integers(60, 256)
        image[rng.integers(4, 24, 6), rng.integers(4, 24, 6)] = 255
    return images, rng.integers(0, 10, n)


def fake_mnist(n_train=30, n_test=20):
    return digits(n_train, 0) + digits(n_test, 1)


def still(n, **changes):
    params = af.AffineParams(*(np.zeros(n),) * 2, np.ones(n), np.ones(n), np.zeros(n),
                             np.zeros(n))
    return params._replace(**{k: np.full(n, float(v)) for k, v in changes.items()})


# --- expanded MNIST --------------------------------------------------------------------------

def test_expand_places_each_digit_unchanged_at_offsets_0_to_12():
    images, _ = digits(400, 2)
    canvases, offsets = af.expand(images, np.random.default_rng(3))
    assert canvases.shape == (400, 40, 40) and canvases.dtype == np.uint8
    assert offsets.min() == 0 and offsets.max() == 12             # both ends reached
    assert set(np.unique(offsets)) == set(range(13))
    for canvas, image, (oy, ox) in zip(canvases, images, offsets):
        np.testing.assert_array_equal(canvas[oy:oy + 28, ox:ox + 28], image)
        rest = canvas.copy()
        rest[oy:oy + 28, ox:ox + 28] = 0
        assert not rest.any()                                     # black everywhere else


def test_expanded_mnist_centres_the_training_digits_and_places_the_test_ones_seeded():
    mnist = fake_mnist()
    a, b = af.expanded_mnist(mnist, seed=5), af.expanded_mnist(mnist, seed=5)
    assert isinstance(a, Dataset) and a.name == "expanded-mnist"
    assert a.x_train.shape == (30, 40, 40) and a.x_test.shape == (20, 40, 40)
    assert a.classes == tuple("0123456789") and a.info["seed"] == 5
    assert a.info["shift"] == af.TRAIN_SHIFT == 6
    # training digits: at the centre, 6 pixels from every edge, whatever the seed
    np.testing.assert_array_equal(a.x_train[:, 6:34, 6:34], mnist[0])
    assert a.x_train.sum() == mnist[0].sum()
    np.testing.assert_array_equal(a.x_train, af.expanded_mnist(mnist, seed=6).x_train)
    # test digits: each at one place within 6 pixels, from the seed
    np.testing.assert_array_equal(a.x_test, b.x_test)
    assert not np.array_equal(a.x_test, af.expanded_mnist(mnist, seed=6).x_test)
    np.testing.assert_array_equal(a.y_test, mnist[3])
    np.testing.assert_array_equal(a.x_test.sum(axis=(1, 2)), mnist[2].sum(axis=(1, 2)))


def test_shifts_of_up_to_6_give_the_authors_169_placements_uniformly():
    """mnist_shift.py --shift=6 --pad=6 writes each digit at every (dy, dx) in -6..6: a
    shift of the centred digit by (dy, dx) is the digit at offset (6 + dy, 6 + dx)."""
    from minicaps.data.augment import draw_shifts, shift_images
    images, _ = digits(1, 11)
    n = 16_900
    many = np.repeat(images, n, axis=0)
    centred = af.centre(many)
    dy, dx = draw_shifts(n, af.TRAIN_SHIFT, np.random.default_rng(0), (40, 40))
    shifted = shift_images(centred, dy, dx, af.TRAIN_SHIFT)
    for k in range(0, n, 997):
        np.testing.assert_array_equal(
            shifted[k], af.place_on_canvas(images, np.array([[6 + dy[k], 6 + dx[k]]]))[0])
    assert (shifted.sum(axis=(1, 2)) == images.sum()).all()         # no ink ever cut
    counts = np.bincount((dy + 6) * 13 + (dx + 6), minlength=169)
    assert counts.size == 169 and counts.min() > 0                  # every placement drawn
    expected = n / 169                                              # uniform: chi-square,
    chi2 = ((counts - expected) ** 2 / expected).sum()              # 168 degrees of freedom
    assert chi2 < 240                                               # p about 0.0002


def test_place_on_canvas_refuses_offsets_off_the_canvas():
    images, _ = digits(2, 4)
    with pytest.raises(ValueError, match="canvas"):
        af.place_on_canvas(images, np.array([[0, 0], [13, 0]]))
    with pytest.raises(ValueError, match="canvas"):
        af.place_on_canvas(images, np.array([[0, -1], [0, 0]]))


# --- the warp --------------------------------------------------------------------------------

def test_identity_reproduces_the_centred_digit_exactly():
    images, _ = digits(20, 5)
    placed = af.place_on_canvas(images, np.full((20, 2), 6))     # affNIST's 6-pixel edge
    np.testing.assert_array_equal(af.warp(images, still(20)), placed)


def test_whole_pixel_moves_and_a_quarter_turn_are_exact():
    images, _ = digits(10, 6)
    placed = af.place_on_canvas(images, np.full((10, 2), 6))
    moved = af.warp(images, still(10, ty=-3, tx=5))
    np.testing.assert_array_equal(moved, np.roll(placed, (-3, 5), axis=(1, 2)))
    # positive rotation is counter-clockwise on the screen, as np.rot90
    np.testing.assert_array_equal(af.warp(images, still(10, rotation=90)),
                                  np.rot90(placed, axes=(1, 2)))


def bilinear_by_hand(digit, rotation, shear, scale_y, scale_x, ty, tx, size=40):
    """The definition, pixel by pixel: the forward map in (x, y), y down (scale, then
    x += shear * y, then a counter-clockwise turn on the screen), inverted with Cramer's
    rule, then bilinear interpolation between the four neighbours (zero outside)."""
    def forward(x, y):
        x, y = scale_x * x, scale_y * y
        x = x + shear * y
        t = np.deg2rad(rotation)
        return x * np.cos(t) + y * np.sin(t), -x * np.sin(t) + y * np.cos(t)
    (a, c), (b, d) = forward(1.0, 0.0), forward(0.0, 1.0)        # columns of the matrix
    det = a * d - b * c
    centre_in, centre_out = 13.5, (size - 1) / 2
    out = np.zeros((size, size))
    for row in range(size):
        for col in range(size):
            u, v = col - centre_out - tx, row - centre_out - ty   # (x, y) from the centre
            x = (d * u - b * v) / det + centre_in
            y = (-c * u + a * v) / det + centre_in
            x0, y0 = int(np.floor(x)), int(np.floor(y))
            value = 0.0
            for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
                for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
                    if 0 <= yy < 28 and 0 <= xx < 28:
                        value += wy * wx * float(digit[yy, xx])
            out[row, col] = value
    return out


def test_warp_matches_a_bilinear_loop_written_from_the_definition():
    images, _ = digits(3, 7)
    params = af.AffineParams(np.array([17.0, -8.5, 3.0]), np.array([0.15, -0.2, 0.05]),
                             np.array([1.1, 0.85, 1.2]), np.array([0.9, 1.15, 0.8]),
                             np.array([2.0, -4.0, 0.5]), np.array([-3.0, 1.0, 0.25]))
    warped = af.warp(images, params)
    for k in range(3):
        expected = bilinear_by_hand(images[k], *(field[k] for field in params))
        assert np.abs(warped[k] - expected).max() <= 0.5 + 1e-6   # rounded to the nearest
        assert expected.max() > 100                               # the digit is in view


# --- the generated affNIST stand-in ----------------------------------------------------------

def test_the_wide_set_stays_in_its_ranges_moves_far_and_keeps_all_ink():
    images, labels = digits(500, 8)
    out, out_labels, p = af.generate_affnist(images, labels, seed=9, name="affnist-wide")
    assert out.shape == (500, 40, 40) and out.dtype == np.uint8
    np.testing.assert_array_equal(out_labels, labels)
    for name, (low, high) in af.AFFNIST_WIDE.items():
        values = getattr(p, name)
        assert values.min() >= low and values.max() <= high
        reach = 0.05 * (high - low)                               # 500 draws span the range
        assert values.min() < low + reach and values.max() > high - reach
    assert af.AFFNIST_WIDE == {"rotation": (-20.0, 20.0), "shear": (-0.2, 0.2),
                                 "scale_y": (0.8, 1.2), "scale_x": (0.8, 1.2)}
    assert (p.ty == np.round(p.ty)).all() and (p.tx == np.round(p.tx)).all()
    assert np.abs(p.ty).max() >= 6 and np.abs(p.tx).max() >= 6    # real moves, not jitter
    # all the ink made on a roomy canvas is on the 40x40 one: nothing was cut off
    roomy = af.warp(images, p._replace(ty=np.zeros(500), tx=np.zeros(500)), size=64)
    np.testing.assert_array_equal(out.sum(axis=(1, 2)), roomy.sum(axis=(1, 2)))
    np.testing.assert_array_equal(out, af.warp(images, p))       # what the params say
    # reproducible from the seed, another seed another set; copies come one after another
    wide = dict(name="affnist-wide")
    again, _, _ = af.generate_affnist(images[:50], labels[:50], seed=9, **wide)
    np.testing.assert_array_equal(again,
                                  af.generate_affnist(images[:50], labels[:50], 9, **wide)[0])
    chunked = af.draw_affine(images, np.random.default_rng(9), chunk=7)
    for field, whole in zip(chunked, p):                           # chunks bound memory only
        np.testing.assert_array_equal(field, whole)
    assert not np.array_equal(again,
                              af.generate_affnist(images[:50], labels[:50], 10, **wide)[0])
    two, two_labels, _ = af.generate_affnist(images[:50], labels[:50], seed=9, copies=2,
                                             **wide)
    assert two.shape == (100, 40, 40) and (two_labels == np.tile(labels[:50], 2)).all()


def test_the_affnist_like_set_draws_tffs_ranges_and_keeps_all_ink():
    """TensorFlow Federated's affNIST-like ranges: rotation +-20 degrees and shear +-0.2
    uniform, each scale log-uniform in 0.8..1.25, moves uniform in +-5 pixels."""
    images, labels = digits(2000, 12)
    out, out_labels, p = af.generate_affnist(images, labels, seed=4, name="affnist-like")
    assert out.shape == (2000, 40, 40) and out.dtype == np.uint8
    np.testing.assert_array_equal(out_labels, labels)
    for name, (low, high) in (("rotation", (-20, 20)), ("shear", (-0.2, 0.2)),
                              ("scale_y", (0.8, 1.25)), ("scale_x", (0.8, 1.25)),
                              ("ty", (-5, 5)), ("tx", (-5, 5))):
        values = getattr(p, name)
        assert values.min() >= low and values.max() <= high, name
        reach = 0.05 * (high - low)
        assert values.min() < low + reach and values.max() > high - reach, name
    for scale in (p.scale_y, p.scale_x):
        # log-uniform: log(scale) uniform on [log 0.8, log 1.25] = [-0.223, 0.223], so
        # half the scales fall below 1 (a uniform draw on 0.8..1.25 puts 44% there) and
        # the log's mean is 0, its standard deviation 0.223 / sqrt(3) = 0.129
        assert abs(np.mean(scale < 1) - 0.5) < 0.035
        assert abs(np.log(scale).mean()) < 0.009
        assert abs(np.log(scale).std() - np.log(1.25) / np.sqrt(3)) < 0.006
    assert (p.ty != np.round(p.ty)).mean() > 0.99                   # moves are not whole
    # all the ink made on a roomy canvas is on the 40x40 one: the 64x64 canvas's centre
    # is 12 pixels further on each axis, so the same moves sample the same grid
    roomy = af.warp(images, p, size=64)
    np.testing.assert_array_equal(roomy[:, 12:52, 12:52], out)
    np.testing.assert_array_equal(out.sum(axis=(1, 2)), roomy.sum(axis=(1, 2)))
    np.testing.assert_array_equal(out, af.warp(images, p))       # what the params say


def test_an_affnist_like_move_that_would_cut_ink_is_shortened():
    """A full 28x28 square scaled by 1.25 is 35 wide: on 40x40 it can move about 2 pixels
    either way, not 5: the drawn moves are brought back inside, and no ink is lost."""
    square = np.full((300, 28, 28), 200, np.uint8)
    ranges = dict(af.AFFNIST_LIKE, scale_y=(1.25, 1.25), scale_x=(1.25, 1.25),
                  rotation=(0.0, 0.0), shear=(0.0, 0.0))
    p = af.draw_affnist_like(square, np.random.default_rng(1), ranges)
    assert np.abs(p.ty).max() <= 3 and np.abs(p.tx).max() <= 3
    assert np.abs(p.tx).max() >= 2                                # clipped, not zeroed
    out = af.warp(square, p)
    roomy = af.warp(square, p, size=64)
    np.testing.assert_array_equal(out.sum(axis=(1, 2)), roomy.sum(axis=(1, 2)))


def test_ink_wider_than_the_canvas_is_centred_not_refused():
    wide = np.full((1, 28, 28), 200, np.uint8)                   # a full 28x28 square
    p = af.draw_affine(wide, np.random.default_rng(0),
                       dict(af.AFFNIST_RANGES, scale_x=(1.6, 1.6), scale_y=(1.0, 1.0)))
    assert abs(p.tx[0]) <= 1                                      # 45 wide on 40: centred


def test_without_the_files_the_test_set_is_generated_and_says_so(tmp_path):
    mnist = fake_mnist()
    test = af.affnist_test(mnist, root=tmp_path, seed=3)
    assert test.name == "affnist-like" and test.info["generated"] is True
    assert test.images.shape == (20, 40, 40) and test.info["ranges"] == af.AFFNIST_LIKE
    np.testing.assert_array_equal(
        test.images, af.generate_affnist(mnist[2], mnist[3], 3, name="affnist-like")[0])
    wide = af.affnist_test(mnist, root=tmp_path, seed=3, name="affnist-wide")
    assert wide.name == "affnist-wide" and wide.info["ranges"] == af.AFFNIST_WIDE
    np.testing.assert_array_equal(
        wide.images, af.generate_affnist(mnist[2], mnist[3], 3, name="affnist-wide")[0])
    # checkpoints written before the sets had names call the wide one "affnist-generated"
    old = af.affnist_test(mnist, root=tmp_path, seed=3, name="affnist-generated")
    assert old.name == "affnist-wide"
    np.testing.assert_array_equal(old.images, wide.images)
    with pytest.raises(ValueError, match="affnist-like"):
        af.affnist_test(mnist, root=tmp_path, name="affnist-narrow")
    data = af.affnist_dataset(mnist, root=tmp_path, seed=8, test_seed=3)
    assert isinstance(data, Dataset) and data.name == "affnist-like"
    assert data.info["train_seed"] == 8 and data.info["test_info"]["seed"] == 3
    np.testing.assert_array_equal(data.x_test, test.images)
    np.testing.assert_array_equal(data.x_train, af.expanded_mnist(mnist, seed=8).x_train)
    assert data.info["test"] == "affnist-like" and data.info["train"] == "expanded-mnist"
    assert data.info["shift"] == 6
    assert data.x_train.shape == (30, 40, 40) and data.x_test.shape == (20, 40, 40)
    with pytest.raises(DataNotFoundError, match="test.mat"):
        af.affnist_test(mnist, root=tmp_path, generate=False)


# --- the real affNIST files ------------------------------------------------------------------

def write_mat(path, pictures, labels, **fields):
    """A .mat file in affNIST's layout: struct affNISTdata, one picture per column."""
    n = len(pictures)
    struct = {"image": pictures.reshape(n, -1).T.astype(np.uint8),
              "label_int": np.asarray(labels, np.uint8).reshape(1, n),
              "label_one_of_n": np.eye(10, dtype=np.uint8)[np.asarray(labels)].T}
    struct.update(fields)
    savemat(path, {"affNISTdata": struct})
    return path


def test_reader_reads_the_real_layout(tmp_path):
    rng = np.random.default_rng(10)
    pictures = rng.integers(0, 256, (12, 40, 40), np.uint8)
    pictures[:, 0, :] = 0                                         # not symmetric: rows count
    labels = rng.integers(0, 10, 12)
    path = write_mat(tmp_path / "1.mat", pictures, labels)
    images, got = read_affnist_mat(path)
    np.testing.assert_array_equal(images, pictures)
    np.testing.assert_array_equal(got, labels)
    assert images.dtype == np.uint8 and got.dtype == np.int64
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    read_affnist_mat(path, sha256=digest.upper())              # the right digest passes
    with pytest.raises(DataError, match="SHA-256"):
        read_affnist_mat(path, sha256="0" * 64)


@pytest.fixture
def small_affnist(monkeypatch):
    """A whole 'test set' of 640 pictures: 32 copies of a 20-digit MNIST (2 per class)."""
    monkeypatch.setattr(af, "MNIST_TEST_COUNTS", (2,) * 10)
    monkeypatch.setattr(af, "AFFNIST_TEST_SIZE", 640)
    labels = np.tile(np.repeat(np.arange(10), 2), 32)
    pictures = np.random.default_rng(11).integers(0, 256, (640, 40, 40), np.uint8)
    return pictures, labels


def test_the_whole_test_set_from_test_mat_or_from_its_32_batches(tmp_path, small_affnist):
    pictures, labels = small_affnist
    (tmp_path / "affnist").mkdir()
    write_mat(tmp_path / "affnist" / "test.mat", pictures, labels)
    images, got, files = af.load_affnist_test(tmp_path)
    np.testing.assert_array_equal(images, pictures)
    test = af.affnist_test(fake_mnist(), root=tmp_path)
    assert test.name == "affnist" and test.images.shape == (640, 40, 40)
    other = tmp_path / "other"
    (other / "affnist" / "test_batches").mkdir(parents=True)
    for i in range(32):
        part = slice(20 * i, 20 * (i + 1))
        write_mat(other / "affnist" / "test_batches" / f"{i + 1}.mat", pictures[part],
                  labels[part])
    images, got, files = af.load_affnist_test(other)
    np.testing.assert_array_equal(images, pictures)
    assert len(files) == 32
    (other / "affnist" / "test_batches" / "7.mat").unlink()
    with pytest.raises(DataError, match="missing"):
        af.load_affnist_test(other)


def test_a_test_set_of_the_wrong_size_or_classes_is_refused(tmp_path, small_affnist):
    pictures, labels = small_affnist
    (tmp_path / "affnist").mkdir()
    write_mat(tmp_path / "affnist" / "test.mat", pictures[:20], labels[:20])
    with pytest.raises(DataError, match="just_centered"):
        af.load_affnist_test(tmp_path)
    write_mat(tmp_path / "affnist" / "test.mat", pictures, np.full(640, 3))
    with pytest.raises(DataError, match="class counts"):
        af.load_affnist_test(tmp_path)
    with pytest.raises(DataError, match="class counts"):     # found files never fall back
        af.affnist_test(fake_mnist(), root=tmp_path)


@pytest.mark.parametrize("damage, message", [
    ("wrong picture size", r"\(1600, N\)"),
    ("labels short", "labels to match"),
    ("label 10", "0..9"),
    ("fractional pixels", "whole"),
    ("one-hot disagrees", "label_one_of_n"),
    ("no struct", "struct affNISTdata"),
    ("truncated", "truncated"),
    ("not a mat file", "not a Matlab file"),
    ("empty", "not a Matlab file"),
    ("matlab 7.3", "7.3"),
    ("too big", "bytes, over"),
])
def test_damaged_files_raise_a_clear_data_error(tmp_path, damage, message):
    rng = np.random.default_rng(12)
    pictures = rng.integers(0, 256, (8, 40, 40), np.uint8)
    labels = np.arange(8)
    path = tmp_path / "test.mat"
    n = 8
    if damage == "wrong picture size":
        savemat(path, {"affNISTdata": {"image": np.zeros((1599, n), np.uint8),
                                       "label_int": labels[None]}})
    elif damage == "labels short":
        savemat(path, {"affNISTdata": {"image": pictures.reshape(n, -1).T,
                                       "label_int": labels[None, :5]}})
    elif damage == "label 10":
        write_mat(path, pictures, labels, label_int=np.full((1, n), 10, np.uint8),
                  label_one_of_n=np.zeros((10, n)))
    elif damage == "fractional pixels":
        write_mat(path, pictures, labels, image=pictures.reshape(n, -1).T + 0.5)
    elif damage == "one-hot disagrees":
        write_mat(path, pictures, labels, label_one_of_n=np.eye(10)[labels[::-1]].T)
    elif damage == "no struct":
        savemat(path, {"images": pictures.reshape(n, -1)})
    elif damage == "truncated":
        write_mat(path, pictures, labels)
        path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])
    elif damage == "not a mat file":
        path.write_bytes(b"PK\x03\x04 a zip archive, not its content" + bytes(200))
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "matlab 7.3":
        path.write_bytes(b"MATLAB 7.3 MAT-file, Platform: GLNXA64".ljust(126) + b"IM" +
                         bytes(512))
    elif damage == "too big":
        write_mat(path, pictures, labels)
    with pytest.raises(DataError, match=message):
        read_affnist_mat(path, max_bytes=1000 if damage == "too big" else MAX_MAT_BYTES)
