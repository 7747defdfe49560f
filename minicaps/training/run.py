"""The training loop of the paper: Adam, exponential learning-rate decay, 2-pixel shifts.

    for each epoch:
        for each minibatch (shuffled):
            x = random_shift(images, 2)                  # the paper's only augmentation
            loss, grads = model.loss_and_grads(x, y)     # decoder masked by the label
            Adam step with lr = lr0 * 0.96^(step / 2000)
        evaluate on test (and validation): decoder masked by the prediction
        append a line to metrics.jsonl; save last.npz and best.npz

Every random draw after the network's initialisation (shuffling, shifts) comes from one
numpy Generator seeded by ``seed``; its state is saved with each checkpoint, so
``resume=`` continues a run exactly: on the CPU two epochs in one go and one epoch, save,
resume, one more epoch give bit-for-bit the same parameters.

The same loop trains the paper's CNN baseline (model="cnn", minicaps.nn.cnn): its loss is
the cross-entropy alone, its dropout masks a function of (seed, step), so a resumed CNN
run is exact too.
"""
import errno
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from minicaps import backend
from minicaps.training import distributed
from minicaps.data import multimnist
from minicaps.training import runfolder
from minicaps.io.checkpoint import (DiskFullError, build_model, load_checkpoint,
                                    model_kind, read_epoch, read_meta, save_checkpoint)
from minicaps.nn.cnn import CNNConfig
from minicaps.data.augment import (center_crop, check_crop, crop_images, draw_crops,
                                   draw_flips, flip_images)
from minicaps.data.mnist import (Dataset, draw_shifts, load_mnist, shift_images,
                                 to_model_input, train_val_split)
from minicaps.io.files import regular_file
from minicaps.nn.capsnet import CapsNet, CapsNetConfig, check_network_fits
from minicaps.ops import margin_loss_forward, reconstruction_loss_forward
from minicaps.training.optim import Adam, NonFiniteGradientError, ParameterAverage
from minicaps.training.progress import Progress
from minicaps.values import is_int

METRICS_FILE = "metrics.jsonl"
LAST, BEST = "last.npz", "best.npz"
# Settings that change what a resumed run computes, or the test set its best.npz is chosen
# on: they must match the checkpoint's.
RESUME_SETTINGS = ("batch_size", "lr", "lr_decay", "decay_steps", "seed", "shift", "dtype",
                   "dataset", "val_size", "limit_train", "n_train", "limit_test", "n_test",
                   "crop", "flip", "classes", "pairs_per_digit")
# Section 5.2's datasets: expanded MNIST to train, and the affine test set each names
# (affnist.affnist_test; "affnist-generated" is "affnist-wide" in older checkpoints).
AFFINE_SETS = ("affnist", "affnist-like", "affnist-wide", "affnist-generated")
# The networks train builds by name (model=...) when it is given no config: their configs.
NETWORKS = {"capsnet": CapsNetConfig,          # the paper's CapsNet
            "cnn": CNNConfig.paper,            # its CNN baseline (section 5), 35.4 M at 28x28
            "cnn-pooled": CNNConfig.pooled,    # the max-pooling baseline of section 5.2
            "cnn-pooled-quick": CNNConfig.pooled_quick,   # the same, the quick CapsNet's size
            "cnn-released": CNNConfig.released}    # the MultiMNIST baseline of Table 1


def learning_rate(step, lr0=1e-3, decay_rate=0.96, decay_steps=2000):
    """lr0 * decay_rate^(step / decay_steps): continuous exponential decay, as the authors'
    code (tf.train.exponential_decay), where ``step`` counts the updates already made."""
    return lr0 * decay_rate ** (step / decay_steps)


# --- data ------------------------------------------------------------------------------------

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
    """The dataset named ``dataset`` as a data.Dataset (datasets.DATASETS lists the names),
    from ``data_root`` (see data.load_mnist for where files are looked for)."""
    from minicaps.data.registry import FASHION_CLASSES, MNIST_CLASSES, load_dataset
    if dataset in AFFINE_SETS:    # section 5.2: expanded MNIST to train, an affine set to test:
        # affNIST's files when they are there, else a generated stand-in named by its ranges
        from minicaps.data.affnist import affnist_dataset
        return affnist_dataset(load_mnist(root=data_root, dataset="mnist")[:4], root=data_root,
                               test=dataset)
    if dataset == "multimnist":       # pairs made from MNIST's digits as training goes
        return Dataset(*load_mnist(root=data_root, dataset="mnist")[:4], classes=MNIST_CLASSES,
                       name="multimnist", info={"pairs_per_digit": 1})
    if dataset in ("mnist", "fashion-mnist"):
        classes = MNIST_CLASSES if dataset == "mnist" else FASHION_CLASSES
        return Dataset(*load_mnist(root=data_root, dataset=dataset)[:4], classes=classes,
                       name=dataset)
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
    """The config of the network ``model`` names (NETWORKS: a CapsNetConfig, or a
    CNNConfig as CNNConfig.paper() or .pooled() make it), with the paper's sizes or
    ``fields``, whose input and classes are the data's: input_shape (H, W, C) of its
    images (crop x crop with a crop), num_classes as many as it names (else one more than
    its largest label)."""
    if model not in NETWORKS:
        raise ValueError(f"model must be one of {', '.join(NETWORKS)}, got {model!r}")
    data = as_dataset(data)
    images = np.asarray(data.x_train)
    h, w = images.shape[1:3] if crop is None else (crop, crop)
    if pairs_per_digit(data):
        h, w = h + 2 * multimnist.MAX_SHIFT, w + 2 * multimnist.MAX_SHIFT   # 28 -> 36
    channels = images.shape[3] if images.ndim == 4 else 1
    labels = np.asarray(data.y_train)
    classes = len(data.classes) or int(labels.max()) + 1
    return NETWORKS[model](**{**fields, "input_shape": (h, w, channels), "num_classes": classes})


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


def _check_shape(split, config, name, crop=None, pad=0):
    shape = split.images.shape[1:] + ((1,) if split.images.ndim == 3 else ())
    if crop is not None:
        shape = (crop, crop) + tuple(shape[2:])
    shape = (shape[0] + 2 * pad, shape[1] + 2 * pad) + tuple(shape[2:])
    if tuple(shape) != tuple(config.input_shape):
        cut = f", cut to {crop}x{crop}," if crop is not None else ""
        raise ValueError(f"{name} images{cut} are {tuple(shape)} (H, W, C) but the network "
                         f"expects {tuple(config.input_shape)}")


