"""smallNORB (LeCun, Huang & Bottou 2004), as the capsule paper uses it.

The files are NORB "binary matrices", not MATLAB files despite their name. Little-endian:
an int32 magic naming the element type (0x1E3D4C55 uint8, 0x1E3D4C54 int32, ...), an int32
ndim, then max(3, ndim) int32 dimensions (those past ndim are unused), then the elements in C
order. The ``-dat`` file holds uint8 (N, 2, 96, 96): a stereo pair of 96x96 pictures per
object; the ``-cat`` file int32 (N,): the category, 0..4.

The paper's protocol: each picture downsampled to 48x48 (the mean of each 2x2 block, rounded
half up), the two pictures kept as 2 channels: (N, 48, 48, 2); training on random 32x32 crops,
testing on the centre crop (``info={"crop": 32}``: the trainer does that).
"""
import gzip
import math
import os
import zlib
from pathlib import Path

import numpy as np

from minicaps.data.dataset import DataError, Dataset
from minicaps.data.download import DOWNLOAD_TIMEOUT, DataFiles, load_files, read_exactly

# The element types of the binary-matrix format (its readme); 0x1E3D4C52, "packed", is never
# used by NORB and is not read.
NORB_DTYPES = {0x1E3D4C51: np.dtype("<f4"), 0x1E3D4C53: np.dtype("<f8"),
               0x1E3D4C54: np.dtype("<i4"), 0x1E3D4C55: np.dtype("u1"),
               0x1E3D4C56: np.dtype("<i2")}
MAX_NDIM = 4                # the -dat files have 4, -info 2, -cat 1
MAX_BYTES = 1 << 29         # what a header may promise: a -dat file holds 447,897,600 bytes
CLASSES = ("animal", "human", "airplane", "truck", "car")   # the readme's categories 0..4
SIDE = 96                   # the pictures as stored; 48 after downsampling
_PAIRS_PER_CHUNK = 1024     # downsampled as they are read: 18 MiB of input at a time

PREFIXES = {"train": "smallnorb-5x46789x9x18x6x2x96x96-training",
            "test": "smallnorb-5x01235x9x18x6x2x96x96-testing"}
FILES = {(split, kind): f"{prefix}-{kind}.mat.gz"
         for split, prefix in PREFIXES.items() for kind in ("dat", "cat")}

# SHA-256 of the .mat.gz files as served: tensorflow/datasets,
# tensorflow_datasets/url_checksums/smallnorb.txt (the -info files, not read here, are listed
# there too). No digest of the gunzipped files is published.
SHA256 = {
    FILES["train", "dat"]: "5ffd6272a07d32695ee1082a26a41a93a37aab8c28da047f8c34ed348d214873",
    FILES["train", "cat"]: "2784e542c1922060691090952b6cd6278879a216c90f81476f0f00256d42cdaa",
    FILES["test", "dat"]: "cf7104eed3e51174d2f65b66d1e5878b9da233b886f161b0d88f4510ba2c7474",
    FILES["test", "cat"]: "ecaf6d5bb8c3bc5eab9cf0258f6d2198dd474e016e374836fc097f2e5ff509ff",
}

# Gunzipped .mat files load too, but only with digests of their own (sha256=), so the
# files named when they are missing are the published ones.
DATA_FILES = DataFiles(
    "smallnorb", files=tuple(FILES.values()), sha256=SHA256,
    mirrors=("https://cs.nyu.edu/~ylclab/data/norb-v1.0-small/",
             "https://cs.nyu.edu/~yann/data/norb-v1.0-small/"),
    gunzipped=True, max_bytes=MAX_BYTES + 64)   # no bigger than the biggest header allows


# --- the binary-matrix format ----------------------------------------------------------------

class _Matrix:
    """An open binary-matrix file whose header has been read and checked against the file."""

    def __init__(self, f, path, dtype, dims, n_bytes):
        self.f, self.path, self.dtype, self.dims, self.n_bytes = f, path, dtype, dims, n_bytes


def _open_matrix(f, path, file_size, max_bytes):
    """Read and check the header of an open stream (file_size None: a gzip stream)."""
    head = f.read(8)
    if len(head) < 8:
        raise DataError(f"{path}: {'empty' if not head else 'truncated header'}, expected a "
                        "NORB binary matrix")
    magic, ndim = (int(v) for v in np.frombuffer(head, "<i4"))
    if magic not in NORB_DTYPES:
        raise DataError(f"{path}: magic 0x{magic & 0xFFFFFFFF:08X} is not a NORB binary "
                        f"matrix (known: {', '.join(f'0x{m:08X}' for m in NORB_DTYPES)})")
    if not 1 <= ndim <= MAX_NDIM:
        raise DataError(f"{path}: header says ndim={ndim}, expected 1..{MAX_NDIM}")
    dims_raw = f.read(4 * max(3, ndim))
    if len(dims_raw) < 4 * max(3, ndim):
        raise DataError(f"{path}: truncated header ({max(3, ndim)} dimensions expected)")
    dims = tuple(int(d) for d in np.frombuffer(dims_raw, "<i4")[:ndim])
    if min(dims) < 0:
        raise DataError(f"{path}: negative dimension in {dims}")
    dtype = NORB_DTYPES[magic]
    n_bytes = dtype.itemsize * math.prod(dims)     # Python ints: cannot overflow
    if n_bytes > max_bytes:
        raise DataError(f"{path}: header promises shape {dims} of {dtype.name}, {n_bytes} "
                        f"bytes, more than the limit of {max_bytes} bytes")
    if file_size is not None and file_size - 8 - len(dims_raw) != n_bytes:   # before reading
        have = file_size - 8 - len(dims_raw)
        what = "truncated" if have < n_bytes else f"{have - n_bytes} bytes of extra data"
        raise DataError(f"{path}: {what}: shape {dims} needs {n_bytes} data bytes, "
                        f"the file has {have}")
    return _Matrix(f, path, dtype, dims, n_bytes)


