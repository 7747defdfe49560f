"""affNIST's Matlab files read without trusting them (data.affnist's real test set).

scipy.io.loadmat reads a Matlab 5 file as it says it is: a compressed variable is
decompressed whole to the size it declares, and a cell array or struct array becomes one
Python object per element. So before scipy sees a file, read_affnist_mat checks its header
and size, what each compressed variable declares and really holds once decompressed
(counted in pieces, not kept), and the layout of affNISTdata, walked element by element:
one 1x1 struct of a few 2-D numeric matrices, each holding the bytes its dimensions need.
What scipy then builds is a few arrays; anything else is a DataError naming the file.
"""
import hashlib
import math
import struct
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np

from minicaps.data.dataset import DataError

CANVAS = 40                          # affNIST's pictures are 40x40 (so is expanded MNIST)
AFFNIST_TEST_SIZE = 320_000          # 32 transformations of each of 10,000 test digits
MAX_MAT_BYTES = 1 << 30              # test.mat is about 0.6 GB, read or decompressed
MI_COMPRESSED = 15                   # the Matlab 5 tag of a compressed variable
# What each compressed variable of an affNIST file may decompress to, by its name: the
# real test.mat's one variable, affNISTdata, holds 320,000 pictures of 40x40 uint8 (its
# image field, 1600 bytes a picture), their labels and transformations (room here for 64
# float64 numbers a picture: label_int, label_one_of_n and the transformation fields take
# fewer), and its headers. A variable of any other name is no part of affNIST.
VARIABLE_BYTES = {"affNISTdata": AFFNIST_TEST_SIZE * (CANVAS * CANVAS + 64 * 8) + (1 << 20)}
OTHER_VARIABLE_BYTES = 1 << 20
# The layout scipy may build from affNISTdata (_check_layout): one 1x1 struct of at most
# MAX_FIELDS fields, each a 2-D numeric matrix (class double .. uint64). A cell array or a
# struct array of millions of empty elements takes kilobytes compressed and gigabytes
# once scipy makes an object of each.
MI_MATRIX = 14
MX_STRUCT = 2
NUMERIC_CLASSES = range(6, 16)
OTHER_CLASSES = {1: "a cell array", 2: "a struct", 3: "an object", 4: "a char array",
                 5: "a sparse matrix"}
MI_ITEM_BYTES = {1: 1, 2: 1, 3: 2, 4: 2, 5: 4, 6: 4, 7: 4, 9: 8, 12: 8, 13: 8}
MAX_FIELDS = 16
MAX_NAME_BYTES = 64                  # Matlab's field names (63 characters and a NUL)
EXPECTED_LAYOUT = ("expected a struct affNISTdata of 1x1 whose fields are numeric matrices "
                   "(image 1600 x N, label_int 1 x N, ...)")


def read_affnist_mat(path, max_bytes=MAX_MAT_BYTES, sha256=None):
    """Read one affNIST .mat file: (images (N, 40, 40) uint8, labels (N,) int64).

    Checks the Matlab 5 header, the size and what its compressed variables decompress to
    (_check_variable_sizes) before scipy parses it, the SHA-256 of the file when one is
    given, then the layout: affNISTdata.image 1600 x N of whole numbers
    0..255, label_int N classes 0..9, label_one_of_n (when present) the same classes.
    Anything else raises DataError naming the file.
    """
    path = Path(path)
    size = _check_mat_header(path, max_bytes)
    _check_variable_sizes(path, max_bytes)
    _check_layout(path)
    if sha256 is not None:
        actual = _sha256(path)
        if actual != sha256.lower():
            raise DataError(f"{path}: SHA-256 is {actual}, expected {sha256}")
    from scipy.io import loadmat
    try:
        contents = loadmat(path, variable_names=["affNISTdata"])
    except MemoryError:
        raise
    except Exception as e:   # scipy reports a damaged file by many exception types
        raise DataError(f"{path}: cannot be read as a Matlab file ({size} bytes; "
                        f"{type(e).__name__}: {e}); is it truncated?") from e
    struct = contents.get("affNISTdata")
    names = getattr(getattr(struct, "dtype", None), "names", None) or ()
    if struct is None or struct.size != 1 or not {"image", "label_int"} <= set(names):
        raise DataError(f"{path}: expected a struct affNISTdata with fields image and "
                        f"label_int, found {sorted(contents) if struct is None else names}")
    image = np.asarray(struct["image"].flat[0])
    labels = np.asarray(struct["label_int"].flat[0])
    if image.ndim != 2 or image.shape[0] != CANVAS * CANVAS:
        raise DataError(f"{path}: affNISTdata.image is {image.shape}, expected "
                        f"({CANVAS * CANVAS}, N): one {CANVAS}x{CANVAS} picture per column")
    n = image.shape[1]
    if labels.size != n or (labels.ndim == 2 and 1 not in labels.shape) or labels.ndim > 2:
        raise DataError(f"{path}: affNISTdata.label_int is {labels.shape}, expected {n} "
                        "labels to match the pictures")
    images = _whole_numbers(image, 0, 255, path, "image").astype(np.uint8, copy=False)
    labels = _whole_numbers(labels.reshape(-1), 0, 9, path, "label_int").astype(np.int64)
    if "label_one_of_n" in names:
        one_hot = np.asarray(struct["label_one_of_n"].flat[0])
        if one_hot.shape != (10, n) or (one_hot.argmax(0) != labels).any():
            raise DataError(f"{path}: affNISTdata.label_one_of_n {one_hot.shape} does not "
                            "say the classes label_int says")
    # each column is one picture's rows one after another (the layout the public readers
    # use and their MNIST-trained models score on)
    return np.ascontiguousarray(images.T).reshape(n, CANVAS, CANVAS), labels