# --- evaluation ------------------------------------------------------------------------------

def loss_terms(model):
    """The names of the terms of ``model``'s loss, as its forward's out, train_epoch's and
    evaluate's results and the metrics carry them: model.loss_terms (BaselineCNN:
    "cross_entropy"), else a CapsNet's "margin_loss" and "reconstruction_loss". The first
    is the classification loss; the total, "loss", adds config.recon_weight times the
    reconstruction loss (0 for the CNN, which has none)."""
    return getattr(model, "loss_terms", ("margin_loss", "reconstruction_loss"))


def _loss_totals(model):
    return {"loss": 0.0, **dict.fromkeys(loss_terms(model), 0.0)}


def _evaluation_losses(model, out, x, y):
    """(classification loss, reconstruction loss or None) of an evaluation batch, on the
    device, from forward's ``out`` without labels: model.evaluation_losses when the model
    has one (BaselineCNN: the cross-entropy), else a CapsNet's: the margin loss (eq. 4) of
    the lengths and the reconstruction loss of the decoder masked by the prediction."""
    if hasattr(model, "evaluation_losses"):
        return model.evaluation_losses(out, x, y)
    cfg = model.config
    margin = margin_loss_forward(out["lengths"], y, cfg.m_plus, cfg.m_minus, cfg.lam)[0]
    recon = (reconstruction_loss_forward(out["reconstruction"], x.reshape(len(y), -1))[0]
             if "reconstruction" in out else None)
    return margin, recon


def evaluate(model, images, labels, batch_size=256, progress=False, desc="evaluate", log=print,
             per_class=False, targets=None, comm=None):
    """Accuracy and mean losses of ``model`` on uint8 ``images`` with true ``labels``.

    The decoder is masked by the predicted class, as at test time in the paper, and no
    gradients are computed (nor dropout applied). Returns a dict: accuracy, the mean of
    each term of the loss by its name (loss_terms: a CapsNet's margin_loss and
    reconstruction_loss, None without a decoder; the CNN's cross_entropy), loss (their
    total: margin + recon_weight * reconstruction, or the cross-entropy), n; with
    ``per_class``, also per_class: (images, accuracy) of each true class (accuracy None
    for a class without images). Labels (N, 2) with ``targets``: MultiMNIST pairs
    (evaluate_pairs). ``comm``: a distributed.Communicator; each rank then evaluates whole
    batches of the set and the counts are added up (the same accuracy, exactly).
    """
    cfg, n = model.config, len(labels)
    if not is_int(batch_size) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if n == 0:
        raise ValueError("cannot evaluate on an empty set")
    if comm is not None:
        return distributed.evaluate_shared(comm, evaluate, model, images, labels, batch_size,
                                           targets, per_class, progress=progress, desc=desc,
                                           log=log)
    if np.ndim(labels) == 2:
        return evaluate_pairs(model, images, labels, targets, batch_size, progress, desc, log)
    if len(images) != n:
        raise ValueError(f"{len(images)} images but {n} labels: evaluate needs one label per image")
    # Everything goes to the device once and every batch's results stay there until the
    # end: one transfer of the losses and one of the count, not a wait per batch on a GPU.
    images = backend.to_device(images, model.device)
    labels = model._check_y(backend.to_device(labels, model.device), n)   # the range, once
    correct, pending, predictions = 0, [], []
    bar = Progress(n, desc, enabled=progress, log=log)
    with model.fixed_weights(n):          # the weights' spectrum once for all batches
        for start in range(0, n, batch_size):
            x = to_model_input(images[start:start + batch_size], model.dtype)
            y = labels[start:start + batch_size]
            out, _ = model.forward(x, check_values=False)   # pixels from uint8: finite
            predicted = out["lengths"].argmax(axis=1)
            correct = correct + (predicted == y).sum()
            if per_class:
                predictions.append(predicted)
            pending.append((len(y), *_evaluation_losses(model, out, x, y)))
            bar.update(len(y))
            if bar.lines and bar.wants_stats():
                bar.show()
    # The losses are batch means: weighted by the batch size for the mean over all n.
    totals, name = _loss_totals(model), loss_terms(model)[0]
    _add_losses(totals, pending, model)
    correct = int(correct)
    bar.close()
    result = {"accuracy": correct / n, name: totals[name] / n}
    recon = totals.get("reconstruction_loss", 0.0) / n
    if "reconstruction_loss" in totals:
        result["reconstruction_loss"] = recon if cfg.use_decoder else None
    result["n"] = n
    result["loss"] = result[name] + cfg.recon_weight * recon
    if per_class:
        truth = backend.to_numpy(labels)
        right = backend.to_numpy(model.xp.concatenate(predictions)) == truth
        counts = np.bincount(truth, minlength=cfg.num_classes)
        hits = np.bincount(truth, weights=right, minlength=cfg.num_classes)
        result["per_class"] = [(int(c), float(h / c) if c else None)
                               for c, h in zip(counts, hits)]
    return result


def evaluate_pairs(model, images, labels, targets, batch_size=256, progress=False,
                   desc="evaluate", log=print):
    """MultiMNIST: accuracy as the paper counts it (a pair is right when its two labels
    are the two longest capsules: multimnist.pair_scores), the rate with at least one of
    them right ("one_or_more"), and the losses with both classes present, each digit
    reconstructed from its own label's capsule (targets (N, 2, H, W): each digit alone)."""
    n = len(labels)
    if targets is None or len(targets) != n or len(images) != n:
        raise ValueError("MultiMNIST evaluation needs images, labels (N, 2) and targets "
                         "(N, 2, H, W) of one length")
    totals, both, some = _loss_totals(model), 0, 0
    pending = []
    bar = Progress(n, desc, enabled=progress, log=log)
    with model.fixed_weights(n):
        for start in range(0, n, batch_size):
            cut = slice(start, start + batch_size)
            x, y, t = _pair_batch(model, images[cut], labels[cut], targets[cut])
            out, _ = model.forward(x, y, targets=t, check_values=False, host_losses=False)
            hits = multimnist.pair_hits(out["lengths"], y)       # stays on the device
            both, some = both + (hits == 2).sum(), some + (hits >= 1).sum()
            pending.append((len(y), out[loss_terms(model)[0]], out.get("reconstruction_loss")))
            bar.update(len(y))
    _add_losses(totals, pending, model)
    bar.close()
    result = {"accuracy": int(both) / n, "one_or_more": int(some) / n}
    result.update({key: value / n for key, value in totals.items()})
    result["n"] = n
    return result


