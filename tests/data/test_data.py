"""Tests for minicaps.data.mnist: IDX parsing, verified loading and download, training helpers.

IDX files are written here by hand (struct + tobytes) and hashed here with hashlib, so the
parser and the checksum code are checked against an independent encoding of the format.
"""
import dataclasses
import functools
import gzip
import hashlib
import http.server
import os
import socket
import struct
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from minicaps.data import mnist as data
from minicaps.data.augment import random_shift
from minicaps.data.dataset import ChecksumError, DataError, DataNotFoundError, data_root, iterate_minibatches, to_model_input, train_val_split
from minicaps.data.mnist import load_mnist, read_idx

CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C,
         np.float32: 0x0D, np.float64: 0x0E}


def idx_bytes(array):
    """The IDX encoding of array, written from the format description."""
    array = np.asarray(array)
    header = struct.pack(">BBBB", 0, 0, CODES[array.dtype.type], array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write(path, content, gz=False, **gzip_kwargs):
    path = Path(path)
    path.write_bytes(gzip.compress(content, **gzip_kwargs) if gz else content)
    return path


def make_fake_mnist(folder, seed=0, n_train=12, n_test=5, gz=True):
    """Four small valid files; returns ({name: array}, {name: sha256 of the IDX bytes})."""
    rng = np.random.default_rng(seed)
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), np.uint8),
              "train-labels-idx1-ubyte": rng.integers(0, 10, n_train).astype(np.uint8),
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), np.uint8),
              "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test).astype(np.uint8)}
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    hashes = {}
    for name, array in arrays.items():
        content = idx_bytes(array)
        write(folder / (name + (".gz" if gz else "")), content, gz=gz)
        hashes[name] = hashlib.sha256(content).hexdigest()
    return arrays, hashes


def assert_loaded(result, arrays):
    x_train, y_train, x_test, y_test = result
    np.testing.assert_array_equal(x_train, arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(y_train, arrays["train-labels-idx1-ubyte"])
    np.testing.assert_array_equal(x_test, arrays["t10k-images-idx3-ubyte"])
    np.testing.assert_array_equal(y_test, arrays["t10k-labels-idx1-ubyte"])
    assert x_train.dtype == np.uint8 and y_train.dtype == np.int64 and y_test.dtype == np.int64


# --- IDX parsing -----------------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(array=st.sampled_from(list(CODES)).flatmap(lambda t: hnp.arrays(
           t, hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=4))),
       gz=st.booleans())
def test_idx_round_trip(array, gz):
    with tempfile.TemporaryDirectory() as tmp:
        path = write(Path(tmp) / "a.idx", idx_bytes(array), gz=gz)
        got = read_idx(path)
    assert got.dtype == array.dtype and got.dtype.isnative
    assert got.shape == array.shape
    np.testing.assert_array_equal(got, array)   # NaNs compare equal here


@pytest.mark.parametrize("name", ["plain.gz", "compressed.idx"])
def test_gzip_detected_by_magic_not_extension(tmp_path, name):
    array = np.arange(24, dtype=np.int32).reshape(2, 3, 4)
    path = write(tmp_path / name, idx_bytes(array), gz=name.endswith(".idx"))
    np.testing.assert_array_equal(read_idx(path), array)


def header(code=0x08, ndim=1, dims=(3,)):
    return struct.pack(">BBBB", 0, 0, code, ndim) + struct.pack(f">{len(dims)}I", *dims)


