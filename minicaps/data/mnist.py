"""MNIST and Fashion-MNIST: the IDX format, read with its sizes bounded, downloaded and verified.

Files are looked up in ``root``, else ``$MINICAPS_DATA``, else a per-user cache
(``pooch.os_cache("minicaps")``); missing files are downloaded from a list of mirrors
(download.load_files). They are checked against the SHA-256 of their *gunzipped* content,
because the published .gz bytes differ between mirrors while the arrays inside do not.

Errors: every problem with the data raises ``DataError`` (a ``ValueError``);
``ChecksumError`` and ``DataNotFoundError`` are its subclasses (data/dataset.py).
"""
import functools
import gzip
import hashlib
import math
import os
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np

from minicaps.data.dataset import DataError
from minicaps.data.download import (DOWNLOAD_TIMEOUT, DataFiles, check_sha256, load_files,
                                    read_exactly)

# --- IDX files -------------------------------------------------------------------------------

# IDX stores numbers big-endian: the third byte of the magic names the element type.
IDX_DTYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"),
              0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
MAX_IDX_NDIM = 4
MAX_IDX_BYTES = 1 << 30   # refuse to read more than this: MNIST's biggest file is 47 MB


def read_idx(path, max_bytes=MAX_IDX_BYTES):
    """Read an IDX file (gzip-compressed or not) into an array of its native dtype.

    Raises DataError naming the file for anything malformed: bad magic, unknown dtype,
    ndim outside 1..4, truncated or extra data, more than ``max_bytes`` promised, bad gzip.
    """
    return _read_idx(path, max_bytes)[0]


def _read_idx(path, max_bytes=MAX_IDX_BYTES, limit_of=None):
    """read_idx, plus the SHA-256 of the (gunzipped) content, hashed while it is in memory.
    ``limit_of``: whose size max_bytes is, for the message (None: a general limit)."""
    path = Path(path)
    with open(path, "rb") as f:
        compressed = f.read(2) == b"\x1f\x8b"   # gzip magic, whatever the extension says
    if not compressed:
        with open(path, "rb") as f:
            return _parse_idx(f, path, os.fstat(f.fileno()).st_size, max_bytes, limit_of)
    try:
        with gzip.open(path, "rb") as f:
            return _parse_idx(f, path, None, max_bytes, limit_of)
    except (OSError, EOFError, zlib.error) as e:   # BadGzipFile is an OSError
        raise DataError(f"{path}: corrupted gzip stream ({type(e).__name__}: {e})") from e


def _parse_idx(f, path, file_size, max_bytes, limit_of=None):
    """Parse an open IDX stream; file_size is None for a gzip stream of unknown length."""
    magic = f.read(4)
    if len(magic) == 0:
        raise DataError(f"{path}: file is empty, expected an IDX file")
    if len(magic) < 4 or magic[:2] != b"\x00\x00":
        raise DataError(f"{path}: not an IDX file (magic bytes {magic.hex()}, "
                        "expected 00 00 <dtype> <ndim>)")
    code, ndim = magic[2], magic[3]
    if code not in IDX_DTYPES:
        raise DataError(f"{path}: unknown IDX dtype code 0x{code:02X} "
                        f"(known: {', '.join(f'0x{c:02X}' for c in IDX_DTYPES)})")
    if not 1 <= ndim <= MAX_IDX_NDIM:
        raise DataError(f"{path}: IDX header says ndim={ndim}, expected 1..{MAX_IDX_NDIM}")
    dims_raw = f.read(4 * ndim)
    if len(dims_raw) < 4 * ndim:
        raise DataError(f"{path}: truncated IDX header ({ndim} dimensions promised)")
    dims = tuple(int(d) for d in np.frombuffer(dims_raw, ">u4"))
    dtype = IDX_DTYPES[code]
    n_bytes = dtype.itemsize * math.prod(dims)   # Python ints: 2^31 x 2^31 cannot overflow
    if n_bytes > max_bytes:
        limit = (f"the limit of {max_bytes} bytes" if limit_of is None else
                 f"the {max_bytes} bytes of {limit_of}: the file is not that one; delete it "
                 f"so that it is downloaded again, or replace it with a good copy")
        raise DataError(f"{path}: IDX header promises shape {dims} of {dtype.name}, "
                        f"{n_bytes} bytes, more than {limit}")
    header_bytes = 4 + 4 * ndim
    if file_size is not None and file_size - header_bytes != n_bytes:   # fail before reading
        have = file_size - header_bytes
        what = "truncated" if have < n_bytes else f"{have - n_bytes} bytes of extra data"
        raise DataError(f"{path}: {what}: shape {dims} needs {n_bytes} data bytes, "
                        f"the file has {have}")
    data = read_exactly(f, n_bytes, path, f"shape {dims}")
    if f.read(1):
        raise DataError(f"{path}: extra data after the {n_bytes} bytes that shape {dims} needs")
    digest = hashlib.sha256(magic + dims_raw)
    digest.update(data)
    array = np.frombuffer(data, dtype).reshape(dims)
    return array.astype(dtype.newbyteorder("="), copy=False), digest.hexdigest()