def _pair_batch(model, images, labels, digits):
    """x (M, 36, 36, 1), labels (M, 2) and targets (M, 2, 36, 36, 1) on the model's device
    in its dtype, from MultiMNIST's uint8 pictures."""
    m = len(labels)
    images, digits = (backend.to_device(a, model.device) for a in (images, digits))
    x = to_model_input(images, model.dtype)
    targets = to_model_input(digits.reshape((2 * m,) + digits.shape[2:]), model.dtype)
    y = backend.to_device(np.asarray(labels), model.device)
    return x, y, targets.reshape((m, 2) + targets.shape[1:])


# --- one epoch -------------------------------------------------------------------------------

def epoch_draws(n, batch_size, rng, shift, size):
    """The random draws of one epoch, in the order the loop of examples/train_mnist.py
    makes them: a permutation of the n images, then each batch's shifts (dy, dx), here
    as arrays over the permuted positions (None without shifts)."""
    order, draws = epoch_plan(n, batch_size, rng, shift, size)
    return order, draws.get("dy"), draws.get("dx")


def epoch_plan(n, batch_size, rng, shift, size, crop=None, flip=False):
    """A permutation of the n images, then for each batch in turn its crop corners (cy,
    cx), shifts (dy, dx) and flips, each drawn only when asked for (so that shifts alone
    draw what epoch_draws always has). Returns (order, draws): arrays over the permuted
    positions, keyed "cy", "cx", "dy", "dx", "flip"."""
    order = rng.permutation(n)
    crop_size = size if crop is None else (crop, crop)
    parts = []
    for k in range(0, n, batch_size):
        m, batch = len(order[k:k + batch_size]), {}
        if crop is not None:
            batch["cy"], batch["cx"] = draw_crops(m, crop, rng, size)
        if shift:
            batch["dy"], batch["dx"] = draw_shifts(m, shift, rng, crop_size)
        if flip:
            batch["flip"] = draw_flips(m, rng)
        parts.append(batch)
    keys = parts[0].keys() if parts else ()
    return order, {key: np.concatenate([p[key] for p in parts]) for key in keys}


def augment_batch(batch, draws, k, m, shift, crop):
    """Batch ``k:k + m`` of the epoch cropped, shifted and flipped as ``draws`` say."""
    if crop is not None:
        batch = crop_images(batch, draws["cy"][k:k + m], draws["cx"][k:k + m], crop)
    if shift:
        batch = shift_images(batch, draws["dy"][k:k + m], draws["dx"][k:k + m], shift)
    if "flip" in draws:
        batch = flip_images(batch, draws["flip"][k:k + m])
    return batch


def train_epoch(model, optimizer, train, rng, step, *, batch_size, lr, lr_decay, decay_steps,
                shift, crop=None, flip=False, average=None, progress=True, desc="train",
                log=print, pairs_per_digit=0, comm=None):
    """One pass over ``train`` in an order drawn from ``rng``; returns (step, stats).

    The epoch's random draws are made first (epoch_plan); the images, the order and the
    draws then go to the model's device once, and every batch is gathered, cropped
    (``crop``: random crop x crop squares), shifted, flipped (``flip``) and scaled there: no
    transfer from the host per batch on a GPU. ``average``: a ParameterAverage to update
    after every step.

    stats: the mean loss and each of its terms (loss_terms: margin and reconstruction
    loss, or the cross-entropy) and the accuracy over the epoch's images (each batch's
    value weighted by its size), seconds, images per second.

    ``pairs_per_digit`` K > 0: MultiMNIST. The epoch is K rounds of pairs, each training
    digit once the first of a pair whose second is of another class, both shifted by up to
    4 pixels on 36x36 (multimnist.iterate_epoch, drawn from ``rng``); both classes are
    present in the margin loss and each digit is reconstructed from its own capsule; the
    accuracy counts a pair right when its labels are the two longest capsules.

    ``comm``: a distributed.Communicator. Every rank draws the whole epoch's plan, takes
    its share of each batch and adds its gradients to the others' (Communicator.
    loss_and_grads): every rank then takes one process's step.
    """
    if pairs_per_digit:
        return _train_pairs_epoch(model, optimizer, train, rng, step, batch_size, lr, lr_decay,
                                  decay_steps, pairs_per_digit, average, progress, desc, log,
                                  comm)
    device, n = model.device, len(train)
    order, draws = epoch_plan(n, batch_size, rng, shift, train.images.shape[1:3], crop, flip)
    order = backend.to_device(order, device)
    draws = {key: backend.to_device(value, device) for key, value in draws.items()}
    images = backend.to_device(train.images, device)
    labels = model._check_y(backend.to_device(train.labels, device), n)   # the range, once
    totals, name = _loss_totals(model), loss_terms(model)[0]
    # The batches' losses and correct counts stay on the device and are read when the bar
    # shows them (every 10 steps) or at the end of the epoch: on a GPU the host queues
    # batch after batch without waiting for one (images made from uint8 pixels and
    # labels checked above need no check of their values per batch).
    pending, correct, seen = [], 0, 0
    start = time.perf_counter()
    bar = Progress(n, desc, enabled=progress, log=log)   # a bar, or a line every 30 s
    for k in range(0, n, batch_size):
        idx = order[k:k + batch_size]
        mine = _share(comm, len(idx))               # all of it in one process
        batch = augment_batch(images[idx[mine]], draws, k + mine.start, len(idx[mine]), shift,
                              crop)
        x, y = to_model_input(batch, model.dtype), labels[idx[mine]]
        step, out = _step(model, optimizer, average, step, (lr, lr_decay, decay_steps), x, y,
                          (len(idx), mine.start, _labels_right), comm=comm)
        pending.append((len(idx), out[name], out.get("reconstruction_loss"), step))
        correct = correct + out["correct"]
        bar.update(len(idx))
        # On the CPU the losses are read every step (they are host numbers already), so a
        # NaN stops the run at once; on a GPU when the progress shows them and at the end.
        show = bar.wants_stats(step)
        if device == "cpu" or show:
            seen += _add_losses(totals, pending, model)
        if show:
            bar.show(**{"running loss": totals["loss"] / seen,
                        "running acc": int(correct) / seen})
    return step, _epoch_stats(totals, pending, model, int(correct), n, start, bar)


