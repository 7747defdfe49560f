"""Bounds that were missing: an affNIST test.mat of a few hundred kilobytes whose layout
makes scipy build millions of objects, robustness --steps without end, and an Adam step
that changed some parameters before it found a wrong-shaped gradient.

The .mat files are built here byte by byte from the Matlab 5 format (miMATRIX elements:
array flags, dimensions, name, then the data or the fields), as a hostile file would be.
"""
import struct
import zlib

import numpy as np
import pytest
from scipy.io import savemat

from minicaps import cli
from minicaps.training import robustness
from minicaps.data.affnist import load_affnist_test
from minicaps.data.affnist_mat import read_affnist_mat
from minicaps.data.dataset import DataError
from minicaps.training.optim import Adam

from hostile_cases import one_line_error
from limits import file_hashes
from synthetic import synthetic_mnist

MB = 1 << 20
MI_INT8, MI_UINT8, MI_INT32, MI_UINT32, MI_DOUBLE, MI_MATRIX = 1, 2, 5, 6, 9, 14
MX_CELL, MX_STRUCT, MX_DOUBLE, MX_UINT8 = 1, 2, 6, 9
EMPTY_MATRIX = struct.pack("<II", MI_MATRIX, 0)       # an empty [] in a cell or struct


def element(kind, data):
    return struct.pack("<II", kind, len(data)) + data + bytes(-len(data) % 8)


def matrix(cls, dims, body, name=b"", size=None):
    """One miMATRIX element: array flags, dimensions, name, then ``body``; ``size``
    overrides the length of body its tag counts (a body given as pieces elsewhere)."""
    head = (element(MI_UINT32, struct.pack("<II", cls, 0))
            + element(MI_INT32, struct.pack(f"<{len(dims)}i", *dims)) + element(MI_INT8, name))
    return struct.pack("<II", MI_MATRIX, len(head) + (len(body) if size is None else size)) + head


def struct_fields(names):
    return (struct.pack("<HHi", MI_INT32, 4, 32)
            + element(MI_INT8, b"".join(n.encode().ljust(32, b"\0") for n in names)))


