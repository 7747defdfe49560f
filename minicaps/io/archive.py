"""The reader of a minicaps .npz archive (a checkpoint, or a weights file), by an
allow-list, nothing on trust: only the members the metadata's network defines, each
array's .npy header (dtype, shape, size) checked before its data is read, the memory they
need checked first, nothing decompressed past the sizes the archive declares, and no
pickle. A damaged or hostile file is one ValueError naming it.
"""
import json
import math
import zipfile
import zlib

import numpy as np

from minicaps import backend
from minicaps.io.files import regular_file
from minicaps.io.metadata import config_from

MAX_META_BYTES = 1 << 20      # the JSON metadata; a run's is a few kB
MAX_MEMBERS = 1000            # a checkpoint of the paper's network has 49
ARRAY_DTYPES = (np.dtype("float32"), np.dtype("float64"))
_READ_CHUNK = 1 << 22


def read_archive(path, check_meta, kinds, dtypes=ARRAY_DTYPES, only_meta=False):
    """(meta, {member name: array}) of a minicaps .npz (a checkpoint, or the weights file
    of io/weights.py), read by an allow-list, nothing on trust.

    The members' names are checked first (only meta and ``<kind>/<parameter>`` for the
    ``kinds`` given and the parameters the stored config defines), then the metadata (at
    most MAX_META_BYTES, every field type-checked by ``check_meta(meta, path)``), then
    each array's .npy header (one of ``dtypes``, the shape the config implies, the
    member's size exactly what the header promises) before any array's data is read,
    the memory all of them need checked against what is available; finally every array
    must be finite (and Adam's second moments >= 0). Nothing is decompressed past the
    sizes the archive declares. Any problem: one ValueError naming the file (and
    FileNotFoundError when there is none)."""
    regular_file(path, "checkpoint file")      # a named pipe would keep open() waiting
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise ValueError(f"{path}: not a readable minicaps checkpoint ({type(e).__name__}: {e})") from e
    if head != b"PK\x03\x04":
        what = "an empty file" if not head else f"a file that starts with {head!r}"
        raise ValueError(f"{path}: not a minicaps checkpoint: checkpoints are .npz (ZIP) "
                         f"archives, this is {what}; give the last.npz or best.npz of a run")
    try:
        with zipfile.ZipFile(path) as archive:
            members = _members(archive, path)
            meta = check_meta(_read_meta(archive, members.pop("meta"), path), path)
            if only_meta:
                return meta, {}
            shapes = config_from(meta, path).param_shapes()
            allowed = {f"{kind}/{name}": shape for name, shape in shapes.items()
                       for kind in kinds}
            unknown = sorted(set(members) - set(allowed))
            if unknown:
                raise ValueError(f"{path}: not a minicaps checkpoint of this network: unexpected "
                                 f"members {unknown[:5]}{' ...' if len(unknown) > 5 else ''}")
            dtype = np.dtype(meta.get("dtype", "float32"))
            backend.check_fits(sum(members[k].file_size for k in members) + sum(
                               math.prod(allowed[k]) * dtype.itemsize for k in members),
                               f"loading {path}", "free memory or load it on a larger machine")
            headers = {k: _array_header(archive, info, allowed[k], path, dtypes)  # all first
                       for k, info in members.items()}
            arrays = {k: _read_array(archive, members[k], allowed[k], *headers[k], path)
                      for k in members}
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error, RuntimeError,
            NotImplementedError) as e:
        raise ValueError(f"{path}: not a readable minicaps checkpoint "
                         f"(damaged or not an .npz: {type(e).__name__}: {e})") from e
    return meta, arrays


def _members(archive, path):
    """{member name without .npy: ZipInfo}, checked for number, names and compression."""
    infos = archive.infolist()
    if len(infos) > MAX_MEMBERS:
        raise ValueError(f"{path}: not a minicaps checkpoint ({len(infos)} members)")
    members = {}
    for info in infos:
        name = info.filename
        if not name.endswith(".npy") or name[:-4] in members:
            raise ValueError(f"{path}: not a minicaps checkpoint (member {name[:80]!r})")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise ValueError(f"{path}: member {name[:80]!r} is compressed with method "
                             f"{info.compress_type}; checkpoints are stored or deflated")
        members[name[:-4]] = info
    if "meta" not in members:
        raise ValueError(f"{path}: not a minicaps checkpoint (no 'meta' entry)")
    return members


