"""Save and load a training run: parameters, Adam's moments, the step and the RNG state.

One checkpoint is one .npz file, written without pickle:

    param/<name>      every parameter of the model ("param/conv1.W", ...)
    optim/m/<name>    Adam's first and second moments, keyed like the parameters
    optim/v/<name>
    average/<name>    the parameters' moving average, when the run keeps one
    meta              UTF-8 JSON as a uint8 array: the kind of network ("model": "capsnet"
                      or "cnn"; a file without it holds a CapsNet), its config, dtype,
                      epoch, step, Adam's hyper-parameters, the RNG's bit_generator state,
                      metrics, extra; for a CNN also where its dropout masks go on
                      ("dropout": {"seed", "step"}, see cnn.BaselineCNN)

JSON keeps the big integers of a PCG64 state exactly. Loading uses
``np.load(path, allow_pickle=False)``, so a checkpoint cannot run code.

The file is written atomically: into a temporary file in the same folder, flushed and
fsynced, then renamed over the old one with ``os.replace``. A crash mid-write leaves the
previous checkpoint as it was, and a symbolic link standing at the path is replaced, never
followed. A full disk is a DiskFullError saying what the file needed.
"""
import errno
import json
import math
import os
import shutil
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from minicaps import backend
from minicaps.nn.cnn import BaselineCNN, CNNConfig
from minicaps.io.files import output_folder, regular_file, writable_file
from minicaps.nn.capsnet import CapsNet, CapsNetConfig
from minicaps.training.optim import Adam, ParameterAverage
from minicaps.values import is_finite_real, is_int

FORMAT = "minicaps-checkpoint"
FORMAT_VERSION = 1
BIT_GENERATOR = "PCG64"   # numpy's default_rng: the only generator a run draws from
META_KEYS = ("format", "format_version", "config", "dtype", "epoch", "step", "optimizer",
             "rng_state")


WEIGHT_CHOICES = ("auto", "average", "trained")   # Checkpoint.model_with

# The networks a checkpoint or weights file can hold, by the "model" tag of its metadata:
# (config class, network class). A file without the tag, written before the CNN
# baselines came, holds a CapsNet.
MODELS = {"capsnet": (CapsNetConfig, CapsNet), "cnn": (CNNConfig, BaselineCNN)}
DEFAULT_MODEL = "capsnet"


def model_kind(network):
    """The tag of a network, or of its config: "capsnet" or "cnn"."""
    config = getattr(network, "config", network)
    for kind, (config_class, _) in MODELS.items():
        if isinstance(config, config_class):
            return kind
    raise ValueError(f"not a minicaps network or config: {type(network).__name__}")


def build_model(config, **kw):
    """The network ``config`` describes: CapsNet(config, **kw) or BaselineCNN(config, **kw)."""
    return MODELS[model_kind(config)][1](config, **kw)


@dataclass
class Checkpoint:
    """What load_checkpoint returns; ``rng()`` rebuilds the random generator."""
    path: Path
    model: CapsNet          # or a cnn.BaselineCNN: the kind the file's "model" tag names
    optimizer: Adam
    epoch: int
    step: int
    rng_state: dict
    metrics: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    average: ParameterAverage = None     # the parameters' moving average, if the run kept one

    def rng(self):
        return generator_from_state(self.rng_state)

    def model_with(self, weights="auto"):
        """(model, weights used) to evaluate or predict with: the parameters' moving average
        ("average"), the trained parameters ("trained"), or "auto": the average when the run
        kept one. ``self.model`` (the trained parameters, which resuming needs) is untouched."""
        if weights not in WEIGHT_CHOICES:
            raise ValueError(f"weights must be 'auto', 'average' or 'trained', got {weights!r}")
        if weights == "average" and self.average is None:
            raise ValueError(f"{self.path} keeps no moving average of the parameters (it was "
                             f"trained without one); use the trained weights")
        if weights == "trained" or self.average is None:
            return self.model, "trained"
        return self.model.with_params(self.average.params), "average"


def generator_from_state(state):
    """A numpy Generator whose bit generator continues from ``state`` (bit_generator.state),
    once check_rng_state has found it to be one minicaps writes."""
    check_rng_state(state)
    bit_generator = np.random.PCG64()
    try:
        bit_generator.state = state
    except (TypeError, KeyError, ValueError, OverflowError, IndexError) as e:
        raise ValueError(f"rng_state is not a {BIT_GENERATOR} state ({type(e).__name__}: "
                         f"{e})") from e
    return np.random.Generator(bit_generator)