def _step(model, optimizer, average, step, schedule, x, y, batch, targets=None, comm=None):
    """One training step: the gradients, Adam at the scheduled rate (schedule: lr, decay
    rate, decay steps), the average; returns (the step count after it, forward's out, with
    "correct": how many it got right). batch: (its size, the first image of x in it, how to
    count the right answers: right(lengths, y)); with a communicator ``comm``, x and y
    are this rank's share, and the gradients, losses and count the whole batch's."""
    more = {} if targets is None else {"targets": targets}
    size, first, right = batch
    if comm is not None:
        grads, out = comm.loss_and_grads(model, x, y, size, first, right, check_values=False,
                                         host_losses=False, **more)
    else:
        _, grads, out = model.loss_and_grads(x, y, check_values=False, host_losses=False,
                                             **more)
        out["correct"] = right(out["lengths"], y)
    optimizer.lr = learning_rate(step, *schedule)
    try:
        optimizer.step(model.params, grads)
    except NonFiniteGradientError as e:     # a NaN loss says so, as it would on a GPU
        _add_losses(_loss_totals(model), [(len(y), out[loss_terms(model)[0]],
                                           out.get("reconstruction_loss"), step + 1)], model)
        raise DivergedError(f"{e} at step {step + 1}: the run diverged (a learning rate too "
                            f"high for this network?), so it stopped without saving this "
                            f"epoch; its last checkpoint is as the last good epoch left it. "
                            f"Try a smaller --lr") from e
    if average is not None:
        average.update(model.params, optimizer.t)
    return step + 1, out


def _share(comm, m):
    """This rank's slice of a batch of m (all of it without a communicator)."""
    return slice(0, m) if comm is None else comm.share(m)


def _labels_right(lengths, y):
    return (lengths.argmax(axis=1) == y).sum()


def _pairs_right(lengths, y):
    return (multimnist.pair_hits(lengths, y) == 2).sum()       # on the device


def _epoch_stats(totals, pending, model, correct, n, start, bar):
    """The epoch's mean losses and accuracy, seconds and images per second (the pending
    losses brought in first)."""
    _add_losses(totals, pending, model)
    bar.close()
    seconds = time.perf_counter() - start
    stats = {key: value / n for key, value in totals.items()}
    stats.update(accuracy=correct / n, seconds=seconds,
                 images_per_second=n / seconds if seconds > 0 else None)
    return stats


def _train_pairs_epoch(model, optimizer, train, rng, step, batch_size, lr, lr_decay,
                       decay_steps, pairs, average, progress, desc, log, comm=None):
    """train_epoch for MultiMNIST: the pairs made on the host as the epoch goes."""
    n = len(train) * pairs
    totals, name = _loss_totals(model), loss_terms(model)[0]
    pending, correct, seen = [], 0, 0
    start = time.perf_counter()
    bar = Progress(n, desc, enabled=progress, log=log)
    for batch in multimnist.iterate_epoch(train.images, train.labels, pairs, batch_size, rng):
        m, mine = len(batch.labels), _share(comm, len(batch.labels))
        x, y, targets = _pair_batch(model, batch.images[mine], batch.labels[mine],
                                    batch.digits[mine])
        step, out = _step(model, optimizer, average, step, (lr, lr_decay, decay_steps), x, y,
                          (m, mine.start, _pairs_right), targets, comm)
        pending.append((m, out[name], out.get("reconstruction_loss"), step))
        correct = correct + out["correct"]
        bar.update(m)
        show = bar.wants_stats(step)
        if model.device == "cpu" or show:
            seen += _add_losses(totals, pending, model)
        if show:
            bar.show(**{"running loss": totals["loss"] / seen, "running acc": int(correct) / seen})
    return step, _epoch_stats(totals, pending, model, int(correct), n, start, bar)


class DivergedError(ValueError):
    """The loss became NaN or infinite: training stopped before saving anything of it."""
    # On several ranks the losses are the whole batch's (or the whole set's), the same on
    # every rank: each raises this at the same step, and none needs to end the others.
    all_ranks = True


def _add_losses(totals, pending, model):
    """Bring the ``pending`` batches' losses (size, classification loss, reconstruction
    or None[, the step]; on the device) to the host in one transfer and add them, weighted
    by the batch size, to ``totals`` (_loss_totals: keyed by loss_terms) as floats: the
    total loss as forward's host_losses computes it. Empties ``pending``; returns the
    number of images added. A non-finite loss raises DivergedError naming its step."""
    added = sum(entry[0] for entry in pending)
    if pending:
        xp, zero = model.xp, model.xp.zeros((), dtype=model.dtype)
        values = backend.to_numpy(xp.stack([xp.stack([entry[1], zero if entry[2] is None
                                                      else entry[2]]) for entry in pending]))
        bad = ~np.isfinite(values).all(axis=1)
        if bad.any():
            entry = pending[int(np.argmax(bad))]
            where = f"at step {entry[3]}" if len(entry) > 3 else "in evaluation"
            raise DivergedError(
                f"the loss became {values[int(np.argmax(bad))].sum()} {where}: the run "
                f"diverged (a learning rate too high for this network?), so it stopped "
                f"without saving this epoch; its last checkpoint is as the last good epoch "
                f"left it. Try a smaller --lr")
        name = loss_terms(model)[0]
        for (m, _, recon, *_), (first, reconstruction) in zip(pending, values):
            first = float(first)
            reconstruction = 0.0 if recon is None else float(reconstruction)
            totals["loss"] += m * (first + model.config.recon_weight * reconstruction)
            totals[name] += m * first
            if "reconstruction_loss" in totals:
                totals["reconstruction_loss"] += m * reconstruction
        pending.clear()
    return added


# --- the run ---------------------------------------------------------------------------------

