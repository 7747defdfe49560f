"""Save and load a training run: parameters, Adam's moments, the step and the RNG state.

One checkpoint is one .npz file, written without pickle:

    param/<name>      every parameter of the model ("param/conv1.W", ...)
    optim/m/<name>    Adam's first and second moments, keyed like the parameters
    optim/v/<name>
    average/<name>    the parameters' moving average, when the run keeps one
    meta              UTF-8 JSON as a uint8 array: the network's config, dtype, epoch, step,
                      Adam's hyper-parameters, the RNG's bit_generator state, metrics, extra

JSON keeps the big integers of a PCG64 state exactly. Loading uses
``np.load(path, allow_pickle=False)``, so a checkpoint cannot run code.

The file is written atomically: into a temporary file in the same folder, flushed and
fsynced, then renamed over the old one with ``os.replace``. A crash mid-write leaves the
previous checkpoint as it was.
"""
import json
import os
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import backend
from .model import CapsNet, CapsNetConfig
from .optim import Adam, ParameterAverage

FORMAT = "minicaps-checkpoint"
FORMAT_VERSION = 1
BIT_GENERATORS = ("PCG64", "PCG64DXSM", "Philox", "SFC64")   # states made of ints only
META_KEYS = ("format", "format_version", "config", "dtype", "epoch", "step", "optimizer",
             "rng_state")


WEIGHT_CHOICES = ("auto", "average", "trained")   # Checkpoint.model_with


@dataclass
class Checkpoint:
    """What load_checkpoint returns; ``rng()`` rebuilds the random generator."""
    path: Path
    model: CapsNet
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
        m = self.model
        return CapsNet(m.config, dtype=m.dtype, device=m.device, params=self.average.params,
                       conv_method=m.conv_method), "average"


def generator_from_state(state):
    """A numpy Generator whose bit generator continues from ``state`` (bit_generator.state)."""
    name = state.get("bit_generator") if isinstance(state, dict) else None
    if name not in BIT_GENERATORS:
        raise ValueError(f"unsupported RNG state {name!r}, expected one of {BIT_GENERATORS}")
    bit_generator = getattr(np.random, name)()
    bit_generator.state = state
    return np.random.Generator(bit_generator)


# --- save ------------------------------------------------------------------------------------

def save_checkpoint(path, model, optimizer, *, epoch, step, rng_state, metrics=None, extra=None,
                    average=None):
    """Write model, optimizer and training position to ``path`` (.npz), atomically.

    rng_state: ``generator.bit_generator.state`` (or the Generator itself).
    metrics, extra: JSON-serialisable dicts kept alongside (e.g. the run's settings).
    average: a ParameterAverage kept with the run, or None.
    """
    from . import __version__
    if isinstance(rng_state, np.random.Generator):
        rng_state = rng_state.bit_generator.state
    hyper, moments = optimizer.state_dict()
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "minicaps_version": __version__,
            "config": model.config.to_dict(), "dtype": model.dtype.name,
            "epoch": int(epoch), "step": int(step),
            "optimizer": {"name": type(optimizer).__name__, **hyper},
            "rng_state": rng_state, "metrics": metrics or {}, "extra": extra or {},
            "average": None if average is None else {"decay": average.decay}}
    try:
        meta_bytes = json.dumps(meta).encode("utf-8")
    except TypeError as e:
        raise ValueError(f"checkpoint metadata for {path} is not JSON-serialisable: {e}") from e
    arrays = {f"param/{k}": backend.to_numpy(a) for k, a in model.params.items()}
    arrays.update({f"optim/{k}": backend.to_numpy(a) for k, a in moments.items()})
    if average is not None:
        arrays.update({f"average/{k}": backend.to_numpy(a) for k, a in average.params.items()})
    arrays["meta"] = np.frombuffer(meta_bytes, dtype=np.uint8)
    _write_atomically(Path(path), arrays)
    return Path(path)


