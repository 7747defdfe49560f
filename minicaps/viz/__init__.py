"""See what the capsules learned: the data behind each picture, and the pictures.

Each plot has a data function that returns NumPy arrays (tested as numbers) and a
``plot_*`` function that draws them into a PNG with matplotlib, which is only needed for
the drawing (``pip install "minicaps[viz]"``):

    reconstructions(model, x)          -> predictions, reconstructed images    (decoder, fig. 3)
    perturbation_grid(model, x)        -> (D, 11, H, W) decoded nudged poses   (fig. 4)
    routing_couplings(model, x)        -> c_ij used in each routing iteration  (Procedure 1)
    capsule lengths                    -> model.predict_lengths(x)             (eq. 4's input)
    read_metrics(path)                 -> the epochs of a run's metrics.jsonl
    confusion_matrix(y_true, y_pred)   -> (K, K) counts

Images x are floats in [0, 1] shaped (N, H, W, C) (or (H, W, C) for one image), as the
model takes them. Plots are drawn on a matplotlib ``Figure`` without pyplot, so nothing
touches a display or the global backend; every PNG has a fixed size in inches (given in
each docstring) times ``dpi``.

A checkpoint holds two sets of weights, the trained parameters and their moving average
(checkpoint.model_with); ``weights=`` ("trained" or "average") puts the one drawn in every
title. A network that has learned little draws pictures of nothing (couplings all 1/J, a
perturbation grid of one image repeated); routing_warning, perturbation_warning and
accuracy_warning say so, in red in the picture and to render's ``warn``. Their thresholds
and the measurements behind them are in "is there anything to see?" below.
"""
import json
import math
from pathlib import Path

import numpy as np

from minicaps import backend
from minicaps.training.progress import Progress
from minicaps.ops import predictions_forward, routing_forward, length_forward, one_hot

VIZ_EXTRA = 'pip install "minicaps[viz]"'
NUDGES = np.round(np.arange(-0.25, 0.2501, 0.05), 2) + 0.0   # the paper's fig. 4: 11 steps


# --- data ------------------------------------------------------------------------------------

def _batch(model, x):
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


def _images(flat, model):
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
    x = _batch(model, x)
    preds, recons = [], []
    with model.fixed_weights(x.shape[0]):
        for k in range(0, x.shape[0], batch_size):
            out, _ = model.forward(x[k:k + batch_size])
            preds.append(backend.to_numpy(out["lengths"]).argmax(axis=1))
            recons.append(_images(out["reconstruction"], model))
    return np.concatenate(preds), np.concatenate(recons)


def pair_reconstructions(model, x, batch_size=256):
    """MultiMNIST (the paper's fig. 5): (the two longest capsules' classes (N, 2), longest
    first, and each one's reconstruction (N, 2, H, W)) as NumPy: the decoder sees one
    capsule at a time, so each reconstruction shows what that capsule took from the pair."""
    x = _batch(model, x)
    J = model.config.num_classes
    preds, recons = [], []
    with model.fixed_weights(x.shape[0]):
        for k in range(0, x.shape[0], batch_size):
            out, _ = model.forward(x[k:k + batch_size], decode=False)
            top2 = model.xp.argsort(-out["lengths"], axis=1)[:, :2]
            pictures = [_images(decode(model, out["v"], model.xp.eye(J, dtype=model.dtype)[top2[:, i]]),
                                model) for i in range(2)]
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


def perturbation_grid(model, x, label=None, nudges=NUDGES):
    """Fig. 4 of the paper for one image x (H, W, C): (D, len(nudges), H, W) decoded images.

    Row d is the winning capsule (``label``, else the predicted class) with its
    dimension d moved by each nudge; the rest of the capsules are masked out, as in the
    decoder. The zero nudge reproduces the plain reconstruction. Returns (grid, label).
    """
    x = _batch(model, x)
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
    images = _images(recon, model)
    return images.reshape((D, S) + images.shape[1:]), label


def primary_capsules(model, x):
    """conv1 -> ReLU -> primary conv -> squash: u (N, I, D_in) on the device."""
    return model.primary_capsules(_batch(model, x))[0]


def routing_couplings(model, x, iters=None, label=None):
    """The coupling coefficients of one image used in each routing iteration.

    The coupling used in iteration t is routing_forward(u_hat, t)'s: t = 1 is the
    uniform softmax(0) = 1/J, later ones have been sharpened by agreement. Returns a
    dict of NumPy arrays:
        coupling  (T, I, J)             c_ij per iteration (sums to 1 over j)
        grid      (T, rows, cols, maps) c_i,label on the primary capsule grid
                                        (capsule i = (row*cols + col)*maps + map)
        per_map   (T, maps)             grid summed over positions, per capsule map
        per_class (T, J)                sum_i c_ij: how much of the routing each class gets
        label, lengths (J,)             the class shown (default: predicted) and |v_j|
    """
    cfg = model.config
    iters = cfg.routing_iters if iters is None else int(iters)
    u_hat, _ = predictions_forward(primary_capsules(model, x), model.params["digit.W"])
    if u_hat.shape[0] != 1:
        raise ValueError(f"routing_couplings takes one image, got {u_hat.shape[0]}")
    coupling = []
    for t in range(1, iters + 1):
        (v, c), _ = routing_forward(u_hat, t, "full", cfg.squash_eps)
        coupling.append(backend.to_numpy(c)[0])
    coupling = np.stack(coupling)
    lengths = backend.to_numpy(length_forward(v, cfg.squash_eps)[0])[0]
    label = int(lengths.argmax()) if label is None else int(label)
    rows, cols = cfg.primary_grid
    grid = coupling[:, :, label].reshape(iters, rows, cols, cfg.primary_maps)
    return {"coupling": coupling, "grid": grid, "per_map": grid.sum(axis=(1, 2)),
            "per_class": coupling.sum(axis=1), "label": label, "lengths": lengths}