@dataclass
class TrainResult:
    """Where a run stands: the model and optimizer, and what this call did."""
    model: CapsNet                                 # or a cnn.BaselineCNN
    optimizer: Adam
    rng: np.random.Generator
    epoch: int
    step: int
    out_dir: Path
    best_accuracy: float = None                    # best.npz: validation (else test) accuracy
    history: list = field(default_factory=list)   # the metrics dicts of this call's epochs
    average: ParameterAverage = None               # the parameters' moving average, if kept
    resumed_metrics: dict = None                   # the checkpoint's metrics, when resumed
    lock: object = None                            # rank 0's runfolder.RunLock while it trains
    keep_epochs: bool = False                      # also write epoch-NNN.npz each epoch

    @property
    def last_checkpoint(self):
        return self.out_dir / LAST

    @property
    def best_checkpoint(self):
        return self.out_dir / BEST


@distributed.guarded          # with comm=: a fault in one rank ends every rank
def train(config=None, *, model=None, epochs, out_dir, batch_size=100, lr=1e-3, lr_decay=0.96,
          decay_steps=2000, seed=0, dtype="float32", device=None, data=None, dataset="mnist",
          data_root=None, limit_train=None, limit_test=None, val_size=0, shift=2, crop=None,
          flip=None, average=0.999, resume=None, overwrite=False, progress=True, log=print,
          comm=None, keep_epochs=False):
    """Train a CapsNet, or the paper's CNN baseline, until ``epochs`` epochs are done in
    all; returns a TrainResult.

    config: a CapsNetConfig or a CNNConfig (None: the checkpoint's with ``resume``, else
    the network ``model`` names fitted to the data by config_for_data). model: a name of
    NETWORKS, "capsnet" (None: the default), "cnn" (CNNConfig.paper()) or "cnn-pooled"
    (CNNConfig.pooled()); given with a config or a checkpoint, it must be their kind of
    network. data: a data.Dataset (load_dataset, folder.load_image_folder) or (x_train,
    y_train, x_test, y_test) with uint8 images, else ``dataset`` is loaded (load_data)
    from ``data_root``. ``crop``: train on random crop x crop squares and test on the
    centre one; ``flip``: mirror half the training images at random; None takes each from
    the data's info (smallNORB's crop), 0 and False turn them off. The class names go into
    the checkpoints. Each epoch appends a line to ``out_dir/metrics.jsonl`` and saves
    ``out_dir/last.npz``, and ``out_dir/best.npz`` when the validation accuracy (test
    accuracy if val_size is 0) is the best so far, the average's when there is one;
    ``keep_epochs`` keeps every epoch's checkpoint too, as ``out_dir/epoch-NNN.npz`` (to
    pick a network at a given validation accuracy afterwards). ``resume``: a checkpoint path to continue from; the settings that change the
    computation, and the test set (limit_test), must be the ones it was trained with.
    ``average``: the decay of a moving average of the parameters (optim.ParameterAverage)
    kept beside training and evaluated too, as "avg_test_accuracy" and so on; None keeps
    none. Training itself is the same with or without it; the average is the model the run
    delivers (Checkpoint.model_with). A run resumed from a checkpoint without an average of
    this decay starts one there.

    ``out_dir`` belongs to this run (runfolder.claim): a fresh run into a folder that holds
    one is refused unless ``overwrite`` (which deletes that run's checkpoints and metrics),
    and a second process training there at the same time is refused. Every setting is
    checked before the data loads, and whether a batch fits in memory before the first
    step; a loss that becomes NaN or infinite stops the run with a ValueError, the last
    checkpoint left as the last good epoch wrote it.

    ``comm``: a distributed.Communicator (distributed.from_environment() under mpiexec or
    srun): data-parallel training, each rank computing its share of every batch of
    ``batch_size`` images, and the same model as one process to float32 rounding. Rank 0
    alone logs, holds the folder's lock and writes; every rank reads the data and the
    checkpoint it resumes from. A run may go on with another number of ranks.
    """
    if comm is not None and not comm.is_root:
        progress, log = False, lambda line: None
    if model is not None and model not in NETWORKS:
        raise ValueError(f"model must be one of {', '.join(NETWORKS)}, got {model!r}")
    kind = None if model is None else model_kind(NETWORKS[model]())
    if config is not None and kind not in (None, model_kind(config)):
        raise ValueError(f"model={model!r} builds a {kind} network, but the config "
                         f"describes a {model_kind(config)} ({type(config).__name__})")
    check_before_loading(epochs=epochs, out_dir=out_dir, resume=resume, overwrite=overwrite,
                         batch_size=batch_size, lr=lr, lr_decay=lr_decay,
                         decay_steps=decay_steps, seed=seed, limit_train=limit_train,
                         limit_test=limit_test, val_size=val_size, shift=shift, average=average)
    device = backend.resolve_device(device)     # a missing GPU is said before the data loads
    if comm is not None:
        comm.use_device(device)                 # this rank's GPU, and NCCL
        if data is None:                        # rank 0 downloads what is missing, alone
            _on_root(comm, lambda: load_data(dataset, data_root) and None, "rank 0's download",
                     seconds=3600)
    data = as_dataset(load_data(dataset, data_root) if data is None else data)
    info = data.info or {}
    crop = info.get("crop") if crop is None else (crop or None)
    flip = bool(info.get("flip", False)) if flip is None else bool(flip)
    pairs = pairs_per_digit(data)
    if pairs and shift:
        raise ValueError("MultiMNIST's pairs are shifted by up to 4 pixels as they are made: "
                         "give shift=0 (--shift 0)")
    if pairs and flip:
        raise ValueError("MultiMNIST's digits are not mirrored: give no --flip")
    train_set, val_set, test_set = prepare_data(data, dataset, data_root, limit_train,
                                                limit_test, val_size, seed, crop)
    settings = {"batch_size": batch_size, "lr": lr, "lr_decay": lr_decay,
                "decay_steps": decay_steps, "seed": seed, "shift": shift, "dtype": str(dtype),
                "dataset": data.name or dataset, "val_size": val_size,
                "limit_train": limit_train, "n_train": len(train_set),
                "limit_test": limit_test, "n_test": len(test_set), "average": average,
                "crop": crop, "flip": flip, "classes": list(data.classes) or None,
                "data_info": info, "pairs_per_digit": pairs}
    if comm is not None:
        settings["ranks"] = comm.size
    if config is None and resume is None:
        config = config_for_data(data, crop, model or "capsnet")
    run = _start(config, settings, device, Path(out_dir), resume, log, epochs, kind)
    run.keep_epochs = bool(keep_epochs)
    settings["model"] = model_kind(run.model)      # into the checkpoints, for evaluate & co.
    _check_classes(data, run.model.config)
    for split, name in ((train_set, "training"), (val_set, "validation"), (test_set, "test")):
        if split is not None:
            is_train = split is train_set
            _check_shape(split, run.model.config, name, crop if is_train else None,
                         multimnist.MAX_SHIFT if pairs and is_train else 0)
    if run.epoch >= epochs:
        return run                       # nothing to do: nothing claimed, nothing changed
    run.model.check_batch_fits(batch_size, training=True)
    run.model.check_batch_fits(EVAL_BATCH, training=False, option=None)   # no option sets it
    fresh = resume is None or Path(resume).resolve().parent != run.out_dir.resolve()
    locks = []            # rank 0's
    _on_root(comm, lambda: locks.append(runfolder.claim(
        run.out_dir, fresh=fresh, overwrite=overwrite, checkpoint_bytes=_checkpoint_bytes(run),
        log=log)), "rank 0's claim of the run folder")
    run.lock = locks[0] if locks else None
    best_was_there = run.best_checkpoint.exists()
    try:
        if resume is not None:
            _on_root(comm, lambda: (_truncate_metrics(run.out_dir / METRICS_FILE, run.epoch, log),
                                    _restore_best(run, settings, _score_key(run, val_set), log)),
                     "rank 0's restore of the run folder")
        _train_epochs(run, epochs, settings, train_set, val_set, test_set, progress, log,
                      comm)
    except BaseException:
        # stopped (Ctrl-C) before a first epoch of a resume into a new folder: the best.npz
        # written there would refuse the same command ("already holds a run"), so it goes
        if (resume is not None and fresh and not best_was_there
                and not run.last_checkpoint.exists() and (comm is None or comm.is_root)):
            run.best_checkpoint.unlink(missing_ok=True)
        raise
    finally:
        for lock in locks:
            lock.release()
        run.lock = None
    return run