MALFORMED = {
    "empty": (b"", "empty"),
    "short": (b"\x00\x00\x08", "not an IDX file"),
    "wrong magic": (b"\x01\x00\x08\x01" + struct.pack(">I", 3) + b"abc", "not an IDX file"),
    "unknown dtype": (header(code=0x07) + b"abc", "dtype code 0x07"),
    "ndim 0": (header(ndim=0, dims=()), "ndim=0"),
    "ndim 5": (header(ndim=5, dims=(1,) * 5) + b"a", "ndim=5"),
    "truncated header": (header(ndim=3, dims=(1,)), "truncated IDX header"),
    "truncated data": (header(dims=(3,)) + b"ab", "truncated"),
    "truncated int32": (header(code=0x0C, dims=(2,)) + b"\x00" * 7, "truncated"),
    "extra data": (header(dims=(3,)) + b"abcd", "extra data"),
    "absurd dims": (header(ndim=2, dims=(2**31, 2**31)) + b"abc", "more than the limit"),
}


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_idx_is_a_clear_error(tmp_path, case, gz):
    content, message = MALFORMED[case]
    path = write(tmp_path / "bad-file", content, gz=gz)
    with pytest.raises(DataError, match=message) as info:
        read_idx(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)
    if case == "truncated data" and not gz:   # a raw file's size is checked before reading
        assert "the file has 2" in str(info.value)


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
def test_huge_header_fails_fast_without_allocating(tmp_path, gz):
    # 2^31 x 2^31 is over the limit at once; 900 MB is under it but the data is 10 bytes.
    for dims in [(2**31, 2**31), (30000, 30000)]:
        path = write(tmp_path / "huge", header(ndim=2, dims=dims) + b"x" * 10, gz=gz)
        tracemalloc.start()
        start = time.perf_counter()
        try:
            with pytest.raises(DataError, match="limit|truncated"):
                read_idx(path)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert time.perf_counter() - start < 1.0
        assert peak < 64 * 2**20, f"{dims}: peak {peak} bytes"


def test_max_bytes_limit_is_applied(tmp_path):
    path = write(tmp_path / "a", idx_bytes(np.zeros(100, np.uint8)))
    assert read_idx(path, max_bytes=100).shape == (100,)
    with pytest.raises(DataError, match="limit"):
        read_idx(path, max_bytes=99)