def _read_matrix(path, read_body, max_bytes):
    """Open ``path`` (gzip-compressed or not, told by its first bytes), check the header and
    return ``read_body(matrix)``, which must read exactly the data; then nothing may follow."""
    path = Path(path)
    with open(path, "rb") as f:
        compressed = f.read(2) == b"\x1f\x8b"
    try:
        if compressed:
            with gzip.open(path, "rb") as f:
                return _read_body(_open_matrix(f, path, None, max_bytes), read_body)
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            return _read_body(_open_matrix(f, path, size, max_bytes), read_body)
    except (OSError, EOFError, zlib.error) as e:    # BadGzipFile is an OSError
        raise DataError(f"{path}: corrupted gzip stream ({type(e).__name__}: {e})") from None


def _read_body(matrix, read_body):
    result = read_body(matrix)
    if matrix.f.read(1):
        raise DataError(f"{matrix.path}: extra data after the {matrix.n_bytes} bytes that "
                        f"shape {matrix.dims} needs")
    return result


def read_norb(path, max_bytes=MAX_BYTES):
    """A NORB binary matrix (gzip-compressed or not) as an array of its native dtype.

    Raises DataError naming the file for anything malformed: bad magic, ndim outside 1..4,
    negative dims, truncated or extra data, more than ``max_bytes`` promised, bad gzip.
    """
    def body(m):
        data = read_exactly(m.f, m.n_bytes, m.path, f"shape {m.dims}")
        return np.frombuffer(data, m.dtype).reshape(m.dims).astype(m.dtype.newbyteorder("="))
    return _read_matrix(path, body, max_bytes)


def read_norb_pairs(path, max_bytes=MAX_BYTES):
    """A -dat file's stereo pairs uint8 (N, 2, 96, 96), downsampled as they are read (so
    memory follows the output): uint8 (N, 48, 48, 2)."""
    def body(m):
        if m.dtype != np.uint8 or len(m.dims) != 4 or m.dims[1:] != (2, SIDE, SIDE):
            raise DataError(f"{m.path}: holds {m.dtype.name} {m.dims}, expected the uint8 "
                            f"stereo pairs (N, 2, {SIDE}, {SIDE})")
        pair = 2 * SIDE * SIDE
        pieces = []
        for start in range(0, m.dims[0], _PAIRS_PER_CHUNK):
            n = min(_PAIRS_PER_CHUNK, m.dims[0] - start)
            data = read_exactly(m.f, n * pair, m.path, f"shape {m.dims}")
            pairs = np.frombuffer(data, np.uint8).reshape(n, 2, SIDE, SIDE)
            pieces.append(downsample(pairs).transpose(0, 2, 3, 1))
        out = np.empty((0, SIDE // 2, SIDE // 2, 2), np.uint8)
        return np.ascontiguousarray(np.concatenate(pieces)) if pieces else out
    return _read_matrix(path, body, max_bytes)


def downsample(images):
    """(..., H, W) uint8 -> (..., H/2, W/2) uint8: the mean of each 2x2 block, rounded half up
    ((sum + 2) // 4, exact in integers)."""
    *lead, h, w = images.shape
    blocks = images.reshape(*lead, h // 2, 2, w // 2, 2).astype(np.uint16)
    return ((blocks.sum(axis=(-3, -1)) + 2) // 4).astype(np.uint8)


# --- loading ---------------------------------------------------------------------------------

def load_smallnorb(root=None, download=True, verify=True, mirrors=None, sha256=None,
                   timeout=DOWNLOAD_TIMEOUT):
    """smallNORB as a Dataset: stereo pairs downsampled to uint8 (N, 48, 48, 2), labels
    int64 0..4 (animal, human, airplane, truck, car), info {"crop": 32} (24,300 train and
    24,300 test pairs in the real set).

    Looks in ``<root>/smallnorb/`` then ``<root>/`` for the folder that has the four -dat and
    -cat files (``.mat.gz`` as served, or gunzipped ``.mat``); otherwise the missing ones are
    downloaded into ``<root>/smallnorb/`` (download.load_files). ``verify`` checks each file's
    SHA-256 as served: only the .mat.gz files have published digests, so gunzipped ones need
    their own digests in ``sha256`` (by file name) or verify=False.
    """
    read = {name: read_norb_pairs if kind == "dat" else read_norb
            for (split, kind), name in FILES.items()}
    folder, arrays = load_files(DATA_FILES, read, root, download, verify, mirrors, sha256,
                                timeout)
    x_train, y_train = _check_pair(arrays, "train", folder)
    x_test, y_test = _check_pair(arrays, "test", folder)
    return Dataset(x_train, y_train, x_test, y_test, classes=CLASSES, name="smallnorb",
                   info={"crop": 32})


def _check_pair(arrays, split, folder):
    images, cats = arrays[FILES[split, "dat"]], arrays[FILES[split, "cat"]]
    where = f"{folder}/{PREFIXES[split]}-cat"
    if cats.dtype != np.int32 or cats.ndim != 1 or len(cats) != len(images):
        raise DataError(f"{where}: categories are {cats.dtype} {cats.shape}, expected int32 "
                        f"({len(images)},) to match the -dat file's pairs")
    if cats.size and (cats.min() < 0 or cats.max() >= len(CLASSES)):
        bad = cats[(cats < 0) | (cats >= len(CLASSES))][0]
        raise DataError(f"{where}: category {bad}, expected 0..{len(CLASSES) - 1}")
    return images, cats.astype(np.int64)

