"""Tests for minicaps.affnist: placements read back, the warp against a bilinear loop
written from the definition, drawn transformations inside their ranges, and the reader of
the real .mat files on files written here in the real layout, good and damaged."""
import hashlib

import numpy as np
import pytest
from scipy.io import savemat

from minicaps import affnist as af
from minicaps.data import DataError, DataNotFoundError, Dataset


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


def test_expanded_mnist_is_a_seeded_dataset():
    mnist = fake_mnist()
    a, b = af.expanded_mnist(mnist, seed=5), af.expanded_mnist(mnist, seed=5)
    assert isinstance(a, Dataset) and a.name == "expanded-mnist"
    assert a.x_train.shape == (30, 40, 40) and a.x_test.shape == (20, 40, 40)
    assert a.classes == tuple("0123456789") and a.info["seed"] == 5
    np.testing.assert_array_equal(a.x_train, b.x_train)
    assert not np.array_equal(a.x_train, af.expanded_mnist(mnist, seed=6).x_train)
    np.testing.assert_array_equal(a.y_test, mnist[3])
    # the ink is the digits' ink, moved
    np.testing.assert_array_equal(a.x_train.sum(axis=(1, 2)), mnist[0].sum(axis=(1, 2)))


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

def test_drawn_transformations_stay_in_the_published_ranges_and_keep_all_ink():
    images, labels = digits(500, 8)
    out, out_labels, p = af.generate_affnist(images, labels, seed=9)
    assert out.shape == (500, 40, 40) and out.dtype == np.uint8
    np.testing.assert_array_equal(out_labels, labels)
    for name, (low, high) in af.AFFNIST_RANGES.items():
        values = getattr(p, name)
        assert values.min() >= low and values.max() <= high
        reach = 0.05 * (high - low)                               # 500 draws span the range
        assert values.min() < low + reach and values.max() > high - reach
    assert af.AFFNIST_RANGES == {"rotation": (-20.0, 20.0), "shear": (-0.2, 0.2),
                                 "scale_y": (0.8, 1.2), "scale_x": (0.8, 1.2)}
    assert (p.ty == np.round(p.ty)).all() and (p.tx == np.round(p.tx)).all()
    assert np.abs(p.ty).max() >= 6 and np.abs(p.tx).max() >= 6    # real moves, not jitter
    # all the ink made on a roomy canvas is on the 40x40 one: nothing was cut off
    roomy = af.warp(images, p._replace(ty=np.zeros(500), tx=np.zeros(500)), size=64)
    np.testing.assert_array_equal(out.sum(axis=(1, 2)), roomy.sum(axis=(1, 2)))
    np.testing.assert_array_equal(out, af.warp(images, p))       # what the params say
    # reproducible from the seed, another seed another set; copies come one after another
    again, _, _ = af.generate_affnist(images[:50], labels[:50], seed=9)
    np.testing.assert_array_equal(again, af.generate_affnist(images[:50], labels[:50], 9)[0])
    chunked = af.draw_affine(images, np.random.default_rng(9), chunk=7)
    for field, whole in zip(chunked, p):                           # chunks bound memory only
        np.testing.assert_array_equal(field, whole)
    assert not np.array_equal(again, af.generate_affnist(images[:50], labels[:50], 10)[0])
    two, two_labels, _ = af.generate_affnist(images[:50], labels[:50], seed=9, copies=2)
    assert two.shape == (100, 40, 40) and (two_labels == np.tile(labels[:50], 2)).all()


def test_ink_wider_than_the_canvas_is_centred_not_refused():
    wide = np.full((1, 28, 28), 200, np.uint8)                   # a full 28x28 square
    p = af.draw_affine(wide, np.random.default_rng(0),
                       dict(af.AFFNIST_RANGES, scale_x=(1.6, 1.6), scale_y=(1.0, 1.0)))
    assert abs(p.tx[0]) <= 1                                      # 45 wide on 40: centred


def test_without_the_files_the_test_set_is_generated_and_says_so(tmp_path):
    mnist = fake_mnist()
    test = af.affnist_test(mnist, root=tmp_path, seed=3)
    assert test.name == "affnist-generated" and test.info["generated"] is True
    assert test.images.shape == (20, 40, 40) and test.info["ranges"] == af.AFFNIST_RANGES
    data = af.affnist_dataset(mnist, root=tmp_path, seed=8, test_seed=3)
    assert isinstance(data, Dataset) and data.name == "affnist-generated"
    assert data.info["train_seed"] == 8 and data.info["test_info"]["seed"] == 3
    np.testing.assert_array_equal(data.x_test, test.images)
    np.testing.assert_array_equal(data.x_train, af.expanded_mnist(mnist, seed=8).x_train)
    assert data.info["test"] == "affnist-generated" and data.info["train"] == "expanded-mnist"
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
    images, got = af.read_affnist_mat(path)
    np.testing.assert_array_equal(images, pictures)
    np.testing.assert_array_equal(got, labels)
    assert images.dtype == np.uint8 and got.dtype == np.int64
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    af.read_affnist_mat(path, sha256=digest.upper())              # the right digest passes
    with pytest.raises(DataError, match="SHA-256"):
        af.read_affnist_mat(path, sha256="0" * 64)


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
        af.read_affnist_mat(path, max_bytes=1000 if damage == "too big" else af.MAX_MAT_BYTES)
