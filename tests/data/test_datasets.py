"""Tests for minicaps.data.registry and its formats: CIFAR-10 binary, SVHN .mat, smallNORB matrices.

Every file is written here in the real format from its description (records of bytes, a
tarfile, scipy.io.savemat, NORB headers packed with struct) and hashed here with hashlib;
the arrays that come back are compared with ones built from those bytes one pixel at a time.
"""
import functools
import gzip
import hashlib
import http.server
import io
import math
import os
import struct
import tarfile
import threading

import numpy as np
import pytest
import scipy.io
from hypothesis import given, strategies as st
from hypothesis.extra import numpy as hnp

from minicaps.data import cifar10
from minicaps.data import smallnorb
from minicaps.data import svhn
from minicaps.data.dataset import ChecksumError, DataError, DataNotFoundError, Dataset
from minicaps.data.registry import DATASETS, FASHION_CLASSES, load_dataset

MB = 1 << 20


# --- CIFAR-10 --------------------------------------------------------------------------------

def cifar_batch(rng, n, n_classes=10):
    """n records as bytes: a label byte, then 3 x 1024 pixel bytes (R, G, B planes)."""
    records = rng.integers(0, 256, (n, cifar10.RECORD), np.uint8)
    records[:, 0] = rng.integers(0, n_classes, n)
    return records.tobytes()


def cifar_expected(raw):
    """(images, labels) built from the record bytes pixel by pixel, as the format says."""
    n = len(raw) // 3073
    images = np.zeros((n, 32, 32, 3), np.uint8)
    for i in range(n):
        base = i * 3073 + 1
        for ch in range(3):
            for r in range(32):
                for c in range(32):
                    images[i, r, c, ch] = raw[base + ch * 1024 + r * 32 + c]
    return images, np.array([raw[i * 3073] for i in range(n)], np.int64)


META = ("\n".join(cifar10.CLASSES) + "\n\n").encode()    # as the real file: a blank line at the end


def cifar_members(seed=0, sizes=(2, 1, 3, 1, 2, 2)):
    """{name in the folder: bytes} for the six batches (sizes records each) and the meta file."""
    rng = np.random.default_rng(seed)
    names = cifar10.TRAIN + (cifar10.TEST,)
    members = {name: cifar_batch(rng, n) for name, n in zip(names, sizes)}
    members[cifar10.META] = META
    return members