def _on_root(comm, fn, what, seconds=None):
    """fn() here without a communicator; else on rank 0 alone, and its result (or its
    error) on every rank (distributed.Communicator.on_root)."""
    return fn() if comm is None else comm.on_root(fn, what, seconds)


def check_before_loading(*, epochs, out_dir, resume, overwrite, **settings):
    """What train checks before any data loads: every setting, that ``out_dir`` holds
    no other run (unless ``overwrite``) when the run is not resumed, and that the
    checkpoint it resumes from is a file when it is."""
    _check_settings(epochs=epochs, **settings)
    if epochs == 0 and resume is None:
        raise ValueError("epochs=0 trains nothing: give 1 or more (--epochs N), counting the "
                         "epochs of a resumed run too")
    if resume is None:
        runfolder.check_room(out_dir, overwrite)      # another run there: said at once
    else:
        regular_file(resume, "checkpoint file")


def _check_classes(data, config):
    if data.classes and len(data.classes) != config.num_classes:
        raise ValueError(f"the data has {len(data.classes)} classes but the network "
                         f"{config.num_classes} ({type(config).__name__}.num_classes)")


def _train_epochs(run, epochs, settings, train_set, val_set, test_set, progress, log,
                  comm=None):
    """The epochs from run.epoch + 1 to ``epochs``: train, evaluate, save (rank 0 alone,
    with a communicator ``comm``)."""
    batch_size, lr, lr_decay, decay_steps, shift = (settings[k] for k in (
        "batch_size", "lr", "lr_decay", "decay_steps", "shift"))
    while run.epoch < epochs:
        run.epoch += 1
        run.step, stats = train_epoch(run.model, run.optimizer, train_set, run.rng, run.step,
                                      batch_size=batch_size, lr=lr, lr_decay=lr_decay,
                                      decay_steps=decay_steps, shift=shift,
                                      crop=settings["crop"], flip=settings["flip"],
                                      pairs_per_digit=settings["pairs_per_digit"],
                                      average=run.average,
                                      progress=progress, desc=f"epoch {run.epoch}/{epochs}",
                                      log=log, comm=comm)
        seconds, images_per_second = stats.pop("seconds"), stats.pop("images_per_second")
        metrics = {"epoch": run.epoch, "step": run.step,
                   "lr": learning_rate(run.step - 1, lr, lr_decay, decay_steps),  # last update's
                   **{f"train_{k}": v for k, v in stats.items()},
                   "epoch_seconds": seconds, "images_per_second": images_per_second}
        if run.model.device == "gpu":     # float32 products strict or through TF32
            metrics["tf32"] = backend.tf32_enabled()
        if comm is not None:              # the ranks, and their time in the all-reduce
            metrics.update(ranks=comm.size, allreduce_seconds=comm.reduce_seconds)
            comm.reduce_seconds = 0.0
            comm.check_in_step(run, log)
        start = time.perf_counter()
        for prefix, split in (("val", val_set), ("test", test_set)):
            if split is not None:
                scores = evaluate(run.model, split.images, split.labels, EVAL_BATCH,
                                  progress=progress, desc=f"{prefix} set", log=log,
                                  targets=split.targets, comm=comm)
                metrics.update({f"{prefix}_{k}": v for k, v in scores.items()})
                if run.average is not None:
                    trained, run.model.params = run.model.params, run.average.params
                    try:
                        scores = evaluate(run.model, split.images, split.labels, EVAL_BATCH,
                                          progress=progress, desc=f"{prefix} set, average",
                                          log=log, targets=split.targets, comm=comm)
                    finally:
                        run.model.params = trained
                    metrics.update({f"avg_{prefix}_{k}": v for k, v in scores.items()})
        metrics["eval_seconds"] = time.perf_counter() - start
        score = metrics[_score_key(run, val_set)]
        is_best = _on_root(comm, lambda: _save(run, metrics, settings, score), "rank 0's save")
        log(_epoch_line(metrics, epochs, is_best))
        run.history.append(metrics)


EVAL_BATCH = 256      # images per forward pass when a run evaluates


