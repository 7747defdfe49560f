"""What every data set is: a Dataset of uint8 images and int labels, named classes and the
set's own facts (info); the errors a data set raises; where the data folder is; and the
images as a network takes them."""
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from minicaps.backend import get_xp, is_gpu_array


class DataError(ValueError):
    """A data file is malformed, has the wrong content, or the data cannot be found."""


class ChecksumError(DataError):
    """A file parses but its content's SHA-256 is not the published one."""


class DataNotFoundError(DataError):
    """The files are not on disk, and downloading is off or every mirror failed."""


class Dataset(NamedTuple):
    """Labelled images from any source (load_dataset, load_image_folder, your own arrays).

    Images uint8 (N, H, W) or (N, H, W, C); labels int64 (N,) in 0..len(classes)-1.
    ``classes``: the name of each label. ``name``: what the data is ("cifar10", a folder's
    path). ``info``: how the data is meant to be used, as the trainer reads it: {"crop": 32}
    trains on random 32x32 crops and tests on the centre crop (smallNORB's protocol),
    {"flip": True} adds random horizontal flips; and anything worth keeping with a run
    (a folder's seeded split). Its first four fields unpack like MNIST.
    """
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: tuple = ()
    name: str = ""
    info: dict = None     # None: nothing to say
    x_val: np.ndarray = None    # a validation set of its own (affNIST's: expanded MNIST's
    y_val: np.ndarray = None    # test digits), which best.npz then goes by


def data_root(root=None):
    """The folder to look in: ``root``, else $MINICAPS_DATA (which must exist: a typo there
    is said, not created), else the per-user cache."""
    if root is None:
        root = os.environ.get("MINICAPS_DATA") or None
        if root is not None and not Path(root).expanduser().is_dir():
            raise DataNotFoundError(
                f"MINICAPS_DATA is {root!r}, which is not a folder: point it at the folder "
                f"that holds the data files, or create it (mkdir -p {root}) to download "
                f"into it, or unset it to use the per-user cache")
    if root is None:
        import pooch
        root = pooch.os_cache("minicaps")
    return Path(root).expanduser()


def to_model_input(images, dtype=np.float32):
    """uint8 pixels (N, H, W) or (N, H, W, C) -> dtype in [0, 1], shape (N, H, W, C),
    on the device the images are on (NumPy or CuPy)."""
    if not is_gpu_array(images):
        images = np.asarray(images)
    xp = get_xp(images)
    if images.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels 0..255, got {images.dtype}: images already "
                         f"scaled to [0, 1] go to the model as they are")
    if images.ndim not in (3, 4):
        raise ValueError(f"expected images (N, H, W) or (N, H, W, C), got shape {images.shape}")
    if images.ndim == 3:
        images = images[..., None]
    return images.astype(dtype) / xp.asarray(255, dtype)


def iterate_minibatches(x, y, batch_size, rng=None, shuffle=True, drop_last=False):
    """Yield (x_batch, y_batch) covering x once, in an order drawn from rng if shuffle."""
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} rows but y has {len(y)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = np.random.default_rng(rng).permutation(len(x)) if shuffle else np.arange(len(x))
    stop = len(x) - len(x) % batch_size if drop_last else len(x)
    for start in range(0, stop, batch_size):
        idx = order[start:start + batch_size]
        yield x[idx], y[idx]


def train_val_split(x, y, n_val, seed=0):
    """Split off n_val random rows for validation: (x_train, y_train, x_val, y_val)."""
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} rows but y has {len(y)}")
    if not 0 <= n_val <= len(x):
        raise ValueError(f"n_val must be in 0..{len(x)}, got {n_val}")
    order = np.random.default_rng(seed).permutation(len(x))
    val, train = order[:n_val], order[n_val:]
    return x[train], y[train], x[val], y[val]