def tar_gz(entries):
    """A .tar.gz in memory. entries: (name, bytes) for regular files, or (name, type,
    linkname) for anything else (types are bytes too: tarfile.DIRTYPE is b"5")."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for entry in entries:
            info = tarfile.TarInfo(entry[0])
            if len(entry) == 2:
                info.size = len(entry[1])
                tar.addfile(info, io.BytesIO(entry[1]))
            else:
                info.type, info.linkname = entry[1], entry[2]
                tar.addfile(info)
    return buf.getvalue()


def cifar_archive(members, extra=(), folder_entry=True):
    entries = [("cifar-10-batches-bin", tarfile.DIRTYPE, "")] if folder_entry else []
    entries += [(f"cifar-10-batches-bin/{name}", data) for name, data in members.items()]
    return tar_gz(entries + list(extra))


def assert_cifar(dataset, members):
    expected = {n: cifar_expected(members[n]) for n in cifar10.TRAIN + (cifar10.TEST,)}
    np.testing.assert_array_equal(dataset.x_train,
                                  np.concatenate([expected[n][0] for n in cifar10.TRAIN]))
    np.testing.assert_array_equal(dataset.y_train,
                                  np.concatenate([expected[n][1] for n in cifar10.TRAIN]))
    np.testing.assert_array_equal(dataset.x_test, expected[cifar10.TEST][0])
    np.testing.assert_array_equal(dataset.y_test, expected[cifar10.TEST][1])
    assert dataset.x_train.shape == (9, 32, 32, 3) and dataset.x_train.dtype == np.uint8
    assert dataset.y_train.dtype == np.int64
    assert dataset.classes == ("airplane", "automobile", "bird", "cat", "deer",
                               "dog", "frog", "horse", "ship", "truck")
    assert dataset.name == "cifar10" and isinstance(dataset, Dataset)


def sha(data):
    return hashlib.sha256(data).hexdigest()


def test_cifar10_archive_round_trip(tmp_path):
    members = cifar_members()
    archive = cifar_archive(members)
    (tmp_path / "cifar10").mkdir()
    (tmp_path / "cifar10" / cifar10.ARCHIVE).write_bytes(archive)
    dataset = load_dataset("cifar10", root=tmp_path, download=False,
                           sha256={cifar10.ARCHIVE: sha(archive)})
    assert_cifar(dataset, members)


def test_cifar10_extracted_folder_verified_per_file(tmp_path):
    members = cifar_members(seed=1)
    folder = tmp_path / "cifar-10-batches-bin"      # directly in root this time
    folder.mkdir()
    for name, data in members.items():
        (folder / name).write_bytes(data)
    digests = {n: sha(d) for n, d in members.items() if n.endswith(".bin")}
    assert_cifar(load_dataset("cifar10", root=tmp_path, download=False, sha256=digests), members)
    # one flipped pixel byte: that file's digest no longer matches
    bad = bytearray(members["data_batch_3.bin"])
    bad[100] ^= 1
    (folder / "data_batch_3.bin").write_bytes(bytes(bad))
    with pytest.raises(ChecksumError, match="data_batch_3.bin") as info:
        load_dataset("cifar10", root=tmp_path, download=False, sha256=digests)
    assert digests["data_batch_3.bin"] in str(info.value) and sha(bad) in str(info.value)
    got = load_dataset("cifar10", root=tmp_path, download=False, verify=False)  # trusts it
    assert_cifar(got, {**members, "data_batch_3.bin": bytes(bad)})


def test_cifar10_published_digests_are_checked_by_default(tmp_path):
    # Files that are not the real CIFAR-10 fail against the published digest
    (tmp_path / cifar10.ARCHIVE).write_bytes(cifar_archive(cifar_members()))
    with pytest.raises(ChecksumError, match=cifar10.SHA256[cifar10.ARCHIVE]):
        load_dataset("cifar10", root=tmp_path, download=False)


def load_archive_bytes(tmp_path, archive):
    path = tmp_path / cifar10.ARCHIVE
    path.write_bytes(archive)
    return load_dataset("cifar10", root=tmp_path, download=False, verify=False), path


@pytest.mark.parametrize("case, message", [
    ("symlink", "not a regular file"),
    ("hardlink", "not a regular file"),
    ("unexpected name", "unexpected member"),
    ("escaping name", "unexpected member"),
    ("duplicate", "appears twice"),
    ("record size", "multiple of 3073"),
    ("huge meta", "1..65536"),
    ("missing batch", "lacks"),
    ("label 10", "label 10"),
    ("wrong classes", "expected CIFAR-10's"),
    ("not gzip", "not a readable tar.gz"),
    ("truncated", "not a readable tar.gz|truncated"),
])
def test_cifar10_hostile_archives(tmp_path, bounded, case, message):
    members = cifar_members()
    extra = []
    if case == "symlink":
        members.pop("data_batch_2.bin")
        extra = [("cifar-10-batches-bin/data_batch_2.bin", tarfile.SYMTYPE, "/etc/passwd")]
    elif case == "hardlink":
        members.pop("data_batch_2.bin")
        extra = [("cifar-10-batches-bin/data_batch_2.bin", tarfile.LNKTYPE,
                  "cifar-10-batches-bin/data_batch_1.bin")]
    elif case == "unexpected name":
        extra = [("cifar-10-batches-bin/run_me.py", b"print('hi')")]
    elif case == "escaping name":
        extra = [("cifar-10-batches-bin/../../evil.bin", members["data_batch_1.bin"])]
    elif case == "duplicate":
        extra = [("cifar-10-batches-bin/test_batch.bin", members["test_batch.bin"])]
    elif case == "record size":
        members["data_batch_4.bin"] += b"x"
    elif case == "huge meta":
        members[cifar10.META] = b"a\n" * 40000
    elif case == "missing batch":
        members.pop("data_batch_5.bin")
    elif case == "label 10":
        raw = bytearray(members["data_batch_2.bin"])
        raw[0] = 10
        members["data_batch_2.bin"] = bytes(raw)
    elif case == "wrong classes":
        members[cifar10.META] = b"\n".join(b"c%d" % i for i in range(10))
    archive = cifar_archive(members, extra)
    if case == "not gzip":
        archive = b"PK\x03\x04" + archive[4:]
    elif case == "truncated":
        archive = archive[:len(archive) // 2]
    path = tmp_path / cifar10.ARCHIVE
    path.write_bytes(archive)
    verify = case == "wrong classes"      # the meta file's names are checked when verifying
    sha256 = {cifar10.ARCHIVE: sha(archive)}
    with bounded(memory=256 * MB, seconds=10):
        with pytest.raises(DataError, match=message) as info:
            load_dataset("cifar10", root=tmp_path, download=False, verify=verify, sha256=sha256)
    assert str(path) in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == [cifar10.ARCHIVE]   # nothing extracted


def test_cifar10_archive_cannot_unpack_past_the_cap(tmp_path, monkeypatch):
    monkeypatch.setattr(cifar10, "MAX_UNPACKED", 20000)   # CIFAR-10's bound, scaled down
    archive = cifar_archive(cifar_members())
    path = tmp_path / cifar10.ARCHIVE
    path.write_bytes(archive)
    with pytest.raises(DataError, match="unpacks to more than 20000 bytes"):
        load_dataset("cifar10", root=tmp_path, download=False, verify=False)


@pytest.mark.parametrize("size, message", [(3073 * 2 + 5, "whole number of 3073-byte"),
                                           (0, "whole number"),
                                           (3073 * 10001, "more than the limit")])
def test_cifar10_folder_batch_sizes(tmp_path, bounded, size, message):
    members = cifar_members()
    folder = tmp_path / "cifar10" / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    for name, data in members.items():
        (folder / name).write_bytes(data)
    with open(folder / "test_batch.bin", "wb") as f:
        f.truncate(size)                     # a sparse file: big on paper, nothing read
    with bounded(memory=128 * MB, seconds=10):
        with pytest.raises(DataError, match=message) as info:
            load_dataset("cifar10", root=tmp_path, download=False, verify=False)
    assert "test_batch.bin" in str(info.value)


# --- SVHN ------------------------------------------------------------------------------------

def svhn_arrays(rng, n, digits=None):
    x = rng.integers(0, 256, (32, 32, 3, n), np.uint8)
    y = (rng.integers(1, 11, (n, 1)) if digits is None else np.array(digits)[:, None])
    return x, y.astype(np.uint8)


def svhn_expected(x, y):
    n = x.shape[3]
    images = np.zeros((n, 32, 32, 3), np.uint8)
    for i in range(n):
        for r in range(32):
            for c in range(32):
                for ch in range(3):
                    images[i, r, c, ch] = x[r, c, ch, i]
    labels = np.array([0 if d == 10 else int(d) for d in y[:, 0]], np.int64)
    return images, labels


def write_svhn(folder, seed=0, n_train=5, n_test=3, compress=False):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays, digests = {}, {}
    for name, n, digits in (("train_32x32.mat", n_train, [10, 1, 9, 10, 5][:n_train]),
                            ("test_32x32.mat", n_test, None)):
        x, y = svhn_arrays(rng, n, digits)
        scipy.io.savemat(folder / name, {"X": x, "y": y}, do_compression=compress)
        arrays[name], digests[name] = (x, y), sha((folder / name).read_bytes())
    return arrays, digests


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "compressed"])
def test_svhn_round_trip_and_label_10_is_0(tmp_path, compress):
    arrays, digests = write_svhn(tmp_path / "svhn", compress=compress)
    dataset = load_dataset("svhn", root=tmp_path, download=False, sha256=digests)
    images, labels = svhn_expected(*arrays["train_32x32.mat"])
    np.testing.assert_array_equal(dataset.x_train, images)
    np.testing.assert_array_equal(dataset.y_train, labels)
    assert dataset.y_train.tolist() == [0, 1, 9, 0, 5]
    images, labels = svhn_expected(*arrays["test_32x32.mat"])
    np.testing.assert_array_equal(dataset.x_test, images)
    np.testing.assert_array_equal(dataset.y_test, labels)
    assert dataset.x_train.dtype == np.uint8 and dataset.y_train.dtype == np.int64
    assert dataset.classes == tuple("0123456789") and dataset.name == "svhn"


def test_svhn_wrong_digest(tmp_path):
    _, digests = write_svhn(tmp_path)
    digests["test_32x32.mat"] = "0" * 64
    with pytest.raises(ChecksumError, match="test_32x32.mat"):
        load_dataset("svhn", root=tmp_path, download=False, sha256=digests)
    with pytest.raises(ChecksumError, match=svhn.SHA256["train_32x32.mat"]):
        load_dataset("svhn", root=tmp_path, download=False)     # the published digests


def patch_dims(path, n_old, n_new):
    """Rewrite the headers of a savemat file: X (32, 32, 3, n_old) and y (n_old, 1) become
    n_new images, the data left as it is."""
    raw = path.read_bytes()
    for old, new in ((struct.pack("<4i", 32, 32, 3, n_old), struct.pack("<4i", 32, 32, 3, n_new)),
                     (struct.pack("<2i", n_old, 1), struct.pack("<2i", n_new, 1))):
        assert raw.count(old) == 1
        raw = raw.replace(old, new)
    path.write_bytes(raw)


@pytest.mark.parametrize("case, message", [
    ("X float", r"expected uint8 \(32, 32, 3, N\)"),
    ("X 28x28", r"expected uint8 \(32, 32, 3, N\)"),
    ("y count", "to match X"),
    ("no y", "expected X and y"),
    ("label 0", "label 0"),
    ("label 11", "label 11"),
    ("label 2.5", "label 2.5"),
    ("not a MAT file", "not a readable MATLAB"),
    ("truncated", "expected X and y"),     # whosmat stops at the cut variable
    ("cut end", "cannot read X and y"),
    ("huge N", "more than the limit of 100000"),
    ("N past the file", "more than a file of"),
    ("file too big", "more than the limit of 1000 bytes"),
])
def test_svhn_hostile_files(tmp_path, bounded, monkeypatch, case, message):
    rng = np.random.default_rng(0)
    x, y = svhn_arrays(rng, 4)
    variables = {"X": x, "y": y}
    if case == "X float":
        variables["X"] = x.astype(np.float32)
    elif case == "X 28x28":
        variables["X"] = x[:28, :28]
    elif case == "y count":
        variables["y"] = y[:3]
    elif case == "no y":
        variables = {"X": x, "labels": y}
    elif case.startswith("label"):
        variables["y"] = y.astype(np.float64)
        variables["y"][2, 0] = float(case.split()[1])
    path = tmp_path / "train_32x32.mat"
    scipy.io.savemat(path, variables)
    if case == "not a MAT file":
        path.write_bytes(os.urandom(4096))
    elif case == "truncated":
        path.write_bytes(path.read_bytes()[:2000])
    elif case == "cut end":
        path.write_bytes(path.read_bytes()[:-3])
    elif case == "huge N":
        patch_dims(path, 4, 2**31 - 1)
    elif case == "N past the file":
        patch_dims(path, 4, 90000)    # 276 MB promised by a 12 kB file
    elif case == "file too big":
        monkeypatch.setattr(svhn, "MAX_FILE", 1000)
    scipy.io.savemat(tmp_path / "test_32x32.mat", {"X": x, "y": y})
    with bounded(memory=128 * MB, seconds=10):
        with pytest.raises(DataError, match=message) as info:
            load_dataset("svhn", root=tmp_path, download=False, verify=False)
    assert str(path) in str(info.value)


# --- smallNORB -------------------------------------------------------------------------------

NORB_MAGIC = {np.float32: 0x1E3D4C51, np.float64: 0x1E3D4C53, np.int32: 0x1E3D4C54,
              np.uint8: 0x1E3D4C55, np.int16: 0x1E3D4C56}   # the format's readme


def norb_bytes(array, magic=None, ndim=None, dims=None):
    """A NORB binary matrix from its description: int32 magic, int32 ndim, max(3, ndim) int32
    dims (unused ones 1), then the elements little-endian in C order."""
    array = np.asarray(array)
    magic = magic or NORB_MAGIC[array.dtype.type]
    dims = list(array.shape if dims is None else dims)
    ndim = len(dims) if ndim is None else ndim
    header = struct.pack("<ii", magic, ndim)
    header += struct.pack(f"<{max(3, len(dims))}i", *(dims + [1] * (3 - len(dims))))
    return header + array.astype(array.dtype.newbyteorder("<")).tobytes()


def naive_downsample(pairs):
    """(N, 2, 96, 96) -> (N, 48, 48, 2): each 2x2 block's mean, rounded half up, in a loop."""
    n = len(pairs)
    out = np.zeros((n, 48, 48, 2), np.uint8)
    for i in range(n):
        for s in range(2):
            for r in range(48):
                for c in range(48):
                    block = pairs[i, s, 2 * r:2 * r + 2, 2 * c:2 * c + 2]
                    out[i, r, c, s] = math.floor(int(block.sum()) / 4 + 0.5)
    return out


