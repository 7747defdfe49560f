"""The choices of a training run, typed, with their defaults in one place: TrainConfig.

Built once (by a library user, or by ``minicaps train`` from its options), checked once when
it is made, passed whole to ``train``, stored in every checkpoint (``settings``) and read back
typed (RunSettings: the config, and what the run found in its data):

    from minicaps.training.config import TrainConfig
    from minicaps.training.run import train
    train(options=TrainConfig(epochs=2, lr=2e-3, dataset="fashion-mnist"), out_dir="runs/f")

The settings a resumed run must share with its checkpoint are RESUME_SETTINGS.
"""
import dataclasses
import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from minicaps.io.files import regular_file
from minicaps.training import runfolder

DEFAULT_SHIFT = 2      # the paper's augmentation: shifts of up to 2 pixels
DTYPES = ("float32", "float64")


@dataclass(frozen=True)
class TrainConfig:
    """Every choice of a run that changes what it computes, with the defaults of the paper's
    recipe (Adam at 1e-3 decaying 0.96 every 2,000 steps, batches of 100, 2-pixel shifts)."""
    epochs: int = 1                  # train until this many epochs are done in all
    batch_size: int = 100
    lr: float = 1e-3                 # Adam's learning rate at step 0 ...
    lr_decay: float = 0.96           # ... times lr_decay^(step / decay_steps)
    decay_steps: int = 2000
    seed: int = 0                    # initial weights, shuffling, shifts, held-out images
    shift: Optional[int] = None      # shifts of up to this many pixels; None: the data's
                                     # (its info["shift"]: 6 on expanded MNIST; 0 for
                                     # MultiMNIST's pairs, shifted as they are made; else 2)
    dtype: str = "float32"
    dataset: str = "mnist"           # a name of data.registry (when no data is given)
    val_size: int = 0                # training images held out to choose best.npz on
    limit_train: Optional[int] = None    # the first N training images only
    limit_test: Optional[int] = None     # the first N test images only
    crop: Optional[int] = None       # random crop x crop squares; None: the data's; 0: none
    flip: Optional[bool] = None      # mirror half the images; None: the data's
    average: Optional[float] = 0.999     # decay of the parameters' moving average; None

    def __post_init__(self):
        check_settings(**dataclasses.asdict(self))
        try:                                   # np.float32 and "float32" alike
            object.__setattr__(self, "dtype", np.dtype(self.dtype).name)
        except TypeError:
            pass
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if not isinstance(self.dataset, str) or not self.dataset:
            raise ValueError(f"dataset must be a data set's name, got {self.dataset!r}")
        if self.crop is not None and (not isinstance(self.crop, (int, np.integer))
                                      or isinstance(self.crop, bool) or self.crop < 0):
            raise ValueError(f"crop must be a size in pixels (0: none) or None, "
                             f"got {self.crop!r}")

    def replace(self, **changes):
        """A copy with ``changes``, checked again."""
        return dataclasses.replace(self, **changes)

    def for_data(self, info, pairs=0):
        """The config with what None leaves to the data filled in from the data's ``info``
        (and its pairs a digit, MultiMNIST's): shift, crop and flip."""
        shift = self.shift
        if shift is None:
            shift = 0 if pairs else int(info.get("shift", DEFAULT_SHIFT))
        crop = info.get("crop") if self.crop is None else (self.crop or None)
        flip = bool(info.get("flip", False)) if self.flip is None else bool(self.flip)
        return self.replace(shift=shift, crop=crop, flip=flip)


# What a checkpoint's settings hold beyond the config: what the run found in its data and
# how it ran. (A checkpoint stores no epochs: a resumed run may go on further.)
FOUND = ("n_train", "n_test", "classes", "data_info", "pairs_per_digit", "model", "ranks")
STORED = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.name != "epochs")
NULLABLE = ("shift", "limit_train", "limit_test", "crop", "flip", "average")

# Settings that change what a resumed run computes, or the test set its best.npz is chosen
# on: they must match the checkpoint's.
RESUME_SETTINGS = ("batch_size", "lr", "lr_decay", "decay_steps", "seed", "shift", "dtype",
                   "dataset", "val_size", "limit_train", "n_train", "limit_test", "n_test",
                   "crop", "flip", "classes", "pairs_per_digit")


