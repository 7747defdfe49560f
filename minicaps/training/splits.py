"""The data a run trains, validates and tests on: a data set (data.registry) cut into Splits of
uint8 images and labels, held-out validation, limits, centre crops; and the network's config
fitted to the data."""
from dataclasses import dataclass

import numpy as np

from minicaps.data import multimnist
from minicaps.data.augment import center_crop, check_crop
from minicaps.data.dataset import Dataset, train_val_split
from minicaps.data.registry import load_dataset
from minicaps.nn.registry import layout_config


@dataclass
class Split:
    """Labelled uint8 images (N, H, W) or (N, H, W, C) with int labels (N,). MultiMNIST's
    test pairs: labels (N, 2) and ``targets`` (N, 2, H, W), each digit alone."""
    images: np.ndarray
    labels: np.ndarray
    targets: np.ndarray = None

    def __len__(self):
        return len(self.labels)


def load_data(dataset="mnist", data_root=None):
    """The data set named ``dataset`` as a data.Dataset, from the registry
    (data.registry.load_dataset: every name it knows), from ``data_root``."""
    return load_dataset(dataset, root=data_root)


def as_dataset(data):
    """A data.Dataset from a Dataset, or from (x_train, y_train, x_test, y_test) arrays
    (whose classes are then unnamed)."""
    if isinstance(data, Dataset):
        return data
    if not isinstance(data, (tuple, list)) or len(data) != 4:
        raise ValueError("data must be a data.Dataset or (x_train, y_train, x_test, y_test)")
    return Dataset(*data)


def config_for_data(data, crop=None, model="capsnet", **fields):
    """The config of the network ``model`` names (nn.registry.LAYOUTS: a CapsNetConfig, or a
    CNNConfig as CNNConfig.paper() or .pooled() make it), with the paper's sizes or
    ``fields``, whose input and classes are the data's: input_shape (H, W, C) of its
    images (crop x crop with a crop), num_classes as many as it names (else one more than
    its largest label)."""
    data = as_dataset(data)
    images = np.asarray(data.x_train)
    h, w = images.shape[1:3] if crop is None else (crop, crop)
    if pairs_per_digit(data):
        h, w = h + 2 * multimnist.MAX_SHIFT, w + 2 * multimnist.MAX_SHIFT   # 28 -> 36
    channels = images.shape[3] if images.ndim == 4 else 1
    labels = np.asarray(data.y_train)
    classes = len(data.classes) or int(labels.max()) + 1
    return layout_config(model, **{**fields, "input_shape": (h, w, channels),
                                   "num_classes": classes})


def pairs_per_digit(data):
    """MultiMNIST (data.info["pairs_per_digit"] = K): each epoch pairs every training digit
    K times with a digit of another class (multimnist.iterate_epoch). 0 otherwise."""
    return int((data.info or {}).get("pairs_per_digit", 0))


def prepare_data(data=None, dataset="mnist", data_root=None, limit_train=None, limit_test=None,
                 val_size=0, seed=0, crop=None):
    """(train, val or None, test) Splits from ``data`` (a data.Dataset or (x_train, y_train,
    x_test, y_test) arrays), or from load_data(dataset, data_root). ``val_size`` images are
    held out of the training set at random (seeded) before the first ``limit_train`` of the
    rest are kept; the test set is cut to its first ``limit_test``. With a ``crop``, the
    validation and test images are cut to their centre crop x crop (training crops at
    random, in train_epoch)."""
    data = as_dataset(load_data(dataset, data_root) if data is None else data)
    x_train, y_train, x_test, y_test = (np.asarray(a) for a in data[:4])
    for name, images, labels in (("train", x_train, y_train), ("test", x_test, y_test)):
        if images.dtype != np.uint8 or images.ndim not in (3, 4):
            raise ValueError(f"{name} images must be uint8 (N, H, W) or (N, H, W, C), "
                             f"got {images.dtype} {images.shape}")
        if labels.ndim != 1 or len(labels) != len(images) or labels.dtype.kind not in "iu":
            raise ValueError(f"{name} labels must be {len(images)} integers, "
                             f"got {labels.dtype} {labels.shape}")
    if crop is not None:
        check_crop(crop, x_train.shape[1:3])
        check_crop(crop, x_test.shape[1:3])
    val = None
    if val_size >= len(y_train):
        raise ValueError(f"val_size={val_size} (--val-size) leaves no training images: the "
                         f"training set has {len(y_train)}; hold out fewer")
    if val_size and data.x_val is not None:
        raise ValueError(f"{data.name or 'the data'} has a validation set of its own: give no "
                         f"--val-size")
    if data.x_val is not None:
        val = Split(center_crop(np.asarray(data.x_val), crop), np.asarray(data.y_val))
    if val_size:
        x_train, y_train, x_val, y_val = train_val_split(x_train, y_train, val_size, seed)
        val = Split(center_crop(x_val, crop), y_val)
    if limit_train is not None:
        x_train, y_train = x_train[:limit_train], y_train[:limit_train]
    if limit_test is not None:
        x_test, y_test = x_test[:limit_test], y_test[:limit_test]
    if len(y_train) == 0 or len(y_test) == 0:
        raise ValueError(f"need at least one training and one test image, "
                         f"got {len(y_train)} and {len(y_test)}")
    if pairs_per_digit(data):
        if val_size or crop:
            raise ValueError("MultiMNIST takes no --val-size and no --crop: its test set is "
                             "a fixed, seeded set of pairs from MNIST's test digits")
        test = multimnist.make_test_set(x_test, y_test)         # 10,000 pairs, seeded
        cut = slice(None, limit_test)
        return Split(x_train, y_train), None, Split(test.images[cut], test.labels[cut],
                                                    test.digits[cut])
    return Split(x_train, y_train), val, Split(center_crop(x_test, crop), y_test)


def check_shape(split, config, name, crop=None, pad=0):
    shape = split.images.shape[1:] + ((1,) if split.images.ndim == 3 else ())
    if crop is not None:
        shape = (crop, crop) + tuple(shape[2:])
    shape = (shape[0] + 2 * pad, shape[1] + 2 * pad) + tuple(shape[2:])
    if tuple(shape) != tuple(config.input_shape):
        cut = f", cut to {crop}x{crop}," if crop is not None else ""
        raise ValueError(f"{name} images{cut} are {tuple(shape)} (H, W, C) but the network "
                         f"expects {tuple(config.input_shape)}")