def _check_settings(**s):
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
    integer("shift", 0)
    integer("val_size", 0)
    integer("limit_train", 1, none_ok=True)
    integer("limit_test", 1, none_ok=True)
    number("lr", lambda x: x > 0, "> 0 (such as 1e-3)")
    number("lr_decay", lambda x: 0 < x <= 1, "in (0, 1] (such as 0.96)")
    if s["average"] is not None:
        number("average", lambda x: 0 < x < 1, "in (0, 1) (such as 0.999), or None")


def _checkpoint_bytes(run):
    """The size of one checkpoint: parameters, Adam's two moments, the average."""
    copies = 3 + (run.average is not None)
    return copies * run.model.num_params() * run.model.dtype.itemsize


def _start(config, settings, device, out_dir, resume, log, epochs, kind=None):
    """A fresh run (initial weights, dropout masks and generator from the seed), or one
    resumed (a CNN's dropout going on from the checkpoint's step: load_checkpoint). Nothing
    in ``out_dir`` changes when a resumed run has no epochs left to train. ``kind``: the
    kind of network asked for ("capsnet", "cnn"; None: any), checked against the
    checkpoint's."""
    decay = settings["average"]
    if resume is None:
        if config is None:
            raise ValueError("train needs a CapsNetConfig or CNNConfig (or resume=CHECKPOINT)")
        check_network_fits(config, settings["dtype"], device)
        model = build_model(config, seed=settings["seed"], dtype=settings["dtype"],
                            device=device)
        return TrainResult(model, Adam(lr=settings["lr"]),
                           np.random.default_rng(settings["seed"]), 0, 0, out_dir,
                           average=None if decay is None else ParameterAverage(model.params, decay))
    ckpt = load_checkpoint(resume, device=device)
    _check_resume(ckpt, config, settings, kind)
    log(f"resumed from {resume} at epoch {ckpt.epoch}, step {ckpt.step}")
    saved, ranks = ckpt.extra.get("settings", {}).get("ranks", 1), settings.get("ranks", 1)
    if saved != ranks:      # the state carries over whole; only the batches split otherwise
        log(f"note: saved by {saved} rank(s), going on with {ranks}: the same run to float32 "
            f"rounding (bit for bit only with {saved})")
    if ckpt.epoch < epochs:
        _check_nothing_overwritten(out_dir, resume, ckpt.epoch)
    average = ckpt.average
    if decay is None:
        average = None
    elif average is None or average.decay != decay:
        log(f"the checkpoint keeps no average of the parameters with decay {decay}: "
            f"starting one here")
        average = ParameterAverage(ckpt.model.params, decay)
    # best_accuracy scored the checkpoint's average (or its trained weights without one):
    # it compares only if this run goes on with the same average.
    best = ckpt.extra.get("best_accuracy") if average is ckpt.average else None
    return TrainResult(ckpt.model, ckpt.optimizer, ckpt.rng(), ckpt.epoch, ckpt.step, out_dir,
                       best_accuracy=best, average=average, resumed_metrics=ckpt.metrics)


def _score_key(run, val_set):
    """The metric best.npz goes by: the validation accuracy (the test accuracy without a
    validation set), the average's when the run keeps one."""
    prefix = "avg_" if run.average is not None else ""
    return f"{prefix}{'val' if val_set is not None else 'test'}_accuracy"


def _restore_best(run, settings, key, log):
    """Write best.npz from the resumed epoch where a stop left it behind: missing (stopped
    while it was written), or holding an earlier epoch when the resumed one is the best."""
    best, score = run.best_checkpoint, (run.resumed_metrics or {}).get(key)
    if run.best_accuracy is None or score is None:    # a new average: nothing compares
        if not best.is_file():
            run.best_accuracy = None                  # the next epoch writes it
        return
    there = best.is_file()
    if there and (score < run.best_accuracy or _holds_as_good(best, run.epoch, key, score)):
        return
    run.best_accuracy = score
    _write_checkpoints(run, [best], run.resumed_metrics, settings)
    log(f"wrote {best} from epoch {run.epoch} ({key} {score:.4f}), the best epoch this run "
        f"has: it was {'behind' if there else 'missing'} after an interrupted save")


def _holds_as_good(best, epoch, key, score):
    """Whether ``best`` holds ``epoch``, or an earlier epoch that scored as well: a tie is
    no new best (_save), so the earlier epoch stays."""
    try:
        meta = read_meta(best)
    except ValueError:
        return False
    return meta["epoch"] == epoch or (meta.get("metrics") or {}).get(key, -1) >= score


def _epoch_of(path):
    try:
        return read_epoch(path)
    except ValueError:
        return None


def _save(run, metrics, settings, score):
    """The metrics line, last.npz, and best.npz when ``score`` beats the best so far.
    Returns whether it did. (A crash before last.npz is written leaves a metrics line that
    a resume from the previous checkpoint drops, so no epoch is lost or logged twice.)"""
    if run.lock is not None:
        run.lock.check_held()        # the folder claimed, not one swapped in since
    _append_line(run, run.out_dir / METRICS_FILE, json.dumps(metrics))
    is_best = run.best_accuracy is None or score > run.best_accuracy
    if is_best:
        run.best_accuracy = score
    paths = [run.last_checkpoint] + ([run.best_checkpoint] if is_best else [])
    if run.keep_epochs:
        paths.append(run.out_dir / runfolder.epoch_file(run.epoch))
    _write_checkpoints(run, paths, metrics, settings)
    return is_best


def _append_line(run, path, line):
    try:
        with runfolder.open_run_file(path, "ab") as f:     # never through a link
            f.write((line + "\n").encode())
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise DiskFullError(f"could not add epoch {run.epoch}'s line to {path}: the disk is "
                            f"full, and no checkpoint was touched; {_how_to_go_on(run)}") from e


def _write_checkpoints(run, paths, metrics, settings):
    """The run as it stands into each of ``paths``; a full disk says how to go on."""
    state = dict(epoch=run.epoch, step=run.step, rng_state=run.rng.bit_generator.state,
                 metrics=metrics, extra={"settings": settings, "best_accuracy": run.best_accuracy},
                 average=run.average)
    try:
        for path in paths:
            save_checkpoint(path, run.model, run.optimizer, **state)
    except DiskFullError as e:
        raise DiskFullError(f"{e}; {_how_to_go_on(run)}") from e


