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

JSON keeps the big integers of a PCG64 state exactly. Loading reads the archive by an
allow-list, without pickle (archive.read_archive), so a checkpoint cannot run code, and
checks every field of the metadata (metadata.check_meta).

The file is written atomically (writer.replace_file): into a temporary file in the same
folder, flushed and fsynced, then renamed over the old one with ``os.replace``. A crash
mid-write leaves the previous checkpoint as it was, and a symbolic link standing at the
path is replaced, never followed. A full disk is a DiskFullError saying what the file
needed.
"""
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from minicaps import backend
from minicaps.io.archive import read_archive
from minicaps.io.files import regular_file
from minicaps.io.metadata import (FORMAT, FORMAT_VERSION, check_meta, check_rng_state,
                                  config_from, generator_from_state)
from minicaps.io.writer import write_atomically
from minicaps.nn.base import Network
from minicaps.nn.registry import build_model, model_kind
from minicaps.training.optim import Adam, ParameterAverage


WEIGHT_CHOICES = ("auto", "average", "trained")   # Checkpoint.model_with


@dataclass
class Checkpoint:
    """What load_checkpoint returns; ``rng()`` rebuilds the random generator."""
    path: Path
    model: Network          # a CapsNet or a BaselineCNN (their fast classes unless told
                            # otherwise): the kind the file's "model" tag names
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
    meta.update(model.checkpoint_state())   # a CNN's dropout: its seed and next step
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




# --- load ------------------------------------------------------------------------------------

def load_checkpoint(path, device=None, model=None):
    """Read a checkpoint written by save_checkpoint into a Checkpoint.

    The model, a CapsNet or a BaselineCNN as the file's "model" tag says, is rebuilt from
    the stored config (build_model: the fast class) on ``device`` (None: $MINICAPS_DEVICE or cpu); or, when ``model`` is
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
    model.restore_checkpoint_state(meta)
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



def _read(path, only_meta=False):
    """(meta dict, params, optimizer moments, averages) of a checkpoint as NumPy arrays;
    ValueError naming the file if anything is wrong (read_archive). ``only_meta``: the
    metadata only, the rest empty dicts."""
    meta, arrays = read_archive(path, check_meta, ("param", "optim/m", "optim/v", "average"),
                                only_meta=only_meta)
    params = {k[len("param/"):]: a for k, a in arrays.items() if k.startswith("param/")}
    moments = {k[len("optim/"):]: a for k, a in arrays.items() if k.startswith("optim/")}
    averages = {k[len("average/"):]: a for k, a in arrays.items() if k.startswith("average/")}
    return meta, params, moments, averages


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