def check_rng_state(state):
    """A ValueError naming the field unless ``state`` is a PCG64 bit_generator.state as
    minicaps writes it (train draws from default_rng): every field there, of its type and
    in its range. Another generator's state is refused here, when a checkpoint is read or
    written, not an epoch later when the run is saved."""
    def wrong(field, value, what):
        return ValueError(f"rng_state{field} is {str(value)[:80]!r}, expected {what}")

    if not isinstance(state, dict) or state.get("bit_generator") != BIT_GENERATOR:
        name = state.get("bit_generator") if isinstance(state, dict) else state
        raise wrong(".bit_generator", name, f"{BIT_GENERATOR!r}: minicaps saves and reads the "
                    f"state of numpy's default_rng ({BIT_GENERATOR}) only")
    inner = state.get("state")
    if not isinstance(inner, dict):
        raise wrong(".state", inner, '{"state": ..., "inc": ...}')
    for field in ("state", "inc"):
        if not (is_int(inner.get(field)) and 0 <= inner[field] < 2 ** 128):
            raise wrong(f".state.{field}", inner.get(field), "an integer in [0, 2**128)")
    if not (is_int(state.get("has_uint32")) and state["has_uint32"] in (0, 1)):
        raise wrong(".has_uint32", state.get("has_uint32"), "0 or 1")
    if not (is_int(state.get("uinteger")) and 0 <= state["uinteger"] < 2 ** 32):
        raise wrong(".uinteger", state.get("uinteger"), "an integer in [0, 2**32)")


# --- save ------------------------------------------------------------------------------------

def save_checkpoint(path, model, optimizer, *, epoch, step, rng_state, metrics=None, extra=None,
                    average=None):
    """Write model, optimizer and training position to ``path`` (.npz), atomically.

    rng_state: ``generator.bit_generator.state`` (or the Generator itself).
    metrics, extra: JSON-serialisable dicts kept alongside (e.g. the run's settings).
    average: a ParameterAverage kept with the run, or None.
    """
    from minicaps import __version__
    if isinstance(rng_state, np.random.Generator):
        rng_state = rng_state.bit_generator.state
    try:
        check_rng_state(rng_state)
    except ValueError as e:
        raise ValueError(f"not saving {path}: {e}; draw from np.random.default_rng") from e
    hyper, moments = optimizer.state_dict()
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "minicaps_version": __version__,
            "model": model_kind(model), "config": model.config.to_dict(),
            "dtype": model.dtype.name,
            "epoch": int(epoch), "step": int(step),
            "optimizer": {"name": type(optimizer).__name__, **hyper},
            "rng_state": rng_state, "metrics": metrics or {}, "extra": extra or {},
            "average": None if average is None else {"decay": average.decay}}
    if isinstance(model, BaselineCNN):      # its masks are default_rng((tag, seed, step))'s
        meta["dropout"] = {"seed": model.seed, "step": model.dropout_step}
    try:
        meta_bytes = json.dumps(meta).encode("utf-8")
    except TypeError as e:
        raise ValueError(f"checkpoint metadata for {path} is not JSON-serialisable: {e}") from e
    arrays = {f"param/{k}": backend.to_numpy(a) for k, a in model.params.items()}
    arrays.update({f"optim/{k}": backend.to_numpy(a) for k, a in moments.items()})
    if average is not None:
        arrays.update({f"average/{k}": backend.to_numpy(a) for k, a in average.params.items()})
    bad = [k for k, a in arrays.items() if not np.isfinite(a).all()]
    if bad:
        raise ValueError(f"not saving {path}: {', '.join(bad[:5])} hold NaN or infinite "
                         f"values (the run diverged); the file on disk is left as it was")
    arrays["meta"] = np.frombuffer(meta_bytes, dtype=np.uint8)
    write_atomically(Path(path), arrays)
    return Path(path)


class DiskFullError(OSError):
    """A file could not be written for want of disk space; what was on disk is as it was."""