def confusion_matrix(y_true, y_pred, num_classes=None):
    """counts[t, p] = how many images of class t were predicted as p."""
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    if y_true.shape != y_pred.shape or y_true.ndim != 1:
        raise ValueError(f"y_true and y_pred must be two (N,) arrays, got {y_true.shape}, {y_pred.shape}")
    K = num_classes or int(max(y_true.max(initial=0), y_pred.max(initial=0))) + 1
    if y_true.size and (min(y_true.min(), y_pred.min()) < 0 or max(y_true.max(), y_pred.max()) >= K):
        raise ValueError(f"labels must be in 0..{K - 1}")
    return np.bincount(y_true * K + y_pred, minlength=K * K).reshape(K, K)


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


# --- is there anything to see? ---------------------------------------------------------------
# A picture of a network that has learned little looks like a picture of nothing. Measured
# on MNIST test images 0-7 with a CapsNet of 64 conv1 channels and 16 primary maps (and
# the numbers a reviewer gave for a weakly trained quick-start run):
#
#                                      untrained    weak run     1 epoch      2 epochs
#   test accuracy (the average's)         0.10      0.94-0.95     0.988        0.991
#   max_ij |c_ij - 1/J|, last iteration  < 1e-8       0.016     0.10-0.29    0.25-0.57
#   largest change of a pixel from the
#   reconstruction in the fig. 4 grid     0.006     0.03-0.06   0.51-0.77    0.79-0.93
#
# Untrained capsules are about 3e-4 long, so no prediction agrees with any output and
# routing leaves every coupling at 1/J. COUPLING_MIN: warn when no coupling moved by half
# of 1/J (0.05 for 10 classes). PIXEL_CHANGE_MIN: warn when no nudge moves a pixel by a
# tenth of the grey range, about the least change two grey cells side by side show.
# LINEAR_ACCURACY: a softmax regression on the raw pixels (no hidden layer) reaches 0.923
# on MNIST (measured: 10 epochs of SGD, batch 100, step 0.5) and about 0.84 on
# Fashion-MNIST (that data set's own benchmark); a capsule network below it has learned
# less than a linear classifier. The accuracy alone is not enough: the weak run passes it
# while its routing and perturbation pictures show nothing, hence the two other rules.

COUPLING_MIN = 0.5            # times 1/J
PIXEL_CHANGE_MIN = 0.1        # pixels in [0, 1]
LINEAR_ACCURACY = {"mnist": 0.92, "fashion-mnist": 0.84}


def coupling_spread(r):
    """max_ij |c_ij - 1/J| in the last routing iteration of routing_couplings' ``r``."""
    c = r["coupling"][-1]
    return float(np.abs(c - 1 / c.shape[-1]).max())


def pixel_changes(grid, nudges=NUDGES):
    """(D,): for each row of perturbation_grid's ``grid``, the largest change of any pixel
    from the plain reconstruction (the zero nudge): how much that dimension does."""
    grid = np.asarray(grid)
    zero = grid[:, list(np.asarray(nudges)).index(0)][:, None]
    return np.abs(grid - zero).reshape(grid.shape[0], -1).max(axis=1)


def routing_warning(r):
    """A sentence when the couplings barely left uniform, else None: max_ij |c_ij - 1/J|
    under COUPLING_MIN / J = 0.5 / J (0.05 for 10 classes; untrained < 1e-8, one epoch on
    MNIST 0.10 - 0.29)."""
    J = r["coupling"].shape[-1]
    spread = coupling_spread(r)
    if spread >= COUPLING_MIN / J:
        return None
    return (f"the couplings barely left uniform: the largest |c_ij - 1/{J}| in the last "
            f"routing iteration is {spread:.3f}, under {COUPLING_MIN / J:.3f} (half of 1/{J}); routing has not "
            f"learned which class each part belongs to, so the map is nearly white and the "
            f"bars nearly 0")


def perturbation_warning(grid, nudges=NUDGES):
    """A sentence when no nudge moves a pixel by PIXEL_CHANGE_MIN = 0.1 from the
    reconstruction, else None (untrained 0.006, one epoch on MNIST 0.51 - 0.77)."""
    largest = float(pixel_changes(grid, nudges).max())
    if largest >= PIXEL_CHANGE_MIN:
        return None
    return (f"nudging the pose changes no pixel by more than {largest:.3f} (under "
            f"{PIXEL_CHANGE_MIN}, on a 0..1 grey scale): the decoder has not learned what the "
            f"dimensions mean, so every row shows the same image")


def accuracy_warning(accuracy, dataset="mnist"):
    """A sentence when ``accuracy`` (the checkpoint's test accuracy, None: unknown) is under
    what a linear classifier reaches on ``dataset`` (LINEAR_ACCURACY: 0.92 on MNIST, 0.84
    on Fashion-MNIST), else None."""
    floor = LINEAR_ACCURACY.get(dataset)
    if accuracy is None or floor is None or accuracy >= floor:
        return None
    return (f"test accuracy {accuracy:.4f} is under {floor:.2f}, what a linear classifier "
            f"(softmax regression on the pixels) reaches on {dataset}: this network has "
            f"learned little, and its pictures show little")