# --- MNIST and Fashion-MNIST -----------------------------------------------------------------

FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
         "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
# The data bytes (after the header) of each of the FILES as MNIST and Fashion-MNIST publish
# them: a file expected to be a published one is read no further than that.
FILE_BYTES = dict(zip(FILES, (60000 * 28 * 28, 60000, 10000 * 28 * 28, 10000)))

# SHA-256 of the gunzipped files. MNIST: of the four files as its mirrors serve them.
# Fashion-MNIST: computed from Debian's dataset-fashion-mnist 0.0~git20200523.55506a9-1; the
# same values are published by other projects that derived them from the archives with
# zalando's MD5s.
SHA256 = {   # for the four FILES, in that order
    "mnist": dict(zip(FILES, (
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"))),
    "fashion-mnist": dict(zip(FILES, (
        "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"))),
}

# Both sets serve the four files gzipped (kept so); a gunzipped copy is read too, and the
# digests are of the gunzipped files, which read_idx hashes as it reads them.
AS_SERVED = dict(files=tuple(name + ".gz" for name in FILES),
                 listed=tuple(f"{name}.gz (or {name})" for name in FILES),
                 digest_of="gunzipped content", gunzipped=True)
DATA_FILES = {
    "mnist": DataFiles(
        "mnist", sha256=SHA256["mnist"], **AS_SERVED,
        mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/",
                 "https://storage.googleapis.com/cvdf-datasets/mnist/",
                 "http://yann.lecun.com/exdb/mnist/")),
    "fashion-mnist": DataFiles(
        "fashion-mnist", sha256=SHA256["fashion-mnist"], **AS_SERVED,
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
                 "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/"),
        folders=("/usr/share/datasets/fashion-mnist",)),   # Debian: dataset-fashion-mnist
}


class MNIST(NamedTuple):
    """Images uint8 (N, 28, 28); labels int64 (N,) in 0..9. Unpacks like a 4-tuple."""
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def load_mnist(root=None, download=True, dataset="mnist", verify=True, mirrors=None,
               sha256=None, timeout=DOWNLOAD_TIMEOUT):
    """Load (x_train, y_train, x_test, y_test): uint8 images (N, 28, 28), int64 labels.

    Looks for the four files (.gz or not) in ``<root>/<dataset>/``, then ``<root>/``, then
    system folders, using the first folder that has all four. Otherwise the missing ones are
    downloaded into ``<root>/<dataset>/``, trying ``mirrors`` (default the set's own) in
    order. ``verify`` checks each file's gunzipped SHA-256 against ``sha256`` (a dict from
    file name to hex digest, replacing the published one of that name). Re-hashing costs
    ~0.04 s for the train images next to ~0.25 s to gunzip them, so the result is not
    cached on disk.
    """
    if dataset not in DATA_FILES:
        raise ValueError(f"unknown dataset {dataset!r}, expected one of {sorted(DATA_FILES)}")
    read = {name + ".gz": functools.partial(_read_idx_checked, dataset=dataset, name=name)
            for name in FILES}
    folder, arrays = load_files(DATA_FILES[dataset], read, root, download, verify, mirrors,
                                sha256, timeout)
    x_train, y_train = _check_pair(arrays, "train", folder)
    x_test, y_test = _check_pair(arrays, "t10k", folder)
    return MNIST(x_train, y_train, x_test, y_test)


def _read_idx_checked(path, expected, dataset, name):
    """read_idx, then compare the content hash; the message says what to do about it. A
    file expected to be the published ``name`` is read no further than its size."""
    if expected is not None and expected == SHA256[dataset][name]:
        array, actual = _read_idx(path, FILE_BYTES[name], f"{dataset}'s {name}")
    else:
        array, actual = _read_idx(path)
    if expected is not None and actual != expected:
        known = [f"{d}'s {n}" for d, table in SHA256.items() for n, h in table.items()
                 if h == actual]
        advice = (f"It is {known[0]}: point root or MINICAPS_DATA at the {dataset} files."
                  if known else None)
        check_sha256(path, actual, expected, dataset, "gunzipped content", advice)
    return array


def _check_pair(arrays, split, folder):
    """Images (N, 28, 28) uint8 and N labels in 0..9, as int64."""
    images = arrays[f"{split}-images-idx3-ubyte.gz"]
    labels = arrays[f"{split}-labels-idx1-ubyte.gz"]
    where = f"{folder}/{split}-*"
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(f"{where}: images are {images.dtype} {images.shape}, "
                        "expected uint8 (N, 28, 28)")
    if labels.dtype != np.uint8 or labels.ndim != 1 or len(labels) != len(images):
        raise DataError(f"{where}: labels are {labels.dtype} {labels.shape}, "
                        f"expected uint8 ({len(images)},) to match the images")
    if labels.size and labels.max() > 9:
        raise DataError(f"{where}: labels go up to {labels.max()}, expected 0..9")
    return images, labels.astype(np.int64)