def write_atomically(path, arrays):
    """np.savez ``arrays`` into ``path`` (replace_file); a DiskFullError when the disk is
    full, saying what the file needed."""
    try:
        replace_file(path, lambda f: np.savez(f, **arrays), archive=True)
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise DiskFullError(disk_full_message(path, sum(a.nbytes for a in arrays.values()))) from e


def disk_full_message(path, needed):
    """Why ``path`` could not be written: the disk is full, with what is free and the
    ``needed`` bytes; and that the file on disk is as it was before."""
    try:
        free = f"{_size_text(shutil.disk_usage(path.parent).free)} free, "
    except OSError:
        free = ""
    kept = (f"{path} is as it was: the previous checkpoint is intact" if path.is_file()
            else f"nothing was written to {path}")
    return (f"could not write {path}: the disk is full ({free}the file needs about "
            f"{_size_text(needed)}); {kept}")


def _size_text(nbytes):
    return f"{nbytes / 2**20:.1f} MiB" if nbytes >= 2**20 else f"{nbytes / 2**10:.0f} KiB"


def replace_file(path, write, inputs=(), archive=False):
    """``write(f)`` into a temp file beside ``path``, fsync, then rename over ``path``: a
    crash or a full disk leaves ``path`` as it was, and a link at ``path`` is replaced, not
    followed (os.replace renames over the link itself). The one writer of every file
    minicaps writes.

    Refused (ValueError naming ``path``) before anything is written: a folder, pipe or
    device at ``path`` or in its folder's place, one of the ``inputs`` the command reads,
    and, unless ``archive`` (a checkpoint or weights file is being written), a .npz (ZIP)
    archive: a picture never replaces a checkpoint. An OSError says which file it was
    writing (never the temp file): a DiskFullError for a full disk."""
    path = Path(path)
    output_folder(path.parent, f"cannot write {path}: its folder")
    writable_file(path, inputs)
    if not archive and _zip_at(path):
        raise ValueError(f"{path} holds a .npz (ZIP) archive, such as a checkpoint or weights "
                         f"file: it is left as it was; give another name for the file to write")
    try:
        _replace(path, write)
    except OSError as e:
        raise _naming(e, path) from e


def _zip_at(path):
    """Whether a regular file (not a link) at ``path`` starts as a ZIP archive does."""
    if not path.is_file() or path.is_symlink():
        return False
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


def _naming(e, path):
    """The OSError ``e``, met writing ``path``, said of ``path`` (not of the temp file)."""
    kept = f"{path} is as it was" if path.exists() else f"nothing was written to {path}"
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        said = DiskFullError(f"disk full writing {path}: {e.strerror}; {kept}; free some space")
    elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        said = type(e)(f"permission denied writing {path} ({e.strerror}); {kept}; give a "
                       f"folder you can write to")
    else:
        said = type(e)(f"could not write {path}: {e.strerror or e}; {kept}")
    said.errno = e.errno
    return said


def _replace(path, write):
    """replace_file's writing: temp file, fsync, rename, the folder fsynced. The temp file
    is made, renamed and (on failure) removed in the folder as it was opened, by its file
    descriptor: a folder swapped for a link meanwhile leads nowhere else."""
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = os.open(path.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        tmp = _write_temp(folder, path.name, write)
        try:
            os.replace(tmp, path.name, src_dir_fd=folder, dst_dir_fd=folder)
        except BaseException:
            os.remove(tmp, dir_fd=folder)
            raise
        try:   # make the rename itself durable; not every file system allows it
            os.fsync(folder)
        except OSError:
            pass
    finally:
        os.close(folder)


def _write_temp(folder, name, write):
    """``write(f)`` into a new temp file ``.NAME.XXXXXXXX.tmp`` in the open ``folder``,
    flushed to disk; its name. Removed again if anything fails (Ctrl-C too)."""
    import secrets
    for _ in range(100):
        tmp = f".{name}.{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0),
                         0o666, dir_fd=folder)       # the usual mode, less the umask
            break
        except FileExistsError:
            continue
    else:
        raise FileExistsError(f"no free temp name beside {name}")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:   # never leave a half-written temp file
        os.remove(tmp, dir_fd=folder)
        raise
    return tmp


# --- load ------------------------------------------------------------------------------------