def _npy_header(f, name, path):
    """(shape, fortran_order, dtype) from the .npy header at the start of stream f."""
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            return np.lib.format.read_array_header_1_0(f)
        if version in ((2, 0), (3, 0)):
            return np.lib.format.read_array_header_2_0(f)
        raise ValueError(f"npy format version {version}")
    except (ValueError, SyntaxError, TypeError) as e:
        raise ValueError(f"{path}: member {name!r} is not a valid .npy array ({e})") from e


def _read_data(f, info, dtype, shape, fortran, name, path):
    """The array that follows the header in f, read in pieces into its own buffer; the
    member's size must be exactly the header plus the data."""
    _check_size(f, info, dtype, shape, name, path)
    nbytes = math.prod(shape) * dtype.itemsize
    out = np.empty(math.prod(shape), dtype=dtype)
    view, done = memoryview(out.view(np.uint8)), 0
    while done < nbytes:
        got = f.readinto(view[done:done + _READ_CHUNK])
        if not got:
            raise ValueError(f"{path}: member {name!r} is cut off")
        done += got
    f.read(1)          # at the end: zipfile checks the member's CRC here
    return out.reshape(shape, order="F" if fortran else "C")


def _read_meta(archive, info, path):
    """The metadata: a uint8 .npy array of UTF-8 JSON, at most MAX_META_BYTES."""
    if info.file_size > MAX_META_BYTES + 4096:
        raise ValueError(f"{path}: checkpoint metadata of {info.file_size} bytes; a checkpoint's "
                         f"is at most {MAX_META_BYTES} bytes")
    with archive.open(info) as f:
        shape, fortran, dtype = _npy_header(f, "meta", path)
        if dtype != np.uint8 or len(shape) != 1:
            raise ValueError(f"{path}: damaged checkpoint metadata ({dtype} {shape}, "
                             f"expected UTF-8 bytes)")
        raw = _read_data(f, info, dtype, shape, fortran, "meta", path)
    try:
        return json.loads(raw.tobytes().decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise ValueError(f"{path}: damaged checkpoint metadata ({type(e).__name__}: "
                         f"{str(e)[:200]})") from e


def _array_header(archive, info, shape, path, dtypes=ARRAY_DTYPES):
    """(dtype, fortran_order) of a parameter or optimizer member, after checking its .npy
    header: one of ``dtypes``, the ``shape`` the config implies, and a member size of
    exactly the header plus that data. Reads the header only."""
    name = info.filename[:-4]
    with archive.open(info) as f:
        stored, fortran, dtype = _npy_header(f, name, path)
        if dtype.hasobject or dtype.fields is not None or dtype.newbyteorder("=") not in dtypes:
            raise ValueError(f"{path}: {name} is stored as {dtype}; parameters and optimizer "
                             f"state are {' or '.join(d.name for d in dtypes)}")
        if tuple(stored) != tuple(shape):
            raise ValueError(f"{path}: {name} has shape {tuple(stored)}, the network in the "
                             f"checkpoint's config needs {tuple(shape)}")
        _check_size(f, info, dtype, shape, name, path)
    return dtype, fortran


def _check_size(f, info, dtype, shape, name, path):
    """The member holds exactly its header and the data its header promises."""
    nbytes = math.prod(shape) * dtype.itemsize
    if info.file_size != f.tell() + nbytes:
        raise ValueError(f"{path}: member {name!r} holds {info.file_size - f.tell()} bytes of "
                         f"data, its header promises {nbytes} ({dtype} {tuple(shape)})")


def _read_array(archive, info, shape, dtype, fortran, path):
    """The array of member ``info`` (its header checked by _array_header), checked to be
    finite, and Adam's second moments >= 0."""
    name = info.filename[:-4]
    with archive.open(info) as f:
        _npy_header(f, name, path)
        a = _read_data(f, info, dtype, shape, fortran, name, path)
    a = a.astype(dtype.newbyteorder("="), copy=False)
    if not np.isfinite(a).all():
        raise ValueError(f"{path}: {name} holds NaN or infinite values; the run diverged "
                         f"before this was saved: use an earlier checkpoint")
    if name.startswith("optim/v/") and (a < 0).any():
        raise ValueError(f"{path}: {name} (Adam's second moment) holds negative values")
    return a
