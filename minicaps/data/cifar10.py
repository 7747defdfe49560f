"""CIFAR-10, binary version (never the pickled one: unpickling a file runs code).

Each batch file is a run of 3073-byte records: 1 label byte, then the 1024 red, 1024 green and
1024 blue pixels of a 32x32 image, each plane row-major. ``batches.meta.txt`` names the labels,
one a line. Read from ``cifar-10-binary.tar.gz`` as served (its members are read in memory, never
extracted to disk, and anything but the expected regular files is refused), or from the
``cifar-10-batches-bin/`` folder extracted from it.
"""
import gzip
import hashlib
import tarfile
import zlib

import numpy as np

from minicaps.data.dataset import DataError, Dataset, data_root
from minicaps.io.files import data_file
from minicaps.data.download import (DOWNLOAD_TIMEOUT, check_sha256, check_size,
                                    expected_digest, fetch, not_found_error, sha256_of)

ARCHIVE = "cifar-10-binary.tar.gz"
FOLDER = "cifar-10-batches-bin"
TRAIN = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST = "test_batch.bin"
META = "batches.meta.txt"
README = "readme.html"          # in the archive; not read
CLASSES = ("airplane", "automobile", "bird", "cat", "deer",     # as the CIFAR page and the
           "dog", "frog", "horse", "ship", "truck")        # meta file list them

RECORD = 1 + 3 * 32 * 32        # 3073 bytes
MAX_RECORDS = 10000             # per batch file: each of the six real ones holds exactly this
MAX_TEXT = 1 << 16              # batches.meta.txt is 61 bytes: ten names, a blank line
MAX_ARCHIVE = 1 << 28           # the real archive is 170,052,171 bytes
# What the archive may unpack to: six full batches, the two small files and tar's headers.
MAX_UNPACKED = 6 * MAX_RECORDS * RECORD + 4 * MAX_TEXT + (1 << 20)

MIRRORS = ["https://www.cs.toronto.edu/~kriz/",
           "https://storage.googleapis.com/s4tf-hosted-binaries/datasets/CIFAR10/"]

# SHA-256 of the archive as served: tensorflow/datasets, tensorflow_datasets/url_checksums/
# cifar10.txt (170052171 bytes). Of the six batch files inside it: ankane/torchvision-ruby,
# lib/torchvision/datasets/cifar10.rb (which gives the archive's digest too, the same).
SHA256 = {
    ARCHIVE: "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd",
    "data_batch_1.bin": "cee916563c9f80d84e3cc88e17fdc0941787f1244f00a67874d45b261883ada5",
    "data_batch_2.bin": "a591ca11fa1708a91ee40f54b3da4784ccd871ecf2137de63f51ada8b3fa57ed",
    "data_batch_3.bin": "bbe8596564c0f86427f876058170b84dac6670ddf06d79402899d93ceea26f67",
    "data_batch_4.bin": "014e562d6e23c72197cc727519169a60359f5eccd8945ad5a09d710285ff4e48",
    "data_batch_5.bin": "755304fc0b379caeae8c14f0dac912fbc7d6cd469eb67a1029a08a39453a9add",
    TEST: "8e2eb146ae340b09e24670f29cabc6326dba54da8789dab6768acf480273f65b",
}


def parse_batch(raw, where):
    """Records -> (images uint8 (N, 32, 32, 3), labels int64 (N,)). ``where`` names the file."""
    if len(raw) == 0 or len(raw) % RECORD:
        raise DataError(f"{where}: {len(raw)} bytes is not a whole number of {RECORD}-byte "
                        "records (1 label byte + 3 x 1024 pixels)")
    if len(raw) > MAX_RECORDS * RECORD:
        raise DataError(f"{where}: {len(raw) // RECORD} records, more than the "
                        f"{MAX_RECORDS} a batch file holds")
    records = np.frombuffer(raw, np.uint8).reshape(-1, RECORD)
    images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)   # planes -> HWC
    return np.ascontiguousarray(images), records[:, 0].astype(np.int64)


def parse_meta(raw, where):
    """The class names in batches.meta.txt: its non-blank lines."""
    try:
        text = bytes(raw).decode("ascii")
    except UnicodeDecodeError as e:
        raise DataError(f"{where}: not a text file of class names ({e})") from None
    names = tuple(line.strip() for line in text.splitlines() if line.strip())
    if not 2 <= len(names) <= 256:
        raise DataError(f"{where}: {len(names)} class names, expected 2..256 (CIFAR-10 has 10)")
    return names


def read_archive(path):
    """{member name: bytes} of the six batches and the meta file in ``cifar-10-binary.tar.gz``,
    read in memory. Members that are not regular files, have other names, are duplicated or
    have impossible sizes are refused before a byte of them is read."""
    wanted = {name: (RECORD, MAX_RECORDS * RECORD) for name in TRAIN + (TEST,)}
    wanted.update({META: (1, MAX_TEXT), README: (1, MAX_TEXT)})
    found = {}
    try:
        with gzip.open(path, "rb") as gz:
            with tarfile.open(fileobj=_Capped(gz, MAX_UNPACKED, path), mode="r|") as tar:
                for member in tar:
                    _check_member(member, wanted, found, path)
                    if member.isdir():
                        continue
                    data = tar.extractfile(member).read(member.size)
                    if len(data) != member.size:
                        raise DataError(f"{path}: truncated member {member.name}")
                    found[member.name.split("/", 1)[1]] = data
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: not a readable tar.gz archive "
                        f"({type(e).__name__}: {e})") from None
    missing = [n for n in TRAIN + (TEST, META) if n not in found]
    if missing:
        raise DataError(f"{path}: the archive lacks {FOLDER}/{', '.join(missing)}")
    return found