def load_checkpoint(path, device=None, model=None):
    """Read a checkpoint written by save_checkpoint into a Checkpoint.

    The model, a CapsNet or a BaselineCNN as the file's "model" tag says, is rebuilt from
    the stored config on ``device`` (None: $MINICAPS_DEVICE or cpu); or, when ``model`` is
    given, the parameters go into that model, whose kind and config must be the
    checkpoint's. A CNN's dropout goes on with the masks the saved run would have drawn
    next (its seed and dropout_step restored). Anything wrong with the file raises a
    ValueError naming it.
    """
    path = regular_file(Path(path), "checkpoint file")
    meta, params, moments, averages = _read(path)
    config = config_from(meta, path)
    if model is None:
        try:
            model = build_model(config, dtype=meta["dtype"], device=device, params=params)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from e
    else:
        if model_kind(model) != model_kind(config):
            raise ValueError(f"{path} holds a {model_kind(config)} network, the model is a "
                             f"{model_kind(model)}")
        differences = _config_differences(model.config, config)
        if differences:
            raise ValueError(f"{path} holds a different network than the model: "
                             + ", ".join(differences))
        try:
            model.set_params(params)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from e
    if isinstance(model, BaselineCNN) and "dropout" in meta:
        model.seed, model.dropout_step = meta["dropout"]["seed"], meta["dropout"]["step"]
    optimizer = _optimizer_from(meta, moments, model, path)
    average = _average_from(meta, averages, model, path)
    try:
        generator_from_state(meta["rng_state"])
    except ValueError as e:
        raise ValueError(f"{path}: bad RNG state: {e}; the file is damaged: use another "
                         f"checkpoint of the run") from e
    return Checkpoint(path=path, model=model, optimizer=optimizer, epoch=int(meta["epoch"]),
                      step=int(meta["step"]), rng_state=meta["rng_state"],
                      metrics=meta.get("metrics") or {}, extra=meta.get("extra") or {},
                      average=average)


def read_meta(path):
    """A checkpoint's metadata alone, checked as load_checkpoint checks it (the arrays
    stay on disk); ValueError if it is not a readable checkpoint."""
    return _read(path, only_meta=True)[0]


def read_epoch(path):
    """The number of epochs a checkpoint has done, read from its metadata alone (the
    arrays stay on disk); ValueError if it is not a readable checkpoint."""
    epoch = read_meta(path)["epoch"]
    if not isinstance(epoch, int) or epoch < 0:
        raise ValueError(f"{path}: damaged checkpoint metadata (epoch {epoch!r})")
    return epoch


MAX_META_BYTES = 1 << 20      # the JSON metadata; a run's is a few kB
MAX_MEMBERS = 1000            # a checkpoint of the paper's network has 49
ARRAY_DTYPES = (np.dtype("float32"), np.dtype("float64"))
_READ_CHUNK = 1 << 22


def _read(path, only_meta=False):
    """(meta dict, params, optimizer moments, averages) of a checkpoint as NumPy arrays;
    ValueError naming the file if anything is wrong (read_archive). ``only_meta``: the
    metadata only, the rest empty dicts."""
    meta, arrays = read_archive(path, _check_meta, ("param", "optim/m", "optim/v", "average"),
                                only_meta=only_meta)
    params = {k[len("param/"):]: a for k, a in arrays.items() if k.startswith("param/")}
    moments = {k[len("optim/"):]: a for k, a in arrays.items() if k.startswith("optim/")}
    averages = {k[len("average/"):]: a for k, a in arrays.items() if k.startswith("average/")}
    return meta, params, moments, averages