def write_norb(folder, seed=0, n=(3, 2), gz=True):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays, digests = {}, {}
    for split, count in zip(("train", "test"), n):
        pairs = rng.integers(0, 256, (count, 2, 96, 96), np.uint8)
        cats = rng.integers(0, 5, count).astype(np.int32)
        for kind, array in (("dat", pairs), ("cat", cats)):
            name = smallnorb.FILES[split, kind]
            content = norb_bytes(array)
            if gz:
                data = gzip.compress(content)
            else:
                name, data = name[:-3], content
            (folder / name).write_bytes(data)
            arrays[split, kind], digests[name] = array, sha(data)
    return arrays, digests


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "gunzipped"])
def test_smallnorb_round_trip_downsampled(tmp_path, gz):
    arrays, digests = write_norb(tmp_path / "smallnorb", gz=gz)
    dataset = load_dataset("smallnorb", root=tmp_path, download=False, sha256=digests)
    np.testing.assert_array_equal(dataset.x_train, naive_downsample(arrays["train", "dat"]))
    np.testing.assert_array_equal(dataset.x_test, naive_downsample(arrays["test", "dat"]))
    np.testing.assert_array_equal(dataset.y_train, arrays["train", "cat"])
    np.testing.assert_array_equal(dataset.y_test, arrays["test", "cat"])
    assert dataset.x_train.shape == (3, 48, 48, 2) and dataset.x_train.dtype == np.uint8
    assert dataset.y_train.dtype == np.int64
    assert dataset.classes == ("animal", "human", "airplane", "truck", "car")
    assert dataset.info == {"crop": 32} and dataset.name == "smallnorb"