@dataclass(frozen=True)
class RunSettings:
    """A checkpoint's settings read back typed: the run's TrainConfig (epochs aside) and
    what it found. Checkpoints written before a field existed read its default; a file
    that keeps no settings (a weights file of unknown provenance) has config None."""
    config: Optional[TrainConfig]
    n_train: Optional[int] = None
    n_test: Optional[int] = None
    classes: Optional[tuple] = None
    data_info: dict = dataclasses.field(default_factory=dict)
    pairs_per_digit: int = 0
    model: Optional[str] = None      # the kind of network ("capsnet", "cnn")
    ranks: Optional[int] = None      # processes of a distributed run

    @property
    def dataset(self):
        """The data set's name, or None where nothing names it."""
        return None if self.config is None else self.config.dataset

    @property
    def crop(self):
        """The centre crop its test images take (None: none)."""
        return None if self.config is None else self.config.crop

    def to_dict(self):
        """The dict a checkpoint stores (the same keys as checkpoints before this type)."""
        c = self.config
        if c is None:
            return {}
        d = {"batch_size": c.batch_size, "lr": c.lr, "lr_decay": c.lr_decay,
             "decay_steps": c.decay_steps, "seed": c.seed, "shift": c.shift,
             "dtype": c.dtype, "dataset": c.dataset, "val_size": c.val_size,
             "limit_train": c.limit_train, "n_train": self.n_train,
             "limit_test": c.limit_test, "n_test": self.n_test, "average": c.average,
             "crop": c.crop, "flip": c.flip,
             "classes": None if self.classes is None else list(self.classes),
             "data_info": self.data_info, "pairs_per_digit": self.pairs_per_digit}
        if self.ranks is not None:
            d["ranks"] = self.ranks
        if self.model is not None:
            d["model"] = self.model
        return d

    @classmethod
    def from_dict(cls, d):
        """RunSettings from a checkpoint's settings dict (checked already at load by
        io.checkpoint): unknown keys are left, missing ones take their defaults."""
        d = dict(d or {})
        if not d:
            return cls(None)
        config = TrainConfig(**{k: d[k] for k in STORED
                                if k in d and (d[k] is not None or k in NULLABLE)})
        found = {k: d[k] for k in FOUND if d.get(k) is not None}
        if "classes" in found:
            found["classes"] = tuple(found["classes"])
        return cls(config, **found)


def settings_of(ckpt):
    """The RunSettings of a loaded checkpoint or weights file (its extra["settings"])."""
    return RunSettings.from_dict((ckpt.extra or {}).get("settings"))


def check_settings(**s):
    """Every training setting of the right type and in range, before anything is loaded."""
    def integer(name, low, none_ok=False):
        value = s[name]
        if value is None and none_ok:
            return
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")

    def number(name, ok, what):
        value = s[name]
        if (not isinstance(value, (int, float, np.integer, np.floating)) or isinstance(value, bool)
                or not math.isfinite(value) or not ok(value)):
            raise ValueError(f"{name} must be a finite number {what}, got {value!r}")

    integer("epochs", 0)
    integer("batch_size", 1)
    integer("decay_steps", 1)
    integer("seed", 0)
    integer("shift", 0, none_ok=True)
    integer("val_size", 0)
    integer("limit_train", 1, none_ok=True)
    integer("limit_test", 1, none_ok=True)
    number("lr", lambda x: x > 0, "> 0 (such as 1e-3)")
    number("lr_decay", lambda x: 0 < x <= 1, "in (0, 1] (such as 0.96)")
    if s["average"] is not None:
        number("average", lambda x: 0 < x < 1, "in (0, 1) (such as 0.999), or None")


def check_before_loading(training, *, out_dir, resume, overwrite):
    """What train checks before any data loads, beyond the TrainConfig ``training`` (checked
    when it was made): that it trains something, that ``out_dir`` holds no other run
    (unless ``overwrite``) when the run is not resumed, and that the checkpoint it resumes
    from is a file when it is."""
    if training.epochs == 0 and resume is None:
        raise ValueError("epochs=0 trains nothing: give 1 or more (--epochs N), counting the "
                         "epochs of a resumed run too")
    if resume is None:
        runfolder.check_room(out_dir, overwrite)      # another run there: said at once
    else:
        regular_file(resume, "checkpoint file")