def _how_to_go_on(run):
    """After a failed write: the checkpoint the run can go on from, or that there is none."""
    last = run.last_checkpoint
    done = _epoch_of(last) if last.is_file() else None
    if done is None:
        return "no epoch was saved: free some space, then start the run again"
    return (f"free some space, then go on from epoch {done} with --resume {last} and the "
            f"same options")


def _epoch_line(m, epochs, is_best):
    """One line an epoch. For MultiMNIST pairs the accuracy counts a pair right when both its
    digits are the two longest capsules ("both right"), and says how many have one or more."""
    pairs = "test_one_or_more" in m
    acc = "both right" if pairs else "acc"
    line = (f"epoch {m['epoch']}/{epochs}: train loss {m['train_loss']:.4f} "
            f"{acc} {m['train_accuracy']:.4f} | ")
    if "val_accuracy" in m:
        line += f"val {acc} {m['val_accuracy']:.4f} | "
    line += f"test {acc} {m['test_accuracy']:.4f} "
    if pairs:
        line += f"one or more {m['test_one_or_more']:.4f} "
    if "test_margin_loss" in m:           # a CapsNet's two terms
        line += (f"margin {m['test_margin_loss']:.4f} "
                 f"recon {m['test_reconstruction_loss'] or 0:.2f} | ")
    else:                                 # the CNN's cross-entropy: its whole loss
        line += f"loss {m['test_loss']:.4f} | "
    if "avg_test_accuracy" in m:
        line += f"average: test {acc} {m['avg_test_accuracy']:.4f} | "
    line += (f"lr {m['lr']:.2e} | "
             f"{m['epoch_seconds']:.1f} s, {m['images_per_second'] or 0:.0f} img/s")
    return line + (" (best)" if is_best else "")


def _check_resume(ckpt, config, settings, kind=None):
    """A resumed run must compute what the original would have: same network, same settings."""
    have = model_kind(ckpt.model)
    for asked in (kind, None if config is None else model_kind(config)):
        if asked not in (None, have):
            raise ValueError(f"{ckpt.path} holds a {have} network, not a {asked}; to resume "
                             f"it, train a {have} (minicaps train --model {have}, and the "
                             f"options of the original run)")
    problems = []
    if config is not None:
        a, b = config.to_dict(), ckpt.model.config.to_dict()
        problems += [f"{k}={a[k]!r} (checkpoint {b[k]!r})" for k in a if a[k] != b[k]]
    saved = ckpt.extra.get("settings")
    if not saved:
        raise ValueError(f"{ckpt.path} keeps no training settings (a weights file, or a "
                         f"damaged checkpoint): a run cannot go on from it, since nothing "
                         f"says how it trained; start a new run, or resume from the run's "
                         f"own last.npz")
    _check_same_split(ckpt, saved.get("data_info") or {}, settings.get("data_info") or {})
    problems += [f"{k}={settings[k]!r} (checkpoint {saved[k]!r})"
                 for k in RESUME_SETTINGS if k in saved and saved[k] != settings[k]]
    if problems:
        raise ValueError(f"{ckpt.path} was trained with other settings; to resume, pass the "
                         f"same ones: " + ", ".join(problems))


def _check_same_split(ckpt, then, now):
    """An image folder must split as it did when the run began (the same split folders,
    the same seeded test share): otherwise going on would train on pictures it tested on."""
    for key in ("split", "test_files_sha256"):
        if then.get(key) is not None and now.get(key) != then[key]:
            raise ValueError(
                f"{ckpt.path} began on {then.get('folder', 'its image folder')}, which has "
                f"changed since (files added, removed or renamed, or other split folders): "
                f"its test images are not those of the run any more, and going on would "
                f"train on pictures it was tested on. Resume on the folder as it was, or "
                f"start a new run")


def _check_nothing_overwritten(out_dir, resume, epoch):
    """Refuse to continue from epoch ``epoch`` in a folder whose last.npz is further on (a
    run resumed from its own best.npz, say): its next epoch would replace that checkpoint
    and the metrics of the later epochs."""
    last = out_dir / LAST
    if not last.is_file() or last.resolve() == Path(resume).resolve():
        return
    try:
        done = read_epoch(last)
    except ValueError:        # unreadable: not a run this one could lose
        return
    if done > epoch:
        raise ValueError(
            f"{out_dir} holds a run trained to epoch {done} ({last}); going on from epoch "
            f"{epoch} ({resume}) there would overwrite it and the metrics of epochs "
            f"{epoch + 1}-{done}. To branch off from {resume}, give another folder "
            f"(--out NEWDIR); to go on with the run, resume from {last}")


def _truncate_metrics(path, epoch, log=print):
    """Keep the metrics lines of epochs 1..``epoch``, in order: lines of later epochs
    (written before a crash, not checkpointed) go, and so do torn, repeated or out-of-order
    ones, with a note; a history shorter than ``epoch`` epochs is said too."""
    try:
        f = runfolder.open_run_file(path, "r+b")       # never through a link, nor waiting
    except FileNotFoundError:
        return
    with f:
        text = f.read(runfolder.MAX_METRICS_BYTES + 1)
        if len(text) > runfolder.MAX_METRICS_BYTES:
            raise runfolder.RunFolderError(
                f"{path} holds more than {runfolder.MAX_METRICS_BYTES >> 20} MiB, more than "
                f"a run's metrics: move it out of the folder, or give another --out")
        kept, dropped = [], 0
        for line in text.splitlines():
            try:
                number = json.loads(line)["epoch"]
            except (ValueError, KeyError, TypeError, RecursionError):   # torn by the crash
                dropped += bool(line.strip())
                continue
            if number == len(kept) + 1 and number <= epoch:
                kept.append(line)
            elif not (isinstance(number, int) and number > epoch):   # not just after the crash
                dropped += 1
        if dropped:
            log(f"dropped {dropped} line{'s' * (dropped != 1)} of {path} that were not the "
                f"next epoch's (repeated, out of order or torn)")
        if len(kept) < epoch:
            log(f"{path} holds the metrics of {len(kept)} epochs of the checkpoint's {epoch}: "
                f"the history of the epochs after {len(kept)} is missing there")
        f.seek(0)
        f.truncate()
        f.write(b"".join(line + b"\n" for line in kept))