def test_downsample_rounds_half_up_over_chunks(monkeypatch, tmp_path):
    # every 2x2 sum mod 4 (so every rounding case) and more pairs than one chunk
    monkeypatch.setattr(smallnorb, "_PAIRS_PER_CHUNK", 2)
    pairs = np.random.default_rng(3).integers(0, 256, (5, 2, 96, 96), np.uint8)
    pairs[0, 0, :2, :2] = [[0, 0], [0, 2]]        # mean 0.5 -> 1
    pairs[0, 0, :2, 2:4] = [[255, 255], [255, 254]]   # 254.75 -> 255
    pairs[0, 0, :2, 4:6] = [[0, 0], [0, 1]]       # 0.25 -> 0
    path = tmp_path / "pairs.mat"
    path.write_bytes(norb_bytes(pairs))
    got = smallnorb.read_norb_pairs(path)
    assert got[0, 0, :3, 0].tolist() == [1, 255, 0]
    np.testing.assert_array_equal(got, naive_downsample(pairs))


@given(array=st.sampled_from(list(NORB_MAGIC)).flatmap(lambda t: hnp.arrays(
           t, hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=4))),
       gz=st.booleans())
def test_norb_matrix_round_trip(tmp_path_factory, array, gz):
    path = tmp_path_factory.mktemp("norb") / "m.mat"
    content = norb_bytes(array)
    path.write_bytes(gzip.compress(content) if gz else content)
    got = smallnorb.read_norb(path)
    assert got.dtype == array.dtype and got.dtype.isnative and got.shape == array.shape
    np.testing.assert_array_equal(got, array)      # NaNs compare equal here


