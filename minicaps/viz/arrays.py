"""The numbers behind each picture, as NumPy arrays: what a test checks without matplotlib.

Images x are floats in [0, 1] shaped (N, H, W, C) (or (H, W, C) for one image), as the
model takes them; every function here returns NumPy arrays, whatever the model's device.
"""
import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np

from minicaps import backend
from minicaps.ops import one_hot
from minicaps.training.progress import Progress

NUDGES = np.round(np.arange(-0.25, 0.2501, 0.05), 2) + 0.0   # the paper's fig. 4: 11 steps


# --- what the capsules hold ------------------------------------------------------------------

def as_batch(model, x):
    """x (N, H, W, C), (H, W, C), or without C when it is 1, as a batch on the model's
    device in its dtype."""
    H, W, C = model.config.input_shape
    x = x if hasattr(x, "shape") else np.asarray(x)
    if tuple(x.shape) == (H, W, C) or (C == 1 and tuple(x.shape) == (H, W)):
        x = x[None]
    if x.ndim == 3 and C == 1:
        x = x[..., None]
    if x.ndim != 4 or tuple(x.shape[1:]) != (H, W, C) or x.dtype.kind != "f":
        raise ValueError(f"x must be float images in [0, 1] shaped (N, {H}, {W}, {C}), "
                         f"got {x.dtype} {tuple(x.shape)}")
    return backend.to_device(x, model.device).astype(model.dtype, copy=False)


def as_images(flat, model):
    """(N, H*W*C) -> NumPy (N, H, W) for one channel, (N, H, W, C) otherwise."""
    H, W, C = model.config.input_shape
    flat = backend.to_numpy(flat)
    return flat.reshape((-1, H, W) if C == 1 else (-1, H, W, C))


def decode(model, v, mask):
    """The decoder on capsules v (N, J, D) masked by mask (N, J): the reconstruction
    (N, H*W*C) on the model's device (CapsNet.decode without its caches)."""
    return model.decode(v, mask)[0]


def reconstructions(model, x, batch_size=256):
    """(predicted classes (N,), reconstructions (N, H, W), or (N, H, W, C) when C > 1),
    as NumPy. The decoder sees the longest capsule, as at test time."""
    x = as_batch(model, x)
    preds, recons = [], []
    with model.fixed_weights(x.shape[0]):
        for k in range(0, x.shape[0], batch_size):
            out, _ = model.forward(x[k:k + batch_size])
            preds.append(backend.to_numpy(out["lengths"]).argmax(axis=1))
            recons.append(as_images(out["reconstruction"], model))
    return np.concatenate(preds), np.concatenate(recons)


def perturbation_grid(model, x, label=None, nudges=NUDGES):
    """Fig. 4 of the paper for one image x (H, W, C): (D, len(nudges), H, W) decoded images.

    Row d is the winning capsule (``label``, else the predicted class) with its
    dimension d moved by each nudge; the rest of the capsules are masked out, as in the
    decoder. The zero nudge reproduces the plain reconstruction. Returns (grid, label).
    """
    x = as_batch(model, x)
    if x.shape[0] != 1:
        raise ValueError(f"perturbation_grid takes one image, got {x.shape[0]}")
    xp = model.xp
    out, _ = model.forward(x, decode=False)
    v = out["v"]                                               # (1, J, D)
    if label is None:
        label = int(backend.to_numpy(out["lengths"])[0].argmax())
    J, D = v.shape[1:]
    S = len(nudges)
    pose = xp.broadcast_to(v, (D, S, J, D)).copy()            # every (dimension, nudge) pair
    eye = xp.eye(D, dtype=v.dtype)
    pose[:, :, label, :] += xp.asarray(np.asarray(nudges), dtype=v.dtype)[None, :, None] * eye[:, None, :]
    mask = one_hot(xp.full(D * S, label), J, v.dtype)
    recon = decode(model, pose.reshape(D * S, J, D), mask)
    images = as_images(recon, model)
    return images.reshape((D, S) + images.shape[1:]), label


def primary_capsules(model, x):
    """conv1 -> ReLU -> primary conv -> squash: u (N, I, D_in) on the device."""
    return model.primary_capsules(as_batch(model, x))[0]