# --- drawing ---------------------------------------------------------------------------------
# Every plot_* function also takes weights= (said in its titles: None, "trained" or
# "average"), notes= (warnings to write into it) and warn= (called with the plot's own
# warning, routing_warning or perturbation_warning, when there is one).

WEIGHTS = {"trained": "trained parameters", "average": "moving average of the parameters"}
SEPARATOR = "0.45"            # the grey between capsule maps: in no colour map used here


# The most pixels a picture may have (4 bytes each while it is drawn: about 270 MB), and
# on a side (matplotlib draws fewer than 65,536).
MAX_PIXELS, MAX_SIDE = 1 << 26, 1 << 15


def _figure(width, height, dpi):
    """A matplotlib Figure (no pyplot: headless, no global state) of width x height
    inches at ``dpi``, refused before it is drawn when it would be over MAX_PIXELS or
    MAX_SIDE."""
    if width * dpi * height * dpi > MAX_PIXELS or max(width, height) * dpi > MAX_SIDE:
        fits = max(1, math.floor(min(math.sqrt(MAX_PIXELS / (width * height)),
                                     MAX_SIDE / max(width, height))))
        raise ValueError(f"a {width:g}x{height:g} inch picture at dpi {dpi} is "
                         f"{round(width * dpi)}x{round(height * dpi)} pixels, more than "
                         f"{MAX_PIXELS:,} pixels or {MAX_SIDE:,} a side: give a dpi of at "
                         f"most {fits} (--dpi {fits})")
    try:
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError(f"plots need matplotlib: {VIZ_EXTRA}") from e
    return Figure(figsize=(width, height), dpi=dpi, layout="constrained")


def _titled(title, weights):
    """The title, and a second line naming the weights drawn (none when weights is None)."""
    if weights is None:
        return title
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be None, 'trained' or 'average', got {weights!r}")
    return f"{title}\nweights: {WEIGHTS[weights]}"


def _warned(warn, own, notes):
    """Pass the plot's own warning (None: none) to ``warn``; return every note to draw."""
    if own and warn is not None:
        warn(own)
    return [n for n in (*notes, own) if n]


def _save(fig, path, notes=()):
    """Write the figure as a PNG, with ``notes`` (warnings) in red along its bottom. The
    file is replaced whole (checkpoint.replace_file): a link in its place is replaced, not
    followed out of the folder."""
    import textwrap
    from minicaps.io.checkpoint import replace_file
    path = Path(path)
    if notes:
        width = int(fig.get_figwidth() * 14)        # about the characters of 8 pt in a line
        fig.supxlabel("\n".join(textwrap.fill("Note: " + n, width) for n in notes),
                      color="darkred", fontsize=8)
    replace_file(path, lambda f: fig.savefig(f, format="png", dpi=fig.dpi))
    return path


def mosaic(images, pad=1, value=1.0):
    """(R, C, h, w[, ch]) -> one (R*(h+pad)-pad, C*(w+pad)-pad[, ch]) picture, cells apart."""
    images = np.asarray(images, dtype=float)
    R, C, h, w = images.shape[:4]
    out = np.full((R * (h + pad) - pad, C * (w + pad) - pad) + images.shape[4:], value)
    for r in range(R):
        for c in range(C):
            out[r * (h + pad):r * (h + pad) + h, c * (w + pad):c * (w + pad) + w] = images[r, c]
    return out


def _name(classes, j, width=14):
    """Class j as the pictures say it: its name when the data has names (a folder's,
    CIFAR-10's), cut to ``width`` characters; else the number j."""
    if j is None or j == "?":
        return "?"
    name = str(classes[int(j)]) if classes is not None and len(classes) else str(int(j))
    return name if len(name) <= width else name[:width - 1] + "…"


def _also_named(classes, j):
    """What follows class j's number in a title: its name in brackets where the data has
    names, else nothing."""
    return "" if classes is None else f" ({_name(classes, j)})"


def _class_ticks(ax, classes, n, axis="x"):
    """Ticks 0..n-1 on ``axis`` labelled with the class names (slanted when long)."""
    names = [_name(classes, j) for j in range(n)]
    long = max(len(name) for name in names) > 2
    if axis == "x":
        ax.set_xticks(np.arange(n), names, rotation=45 if long else 0,
                      ha="right" if long else "center")
    else:
        ax.set_yticks(np.arange(n), names)


def _show(ax, image, title=None, **kw):
    ax.imshow(image, cmap="gray", vmin=0, vmax=1, interpolation="nearest", **kw)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)


def _one(x_np, k):
    """Image k of a (N, H, W, C) batch as imshow takes it: (H, W) for one channel."""
    return x_np[k, ..., 0] if x_np.shape[-1] == 1 else x_np[k]