@pytest.mark.parametrize("damage", ["flip middle", "flip crc", "cut end", "garbage after"])
def test_corrupted_gzip_is_a_clear_error(tmp_path, damage):
    rng = np.random.default_rng(1)
    good = gzip.compress(idx_bytes(rng.integers(0, 256, (50, 28, 28), np.uint8)))
    bad = bytearray(good)
    if damage == "flip middle":
        bad[len(bad) // 2] ^= 0xFF
    elif damage == "flip crc":
        bad[-6] ^= 0x01   # the trailer is CRC32 then length, 4 bytes each
    elif damage == "cut end":
        bad = bad[:-20]
    else:
        bad += b"not gzip"
    path = tmp_path / "damaged.gz"
    path.write_bytes(bytes(bad))
    with pytest.raises(DataError) as info:
        read_idx(path)
    assert str(path) in str(info.value)


# --- loading and verification ----------------------------------------------------------------

@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw"])
def test_load_local_files_verified(tmp_path, gz):
    arrays, hashes = make_fake_mnist(tmp_path, gz=gz)
    assert_loaded(load_mnist(root=tmp_path, download=False, sha256=hashes), arrays)


def test_dataset_subfolder_and_env_variable(tmp_path, monkeypatch):
    arrays, hashes = make_fake_mnist(tmp_path / "mnist")
    monkeypatch.setenv("MINICAPS_DATA", str(tmp_path))
    result = load_mnist(download=False, sha256=hashes)
    assert_loaded(result, arrays)
    assert result.x_test is result[2]   # the named fields and the 4-tuple agree


def test_folder_order_subfolder_then_root_then_system(tmp_path, monkeypatch):
    root_arrays, root_hashes = make_fake_mnist(tmp_path / "root", seed=1)
    sub_arrays, sub_hashes = make_fake_mnist(tmp_path / "root" / "fashion-mnist", seed=2)
    sys_arrays, sys_hashes = make_fake_mnist(tmp_path / "system", seed=3)
    monkeypatch.setitem(data.DATA_FILES, "fashion-mnist", dataclasses.replace(
        data.DATA_FILES["fashion-mnist"], folders=(str(tmp_path / "system"),)))
    load = functools.partial(load_mnist, dataset="fashion-mnist", download=False)
    assert_loaded(load(root=tmp_path / "root", sha256=sub_hashes), sub_arrays)
    assert_loaded(load(root=tmp_path / "root" / "fashion-mnist" / "x", sha256=sys_hashes),
                  sys_arrays)
    os.remove(tmp_path / "root" / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz")
    assert_loaded(load(root=tmp_path / "root", sha256=root_hashes), root_arrays)


def test_one_flipped_pixel_is_rejected(tmp_path):
    arrays, hashes = make_fake_mnist(tmp_path)
    images = arrays["train-images-idx3-ubyte"].copy()
    images[3, 14, 14] ^= 1
    path = write(tmp_path / "train-images-idx3-ubyte.gz", idx_bytes(images), gz=True)
    with pytest.raises(ChecksumError) as info:
        load_mnist(root=tmp_path, download=False, sha256=hashes)
    message = str(info.value)
    assert str(path) in message
    assert hashes["train-images-idx3-ubyte"] in message
    assert hashlib.sha256(idx_bytes(images)).hexdigest() in message
    assert "Delete" in message
    # verify=False trusts the file, and loads the flipped pixel
    x_train = load_mnist(root=tmp_path, download=False, sha256=hashes, verify=False)[0]
    assert x_train[3, 14, 14] == images[3, 14, 14] != arrays["train-images-idx3-ubyte"][3, 14, 14]


def test_regzipped_copy_with_same_content_passes(tmp_path):
    arrays, hashes = make_fake_mnist(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    old = path.read_bytes()
    write(path, idx_bytes(arrays["train-images-idx3-ubyte"]), gz=True, compresslevel=1, mtime=1)
    assert path.read_bytes() != old
    assert_loaded(load_mnist(root=tmp_path, download=False, sha256=hashes), arrays)


@pytest.mark.parametrize("defect, message", [
    ("label 10", "0..9"), ("count", "match the images"), ("27 rows", r"\(N, 28, 28\)")])
def test_structure_is_checked(tmp_path, defect, message):
    arrays, _ = make_fake_mnist(tmp_path)
    if defect == "label 10":
        labels = arrays["train-labels-idx1-ubyte"].copy()
        labels[0] = 10
        write(tmp_path / "train-labels-idx1-ubyte.gz", idx_bytes(labels), gz=True)
    elif defect == "count":
        write(tmp_path / "t10k-labels-idx1-ubyte.gz", idx_bytes(np.zeros(4, np.uint8)), gz=True)
    else:
        write(tmp_path / "t10k-images-idx3-ubyte.gz", idx_bytes(np.zeros((5, 27, 28), np.uint8)),
              gz=True)
    with pytest.raises(DataError, match=message):
        load_mnist(root=tmp_path, download=False, verify=False)


def assert_lists_four_files(error, folder):
    message = str(error)
    for name in data.FILES:
        assert name in message
    assert str(folder) in message and "MINICAPS_DATA" in message


def test_offline_without_download_lists_files(tmp_path):
    with pytest.raises(DataNotFoundError) as info:
        load_mnist(root=tmp_path, download=False)
    assert_lists_four_files(info.value, tmp_path)
    assert list(tmp_path.iterdir()) == []   # nothing created


def test_a_data_root_that_cannot_be_written_is_a_clear_error(tmp_path):
    # A plain file where the data folder should be: mkdir fails (for root, too, unlike a
    # read-only folder), and the error says where the four files should go, no download tried.
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    with pytest.raises(DataNotFoundError, match="cannot write there") as info:
        load_mnist(root=blocker, mirrors=["http://127.0.0.1:9/never-contacted"])
    assert_lists_four_files(info.value, blocker / "mnist")


# --- download from a local HTTP server -------------------------------------------------------

class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    """Serves tmp_path/www: good/ (valid files), bad/ (wrong content), missing/ (404)."""
    www = tmp_path / "www"
    arrays, hashes = make_fake_mnist(www / "good")
    make_fake_mnist(www / "bad", seed=1)   # valid IDX, but not the content the hashes describe
    (www / "missing").mkdir()
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(www)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", arrays, hashes
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def downloaded(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_download_into_empty_cache(tmp_path, server):
    url, arrays, hashes = server
    cache = tmp_path / "cache"
    assert_loaded(load_mnist(root=cache, mirrors=[url + "/good/"], sha256=hashes, timeout=5),
                  arrays)
    assert downloaded(cache / "mnist") == sorted(n + ".gz" for n in data.FILES)
    # now it is cached: no network needed
    assert_loaded(load_mnist(root=cache, download=False, sha256=hashes), arrays)


def test_download_only_the_missing_file(tmp_path, server):
    url, arrays, hashes = server
    cache = tmp_path / "cache"
    make_fake_mnist(cache / "mnist")
    os.remove(cache / "mnist" / "t10k-labels-idx1-ubyte.gz")
    # the local files are from seed 0 like the server's good ones
    assert_loaded(load_mnist(root=cache, mirrors=[url + "/good/"], sha256=hashes, timeout=5),
                  arrays)


@pytest.mark.parametrize("first", ["missing", "bad"])
def test_falls_back_to_the_next_mirror(tmp_path, server, first):
    url, arrays, hashes = server
    cache = tmp_path / "cache"
    mirrors = [f"{url}/{first}/", f"{url}/good/"]
    assert_loaded(load_mnist(root=cache, mirrors=mirrors, sha256=hashes, timeout=5), arrays)
    assert downloaded(cache / "mnist") == sorted(n + ".gz" for n in data.FILES)


def test_bad_download_is_deleted(tmp_path, server):
    url, _, hashes = server
    cache = tmp_path / "cache"
    with pytest.raises(DataNotFoundError, match="SHA-256"):
        load_mnist(root=cache, mirrors=[url + "/bad/"], sha256=hashes, timeout=5)
    assert downloaded(cache / "mnist") == []   # no bad file, no .part left behind


def test_no_reachable_mirror_lists_files(tmp_path):
    with socket.socket() as s:   # a port nobody listens on: connections are refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cache = tmp_path / "cache"
    start = time.perf_counter()
    with pytest.raises(DataNotFoundError) as info:
        load_mnist(root=cache, mirrors=[f"http://127.0.0.1:{port}/"], timeout=2)
    assert time.perf_counter() - start < 10
    assert_lists_four_files(info.value, cache / "mnist")
    assert f"127.0.0.1:{port}" in str(info.value)
    assert downloaded(cache / "mnist") == []


def test_data_root_precedence(tmp_path, monkeypatch):
    (tmp_path / "env").mkdir()
    monkeypatch.setenv("MINICAPS_DATA", str(tmp_path / "env"))
    assert data_root(tmp_path / "arg") == tmp_path / "arg"
    assert data_root() == tmp_path / "env"
    monkeypatch.delenv("MINICAPS_DATA")
    assert "minicaps" in str(data_root())


# --- training helpers ------------------------------------------------------------------------

def naive_shift(image, dy, dx):
    """out[i, j] = image[i - dy, j - dx], zero outside: one pixel at a time."""
    out = np.zeros_like(image)
    h, w = image.shape[:2]
    for i in range(h):
        for j in range(w):
            if 0 <= i - dy < h and 0 <= j - dx < w:
                out[i, j] = image[i - dy, j - dx]
    return out


@pytest.mark.parametrize("shape", [(30, 7, 9), (30, 7, 9, 2)])
def test_random_shift_matches_some_naive_shift(shape):
    rng = np.random.default_rng(0)
    images = rng.integers(1, 256, shape, np.uint8)   # no zeros: padding is visible
    before = images.copy()
    out = random_shift(images, max_shift=2, rng=np.random.default_rng(1))
    assert out.shape == images.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(images, before)   # input untouched
    shifts = set()
    for image, shifted in zip(images, out):
        matches = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                   if np.array_equal(shifted, naive_shift(image, dy, dx))]
        assert len(matches) == 1
        shifts.add(matches[0])
    assert len(shifts) > 5   # not one shift for the whole batch


def test_random_shift_float_range_and_seed():
    images = np.random.default_rng(0).random((20, 6, 6)).astype(np.float32)
    a = random_shift(images, rng=5)
    assert a.dtype == np.float32 and a.min() >= 0 and a.max() <= images.max()
    np.testing.assert_array_equal(a, random_shift(images, rng=np.random.default_rng(5)))
    assert not np.array_equal(a, random_shift(images, rng=6))
    np.testing.assert_array_equal(random_shift(images, max_shift=0, rng=0), images)
    with pytest.raises(ValueError):
        random_shift(images, max_shift=6)


def test_random_shift_covers_all_25_shifts_uniformly():
    n = 5000
    images = np.zeros((n, 7, 7), np.uint8)
    images[:, 3, 3] = 1   # a single dot: where it lands is the shift
    out = random_shift(images, max_shift=2, rng=0)
    assert (out.reshape(n, -1).sum(1) == 1).all()
    rows, cols = np.nonzero(out.reshape(n, 7, 7))[1:]
    counts = np.bincount((rows - 1) * 5 + (cols - 1), minlength=25)
    assert counts.shape == (25,) and (counts > 0).all()
    expected = n / 25   # 200 each; 6 standard deviations is about +-84
    assert np.abs(counts - expected).max() < 84


def test_to_model_input():
    images = np.random.default_rng(0).integers(0, 256, (4, 28, 28), np.uint8)
    images[0, 0, 0], images[0, 0, 1] = 0, 255
    x = to_model_input(images, np.float32)
    assert x.shape == (4, 28, 28, 1) and x.dtype == np.float32
    assert x.min() == 0 and x.max() == 1
    np.testing.assert_allclose(x[..., 0], images.astype(np.float64) / 255, rtol=1e-7)
    x64 = to_model_input(images[..., None], np.float64)
    assert x64.shape == (4, 28, 28, 1) and x64.dtype == np.float64
    with pytest.raises(ValueError, match="uint8"):
        to_model_input(images.astype(np.float32))
    with pytest.raises(ValueError, match="shape"):
        to_model_input(images[0])


@pytest.mark.parametrize("shuffle, drop_last", [(True, False), (True, True), (False, False)])
def test_iterate_minibatches(shuffle, drop_last):
    x = np.arange(23)
    y = x * 10
    batches = list(iterate_minibatches(x, y, 5, rng=3, shuffle=shuffle, drop_last=drop_last))
    sizes = [len(xb) for xb, _ in batches]
    assert sizes == ([5] * 4 if drop_last else [5] * 4 + [3])
    for xb, yb in batches:
        np.testing.assert_array_equal(yb, xb * 10)
    seen = np.concatenate([xb for xb, _ in batches])
    assert len(set(seen.tolist())) == len(seen)
    if not shuffle:
        np.testing.assert_array_equal(seen, x)
    else:
        assert not np.array_equal(seen, x[:len(seen)])
        again = list(iterate_minibatches(x, y, 5, rng=3, drop_last=drop_last))
        np.testing.assert_array_equal(np.concatenate([xb for xb, _ in again]), seen)
    if not drop_last:
        assert sorted(seen.tolist()) == x.tolist()


def test_train_val_split():
    x = np.arange(50)
    y = x + 100
    x_tr, y_tr, x_val, y_val = train_val_split(x, y, n_val=12, seed=4)
    assert len(x_val) == 12 and len(x_tr) == 38
    np.testing.assert_array_equal(y_tr, x_tr + 100)
    np.testing.assert_array_equal(y_val, x_val + 100)
    assert sorted(np.concatenate([x_tr, x_val]).tolist()) == x.tolist()
    assert not np.array_equal(np.sort(x_val), np.arange(12))   # random, not the first rows
    np.testing.assert_array_equal(train_val_split(x, y, 12, seed=4)[2], x_val)
    with pytest.raises(ValueError):
        train_val_split(x, y, n_val=51)


# --- the real MNIST --------------------------------------------------------------------------

def _real_mnist_folder():
    root = os.environ.get("MINICAPS_DATA")
    if not root:
        return None
    for folder in (Path(root) / "mnist", Path(root)):
        if all((folder / (n + ".gz")).is_file() or (folder / n).is_file() for n in data.FILES):
            return folder
    return None


@pytest.mark.mnist
@pytest.mark.skipif(_real_mnist_folder() is None,
                    reason="set MINICAPS_DATA to a folder with the four MNIST files")
def test_real_mnist():
    x_train, y_train, x_test, y_test = load_mnist(download=False)   # verify=True: hashes pass
    assert x_train.shape == (60000, 28, 28) and x_test.shape == (10000, 28, 28)
    assert x_train.dtype == np.uint8 and y_train.dtype == np.int64
    # the class counts published with the data set
    np.testing.assert_array_equal(np.bincount(y_train, minlength=10),
                                  [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949])
    np.testing.assert_array_equal(np.bincount(y_test, minlength=10),
                                  [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009])
    assert x_train.max() == 255 and x_train.min() == 0


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(),
                    reason="Debian package dataset-fashion-mnist is not installed")
def test_debian_fashion_mnist():
    x_train, y_train, x_test, y_test = load_mnist(root=Path(tempfile.gettempdir()) / "none",
                                                  dataset="fashion-mnist", download=False)
    assert x_train.shape == (60000, 28, 28) and x_test.shape == (10000, 28, 28)
    # Fashion-MNIST is balanced: 6000 and 1000 of each class
    assert (np.bincount(y_train) == 6000).all() and (np.bincount(y_test) == 1000).all()