def routing_couplings(model, x, iters=None, label=None):
    """The coupling coefficients of one image used in each routing iteration.

    The coupling used in iteration t: t = 1 is the uniform softmax(0) = 1/J, later ones
    have been sharpened by the agreement of the iterations before. Returns a dict of NumPy
    arrays:
        coupling  (T, I, J)             c_ij used in each iteration (sums to 1 over j)
        grid      (T, rows, cols, maps) c_i,label on the primary capsule grid
                                        (capsule i = (row*cols + col)*maps + map)
        per_map   (T, maps)             grid summed over positions, per capsule map
        per_class (T, J)                sum_i c_ij: how much of the routing each class gets
        label, lengths (J,)             the class shown (default: predicted) and |v_j|

    They are the model's forward pass's, out["couplings"] (forward(keep_couplings=True)).
    ``iters`` other than the config's routing_iters routes the same weights that many times.
    """
    cfg = model.config
    iters = cfg.routing_iters if iters is None else int(iters)
    if iters != cfg.routing_iters:
        model = model.with_params(model.params, replace(cfg, routing_iters=iters))
    x = as_batch(model, x)
    if x.shape[0] != 1:
        raise ValueError(f"routing_couplings takes one image, got {x.shape[0]}")
    out, _ = model.forward(x, decode=False, keep_couplings=True)
    coupling = np.stack([backend.to_numpy(c)[0] for c in out["couplings"]])
    lengths = backend.to_numpy(out["lengths"])[0]
    label = int(lengths.argmax()) if label is None else int(label)
    rows, cols = cfg.primary_grid
    grid = coupling[:, :, label].reshape(iters, rows, cols, cfg.primary_maps)
    return {"coupling": coupling, "grid": grid, "per_map": grid.sum(axis=(1, 2)),
            "per_class": coupling.sum(axis=1), "label": label, "lengths": lengths}


def lengths_of_all(model, x, progress=False, desc="test set", log=print, chunk=512):
    """model.predict_lengths(x) a chunk of images at a time, with a progress bar (or lines)
    over them when ``progress``: the whole test set takes minutes on a CPU."""
    bar = Progress(len(x), desc, enabled=progress, log=log)
    parts = []
    for start in range(0, len(x), chunk):
        parts.append(model.predict_lengths(x[start:start + chunk]))
        bar.update(len(parts[-1]))
        if bar.lines and bar.wants_stats():
            bar.show()
    bar.close()
    return np.concatenate(parts)


# --- MultiMNIST pairs (the paper's fig. 5) ---------------------------------------------------

def pair_reconstructions(model, x, batch_size=256):
    """MultiMNIST (the paper's fig. 5): (the two longest capsules' classes (N, 2), longest
    first, and each one's reconstruction (N, 2, H, W)) as NumPy: the decoder sees one
    capsule at a time, so each reconstruction shows what that capsule took from the pair."""
    x = as_batch(model, x)
    eye = model.xp.eye(model.config.num_classes, dtype=model.dtype)
    preds, recons = [], []
    with model.fixed_weights(x.shape[0]):
        for k in range(0, x.shape[0], batch_size):
            out, _ = model.forward(x[k:k + batch_size], decode=False)
            top2 = model.xp.argsort(-out["lengths"], axis=1)[:, :2]
            pictures = [as_images(decode(model, out["v"], eye[top2[:, i]]), model)
                        for i in range(2)]
            preds.append(backend.to_numpy(top2))
            recons.append(np.stack(pictures, axis=1))
    return np.concatenate(preds), np.concatenate(recons)


def wrong_pairs(lengths, labels):
    """The indices of the pairs whose two labels (N, 2) are not the two longest capsules."""
    top2 = np.argsort(-np.asarray(lengths), axis=1)[:, :2]
    return np.flatnonzero((np.sort(top2, axis=1) != np.sort(labels, axis=1)).any(axis=1))


def overlay(image, red, green):
    """The pair in gray, one digit's reconstruction in red and the other's in green over
    it (where both are, yellow): (H, W) in [0, 1] each -> (H, W, 3)."""
    base = 0.35 * np.clip(image, 0, 1)
    rgb = np.stack([base, base, base], axis=-1)
    rgb[..., 0] = np.maximum(rgb[..., 0], np.clip(red, 0, 1))
    rgb[..., 1] = np.maximum(rgb[..., 1], np.clip(green, 0, 1))
    return rgb


# --- predictions counted ---------------------------------------------------------------------