def read_archive(path, check_meta, kinds, dtypes=ARRAY_DTYPES, only_meta=False):
    """(meta, {member name: array}) of a minicaps .npz (a checkpoint, or the weights file
    of pretrained.py), read by an allow-list, nothing on trust.

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


def _check_meta(meta, path):
    """The metadata with every field of its type: ValueError naming the field otherwise."""
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{path}: not a minicaps checkpoint (format is not {FORMAT!r})")
    missing = [k for k in META_KEYS if k not in meta]
    if missing:
        raise ValueError(f"{path}: checkpoint metadata lacks {missing}")
    version = meta["format_version"]
    if not is_int(version) or version < 1:
        raise ValueError(f"{path}: damaged checkpoint metadata (format_version {version!r})")
    if version > FORMAT_VERSION:
        raise ValueError(f"{path}: checkpoint format version {version} is newer "
                         f"than this minicaps reads ({FORMAT_VERSION}); upgrade minicaps")

    def bad(field, value, what):
        return ValueError(_damaged(path, field, value, what))

    for field in ("epoch", "step"):
        if not is_count(meta[field]):
            raise bad(field, meta[field], COUNT)
    if meta["dtype"] not in ("float32", "float64"):
        raise bad("dtype", meta["dtype"], "'float32' or 'float64'")
    for field in ("config", "optimizer", "rng_state"):
        if not isinstance(meta[field], dict):
            raise bad(field, meta[field], "a JSON object")
    for field in ("metrics", "extra"):
        if not isinstance(meta.get(field) or {}, dict):
            raise bad(field, meta[field], "a JSON object")
    extra = meta.get("extra") or {}
    best = extra.get("best_accuracy")
    if best is not None and not (is_finite_real(best) and 0 <= best <= 1):
        raise bad("extra.best_accuracy", best, "an accuracy in [0, 1]")
    hyper = meta["optimizer"]
    if hyper.get("name") != "Adam":
        raise ValueError(f"{path}: unsupported optimizer state {str(hyper)[:80]}")
    for field, ok, what in (("lr", lambda x: x > 0, "> 0"), ("beta1", lambda x: 0 <= x < 1, "in [0, 1)"),
                            ("beta2", lambda x: 0 <= x < 1, "in [0, 1)"), ("eps", lambda x: x > 0, "> 0")):
        value = hyper.get(field)
        if not is_finite_real(value) or not ok(value):
            raise bad(f"optimizer.{field}", value, f"a finite number {what}")
    if not is_count(hyper.get("t")):
        raise bad("optimizer.t", hyper.get("t"), COUNT)
    average = meta.get("average")
    if average is not None and not (isinstance(average, dict) and is_finite_real(average.get("decay"))
                                    and 0 < average["decay"] < 1):
        raise bad("average", average, "null or {\"decay\": a number in (0, 1)}")
    _check_kind(meta, path)
    dropout = meta.get("dropout")
    if dropout is not None and not (isinstance(dropout, dict) and set(dropout) == {"seed", "step"}
                                    and all(map(is_count, dropout.values()))):
        raise bad("dropout", dropout, f"{{\"seed\": {COUNT}, \"step\": {COUNT}}}")
    check_settings(extra.get("settings"), path, "extra.settings", num_classes_of(meta, path))
    _check_settings_fit(meta, extra.get("settings") or {}, path)
    check_fields(meta.get("metrics") or {}, path, "metrics", {
        name: ACCURACY for name in meta.get("metrics") or {} if name.endswith("accuracy")})
    return meta


# The run's record as evaluate, predict, plot and compare read it: {field: (ok, expected)},
# a field that is missing or null passes. Checked once where a file is loaded, so that no
# command meets a field of the wrong type.
# Counts (epoch, step, Adam's t, seeds) feed float arithmetic, the learning rate's decay
# and Adam's bias correction among it: below 2**53 every one is exact as a float.
MAX_COUNT = 2 ** 53
COUNT = "an integer >= 0 and below 2**53"


def is_count(x):
    return is_int(x) and 0 <= x < MAX_COUNT


def is_text(x):
    return isinstance(x, str)


ACCURACY = (lambda x: is_finite_real(x) and 0 <= x <= 1, "an accuracy in [0, 1]")
def _positive(x):
    return is_finite_real(x) and x > 0


SETTINGS = {              # what train writes (train.train's settings), each of its type
    "batch_size": (lambda x: is_count(x) and x >= 1, "an integer >= 1"),
    "lr": (_positive, "a number > 0"),
    "seed": (is_count, COUNT),
    "shift": (is_count, COUNT),
    "average": (lambda x: is_finite_real(x) and 0 < x < 1, "a decay in (0, 1), or null"),
    "model": (lambda x: isinstance(x, str) and x in MODELS, f"one of {', '.join(MODELS)}"),
    "flip": (lambda x: isinstance(x, bool), "true or false"),
    "dataset": (is_text, "a data set's name"),
    "classes": (lambda x: isinstance(x, list) and all(map(is_text, x)), "a list of class names"),
    "data_info": (lambda x: isinstance(x, dict), "a JSON object"),
    "crop": (lambda x: is_int(x) and x >= 1, "an integer >= 1"),
    "pairs_per_digit": (is_count, COUNT),
    "limit_test": (lambda x: is_int(x) and 1 <= x < MAX_SIZE, "null or an integer from 1 "
                   "and below 2**31"),
    "val_size": (lambda x: is_int(x) and 0 <= x < MAX_SIZE, "an integer >= 0 and below 2**31"),
    "lr_decay": (lambda x: is_finite_real(x) and 0 < x <= 1, "a rate in (0, 1]"),
    "decay_steps": (lambda x: is_count(x) and x >= 1, "an integer >= 1"),
    "dtype": (lambda x: isinstance(x, str) and x in ("float32", "float64"),
              "'float32' or 'float64'"),
    "limit_train": (lambda x: is_int(x) and 1 <= x < MAX_SIZE, "null or an integer from 1 "
                    "and below 2**31"),
    "n_train": (lambda x: is_int(x) and 0 <= x < MAX_SIZE, "an integer >= 0 and below 2**31"),
    "n_test": (lambda x: is_int(x) and 0 <= x < MAX_SIZE, "an integer >= 0 and below 2**31"),
    "ranks": (lambda x: is_int(x) and 1 <= x < MAX_SIZE, "an integer >= 1"),
}
# train always writes these as values, never null (older runs too): a null is damage, not a
# default (a resume would otherwise ask the user for a value no option can give)
NEVER_NULL = ("batch_size", "lr", "lr_decay", "decay_steps", "seed", "shift", "dtype",
              "dataset", "n_train", "n_test", "model", "ranks")
MAX_SIZE = 2 ** 31        # a count of images (limit_test, val_size) fits an int32
DATA_INFO = {             # an image folder's, as folder.load_image_folder records it
    "folder": (is_text, "a folder's path"),
    "image_size": (lambda x: isinstance(x, list) and len(x) == 2
                   and all(is_int(n) and n >= 1 for n in x), "[height, width] in pixels"),
    "color": (lambda x: x in ("gray", "rgb"), "'gray' or 'rgb'"),
    "test_fraction": (lambda x: is_finite_real(x) and 0 < x < 1, "a number in (0, 1)"),
    "seed": (is_count, COUNT),
    "split": (is_text, "a text"),
    "test_files_sha256": (is_text, "a SHA-256 in hex"),
    "undecodable": (is_count, COUNT),
}


def check_settings(settings, path, where, num_classes):
    """A run's settings (``where``: "extra.settings" of a checkpoint, "provenance.settings"
    of a weights file): null or a JSON object whose fields are of their types, with one
    class name per class of the network. ValueError naming the file and the field."""
    check_meta_field(path, where, settings, settings is None or isinstance(settings, dict),
                      "a JSON object")
    settings = settings or {}
    for name in NEVER_NULL:
        if name in settings and settings[name] is None:
            check_meta_field(path, f"{where}.{name}", None, False, SETTINGS[name][1])
    check_fields(settings, path, where, SETTINGS)
    check_fields(settings.get("data_info") or {}, path, f"{where}.data_info", DATA_INFO)
    classes = settings.get("classes")
    if classes and num_classes is not None:
        check_meta_field(path, f"{where}.classes", classes, len(classes) == num_classes,
                          f"{num_classes} class names, one per class of the network")


def _check_settings_fit(meta, settings, path):
    """The settings against the network the file holds: settings.model its kind, crop and
    shift within its input's side (as train cuts and shifts its images)."""
    kind, named = _check_kind(meta, path), settings.get("model")
    if named is not None and named != kind:
        raise ValueError(f"{path}: damaged checkpoint metadata: extra.settings.model is "
                         f"{named!r} but the file's model is {kind!r}; they must agree")
    try:
        side = config_from(meta, path).input_shape[:2]
    except (ValueError, TypeError, AttributeError):
        return                                  # a bad config: loading the arrays says so
    for name, top in (("crop", min(side)), ("shift", max(side))):
        value = settings.get(name)
        if value is not None:
            low = 1 if name == "crop" else 0
            check_meta_field(path, f"extra.settings.{name}", value, low <= value <= top,
                              f"an integer from {low} to {top} (the network's "
                              f"{side[0]}x{side[1]} input)")