def write_mat(path, pieces):
    """A Matlab 5 file of one compressed variable: the concatenation of ``pieces`` (bytes,
    or (bytes, count) repeated count times, compressed without being held whole)."""
    c = zlib.compressobj(1)
    stream = []
    for piece in pieces:
        data, count = piece if isinstance(piece, tuple) else (piece, 1)
        block = data * max(1, min(count, MB // max(1, len(data))))
        done = 0
        while done < count:
            times = min(count - done, len(block) // len(data))
            stream.append(c.compress(block[:times * len(data)]))
            done += times
    stream.append(c.flush())
    body = b"".join(stream)
    header = b"MATLAB 5.0 MAT-file, hostile".ljust(116, b" ") + bytes(8) + struct.pack("<H", 0x0100) + b"IM"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header + struct.pack("<II", 15, len(body)) + body)
    return path


def affnist_of(image_pieces, image_size, top_dims=(1, 1), top_class=MX_STRUCT):
    """affNISTdata with fields image (given as pieces of image_size bytes) and label_int."""
    labels = matrix(MX_DOUBLE, [1, 1], element(MI_DOUBLE, struct.pack("<d", 1.0)))
    labels += element(MI_DOUBLE, struct.pack("<d", 1.0))
    fields = struct_fields(["image", "label_int"])
    total = len(fields) + image_size + len(labels)
    return [matrix(top_class, list(top_dims), b"", b"affNISTdata", size=total), fields,
            *image_pieces, labels]


def cells(n):
    """image: a 1 x n cell array of empty matrices (8 bytes each)."""
    body_size = n * len(EMPTY_MATRIX)
    head = matrix(MX_CELL, [1, n], b"", size=body_size)
    return [head, (EMPTY_MATRIX, n)], len(head) + body_size


def struct_array(n):
    """image: a 1 x n struct array of one field, each an empty matrix."""
    fields = struct_fields(["f"])
    body_size = len(fields) + n * len(EMPTY_MATRIX)
    head = matrix(MX_STRUCT, [1, n], b"", size=body_size)
    return [head, fields, (EMPTY_MATRIX, n)], len(head) + body_size


def refused(root, bounded, expected):
    """load_affnist_test(root) raises a DataError naming test.mat and ``expected``, within
    256 MB and 10 s, the file unchanged."""
    before = file_hashes(root)
    with bounded(memory=256 * MB, seconds=10):
        with pytest.raises(DataError, match=expected) as info:
            load_affnist_test(root)
    assert str(root / "affnist" / "test.mat") in str(info.value)
    assert file_hashes(root) == before
    return str(info.value)


# --- F1: affNIST test.mat's layout checked before scipy builds it -----------------------------

def test_an_affnist_image_of_4_million_empty_cells_is_refused_before_loadmat(tmp_path, bounded):
    pieces, size = cells(4_000_000)
    path = write_mat(tmp_path / "affnist" / "test.mat", affnist_of(pieces, size))
    assert path.stat().st_size < MB                   # 32 MB of cells, 4 million objects
    message = refused(tmp_path, bounded, r"affNISTdata\.image is a cell array of 1x4000000")
    assert "numeric matrix" in message


def test_an_affnist_image_of_a_4_million_struct_array_is_refused(tmp_path, bounded):
    pieces, size = struct_array(4_000_000)
    write_mat(tmp_path / "affnist" / "test.mat", affnist_of(pieces, size))
    refused(tmp_path, bounded, r"affNISTdata\.image is a struct of 1x4000000, expected a numeric matrix")


def test_affnistdata_as_a_struct_array_or_a_cell_is_refused(tmp_path, bounded):
    pieces, size = cells(3)
    write_mat(tmp_path / "affnist" / "test.mat", affnist_of(pieces, size, top_dims=(1, 500_000)))
    refused(tmp_path, bounded, r"expected a struct affNISTdata of 1x1 .*found a struct of 1x500000")
    write_mat(tmp_path / "affnist" / "test.mat", affnist_of(pieces, size, top_class=MX_CELL))
    refused(tmp_path, bounded, r"expected a struct affNISTdata .*found a cell array of 1x1")


def test_an_affnist_image_declaring_more_elements_than_it_holds_is_refused(tmp_path, bounded):
    """A uint8 image of 100,000 x 100,000 pictures' worth of dimensions and 16 bytes."""
    data = element(MI_UINT8, bytes(16))
    image = matrix(MX_UINT8, [100_000, 100_000], data) + data
    write_mat(tmp_path / "affnist" / "test.mat", affnist_of([image], len(image)))
    refused(tmp_path, bounded, r"affNISTdata\.image holds 16 bytes, its dimensions "
                               r"100000x100000 need 10000000000")


@pytest.mark.parametrize("kind", [0, 8, 10, 11, 16, 17, 20])
@pytest.mark.parametrize("dims", [[1600, 1], [1, 1], [0, 5]])
def test_an_affnist_field_whose_data_is_no_number_type_is_refused(tmp_path, bounded, kind,
                                                                   dims):
    """Data elements of a type that is no number (0, 8, 10, 11: unused; 16-20: text and
    compressed), empty: scipy crashed the process on such a field (SIGSEGV)."""
    data = struct.pack("<II", kind, 0)
    image = matrix(MX_UINT8, dims, data) + data
    write_mat(tmp_path / "affnist" / "test.mat", affnist_of([image], len(image)))
    refused(tmp_path, bounded, rf"affNISTdata\.image holds data of element type {kind}, not "
                               r"one of Matlab's number types")


def test_honest_affnist_files_still_read_compressed_or_not(tmp_path, bounded):
    rng = np.random.default_rng(3)
    pictures = rng.integers(0, 256, (6, 40, 40), np.uint8)
    labels = np.arange(6)
    data = {"affNISTdata": {"image": pictures.reshape(6, -1).T,
                            "label_int": labels[None].astype(np.uint8),
                            "label_one_of_n": np.eye(10)[labels].T,   # doubles, stored small
                            "matlab_transform": rng.standard_normal((6, 6))}}
    for compressed in (False, True):
        path = tmp_path / f"{compressed}.mat"
        savemat(path, data, do_compression=compressed)
        with bounded(memory=256 * MB, seconds=10):
            images, got = read_affnist_mat(path)
        np.testing.assert_array_equal(images, pictures)
        np.testing.assert_array_equal(got, labels)


def test_the_train_command_says_the_cell_array_in_one_line(tmp_path, bounded, capsys,
                                                            monkeypatch):
    pieces, size = cells(1000)
    write_mat(tmp_path / "affnist" / "test.mat", affnist_of(pieces, size))
    monkeypatch.setenv("MINICAPS_DATA", str(tmp_path))
    data = synthetic_mnist(8, 4)
    monkeypatch.setattr("minicaps.data.mnist.load_mnist", lambda *a, **k: data)
    err = one_line_error(capsys, ["train", "--preset", "quick", "--limit-train", "8",
                                  "--limit-test", "4", "--no-progress", "--dataset", "affnist",
                                  "--epochs", "1", "--out", str(tmp_path / "run")],
                         bounded, memory=1 << 30)
    assert "test.mat" in err and "cell array" in err


# --- F2: robustness --steps bounded ---------------------------------------------------------

@pytest.mark.parametrize("steps", ["0", "101", "100000000", "1000000000000", str(10 ** 20)])
def test_robustness_steps_outside_1_to_100_are_an_argument_error(tmp_path, capsys, bounded,
                                                                 steps):
    with bounded(memory=256 * MB, seconds=10), pytest.raises(SystemExit) as exit:
        cli.main(["robustness", str(tmp_path / "a.npz"), str(tmp_path / "a.npz"),
                  "--out", str(tmp_path / "r"), "--steps", steps])
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert f"--steps: must be an integer from 1 to 100, got {steps}" in err
    assert err.count("\n") == 1, err


def test_strengths_refuses_steps_past_its_maximum():
    assert len(robustness.strengths("scale", robustness.MAX_STEPS)) == 2 * 100 + 1
    with pytest.raises(ValueError, match=r"steps must be an integer from 1 to 100, got 101"):
        robustness.strengths("rotation", 101)


# --- F6: Adam checks every gradient before it changes anything --------------------------------

def adam_state(opt, params):
    return opt.t, {k: v.copy() for k, v in params.items()}, \
        {k: v.copy() for k, v in opt.m.items()}, {k: v.copy() for k, v in opt.v.items()}


def assert_same_state(a, b):
    assert a[0] == b[0]
    for x, y in zip(a[1:], b[1:]):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])


@pytest.mark.parametrize("bad, message", [
    (np.zeros(3, np.float32), r"the gradient of dec3\.b is \(3,\) float32, expected \(4,\) float32"),
    (np.zeros(4, np.float64), r"the gradient of dec3\.b is \(4,\) float64, expected \(4,\) float32"),
    (np.zeros(4, np.int64), r"the gradient of dec3\.b is \(4,\) int64, expected \(4,\) float32"),
])
def test_adam_refuses_a_gradient_of_the_wrong_shape_or_dtype_changing_nothing(bad, message):
    rng = np.random.default_rng(5)
    params = {name: rng.standard_normal(shape).astype(np.float32)
              for name, shape in [("conv1.W", (3, 3)), ("dec1.b", (5,)), ("dec3.b", (4,))]}
    grads = {k: np.ones_like(v) for k, v in params.items()}
    opt = Adam()
    opt.step(params, grads)
    before = adam_state(opt, params)
    with pytest.raises(ValueError, match=message):
        opt.step(params, {**grads, "dec3.b": bad})
    assert_same_state(adam_state(opt, params), before)
    opt.step(params, grads)                            # and it goes on as before
    assert opt.t == 2