def confusion_matrix(y_true, y_pred, num_classes=None):
    """counts[t, p] = how many images of class t were predicted as p."""
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    if y_true.shape != y_pred.shape or y_true.ndim != 1:
        raise ValueError(f"y_true and y_pred must be two (N,) arrays, got {y_true.shape}, {y_pred.shape}")
    K = num_classes or int(max(y_true.max(initial=0), y_pred.max(initial=0))) + 1
    if y_true.size and (min(y_true.min(), y_pred.min()) < 0 or max(y_true.max(), y_pred.max()) >= K):
        raise ValueError(f"labels must be in 0..{K - 1}")
    return np.bincount(y_true * K + y_pred, minlength=K * K).reshape(K, K)


def agreement(labels, first, second):
    """Where two networks' predictions (N,) are right on the same test images: index arrays
    "both", "only_first", "only_second", "neither" (each in increasing order)."""
    labels, first, second = (np.asarray(a).reshape(-1) for a in (labels, first, second))
    if not len(labels) == len(first) == len(second):
        raise ValueError(f"labels and both predictions need one length, got {len(labels)}, "
                         f"{len(first)} and {len(second)}")
    a, b = first == labels, second == labels
    return {"both": np.flatnonzero(a & b), "only_first": np.flatnonzero(a & ~b),
            "only_second": np.flatnonzero(~a & b), "neither": np.flatnonzero(~a & ~b)}


# --- a run's metrics.jsonl -------------------------------------------------------------------

def read_metrics(path, warn=None):
    """The lines of a run's metrics.jsonl (one dict per epoch), in epoch order.

    A line that is not an epoch's record (metrics_line_problem) is skipped, as resume
    drops it (train._truncate_metrics: a line torn by a crash), and ``warn`` is told once
    which lines were, naming the file; no good line at all is a ValueError saying why the
    first was refused."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no metrics file (train writes metrics.jsonl beside "
                                "its checkpoints)")
    from minicaps.training.runfolder import MAX_METRICS_BYTES
    if path.stat().st_size > MAX_METRICS_BYTES:
        raise ValueError(f"{path} holds {path.stat().st_size >> 20} MiB, more than the "
                         f"{MAX_METRICS_BYTES >> 20} MiB a run's metrics take: not a run's "
                         f"metrics.jsonl")
    rows, skipped = [], []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                row = json.loads(line)
            except (ValueError, RecursionError) as e:     # RecursionError: nested too deep
                row, problem = None, f"not JSON ({e})"
            else:
                problem = metrics_line_problem(row)
            if problem:
                skipped.append(f"line {n}: {problem}")
            else:
                rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no epochs recorded" + (
            f" that can be read ({skipped[0]})" if skipped else " yet"))
    if skipped and warn is not None:
        warn(f"{path}, {'; '.join(skipped[:5])}{'; ...' if len(skipped) > 5 else ''}: "
             f"skipped, not an epoch's record (as resuming drops it)")
    return sorted(rows, key=lambda m: m["epoch"])


def metrics_line_problem(row):
    """Why a metrics.jsonl line (parsed) is not an epoch's record, or None when it is: a
    JSON object with "epoch" an integer >= 1 and every other value a finite number, true
    or false (tf32), or null."""
    if not isinstance(row, dict):
        return f"{type(row).__name__}, not a JSON object"
    epoch = row.get("epoch")
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 1:
        return f"epoch is {str(epoch)[:40]!r}, expected an integer >= 1"
    for key, value in row.items():
        if value is None or isinstance(value, bool):
            continue
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            return f"{str(key)[:40]} is {str(value)[:40]!r}, expected a number or null"
    return None


def images_seen(metrics):
    """The training images (or pairs) seen by the end of each epoch: the running sum of
    each epoch's images per second times its seconds (its size); None when a line lacks
    them."""
    try:
        sizes = [round(m["images_per_second"] * m["epoch_seconds"]) for m in metrics]
    except (KeyError, TypeError):
        return None
    return list(np.cumsum(sizes))


# --- laying pictures out ---------------------------------------------------------------------

def mosaic(images, pad=1, value=1.0):
    """(R, C, h, w[, ch]) -> one (R*(h+pad)-pad, C*(w+pad)-pad[, ch]) picture, cells apart."""
    images = np.asarray(images, dtype=float)
    R, C, h, w = images.shape[:4]
    out = np.full((R * (h + pad) - pad, C * (w + pad) - pad) + images.shape[4:], value)
    for r in range(R):
        for c in range(C):
            out[r * (h + pad):r * (h + pad) + h, c * (w + pad):c * (w + pad) + w] = images[r, c]
    return out