def check_fields(record, path, where, rules):
    for name, (ok, what) in rules.items():
        value = record.get(name)
        if value is not None:
            check_meta_field(path, f"{where}.{name}", value, ok(value), what)


def num_classes_of(meta, path):
    """The number of classes of the network in the metadata; None where its config is bad
    (which loading the arrays then says)."""
    try:
        return config_from(meta, path).num_classes
    except ValueError:
        return None


def _check_kind(meta, path):
    """The network kind the metadata names ("capsnet" when it names none): one of MODELS,
    else a ValueError naming the file and the kinds this minicaps reads."""
    kind = meta.get("model", DEFAULT_MODEL)
    if not isinstance(kind, str) or kind not in MODELS:
        raise ValueError(f"{path}: holds a network of kind {str(kind)[:80]!r}, which this "
                         f"minicaps does not know (it reads {', '.join(map(repr, MODELS))}); "
                         f"a newer minicaps may read it")
    return kind


def _damaged(path, field, value, what):
    return (f"{path}: damaged checkpoint metadata: {field} is {str(value)[:80]!r}, "
            f"expected {what}")


def check_meta_field(path, field, value, ok, what):
    """ValueError naming the file and the field unless ``ok``."""
    if not ok:
        raise ValueError(_damaged(path, field, value, what))