# --- the file checked before scipy reads it --------------------------------------------------

def _check_mat_header(path, max_bytes):
    """A Matlab 5 file (what scipy.io.loadmat reads) of at most max_bytes; its size."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            header = f.read(128)
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({type(e).__name__}: {e})") from e
    if size > max_bytes:
        raise DataError(f"{path}: {size} bytes, over the {max_bytes} bytes an affNIST file "
                        "needs")
    if len(header) < 128 or not header.startswith(b"MATLAB"):
        raise DataError(f"{path}: not a Matlab file ({size} bytes; a .mat file starts with "
                        "a 128-byte 'MATLAB 5.0 MAT-file' header). Unzip the .mat.zip first.")
    if header.startswith(b"MATLAB 7.3"):
        raise DataError(f"{path}: a Matlab 7.3 (HDF5) file; affNIST's files are Matlab 5")
    if header[126:128] not in (b"IM", b"MI"):
        raise DataError(f"{path}: damaged Matlab header (endian mark {header[126:128]!r})")
    return size


def _check_variable_sizes(path, max_bytes):
    """DataError unless the file's variables take at most max_bytes once read: each
    variable's tag says its size, and a compressed variable's, inside its zlib stream,
    what it decompresses to. That declared size is checked before decompressing; then the
    stream is decompressed in pieces, and counted, not kept, to see that it holds no more.
    (scipy decompresses a variable whole, trusting the sizes inside it.)"""
    total, offset, end = 0, 128, path.stat().st_size
    with open(path, "rb") as f:
        f.seek(126)
        order = "<" if f.read(2) == b"IM" else ">"      # the endian mark, as written
        while offset + 8 <= end:
            f.seek(offset)
            kind, nbytes = struct.unpack(order + "II", f.read(8))
            if kind >> 16:                     # a small element: its data is in the tag
                offset += 8
                continue
            if kind == MI_COMPRESSED:
                total += _decompressed_size(f, nbytes, max_bytes - total, path, order)
            else:
                total += 8 + nbytes
            if total > max_bytes:
                raise DataError(f"{path}: its variables take {total} bytes once read, more "
                                f"than the {max_bytes} bytes an affNIST file needs")
            offset += 8 + nbytes


def _decompressed_size(f, nbytes, limit, path, order, piece=1 << 20):
    """The bytes the zlib stream of ``nbytes`` at f's position decompresses to, at most
    ``limit`` (what the variable's tag inside declares is checked first); else DataError."""
    inflate = zlib.decompressobj()
    try:
        head = inflate.decompress(f.read(min(nbytes, 4096)), 256)
        if len(head) < 8:
            raise zlib.error("no tag inside it")
        declared = 8 + struct.unpack_from(order + "II", head)[1]
        name = _variable_name(head, order)
        bound = VARIABLE_BYTES.get(name, OTHER_VARIABLE_BYTES)
        if declared > min(limit, bound):
            expected = (f"the real test.mat's {name}: {AFFNIST_TEST_SIZE:,} 40x40 pictures, "
                        f"their labels and transformations" if name in VARIABLE_BYTES else
                        f"affNIST's files hold one variable, affNISTdata; this one is "
                        f"{name or 'unnamed'}")
            raise DataError(f"{path}: a compressed variable declares {declared} bytes once "
                            f"decompressed, more than the {min(limit, bound)} bytes an "
                            f"affNIST file needs ({expected}): this is not an affNIST "
                            f"file; download it again")
        size, left, data = len(head), nbytes - min(nbytes, 4096), inflate.unconsumed_tail
        while size <= declared:            # counted a piece at a time, not kept
            if not data:
                data = f.read(min(piece, left))
                left -= len(data)
                if not data:
                    break                  # the end of the stream
            size += len(inflate.decompress(data, piece))
            data = inflate.unconsumed_tail
    except zlib.error as e:
        raise DataError(f"{path}: a compressed variable is damaged ({e})") from e
    if size > declared:
        raise DataError(f"{path}: a compressed variable holds more than the {declared - 8} "
                        f"bytes it declares: the file is damaged; download it again")
    return declared


class _Pieces:
    """The bytes of one variable read in pieces of at most ``piece`` (decompressed on the
    way when it is compressed): read(n) returns the next n bytes (a header), skip(n) passes
    over n (data) without keeping them; ``at`` counts the bytes passed."""

    def __init__(self, f, nbytes, compressed, path, piece=1 << 20):
        self.f, self.left, self.path, self.piece = f, nbytes, path, piece
        self.inflate = zlib.decompressobj() if compressed else None
        self.buffer, self.at = b"", 0

    def _fill(self):
        while True:
            tail = self.inflate.unconsumed_tail if self.inflate else b""
            data = tail or self.f.read(min(self.piece, self.left))
            self.left -= 0 if tail else len(data)
            if not data:
                raise DataError(f"{self.path}: a variable ends before its last element: "
                                "is the file truncated? Download it again")
            more = self.inflate.decompress(data, self.piece) if self.inflate else data
            if more:
                self.buffer += more
                return

    def read(self, n):
        while len(self.buffer) < n:
            self._fill()
        data, self.buffer, self.at = self.buffer[:n], self.buffer[n:], self.at + n
        return data

    def skip(self, n):
        self.at += n
        while len(self.buffer) < n:
            n -= len(self.buffer)
            self.buffer = b""
            self._fill()
        self.buffer = self.buffer[n:]


class _Header(NamedTuple):
    """An miMATRIX element's header: its class, complex flag, dimensions, name, and
    where (Pieces.at) it ends."""
    cls: int
    complex: bool
    dims: tuple
    name: bytes
    end: int

    def what(self):
        shape = "x".join(map(str, self.dims))
        if self.cls in NUMERIC_CLASSES:
            return f"a complex matrix of {shape}" if self.complex else f"a matrix of {shape}"
        return f"{OTHER_CLASSES.get(self.cls, f'an array of class {self.cls}')} of {shape}"


def _element(pieces, order, limit):
    """(type, data) of the next element of at most ``limit`` bytes (a header's part),
    small (its data in its tag) or not; its padding passed."""
    kind, size = struct.unpack(order + "II", pieces.read(8))
    if kind >> 16:
        return kind & 0xFFFF, struct.pack(order + "I", size)[:kind >> 16]
    if size > limit:
        raise DataError(f"{pieces.path}: an array header of {size} bytes, more than the "
                        f"{limit} an affNIST file's take: this is not an affNIST file")
    data = pieces.read(size)
    pieces.skip(-size % 8)
    return kind, data


def _matrix_header(pieces, order):
    """The _Header of the miMATRIX element that comes next, None for an empty one."""
    kind, size = struct.unpack(order + "II", pieces.read(8))
    if kind != MI_MATRIX:
        raise DataError(f"{pieces.path}: an element of type {kind} where an array should be: "
                        "the file is damaged; download it again")
    if size == 0:
        return None
    end = pieces.at + size
    flags = struct.unpack(order + "I", _element(pieces, order, 8)[1][:4])[0]
    dims = _element(pieces, order, 32 * 4)[1]
    dims = struct.unpack(f"{order}{len(dims) // 4}i", dims[:len(dims) // 4 * 4])
    name = _element(pieces, order, MAX_NAME_BYTES)[1]
    return _Header(flags & 0xFF, bool(flags & 0x0800), dims, name, end)


def _check_layout(path):
    """DataError unless each variable named affNISTdata is a 1x1 struct of at most
    MAX_FIELDS fields, each a 2-D real numeric matrix whose data holds the bytes its
    dimensions need: what scipy builds is then a few arrays, never millions of objects.
    The variables are walked header by header, their data passed in bounded pieces."""
    with open(path, "rb") as f:
        f.seek(126)
        order = "<" if f.read(2) == b"IM" else ">"      # the endian mark, as written
        offset, end = 128, path.stat().st_size
        while offset + 8 <= end:
            f.seek(offset)
            kind, nbytes = struct.unpack(order + "II", f.read(8))
            if kind >> 16:
                offset += 8
                continue
            if kind in (MI_COMPRESSED, MI_MATRIX):
                if kind == MI_MATRIX:
                    f.seek(offset)
                size = nbytes + 8 if kind == MI_MATRIX else nbytes
                try:
                    _check_affnistdata(_Pieces(f, size, kind == MI_COMPRESSED, path), order)
                except (zlib.error, struct.error) as e:
                    raise DataError(f"{path}: a variable is damaged ({e}); download the "
                                    "file again") from e
            offset += 8 + nbytes


def _check_affnistdata(pieces, order):
    """The checks of _check_layout on the variable ``pieces`` holds, if it is affNISTdata
    (scipy is asked for no other)."""
    path = pieces.path
    head = _matrix_header(pieces, order)
    if head is None or head.name != b"affNISTdata":
        return
    if head.cls != MX_STRUCT or head.dims != (1, 1):
        raise DataError(f"{path}: {EXPECTED_LAYOUT}, found {head.what()}: this is not "
                        "affNIST's test.mat; download it again")
    name_bytes = struct.unpack(order + "i", _element(pieces, order, 4)[1].ljust(4, b"\0"))[0]
    names = _element(pieces, order, MAX_FIELDS * MAX_NAME_BYTES)[1]
    if not 0 < name_bytes <= MAX_NAME_BYTES or len(names) > MAX_FIELDS * name_bytes:
        raise DataError(f"{path}: {EXPECTED_LAYOUT}, found field names of {name_bytes} bytes "
                        f"in {len(names)}: more than {MAX_FIELDS} fields, or damaged")
    for i in range(len(names) // name_bytes):
        field = names[i * name_bytes:(i + 1) * name_bytes].split(b"\0")[0]
        _check_numeric(pieces, order, "affNISTdata." + field.decode("ascii", "replace"))


def _check_numeric(pieces, order, field):
    """DataError unless the array that comes next is a 2-D real numeric matrix whose data
    holds the bytes its dimensions need; its data is passed, not kept."""
    path = pieces.path
    head = _matrix_header(pieces, order)
    if head is None or head.cls not in NUMERIC_CLASSES or head.complex or len(head.dims) != 2:
        found = "an empty element" if head is None else head.what()
        raise DataError(f"{path}: {field} is {found}, expected a numeric matrix (affNIST's "
                        f"are uint8 or double, 1600 x N pictures and 1 x N labels); "
                        "this is not affNIST's test.mat")
    kind, nbytes = struct.unpack(order + "II", pieces.read(8))
    kind, nbytes, data_at = ((kind & 0xFFFF, kind >> 16, pieces.at - 4) if kind >> 16
                             else (kind, nbytes, pieces.at))
    if kind not in MI_ITEM_BYTES:          # scipy may crash on such a matrix: refused unread
        raise DataError(f"{path}: {field} holds data of element type {kind}, not one of "
                        f"Matlab's number types {sorted(MI_ITEM_BYTES)}: the file is damaged "
                        "or not affNIST's test.mat")
    need = math.prod(head.dims) * MI_ITEM_BYTES[kind]
    if nbytes != need or min(head.dims) < 0 or data_at + nbytes > head.end:
        shape = "x".join(map(str, head.dims))
        raise DataError(f"{path}: {field} holds {nbytes} bytes, its dimensions {shape} need "
                        f"{need} (element type {kind}): the file is damaged; download it again")
    pieces.skip(head.end - pieces.at)


def _variable_name(head, order):
    """The name of the variable whose miMATRIX element (decompressed) begins ``head``, or
    None where head is too short or the name is not ASCII. The element: its tag (8 bytes),
    the array flags (16), the dimensions (a tag and their int32s, padded to 8 bytes), then
    the name, in a small element (its size in the tag's upper half, 4 bytes of data) or a
    full one."""
    try:
        dims = 8 + 16
        dims_bytes = struct.unpack_from(order + "II", head, dims)[1]
        at = dims + 8 + dims_bytes + (-dims_bytes % 8)
        kind, size = struct.unpack_from(order + "II", head, at)
        start, size = (at + 4, kind >> 16) if kind >> 16 else (at + 8, size)
        name = head[start:start + size]
        return name.decode("ascii") if len(name) == size and size else None
    except (struct.error, UnicodeDecodeError):
        return None


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _whole_numbers(array, low, high, path, field):
    """array unchanged if its values are whole numbers in low..high, else DataError."""
    if array.dtype.kind not in "uif" or array.size == 0:
        raise DataError(f"{path}: affNISTdata.{field} is {array.dtype} of size {array.size}, "
                        f"expected numbers {low}..{high}")
    if array.min() < low or array.max() > high or \
            (array.dtype.kind == "f" and (np.mod(array, 1) != 0).any()):
        raise DataError(f"{path}: affNISTdata.{field} holds values outside the whole "
                        f"numbers {low}..{high} (from {array.min()} to {array.max()})")
    return array
