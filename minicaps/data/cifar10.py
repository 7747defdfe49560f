"""CIFAR-10, binary version (never the pickled one: unpickling a file runs code).

Each batch file is a run of 3073-byte records: 1 label byte, then the 1024 red, 1024 green and
1024 blue pixels of a 32x32 image, each plane row-major. ``batches.meta.txt`` names the labels,
one a line. Read from ``cifar-10-binary.tar.gz`` as served (its members are read in memory, never
extracted to disk, and anything but the expected regular files is refused), or from the
``cifar-10-batches-bin/`` folder extracted from it.
"""
import gzip
import tarfile
import zlib

import numpy as np

from minicaps.data.dataset import DataError, Dataset
from minicaps.data.download import DOWNLOAD_TIMEOUT, DataFiles, check_size, load_files

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
    META: None,   # none published: its class names are checked instead
}

# The archive, or the folder extracted from it where all its files are there.
DATA_FILES = DataFiles(
    "cifar10", files=(ARCHIVE,), sha256=SHA256,
    mirrors=("https://www.cs.toronto.edu/~kriz/",
             "https://storage.googleapis.com/s4tf-hosted-binaries/datasets/CIFAR10/"),
    listed=(f"{ARCHIVE} (170 MB), or the folder {FOLDER}/ extracted from it "
            f"({', '.join(TRAIN)}, {TEST}, {META})",),
    instead=tuple(f"{FOLDER}/{name}" for name in TRAIN + (TEST, META)),
    max_bytes=MAX_ARCHIVE)


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


def read_cifar_archive(path):
    """{file name: its content} of ``cifar-10-binary.tar.gz``: each batch's (images, labels)
    (parse_batch), the meta file's class names (parse_meta)."""
    members = read_archive(path)
    parts = {name: parse_batch(members.pop(name), f"{path}: {name}") for name in TRAIN + (TEST,)}
    parts[META] = parse_meta(members[META], f"{path}: {META}")
    return parts


def read_cifar_batch(path):
    """(images, labels) of one batch file of the extracted folder."""
    check_size(path, MAX_RECORDS * RECORD, "cifar10")
    return parse_batch(path.read_bytes(), path)


def read_cifar_meta(path):
    """The class names in the extracted folder's batches.meta.txt."""
    check_size(path, MAX_TEXT, "cifar10")
    return parse_meta(path.read_bytes(), path)


READERS = {ARCHIVE: read_cifar_archive, f"{FOLDER}/{META}": read_cifar_meta,
           **{f"{FOLDER}/{name}": read_cifar_batch for name in TRAIN + (TEST,)}}


def load_cifar10(root=None, download=True, verify=True, mirrors=None, sha256=None,
                 timeout=DOWNLOAD_TIMEOUT):
    """CIFAR-10 as a Dataset: images uint8 (N, 32, 32, 3), labels int64 in 0..9, classes
    from batches.meta.txt (50,000 train and 10,000 test images in the real set).

    Looks in ``<root>/cifar10/`` then ``<root>/`` for the extracted ``cifar-10-batches-bin/``
    folder (all six batches and the meta file), else ``cifar-10-binary.tar.gz``; otherwise
    downloads the archive into ``<root>/cifar10/`` (download.load_files). ``verify`` checks
    the archive's SHA-256 as served, or each batch file's; ``sha256`` adds to or replaces
    those digests (by file name).
    """
    folder, found = load_files(DATA_FILES, READERS, root, download, verify, mirrors, sha256,
                               timeout)
    if ARCHIVE in found:
        return _to_dataset(found[ARCHIVE], folder / ARCHIVE, verify)
    return _to_dataset({name.removeprefix(FOLDER + "/"): part for name, part in found.items()},
                       folder / FOLDER, verify)


def _to_dataset(parts, where, verify):
    """parts: {batch name: (images, labels), META: class names}."""
    classes = parts[META]
    if verify and classes != CLASSES:   # no digest is published for the meta file
        raise DataError(f"{where}: {META} names {classes}, expected CIFAR-10's {CLASSES}")
    for name in TRAIN + (TEST,):
        labels = parts[name][1]
        if labels.max() >= len(classes):
            raise DataError(f"{where}: {name} has label {labels.max()}, expected "
                            f"0..{len(classes) - 1} for the {len(classes)} classes of {META}")
    x_train = np.concatenate([parts[n][0] for n in TRAIN])
    y_train = np.concatenate([parts[n][1] for n in TRAIN])
    return Dataset(x_train, y_train, *parts[TEST], classes=classes, name="cifar10")