def _check_member(member, wanted, found, path):
    if member.name == FOLDER and member.isdir():
        return
    folder, _, name = member.name.partition("/")
    if folder != FOLDER or name not in wanted:
        raise DataError(f"{path}: unexpected member {member.name!r} (expected {FOLDER}/ and "
                        f"{', '.join(wanted)})")
    if not member.isreg():
        raise DataError(f"{path}: member {member.name} is not a regular file")
    if name in found:
        raise DataError(f"{path}: member {member.name} appears twice")
    low, high = wanted[name]
    if not low <= member.size <= high or (name.endswith(".bin") and member.size % RECORD):
        raise DataError(f"{path}: member {member.name} has {member.size} bytes, expected "
                        + (f"a multiple of {RECORD} up to {high}" if name.endswith(".bin")
                           else f"{low}..{high}"))


class _Capped:
    """A stream that raises DataError once more than ``limit`` bytes have been read from it:
    a tar inside a gzip stream cannot unpack to more than CIFAR-10 holds."""

    def __init__(self, f, limit, path):
        self.f, self.left, self.path = f, limit, path

    def read(self, size=-1):
        size = self.left + 1 if size is None or size < 0 else min(size, self.left + 1)
        data = self.f.read(size)
        self.left -= len(data)
        if self.left < 0:
            raise DataError(f"{self.path}: unpacks to more than {MAX_UNPACKED} bytes, more "
                            "than CIFAR-10's archive holds")
        return data


def _read_folder_file(path, limit):
    check_size(path, limit, "cifar10")
    return path.read_bytes()


def load_cifar10(root=None, download=True, verify=True, mirrors=None, sha256=None,
                 timeout=DOWNLOAD_TIMEOUT):
    """CIFAR-10 as a Dataset: images uint8 (N, 32, 32, 3), labels int64 in 0..9, classes
    from batches.meta.txt (50,000 train and 10,000 test images in the real set).

    Looks in ``<root>/cifar10/`` then ``<root>/`` for the extracted ``cifar-10-batches-bin/``
    folder (all six batches and the meta file), else ``cifar-10-binary.tar.gz``; otherwise
    downloads the archive into ``<root>/cifar10/``. ``verify`` checks the archive's SHA-256 as
    served, or each batch file's; ``sha256`` adds to or replaces those digests (by file name).
    """
    base = data_root(root)
    table = {**SHA256, **(sha256 or {})}
    mirrors = MIRRORS if mirrors is None else list(mirrors)
    for folder in (base / "cifar10", base):
        batches = folder / FOLDER
        if all(data_file(batches / n) for n in TRAIN + (TEST, META)):
            files = {}
            for name in TRAIN + (TEST,):
                raw = _read_folder_file(batches / name, MAX_RECORDS * RECORD)
                _verify_bytes(raw, batches / name, name, table, verify)
                files[name] = raw
            files[META] = _read_folder_file(batches / META, MAX_TEXT)
            return _to_dataset(files, batches, verify)
        if data_file(folder / ARCHIVE):
            return _to_dataset(_load_archive(folder / ARCHIVE, table, verify),
                               folder / ARCHIVE, verify)
    target = base / "cifar10"
    where = f"{target} (or directly into {base})"
    if not download:
        raise _not_found(where, "download=False")
    files = fetch(ARCHIVE, target, mirrors, lambda path: _load_archive(path, table, verify),
                  timeout, lambda why: _not_found(where, why))
    return _to_dataset(files, target / ARCHIVE, verify)


def _load_archive(path, table, verify):
    expected = expected_digest(table, ARCHIVE, path, "cifar10", verify)
    check_size(path, MAX_ARCHIVE, "cifar10")
    if expected is not None:
        check_sha256(path, sha256_of(path), expected, "cifar10", "archive as served")
    return read_archive(path)


def _verify_bytes(raw, path, name, table, verify):
    expected = expected_digest(table, name, path, "cifar10", verify)
    if expected is not None:
        check_sha256(path, hashlib.sha256(raw).hexdigest(), expected, "cifar10")


def _to_dataset(files, where, verify):
    classes = parse_meta(files[META], f"{where}: {META}")
    if verify and classes != CLASSES:   # no digest is published for the meta file
        raise DataError(f"{where}: {META} names {classes}, expected CIFAR-10's {CLASSES}")
    parts = {}
    for name in TRAIN + (TEST,):   # popped: each file's bytes go once its arrays are made
        images, labels = parse_batch(files.pop(name), f"{where}: {name}")
        if labels.max() >= len(classes):
            raise DataError(f"{where}: {name} has label {labels.max()}, expected "
                            f"0..{len(classes) - 1} for the {len(classes)} classes of {META}")
        parts[name] = images, labels
    x_train = np.concatenate([parts[n][0] for n in TRAIN])
    y_train = np.concatenate([parts[n][1] for n in TRAIN])
    return Dataset(x_train, y_train, *parts[TEST], classes=classes, name="cifar10")


def _not_found(where, why):
    files = [f"{ARCHIVE} (170 MB), or the folder {FOLDER}/ extracted from it "
             f"({', '.join(TRAIN)}, {TEST}, {META})"]
    return not_found_error("cifar10", files, where, why, [m + ARCHIVE for m in MIRRORS])