def config_from(meta, path):
    """The config of the network the metadata's "model" tag names (a CapsNetConfig for a
    file without one, a CNNConfig), from its "config" fields."""
    config_class = MODELS[_check_kind(meta, path)][0]
    try:
        return config_class.from_dict(meta["config"])
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path}: bad network config in checkpoint ({e})") from e


def _config_differences(mine, theirs):
    """'field: model value vs checkpoint value' for every field that differs."""
    a, b = mine.to_dict(), theirs.to_dict()
    return [f"{k}: model {a[k]!r} vs checkpoint {b[k]!r}" for k in a if a[k] != b[k]]


def _optimizer_from(meta, moments, model, path):
    hyper = meta["optimizer"]
    if not isinstance(hyper, dict) or hyper.get("name") != "Adam":
        raise ValueError(f"{path}: unsupported optimizer state {hyper!r}")
    shapes = model.config.param_shapes()
    for key, a in moments.items():
        kind, _, name = key.partition("/")
        if kind not in ("m", "v") or name not in shapes:
            raise ValueError(f"{path}: unexpected optimizer entry {key!r}")
        if tuple(a.shape) != tuple(shapes[name]):
            raise ValueError(f"{path}: optimizer entry {key!r} has shape {tuple(a.shape)}, "
                             f"the parameter has {shapes[name]}")
    for name in shapes:
        if (f"m/{name}" in moments) != (f"v/{name}" in moments):
            raise ValueError(f"{path}: optimizer has only one of the two moments of {name}")
    try:
        optimizer = Adam(hyper["lr"], hyper["beta1"], hyper["beta2"], hyper["eps"])
        on_device = {k: backend.to_device(a, model.device).astype(model.dtype, copy=False)
                     for k, a in moments.items()}
        optimizer.load_state_dict(hyper, on_device)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: bad optimizer state ({type(e).__name__}: {e})") from e
    return optimizer


def _average_from(meta, averages, model, path):
    """The ParameterAverage of the checkpoint (None if it has none), on the model's device."""
    info = meta.get("average")
    if info is None and not averages:
        return None
    if not isinstance(info, dict) or "decay" not in info:
        raise ValueError(f"{path}: average/ entries without their decay in the metadata")
    shapes = model.config.param_shapes()
    if set(averages) != set(shapes):
        raise ValueError(f"{path}: the parameters' average should cover {sorted(shapes)}, "
                         f"it has {sorted(averages)}")
    for name, a in averages.items():
        if tuple(a.shape) != tuple(shapes[name]):
            raise ValueError(f"{path}: average of {name} has shape {tuple(a.shape)}, "
                             f"the parameter has {shapes[name]}")
    on_device = {k: backend.to_device(a, model.device).astype(model.dtype, copy=False)
                 for k, a in averages.items()}
    try:
        return ParameterAverage(on_device, float(info["decay"]))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: bad average decay ({e})") from e