def test_read_norb_dtypes_and_unused_dims(tmp_path):
    info = np.arange(24, dtype=np.int32).reshape(6, 4) - 5     # like an -info file: ndim 2
    path = tmp_path / "info.mat"
    path.write_bytes(norb_bytes(info))
    assert len(path.read_bytes()) == 8 + 12 + 96               # three dims stored for ndim 2
    np.testing.assert_array_equal(smallnorb.read_norb(path), info)
    shorts = np.array([-2, 7, 300], np.int16)
    path.write_bytes(norb_bytes(shorts, magic=0x1E3D4C56))
    got = smallnorb.read_norb(path)
    assert got.dtype == np.int16 and got.tolist() == [-2, 7, 300]


PAIR = np.zeros((1, 2, 96, 96), np.uint8)

NORB_MALFORMED = {
    "empty": (b"", "empty"),
    "short header": (b"\x55\x4c\x3d\x1e\x04\x00", "truncated header"),
    "wrong magic": (norb_bytes(PAIR, magic=0x1E3D4C57), "magic 0x1E3D4C57"),
    "IDX file": (b"\x00\x00\x08\x03" + struct.pack(">3I", 1, 96, 96) + bytes(9216), "magic"),
    "ndim 0": (norb_bytes(PAIR, ndim=0), "ndim=0"),
    "ndim 5": (norb_bytes(PAIR, ndim=5), "ndim=5"),
    "dims cut": (norb_bytes(PAIR)[:18], "truncated header"),
    "negative dim": (norb_bytes(np.zeros(0, np.uint8), dims=[-1, 2, 96, 96]), "negative"),
    "truncated data": (norb_bytes(PAIR)[:-10], "truncated"),
    "extra data": (norb_bytes(PAIR) + b"abc", "extra data"),
    "huge dims": (norb_bytes(np.zeros(0, np.uint8), dims=[2**31 - 1, 2, 96, 96]) + bytes(50),
                  "more than the limit"),
    "huge in bound": (norb_bytes(np.zeros(0, np.uint8), dims=[24300, 2, 96, 96]) + bytes(50),
                      "truncated"),
    "not pairs": (norb_bytes(np.zeros((2, 1, 96, 96), np.uint8)), r"\(N, 2, 96, 96\)"),
    "int32 pairs": (norb_bytes(np.zeros((1, 2, 96, 96), np.int32)), r"\(N, 2, 96, 96\)"),
}


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
@pytest.mark.parametrize("case", list(NORB_MALFORMED))
def test_malformed_norb_dat_is_a_clear_error(tmp_path, bounded, case, gz):
    content, message = NORB_MALFORMED[case]
    path = tmp_path / "bad.mat"
    path.write_bytes(gzip.compress(content) if gz else content)
    with bounded(memory=64 * MB, seconds=5):      # a 448 MB promise is never allocated
        with pytest.raises(DataError, match=message) as info:
            smallnorb.read_norb_pairs(path)
    assert str(path) in str(info.value)


