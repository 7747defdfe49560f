"""SVHN, cropped digits (format 2): ``train_32x32.mat`` and ``test_32x32.mat``.

Each file is a MATLAB v5 file holding ``X``, uint8 (32, 32, 3, N): image n is X[:, :, :, n],
and ``y``, (N, 1), the digits 1..10 with 10 meaning 0. Before ``scipy.io.loadmat`` reads
anything, the file's size is bounded and ``scipy.io.whosmat`` (which reads only the variables'
headers) must show exactly those shapes and types, at most MAX_IMAGES images, and no more pixel
bytes than the file could hold compressed: a hostile file cannot make loadmat allocate more.
"""
import numpy as np

from minicaps.data.dataset import DataError, Dataset
from minicaps.data.download import DOWNLOAD_TIMEOUT, DataFiles, check_size, load_files

FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat"}
CLASSES = tuple(str(d) for d in range(10))
MAX_FILE = 1 << 28          # the train file is 182,040,794 bytes, the test file 64,275,384
MAX_IMAGES = 100_000        # the train file holds 73,257 images, the test file 26,032
# zlib cannot shrink the photos below this fraction: the real files hold 1.24 pixel bytes per
# file byte. A header promising more pixels than this, of a small file, is refused.
MAX_RATIO = 16
LABEL_TYPES = {"uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64",
               "double", "single"}

# SHA-256 of the files as served: tensorflow/datasets, tensorflow_datasets/url_checksums/
# svhn_cropped.txt (182040794 and 64275384 bytes); the same in pytorch/vision's prototype
# SVHN dataset (_CHECKSUMS).
SHA256 = {"train_32x32.mat": "435e94d69a87fde4fd4d7f3dd208dfc32cb6ae8af2240d066de1df7508d083b8",
          "test_32x32.mat": "cdce80dfb2a2c4c6160906d0bd7c68ec5a99d7ca4831afa54f09182025b6a75b"}

DATA_FILES = DataFiles(
    "svhn", files=tuple(FILES.values()), sha256=SHA256,
    mirrors=("http://ufldl.stanford.edu/housenumbers/",
             "https://ufldl.stanford.edu/housenumbers/"),
    listed=tuple(f"{name} (cropped digits, format 2)" for name in FILES.values()),
    max_bytes=MAX_FILE)


def read_svhn_mat(path):
    """(images uint8 (N, 32, 32, 3), labels int64 (N,) in 0..9) from one SVHN .mat file."""
    import scipy.io
    size = check_size(path, MAX_FILE, "svhn")
    try:
        listed = scipy.io.whosmat(str(path), appendmat=False)   # the headers alone
        shapes = {name: (shape, kind) for name, shape, kind in listed}
    except Exception as e:   # scipy's many ways of saying "not a MAT file"
        raise DataError(f"{path}: not a readable MATLAB v5 file ({type(e).__name__}: {e})") \
            from None
    n = _check_headers(shapes, size, path)
    try:
        mat = scipy.io.loadmat(str(path), appendmat=False, variable_names=["X", "y"])
    except Exception as e:
        raise DataError(f"{path}: cannot read X and y ({type(e).__name__}: {e})") from None
    x, y = mat["X"], mat["y"]
    if x.dtype != np.uint8 or x.shape != (32, 32, 3, n) or y.shape != (n, 1):
        raise DataError(f"{path}: X is {x.dtype} {x.shape} and y {y.shape} after loading, "
                        f"not what the headers said")
    digits = y[:, 0]
    bad = (digits != np.round(digits)) | (digits < 1) | (digits > 10)   # NaN too
    if bad.any():
        raise DataError(f"{path}: label {digits[bad][0]} in y, expected the digits 1..10 "
                        "(10 for 0)")
    labels = digits.astype(np.int64) % 10
    return np.ascontiguousarray(x.transpose(3, 0, 1, 2)), labels


def _check_headers(shapes, file_size, path):
    """The number of images, once the headers show X uint8 (32, 32, 3, N), y (N, 1) numeric."""
    if "X" not in shapes or "y" not in shapes:
        raise DataError(f"{path}: holds the variables {sorted(shapes)}, expected X and y")
    (x_shape, x_kind), (y_shape, y_kind) = shapes["X"], shapes["y"]
    if x_kind != "uint8" or len(x_shape) != 4 or tuple(x_shape[:3]) != (32, 32, 3):
        raise DataError(f"{path}: X is {x_kind} {tuple(x_shape)}, expected uint8 (32, 32, 3, N)")
    n = int(x_shape[3])
    if y_kind not in LABEL_TYPES or tuple(y_shape) != (n, 1):
        raise DataError(f"{path}: y is {y_kind} {tuple(y_shape)}, expected numbers ({n}, 1) "
                        "to match X")
    if n > MAX_IMAGES:
        raise DataError(f"{path}: X promises {n} images, more than the limit of {MAX_IMAGES}")
    if n * 32 * 32 * 3 > MAX_RATIO * file_size:
        raise DataError(f"{path}: X promises {n} images ({n * 3072} bytes), more than a "
                        f"file of {file_size} bytes can hold")
    return n


def load_svhn(root=None, download=True, verify=True, mirrors=None, sha256=None,
              timeout=DOWNLOAD_TIMEOUT):
    """SVHN as a Dataset: images uint8 (N, 32, 32, 3), labels int64 0..9 (the digit), classes
    "0".."9" (73,257 train and 26,032 test images in the real set; the "extra" set is not read).

    Looks in ``<root>/svhn/`` then ``<root>/`` for the folder that has both files; otherwise the
    missing ones are downloaded into ``<root>/svhn/`` (download.load_files). ``verify`` checks
    each file's SHA-256 as served; ``sha256`` adds to or replaces those digests (by file name).
    """
    _, parts = load_files(DATA_FILES, read_svhn_mat, root, download, verify, mirrors, sha256,
                          timeout)
    return Dataset(*parts[FILES["train"]], *parts[FILES["test"]], classes=CLASSES,
                   name="svhn")