def _two_row_grid(n, title_inches, dpi):
    """A figure of n cells in columns of up to 8, each an input over a picture made from
    it: (figure, axes (2 rows, cols), cols), 1.5 x 3 inches a cell, axes off."""
    cols = min(n, 8)
    rows = math.ceil(n / cols)
    fig = _figure(1.5 * cols, 3.0 * rows + title_inches, dpi)
    axes = fig.subplots(2 * rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    return fig, axes, cols


def plot_reconstructions(model, x, labels, path, dpi=100, weights=None, notes=(), warn=None,
                         classes=None):
    """Inputs (top) over their reconstructions (below), titled with the true and the
    predicted class (by name, given ``classes``). n images in columns of up to 8:
    (1.5 cols) x (3 rows + 0.5) inches."""
    x_np = backend.to_numpy(_batch(model, x))
    preds, recons = reconstructions(model, x_np)
    n = len(preds)
    fig, axes, cols = _two_row_grid(n, 0.5, dpi)
    for k in range(n):
        r, c = divmod(k, cols)
        truth = "?" if labels is None else int(labels[k])
        _show(axes[2 * r, c], _one(x_np, k),
              f"true {_name(classes, truth)}\npred {_name(classes, preds[k])}"
              if classes is not None else f"true {truth}, pred {preds[k]}")
        _show(axes[2 * r + 1, c], recons[k], "reconstruction")
    fig.suptitle(_titled("Each input over its reconstruction: the decoder sees only the "
                         "longest capsule (the prediction)", weights), fontsize=9)
    return _save(fig, path, _warned(warn, None, notes))


def plot_pairs(model, x, labels, path, dpi=100, weights=None, notes=(), warn=None):
    """The paper's fig. 5: each MultiMNIST pair, then the reconstructions from its two
    longest capsules, red and green over it, titled with the true labels (labels (N, 2))
    and the two predicted (longest capsules), "right" or "wrong" as the paper counts.
    n pairs in columns of up to 8: (1.5 cols) x (3 rows + 0.6) inches."""
    x_np = backend.to_numpy(_batch(model, x))
    preds, recons = pair_reconstructions(model, x_np)
    n = len(preds)
    fig, axes, cols = _two_row_grid(n, 0.6, dpi)
    for k in range(n):
        r, c = divmod(k, cols)
        truth = sorted(int(t) for t in labels[k])
        guess = [int(p) for p in preds[k]]
        verdict = "right" if sorted(guess) == truth else "wrong"
        _show(axes[2 * r, c], _one(x_np, k), f"true {truth[0]} and {truth[1]}")
        axes[2 * r + 1, c].imshow(overlay(_one(x_np, k), recons[k, 0], recons[k, 1]),
                                  interpolation="nearest")
        axes[2 * r + 1, c].set_title(f"red {guess[0]}, green {guess[1]}: {verdict}",
                                     fontsize=8, color="black" if verdict == "right" else "darkred")
    fig.suptitle(_titled("Two overlapping digits (top); below, over the pair in gray, what "
                         "the two longest capsules reconstruct,\neach decoded alone: the "
                         "longest in red, the second in green (yellow where both draw)",
                         weights), fontsize=9)
    return _save(fig, path, _warned(warn, None, notes))


def plot_perturbation(model, x, path, label=None, dpi=100, weights=None, notes=(), warn=None,
                      classes=None):
    """Fig. 4 of the paper: the input and its reconstruction, then one row per dimension of
    the winning capsule, each column a nudge in [-0.25, 0.25] added to that dimension before
    decoding; the framed column (nudge 0) is the reconstruction. A row's label gives the
    largest change of a pixel along it. Warns when no nudge moves a pixel by
    PIXEL_CHANGE_MIN. (0.5 * 11 + 3) x (max(0.5 D, 3.5) + 1.5) inches."""
    from matplotlib.patches import Rectangle
    x_np = backend.to_numpy(_batch(model, x))
    grid, label = perturbation_grid(model, x_np, label)
    D, S, h, w = grid.shape[:4]
    zero = list(NUDGES).index(0)
    changes = pixel_changes(grid)
    height = max(0.5 * D, 3.5) + 1.5
    fig = _figure(0.5 * S + 3.0, height, dpi)
    left, right = fig.subfigures(1, 2, width_ratios=[1.6, 0.5 * S + 1.4])
    top, bottom, rest = left.subplots(3, 1, height_ratios=[1.8, 1.8, max(height - 4.6, 0.1)])
    rest.axis("off")
    _show(top, _one(x_np, 0), "input")
    named = _also_named(classes, label)
    _show(bottom, grid[0, zero], f"its reconstruction\n(capsule {label}{named}, no nudge)")
    ax = right.subplots()
    ax.imshow(mosaic(grid), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.add_patch(Rectangle((zero * (w + 1) - 1, -0.5), w + 1, D * (h + 1) - 1, fill=False,
                           edgecolor="tab:red", linewidth=1.2, clip_on=False))
    ax.set_xticks([(w + 1) * s + (w - 1) / 2 for s in range(S)], [f"{n:+.2f}" for n in NUDGES[:S]],
                  fontsize=7)
    ax.set_yticks([(h + 1) * d + (h - 1) / 2 for d in range(D)],
                  [f"dim {d} (Δ {changes[d]:.2f})" for d in range(D)], fontsize=7)
    ax.set_xlabel("nudge added to that dimension (red frame: 0, the reconstruction)", fontsize=8)
    ax.set_ylabel("dimension nudged (Δ: largest change of a pixel)", fontsize=8)
    fig.suptitle(_titled(f"Pose perturbation (the paper's fig. 4): each of the {D} dimensions "
                         f"of capsule {label}{named}, nudged and decoded", weights), fontsize=9)
    return _save(fig, path, _warned(warn, perturbation_warning(grid), notes))


def plot_routing(model, x, path, iters=None, dpi=100, weights=None, notes=(), warn=None,
                 classes=None):
    """The input, then one row per routing iteration: the c(i -> k) that iteration used, for
    the predicted class k, on the primary capsule grid (one tile per capsule map, grey
    between tiles), and how far the couplings summed per map and per class are from uniform.
    The colour scale runs from 0 (blue) through the uniform 1/J (white) to 2/J or more
    (red). Warns when the couplings barely left uniform (COUPLING_MIN). 14 x (2 T + 1.5)
    inches."""
    from matplotlib import colormaps
    x_np = backend.to_numpy(_batch(model, x))
    r = routing_couplings(model, x_np, iters)
    T, rows, cols, maps = r["grid"].shape
    J, k = r["per_class"].shape[1], r["label"]
    per_row = min(maps, 4 if maps <= 16 else 8)
    tile_rows = math.ceil(maps / per_row)
    tiles = np.full((tile_rows * per_row, rows, cols), np.nan)
    fig = _figure(14.0, 2.0 * T + 1.5, dpi)
    tiles_wide = (per_row * (cols + 1)) / (tile_rows * (rows + 1))    # the map's width / height
    gs = fig.add_gridspec(T, 4, width_ratios=[1.4, min(1.8 * tiles_wide, 5.0), 3.4, 2.2])
    _show(fig.add_subplot(gs[:, 0]), _one(x_np, 0),
          f"input\npredicted {k}"
          + _also_named(classes, k)
          + f"\n(|v| = {r['lengths'][k]:.2f})")
    cmap = colormaps["RdBu_r"].with_extremes(bad=SEPARATOR)
    uniform_map, uniform_class = rows * cols / J, rows * cols * maps / J
    dev_map = r["per_map"] - uniform_map
    dev_class = r["per_class"] - uniform_class
    # the bars' axes from the smallest to the largest deviation of all iterations (and 0)
    lim_map = _bar_limits(dev_map, uniform_map)
    lim_class = _bar_limits(dev_class, uniform_class)
    for t in range(T):
        tiles[:maps] = r["grid"][t].transpose(2, 0, 1)
        image = mosaic(tiles.reshape(tile_rows, per_row, rows, cols), value=np.nan)
        ax = fig.add_subplot(gs[t, 1])
        # 0 .. 2/J: white at the uniform 1/J, blue below, red above (darkest: 2/J or more)
        im = ax.imshow(image, cmap=cmap, vmin=0, vmax=2 / J, interpolation="nearest")
        ax.set_xticks([(cols + 1) * m + (cols - 1) / 2 for m in range(per_row)],
                      [f"+{m}" for m in range(per_row)], fontsize=6)
        ax.set_yticks([(rows + 1) * q + (rows - 1) / 2 for q in range(tile_rows)],
                      [f"maps {q * per_row}-{min(maps, (q + 1) * per_row) - 1}"
                       for q in range(tile_rows)], fontsize=6)
        ax.tick_params(length=0)
        ax.set_title(f"c(i -> {k}) used in iteration {t + 1}"
                     + (", uniform: softmax of b = 0" if t == 0 else ""), fontsize=8)
        if t == T - 1:
            ax.set_xlabel(f"one tile per capsule map: its {rows}x{cols} positions", fontsize=7)
        _deviation_bars(fig.add_subplot(gs[t, 2]), dev_map[t], lim_map, "capsule map",
                        f"$\\sum c_{{i \\to {k}}}$ over the map\nminus uniform {uniform_map:g}",
                        f"per map: above 0, the map sends more than 1/J to {k}")
        per_class = fig.add_subplot(gs[t, 3])
        _deviation_bars(per_class, dev_class[t], lim_class,
                        f"class (outlined: {_name(classes, k)}, predicted)",
                        f"$\\sum_i c_{{ij}}$ minus\nuniform {uniform_class:g}", "per class",
                        outline=k)
        if classes is not None:
            _class_ticks(per_class, classes, J)
    bar = fig.colorbar(im, ax=fig.axes[1::3], shrink=0.8, pad=0.01, extend="max")
    bar.set_label(f"c(i -> {k}): white = uniform 1/{J}, darkest red = 2/{J} or more;\n"
                  f"grey: between maps", fontsize=7)
    bar.ax.tick_params(labelsize=6)
    named = _also_named(classes, k)
    fig.suptitle(_titled(f"Routing by agreement: how the {rows * cols * maps} primary capsules "
                         f"i send their output to class {k}{named}, iteration by iteration",
                         weights), fontsize=9)
    return _save(fig, path, _warned(warn, routing_warning(r), notes))


def _bar_limits(deviation, uniform):
    """y limits from the smallest to the largest deviation (and 0), a little apart."""
    low, high = min(float(deviation.min()), 0.0), max(float(deviation.max()), 0.0)
    pad = max(0.1 * (high - low), 1e-3 * uniform)
    return low - pad, high + pad


def _deviation_bars(ax, deviation, limits, xlabel, ylabel, title, outline=None):
    """Bars of a deviation from uniform: red above 0, blue below, bar ``outline`` outlined."""
    n = len(deviation)
    ax.bar(np.arange(n), deviation, color=np.where(deviation > 0, "tab:red", "tab:blue"),
           edgecolor=["black" if j == outline else "none" for j in range(n)], linewidth=1.2)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_ylim(*limits)
    ax.set_xticks(np.arange(0, n, max(1, n // 16)))
    ax.set_xlabel(xlabel, fontsize=7)
    ax.set_ylabel(ylabel, fontsize=7)
    ax.set_title(title, fontsize=8)
    ax.tick_params(labelsize=6)


def plot_lengths(model, x, labels, path, dpi=100, weights=None, notes=(), warn=None,
                 classes=None):
    """A row per image: the image and its capsule lengths |v_j| as bars, with the margins
    m+ and m- (the bars named after ``classes`` when given). 8 x (1.75 N + 0.75) inches."""
    x_np = backend.to_numpy(_batch(model, x))
    lengths = model.predict_lengths(x_np)
    n, J = lengths.shape
    cfg = model.config
    fig = _figure(8.0, 1.75 * n + 0.75, dpi)
    axes = fig.subplots(n, 2, squeeze=False, width_ratios=[1, 4])
    for k in range(n):
        pred = int(lengths[k].argmax())
        truth = None if labels is None else int(labels[k])
        _show(axes[k, 0], _one(x_np, k), f"true {_name(classes, truth)}")
        ax = axes[k, 1]
        colors = ["tab:red" if j == pred else "tab:gray" for j in range(J)]
        ax.bar(np.arange(J), lengths[k], color=colors)
        if truth is not None:
            ax.bar([truth], [lengths[k, truth]], fill=False, edgecolor="black", linewidth=1.5)
        for m in (cfg.m_plus, cfg.m_minus):
            ax.axhline(m, color="black", linestyle=":", linewidth=0.8)
        ax.set_ylim(0, 1)
        if classes is None:
            ax.set_xticks(np.arange(J))
        elif k == n - 1:                 # the names once, under the last row
            _class_ticks(ax, classes, J)
        else:
            ax.set_xticks(np.arange(J), [""] * J)
        ax.tick_params(labelsize=7)
        ax.set_ylabel("|v_j|", fontsize=8)
        ax.set_title(f"predicted {_name(classes, pred)} (red), true class outlined",
                     fontsize=8)
    axes[-1, 1].set_xlabel("class j", fontsize=8)
    fig.suptitle(_titled(f"Capsule lengths |v_j|: the probability that class j is present "
                         f"(dotted: margins m+ = {cfg.m_plus}, m- = {cfg.m_minus})", weights),
                 fontsize=9)
    return _save(fig, path, _warned(warn, None, notes))


CURVE_LABELS = {"": "trained parameters", "avg_": "moving average of the parameters"}


def plot_curves(metrics, path, dpi=100, notes=(), warn=None):
    """Loss (a CapsNet's margin + weighted reconstruction, the CNN baseline's cross-entropy)
    and accuracy per epoch from read_metrics' list: the training set's running
    mean over each epoch (measured while the weights change), and the test (and
    validation) set measured after the epoch with the trained parameters (solid) and with
    their moving average (dashed) when the run kept one. 10 x 4.5 inches."""
    if isinstance(metrics, (str, Path)):
        metrics = read_metrics(metrics, warn)
    epochs = [m["epoch"] for m in metrics]
    fig = _figure(10.0, 4.5, dpi)
    axes = fig.subplots(1, 2)
    colours = {"train": "tab:gray", "val": "tab:green", "test": "tab:blue"}
    for ax, what in zip(axes, ("loss", "accuracy")):
        for split in ("train", "val", "test"):
            for prefix in ("", "avg_"):
                if split == "train" and prefix:
                    continue             # training is only measured with the trained weights
                key = f"{prefix}{split}_{what}"
                points = [(e, m[key]) for e, m in zip(epochs, metrics) if m.get(key) is not None]
                if not points:
                    continue
                label = ("train: running mean over the epoch" if split == "train" else
                         f"{split}: {CURVE_LABELS[prefix]}")
                ax.plot(*zip(*points), marker="o", markersize=4, color=colours[split],
                        linestyle="--" if prefix else "-",
                        label=f"{label} (last {points[-1][1]:.4f})")
        ax.set_xlabel("epoch")
        ax.set_ylabel(what)
        seen = images_seen(metrics)
        if seen is not None:            # how far a run got, whatever its epochs' size
            top = ax.secondary_xaxis("top")
            ticks = epochs if len(epochs) <= 6 else epochs[::math.ceil(len(epochs) / 6)]
            top.set_xticks(ticks, [_count(seen[epochs.index(e)]) for e in ticks], fontsize=7)
            top.set_xlabel("images seen in training", fontsize=8)
        ax.set_xticks(epochs if len(epochs) <= 12 else epochs[::math.ceil(len(epochs) / 12)])
        cnn = any("train_cross_entropy" in m for m in metrics)     # the CNN baseline's run
        loss = " (cross-entropy)" if cnn else " (margin + weighted reconstruction)"
        ax.set_title(what + (loss if what == "loss" else ""), fontsize=9)
        ax.grid(alpha=0.3)
        if ax.get_lines():
            ax.legend(fontsize=7)
    fig.suptitle("Training curves: training measured during each epoch while the weights "
                 "change;\ntest after it, with the trained parameters (solid) and their "
                 "moving average (dashed)", fontsize=9)
    return _save(fig, path, _warned(warn, None, notes))


def images_seen(metrics):
    """The training images (or pairs) seen by the end of each epoch: the running sum of
    each epoch's images per second times its seconds (its size); None when a line lacks
    them."""
    try:
        sizes = [round(m["images_per_second"] * m["epoch_seconds"]) for m in metrics]
    except (KeyError, TypeError):
        return None
    return list(np.cumsum(sizes))


def _count(n):
    """60000 -> "60k", 1500000 -> "1.5M"."""
    if n >= 1e6:
        return f"{n / 1e6:.3g}M"
    return f"{n / 1e3:.3g}k" if n >= 1e3 else str(int(n))


def plot_confusion(counts, path, dpi=100, weights=None, notes=(), warn=None, classes=None):
    """The confusion matrix with its counts written in, its rows and columns named after
    ``classes`` when given. 7 x 6.5 inches."""
    counts = np.asarray(counts)
    K = counts.shape[0]
    fig = _figure(7.0, 6.5, dpi)
    ax = fig.subplots()
    im = ax.imshow(np.log1p(counts), cmap="Blues")
    for t in range(K):
        for p in range(K):
            if counts[t, p]:
                ax.text(p, t, str(counts[t, p]), ha="center", va="center", fontsize=7,
                        color="white" if counts[t, p] > counts.max() / 3 else "black")
    _class_ticks(ax, classes, K, "x")
    _class_ticks(ax, classes, K, "y")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    total = counts.sum()
    ax.set_title(_titled(f"Confusion matrix: {total} test images, accuracy "
                         f"{np.trace(counts) / max(total, 1):.4f}", weights), fontsize=9)
    top = int(counts.max())
    ticks = [c for c in (0, 1, 10, 100, 1000, 10000, 100000) if c < 0.7 * top] + [top]
    bar = fig.colorbar(im, ax=ax, shrink=0.8)
    bar.set_ticks(np.log1p(ticks), labels=[str(c) for c in ticks])
    bar.set_label("images (colour on a log scale)")
    return _save(fig, path, _warned(warn, None, notes))


# --- two networks on one test set (what `minicaps compare` draws) ---------------------------------

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


def plot_compare(x, labels, predictions, names, path, per_row=8, dpi=100, notes=(), warn=None,
                 classes=None):
    """Test images and two networks' predictions on them: a row of images only the first
    gets right, a row only the second gets right, a row both get wrong (up to ``per_row``
    each, the first in the test set's order). Each image is titled with its class and the
    two predictions, a wrong one in red. x (N, H, W, C) in [0, 1], labels (N,),
    predictions: two (N,) arrays, names: the two networks' names.
    (1.5 per_row) x (2.2 rows + 1) inches."""
    x, labels = np.asarray(x), np.asarray(labels)
    groups = agreement(labels, *predictions)
    counts = {key: len(value) for key, value in groups.items()}
    rows = [(f"only {names[0]} right", groups["only_first"]),
            (f"only {names[1]} right", groups["only_second"]),
            ("both wrong", groups["neither"])]
    rows = [(title, picked[:per_row]) for title, picked in rows if len(picked)]
    n = len(labels)
    title = (f"{n} test images: {names[0]} {(counts['both'] + counts['only_first']) / n:.2%} "
             f"right, {names[1]} {(counts['both'] + counts['only_second']) / n:.2%}; both right "
             f"{counts['both']}, only {names[0]} {counts['only_first']}, only {names[1]} "
             f"{counts['only_second']}, neither {counts['neither']}")
    if not rows:
        rows = [("both right", groups["both"][:per_row])]
    fig = _figure(1.5 * per_row, 2.2 * len(rows) + 1.0, dpi)
    axes = fig.subplots(len(rows), per_row, squeeze=False)
    for r, (row_title, picked) in enumerate(rows):
        for c in range(per_row):
            ax = axes[r, c]
            ax.axis("off")
            if c >= len(picked):
                continue
            k = picked[c]
            _show(ax, _one(x, k))
            lines = [f"class {_name(classes, labels[k])}"]
            for name, pred in zip(names, predictions):
                lines.append(f"{name}: {_name(classes, pred[k])}")
            ax.set_title("\n".join(lines), fontsize=7)
            if c == 0:
                ax.text(-0.15, 0.5, row_title, transform=ax.transAxes, rotation=90,
                        ha="right", va="center", fontsize=8)
            wrong = [name for name, pred in zip(names, predictions) if pred[k] != labels[k]]
            ax.set_xlabel("wrong: " + ", ".join(wrong) if wrong else "", fontsize=7,
                          color="darkred")
            if wrong:
                ax.axis("on")
                ax.set_xticks([])
                ax.set_yticks([])
                for spine in ax.spines.values():
                    spine.set_visible(False)
    fig.suptitle(title, fontsize=9)
    return _save(fig, path, _warned(warn, None, notes))


# --- accuracy against each transformation (what `minicaps robustness` draws) ----------------------

ROBUSTNESS_AXES = {"rotation": "rotation (degrees, either way)",
                   "shear": "shear s (x += s y, either way)",
                   "scale": "scale factor (1: unchanged)",
                   "translation": "move (pixels, any direction)"}


def plot_robustness(rows, names, path, examples=None, title="", dpi=100, notes=(), warn=None):
    """One panel per transformation: each network's test accuracy (%, 0-100) against the
    strength, from robustness.robustness' rows; names: the networks' legend entries.
    examples: {transformation: (N, H, W[, C]) uint8}, one test digit at each strength,
    drawn as a strip under its panel. (4 per panel) x (4.2, 5.4 with examples) inches."""
    kinds = list(dict.fromkeys(r["transformation"] for r in rows))
    fig = _figure(4.0 * len(kinds), 5.4 if examples else 4.2, dpi)
    grid = fig.add_gridspec(2 if examples else 1, len(kinds),
                            height_ratios=(4, 1) if examples else None)
    styles = [dict(color="tab:blue", marker="o", linestyle="-"),
              dict(color="tab:orange", marker="s", linestyle="--")]
    for k, kind in enumerate(kinds):
        ax = fig.add_subplot(grid[0, k])
        mine = [r for r in rows if r["transformation"] == kind]
        strengths = [r["strength"] for r in mine]
        for j, name in enumerate(names):
            ax.plot(strengths, [100 * r["accuracy"][j] for r in mine], label=name,
                    markersize=5, **styles[j % len(styles)])
        ax.set_ylim(0, 100)
        if len(strengths) <= 9:
            ax.set_xticks(strengths)
        ax.set_xlabel(ROBUSTNESS_AXES.get(kind, kind), fontsize=9)
        ax.set_ylabel("test accuracy (%)" if k == 0 else "", fontsize=9)
        ax.set_title(kind, fontsize=10)
        ax.grid(alpha=0.3)
        if k == 0:
            ax.legend(fontsize=8, loc="best")
        if examples and kind in examples:
            strip = fig.add_subplot(grid[1, k])
            pictures = np.asarray(examples[kind], dtype=np.float64) / 255
            _show(strip, mosaic(pictures[None], value=0.5))
            strip.set_xlabel("one test image at each strength above", fontsize=8)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path, _warned(warn, None, notes))


# --- every plot of a checkpoint (what `minicaps plot` runs) -------------------------------------

KINDS = ("reconstructions", "perturbation", "routing", "lengths", "curves", "confusion",
         "pairs")
DEFAULT_COUNT = {"reconstructions": 8, "perturbation": 2, "routing": 1, "lengths": 4,
                 "pairs": 8}


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


def render(kinds, out_dir, model=None, x=None, labels=None, metrics=None, indices=None,
           dpi=100, weights=None, accuracy=None, dataset="mnist", warn=print, classes=None,
           progress=False, log=print):
    """Draw each of ``kinds`` into out_dir and return the PNG paths.

    x, labels: the images (N, H, W, C) in [0, 1] and their classes (the test set);
    ``indices`` picks the ones drawn (default: the first few, DEFAULT_COUNT per kind;
    confusion always uses all of x). metrics: metrics.jsonl's path, for "curves".
    Perturbation and routing write one file per image, named after its index. classes:
    the class names the pictures use (None: the class numbers).
    weights: "trained" or "average", which of the checkpoint's weights ``model`` holds,
    said in every title (None: not said). accuracy: the test accuracy of those weights
    from the checkpoint's metrics (None: unknown), checked against a linear classifier on
    ``dataset`` (accuracy_warning). Every warning (that, and a routing or perturbation
    picture that shows nothing: routing_warning, perturbation_warning) is written into the
    pictures it concerns and passed once to ``warn`` as "file: sentence". progress: show
    the progress of the passes over the whole of x (confusion, pairs) through
    progress.Progress (plain lines go to ``log``).
    """
    out_dir = Path(out_dir)
    general = accuracy_warning(accuracy, dataset)
    if general and warn is not None:
        warn(f"every picture: {general}")
    notes = [general] if general else []
    paths = []

    def draw(plot, name, *args, **kw):
        own = None if warn is None else (lambda sentence: warn(f"{name}: {sentence}"))
        paths.append(plot(*args, out_dir / name, dpi=dpi, notes=notes, warn=own, **kw))

    for kind in kinds:
        if kind not in KINDS:
            raise ValueError(f"unknown plot kind {kind!r}, expected one of {KINDS}")
        if kind == "curves":
            draw(plot_curves, "curves.png", read_metrics(metrics, warn))
            continue
        if model is None or x is None:
            raise ValueError(f"the {kind} plot needs a model and images")
        if kind == "confusion":
            predicted = lengths_of_all(model, x, progress, "confusion matrix", log).argmax(axis=1)
            counts = confusion_matrix(labels, predicted, model.config.num_classes)
            draw(plot_confusion, "confusion.png", counts, weights=weights, classes=classes)
            continue
        if kind == "pairs" and indices is None:     # the first 8 pairs, and 8 it gets wrong
            labels = np.asarray(labels)
            lengths = lengths_of_all(model, x, progress, "pairs it gets wrong", log)
            wrong = wrong_pairs(lengths, labels)[:DEFAULT_COUNT["pairs"]]
            draw(plot_pairs, "pairs.png", model, x[:DEFAULT_COUNT["pairs"]],
                 labels[:DEFAULT_COUNT["pairs"]], weights=weights)
            if len(wrong):
                draw(plot_pairs, "pairs-wrong.png", model, x[wrong], labels[wrong],
                     weights=weights)
            continue
        picked = list(range(min(DEFAULT_COUNT[kind], len(x)))) if indices is None else list(indices)
        if not picked or max(picked) >= len(x) or min(picked) < 0:
            raise ValueError(f"image indices must be in 0..{len(x) - 1}, got {picked}")
        chosen = None if labels is None else np.asarray(labels)[picked]
        if kind == "pairs":
            draw(plot_pairs, "pairs.png", model, x[picked], chosen, weights=weights)
        elif kind == "reconstructions":
            draw(plot_reconstructions, f"{kind}.png", model, x[picked], chosen, weights=weights,
                 classes=classes)
        elif kind == "lengths":
            draw(plot_lengths, f"{kind}.png", model, x[picked], chosen, weights=weights,
                 classes=classes)
        else:
            plot = plot_perturbation if kind == "perturbation" else plot_routing
            for i in picked:
                draw(plot, f"{kind}-{i}.png", model, x[i], weights=weights, classes=classes)
    return paths