def test_corrupted_gzip_norb(tmp_path):
    data = bytearray(gzip.compress(norb_bytes(np.arange(100, dtype=np.int32))))
    data[-6] ^= 1                                  # the CRC
    path = tmp_path / "cat.mat.gz"
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="corrupted gzip") as info:
        smallnorb.read_norb(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("defect, message", [
    ("category 5", "category 5"), ("category -1", "category -1"),
    ("count", r"expected int32 \(3,\)"), ("uint8 categories", "expected int32")])
def test_smallnorb_categories_are_checked(tmp_path, defect, message):
    arrays, _ = write_norb(tmp_path)
    cats = arrays["train", "cat"].copy()
    if defect.startswith("category"):
        cats[1] = int(defect.split()[1])
    elif defect == "count":
        cats = cats[:2]
    else:
        cats = cats.astype(np.uint8)
    path = tmp_path / smallnorb.FILES["train", "cat"]
    path.write_bytes(gzip.compress(norb_bytes(cats)))
    with pytest.raises(DataError, match=message):
        load_dataset("smallnorb", root=tmp_path, download=False, verify=False)


def test_smallnorb_gunzipped_files_need_a_digest_to_verify(tmp_path):
    write_norb(tmp_path, gz=False)
    with pytest.raises(DataError, match="no SHA-256 is known .*verify=False"):
        load_dataset("smallnorb", root=tmp_path, download=False)
    assert load_dataset("smallnorb", root=tmp_path, download=False, verify=False).x_test.shape \
        == (2, 48, 48, 2)


# --- MNIST and Fashion-MNIST by name, the registry -------------------------------------------

def idx_gz(array):
    array = np.asarray(array, np.uint8)
    header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + struct.pack(f">{array.ndim}I",
                                                                      *array.shape)
    return header + array.tobytes()


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_mnist_sets_by_name(tmp_path, name):
    rng = np.random.default_rng(0)
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (4, 28, 28), np.uint8),
              "train-labels-idx1-ubyte": np.array([0, 9, 3, 3], np.uint8),
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (2, 28, 28), np.uint8),
              "t10k-labels-idx1-ubyte": np.array([1, 8], np.uint8)}
    (tmp_path / name).mkdir()
    digests = {}
    for file, array in arrays.items():
        (tmp_path / name / (file + ".gz")).write_bytes(gzip.compress(idx_gz(array)))
        digests[file] = sha(idx_gz(array))
    dataset = load_dataset(name, root=tmp_path, download=False, sha256=digests)
    np.testing.assert_array_equal(dataset.x_train, arrays["train-images-idx3-ubyte"])
    assert dataset.y_test.tolist() == [1, 8] and dataset.y_test.dtype == np.int64
    assert dataset.name == name and len(dataset.classes) == 10
    assert dataset.classes[0] == ("0" if name == "mnist" else "T-shirt/top")
    assert FASHION_CLASSES[-1] == "Ankle boot"