def _write_atomically(path, arrays):
    """np.savez into a temp file beside ``path``, fsync, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        umask = os.umask(0)   # mkstemp makes the file private (0600); give it the usual mode
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:   # KeyboardInterrupt too: never leave a half-written temp file
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    try:   # make the rename itself durable; not every system lets a folder be opened
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


# --- load ------------------------------------------------------------------------------------

def load_checkpoint(path, device=None, model=None):
    """Read a checkpoint written by save_checkpoint into a Checkpoint.

    The model is rebuilt from the stored config on ``device`` (None: $MINICAPS_DEVICE or
    cpu); or, when ``model`` is given, the parameters go into that model, whose config must
    be the checkpoint's. Anything wrong with the file raises a ValueError naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    meta, params, moments, averages = _read(path)
    config = _config_from(meta, path)
    if model is None:
        try:
            model = CapsNet(config, dtype=meta["dtype"], device=device, params=params)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from e
    else:
        differences = _config_differences(model.config, config)
        if differences:
            raise ValueError(f"{path} holds a different network than the model: "
                             + ", ".join(differences))
        try:
            model.set_params(params)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from e
    optimizer = _optimizer_from(meta, moments, model, path)
    average = _average_from(meta, averages, model, path)
    try:
        generator_from_state(meta["rng_state"])
    except (ValueError, TypeError, KeyError) as e:
        raise ValueError(f"{path}: bad RNG state ({e})") from e
    return Checkpoint(path=path, model=model, optimizer=optimizer, epoch=int(meta["epoch"]),
                      step=int(meta["step"]), rng_state=meta["rng_state"],
                      metrics=meta.get("metrics") or {}, extra=meta.get("extra") or {},
                      average=average)


def read_epoch(path):
    """The number of epochs a checkpoint has done, read from its metadata alone (the
    arrays stay on disk); ValueError if it is not a readable checkpoint."""
    epoch = _read(path, only_meta=True)[0]["epoch"]
    if not isinstance(epoch, int) or epoch < 0:
        raise ValueError(f"{path}: damaged checkpoint metadata (epoch {epoch!r})")
    return epoch


def _read(path, only_meta=False):
    """(meta dict, params, optimizer moments, averages) as NumPy arrays; ValueError if
    unreadable. ``only_meta``: read the metadata only, the rest as empty dicts."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise ValueError(f"{path}: not a readable minicaps checkpoint ({type(e).__name__}: {e})") from e
    if head != b"PK\x03\x04":     # NumPy would read anything else as a pickle it refuses
        what = "an empty file" if not head else f"a file that starts with {head!r}"
        raise ValueError(f"{path}: not a minicaps checkpoint: checkpoints are .npz (ZIP) "
                         f"archives, this is {what}; give the last.npz or best.npz of a run")
    try:
        npz = np.load(path, allow_pickle=False)
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise ValueError("a single .npy array, not an .npz archive")
        with npz:
            names = [k for k in npz.files if not only_meta or k == "meta"]
            arrays = {k: npz[k] for k in names}   # reading checks each member's CRC
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path}: not a readable minicaps checkpoint "
                         f"(damaged or not an .npz: {type(e).__name__}: {e})") from e
    if "meta" not in arrays:
        raise ValueError(f"{path}: not a minicaps checkpoint (no 'meta' entry)")
    try:
        meta = json.loads(arrays.pop("meta").tobytes().decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: damaged checkpoint metadata ({e})") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{path}: not a minicaps checkpoint (format is not {FORMAT!r})")
    missing = [k for k in META_KEYS if k not in meta]
    if missing:
        raise ValueError(f"{path}: checkpoint metadata lacks {missing}")
    if not isinstance(meta["format_version"], int) or meta["format_version"] > FORMAT_VERSION:
        raise ValueError(f"{path}: checkpoint format version {meta['format_version']} is newer "
                         f"than this minicaps reads ({FORMAT_VERSION}); upgrade minicaps")
    params = {k[len("param/"):]: a for k, a in arrays.items() if k.startswith("param/")}
    moments = {k[len("optim/"):]: a for k, a in arrays.items() if k.startswith("optim/")}
    averages = {k[len("average/"):]: a for k, a in arrays.items() if k.startswith("average/")}
    return meta, params, moments, averages


def _config_from(meta, path):
    try:
        return CapsNetConfig.from_dict(meta["config"])
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