def test_unknown_name_lists_the_known_ones():
    assert DATASETS == ("mnist", "fashion-mnist", "cifar10", "svhn", "smallnorb")
    with pytest.raises(ValueError, match="cifar10, svhn, smallnorb"):
        load_dataset("cifar100", download=False)


@pytest.mark.parametrize("name, files", [
    ("cifar10", ["cifar-10-binary.tar.gz", "cifar-10-batches-bin/", "data_batch_1.bin",
                 "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"]),
    ("svhn", ["train_32x32.mat", "test_32x32.mat",
              "http://ufldl.stanford.edu/housenumbers/train_32x32.mat"]),
    ("smallnorb", list(smallnorb.FILES.values())
     + ["https://cs.nyu.edu/~ylclab/data/norb-v1.0-small/"]),
])
def test_offline_names_the_files_and_the_folder(tmp_path, name, files):
    with pytest.raises(DataNotFoundError) as info:
        load_dataset(name, root=tmp_path, download=False)
    message = str(info.value)
    for file in files:
        assert file in message
    assert str(tmp_path / name) in message and "MINICAPS_DATA" in message
    assert list(tmp_path.iterdir()) == []          # nothing created


# --- download from a local HTTP server -------------------------------------------------------

class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    """Serves tmp_path/www/good/ (small files of the three sets) and missing/ (404s)."""
    good = tmp_path / "www" / "good"
    good.mkdir(parents=True)
    (tmp_path / "www" / "missing").mkdir()
    members = cifar_members()
    archive = cifar_archive(members)
    (good / cifar10.ARCHIVE).write_bytes(archive)
    svhn_files, svhn_digests = write_svhn(good)
    norb_arrays, norb_digests = write_norb(good)
    digests = {cifar10.ARCHIVE: sha(archive), **svhn_digests, **norb_digests}
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(tmp_path / "www")))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield (f"http://127.0.0.1:{httpd.server_address[1]}", digests,
               {"cifar10": members, "svhn": svhn_files, "smallnorb": norb_arrays})
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


SERVED = {"cifar10": [cifar10.ARCHIVE], "svhn": list(svhn.FILES.values()),
          "smallnorb": sorted(smallnorb.FILES.values())}


def folder_names(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.mark.parametrize("name", ["cifar10", "svhn", "smallnorb"])
def test_download_verified_then_cached(tmp_path, server, name):
    url, digests, content = server
    cache = tmp_path / "cache"
    mirrors = [url + "/missing/", url + "/good/"]      # the first mirror 404s
    dataset = load_dataset(name, root=cache, mirrors=mirrors, sha256=digests, timeout=5)
    assert folder_names(cache / name) == sorted(SERVED[name])   # no .part left
    if name == "cifar10":
        assert_cifar(dataset, content["cifar10"])
    elif name == "svhn":
        np.testing.assert_array_equal(
            dataset.x_test, svhn_expected(*content["svhn"]["test_32x32.mat"])[0])
    else:
        np.testing.assert_array_equal(dataset.x_train,
                                      naive_downsample(content["smallnorb"]["train", "dat"]))
    # cached now: no network needed, and the same arrays
    again = load_dataset(name, root=cache, download=False, sha256=digests)
    np.testing.assert_array_equal(again.x_train, dataset.x_train)


@pytest.mark.parametrize("name", ["cifar10", "svhn"])
def test_download_with_wrong_digest_is_not_kept(tmp_path, server, name):
    url, digests, _ = server
    cache = tmp_path / "cache"
    wrong = {n: "0" * 64 for n in digests}
    with pytest.raises(ChecksumError, match="SHA-256") as info:
        load_dataset(name, root=cache, mirrors=[url + "/good/"], sha256=wrong, timeout=5)
    assert isinstance(info.value, DataNotFoundError)   # and it says what to put where
    assert SERVED[name][0] in str(info.value) and url in str(info.value)
    assert folder_names(cache / name) == []            # no bad file, no .part
