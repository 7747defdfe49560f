"""See what the capsules learned: the data behind each picture, and the pictures.

Each plot has a data function that returns NumPy arrays (tested as numbers) and a
``plot_*`` function that draws them into a PNG with matplotlib, which is only needed for
the drawing (``pip install "minicaps[viz]"``):

    reconstructions(model, x)          -> predictions, reconstructed images    (decoder, fig. 3)
    perturbation_grid(model, x)        -> (D, 11, H, W) decoded nudged poses   (fig. 4)
    routing_couplings(model, x)        -> c_ij after each routing iteration    (Procedure 1)
    capsule lengths                    -> model.predict_lengths(x)             (eq. 4's input)
    read_metrics(path)                 -> the epochs of a run's metrics.jsonl
    confusion_matrix(y_true, y_pred)   -> (K, K) counts

Images x are floats in [0, 1] shaped (N, H, W, C) (or (H, W, C) for one image), as the
model takes them. Plots are drawn on a matplotlib ``Figure`` without pyplot, so nothing
touches a display or the global backend; every PNG has a fixed size in inches (given in
each docstring) times ``dpi``.
"""
import json
import math
from pathlib import Path

import numpy as np

from . import backend
from .ops import predictions_forward, routing_forward, length_forward, one_hot

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
    """The coupling coefficients of one image after each routing iteration.

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


def read_metrics(path):
    """The lines of a run's metrics.jsonl (one dict per epoch), in epoch order."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no metrics file (train writes metrics.jsonl beside "
                                "its checkpoints)")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except ValueError as e:
                raise ValueError(f"{path}, line {n}: not JSON ({e})") from e
    if not rows:
        raise ValueError(f"{path}: no epochs recorded yet")
    return sorted(rows, key=lambda m: m.get("epoch", 0))


# --- drawing ---------------------------------------------------------------------------------

def _figure(width, height, dpi):
    """A matplotlib Figure (no pyplot: headless, no global state)."""
    try:
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError(f"plots need matplotlib: {VIZ_EXTRA}") from e
    return Figure(figsize=(width, height), dpi=dpi, layout="constrained")


def _save(fig, path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=fig.dpi)
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


def _show(ax, image, title=None, **kw):
    ax.imshow(image, cmap="gray", vmin=0, vmax=1, interpolation="nearest", **kw)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)


def plot_reconstructions(model, x, labels, path, dpi=100):
    """Inputs (top) over their reconstructions (below), titled with the true and the
    predicted class. n images in columns of up to 8: (1.5 cols) x (3 rows) inches."""
    x_np = backend.to_numpy(_batch(model, x))
    preds, recons = reconstructions(model, x_np)
    n = len(preds)
    cols = min(n, 8)
    rows = math.ceil(n / cols)
    fig = _figure(1.5 * cols, 3.0 * rows, dpi)
    axes = fig.subplots(2 * rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for k in range(n):
        r, c = divmod(k, cols)
        truth = "?" if labels is None else int(labels[k])
        _show(axes[2 * r, c], x_np[k].squeeze(-1) if x_np.shape[-1] == 1 else x_np[k],
              f"true {truth}, pred {preds[k]}")
        _show(axes[2 * r + 1, c], recons[k], "reconstruction")
    fig.suptitle("Inputs and their reconstructions (decoder masked by the prediction)", fontsize=9)
    return _save(fig, path)


def plot_perturbation(model, x, path, label=None, dpi=100):
    """Fig. 4: each row one dimension of the winning capsule, each column a nudge in
    [-0.25, 0.25]. (0.5 * 11 + 1.5) x (0.5 * D + 1) inches."""
    grid, label = perturbation_grid(model, x, label)
    D, S, h, w = grid.shape[:4]
    fig = _figure(0.5 * S + 1.5, 0.5 * D + 1.0, dpi)
    ax = fig.subplots()
    ax.imshow(mosaic(grid), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([(w + 1) * s + (w - 1) / 2 for s in range(S)], [f"{n:+.2f}" for n in NUDGES[:S]],
                  fontsize=7)
    ax.set_yticks([(h + 1) * d + (h - 1) / 2 for d in range(D)], [str(d) for d in range(D)],
                  fontsize=7)
    ax.set_xlabel("nudge added to the dimension", fontsize=8)
    ax.set_ylabel("capsule dimension", fontsize=8)
    ax.set_title(f"Perturbing the {D}D pose of capsule {label}", fontsize=9)
    return _save(fig, path)


def plot_routing(model, x, path, iters=None, dpi=100):
    """One row per routing iteration: c_i,pred on the primary grid (maps side by side,
    red above the uniform 1/J, blue below), summed per map, and summed per class; dashed
    lines mark the uniform coupling of iteration 1. 12 x (2 T + 0.5) inches."""
    r = routing_couplings(model, x, iters)
    T, rows, cols, maps = r["grid"].shape
    J = r["per_class"].shape[1]
    per_row = min(maps, 8)
    tiles = np.full((math.ceil(maps / per_row) * per_row, rows, cols), np.nan)
    fig = _figure(12.0, 2.0 * T + 0.5, dpi)
    axes = fig.subplots(T, 3, squeeze=False, width_ratios=[2.4, 2, 1.2])
    spread = max(float(np.abs(r["grid"] - 1 / J).max()), 1e-3)   # one colour scale for all t
    for t in range(T):
        tiles[:maps] = r["grid"][t].transpose(2, 0, 1)
        image = mosaic(tiles.reshape(-1, per_row, rows, cols), value=np.nan)
        ax = axes[t, 0]
        im = ax.imshow(image, cmap="RdBu_r", vmin=1 / J - spread, vmax=1 / J + spread,
                       interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(f"iteration {t + 1}", fontsize=8)
        ax.set_title(f"c(i -> {r['label']}) on the {rows}x{cols}x{maps} primary grid, "
                     f"{per_row} maps a row", fontsize=8)
        ax = axes[t, 1]
        ax.bar(np.arange(maps), r["per_map"][t], color="tab:blue")
        ax.axhline(rows * cols / J, color="black", linestyle="--", linewidth=0.8)
        ax.set_xticks(np.arange(0, maps, max(1, maps // 8)))
        ax.set_ylim(0, 1.05 * r["per_map"].max())
        ax.set_title(f"summed per map ({rows * cols} positions)", fontsize=8)
        ax.tick_params(labelsize=6)
        ax = axes[t, 2]
        ax.bar(np.arange(J), r["per_class"][t],
               color=["tab:red" if j == r["label"] else "tab:gray" for j in range(J)])
        ax.axhline(rows * cols * maps / J, color="black", linestyle="--", linewidth=0.8)
        ax.set_xticks(np.arange(J))
        ax.set_ylim(0, 1.05 * r["per_class"].max())
        ax.set_title("sum_i c_ij per class", fontsize=8)
        ax.tick_params(labelsize=6)
    fig.colorbar(im, ax=axes[:, 0], shrink=0.8, label=f"c_ij (uniform 1/{J} = white)")
    return _save(fig, path)


def plot_lengths(model, x, labels, path, dpi=100):
    """A row per image: the image and its capsule lengths |v_j| as bars, with the margins
    m+ and m-. 8 x (1.75 N + 0.25) inches."""
    x_np = backend.to_numpy(_batch(model, x))
    lengths = model.predict_lengths(x_np)
    n, J = lengths.shape
    cfg = model.config
    fig = _figure(8.0, 1.75 * n + 0.25, dpi)
    axes = fig.subplots(n, 2, squeeze=False, width_ratios=[1, 4])
    for k in range(n):
        pred = int(lengths[k].argmax())
        truth = None if labels is None else int(labels[k])
        _show(axes[k, 0], x_np[k].squeeze(-1) if x_np.shape[-1] == 1 else x_np[k],
              f"true {'?' if truth is None else truth}")
        ax = axes[k, 1]
        colors = ["tab:red" if j == pred else "tab:gray" for j in range(J)]
        ax.bar(np.arange(J), lengths[k], color=colors)
        if truth is not None:
            ax.bar([truth], [lengths[k, truth]], fill=False, edgecolor="black", linewidth=1.5)
        for m in (cfg.m_plus, cfg.m_minus):
            ax.axhline(m, color="black", linestyle=":", linewidth=0.8)
        ax.set_ylim(0, 1)
        ax.set_xticks(np.arange(J))
        ax.tick_params(labelsize=7)
        ax.set_ylabel("|v_j|", fontsize=8)
        ax.set_title(f"capsule lengths: predicted {pred} (red), true class outlined; "
                     f"dotted: m+ = {cfg.m_plus}, m- = {cfg.m_minus}", fontsize=8)
    return _save(fig, path)


def plot_curves(metrics, path, dpi=100):
    """Loss and accuracy per epoch (train, test, and validation if any) from
    read_metrics' list. 10 x 4 inches."""
    if isinstance(metrics, (str, Path)):
        metrics = read_metrics(metrics)
    epochs = [m["epoch"] for m in metrics]
    fig = _figure(10.0, 4.0, dpi)
    axes = fig.subplots(1, 2)
    for ax, what in zip(axes, ("loss", "accuracy")):
        for split in ("train", "val", "test"):
            key = f"{split}_{what}"
            points = [(e, m[key]) for e, m in zip(epochs, metrics) if m.get(key) is not None]
            if points:
                ax.plot(*zip(*points), marker="o", label=split)
        ax.set_xlabel("epoch")
        ax.set_xticks(epochs if len(epochs) <= 12 else epochs[::math.ceil(len(epochs) / 12)])
        ax.set_title(what + (" (margin + weighted reconstruction)" if what == "loss" else ""),
                     fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_confusion(counts, path, dpi=100):
    """The confusion matrix with its counts written in. 7 x 6 inches."""
    counts = np.asarray(counts)
    K = counts.shape[0]
    fig = _figure(7.0, 6.0, dpi)
    ax = fig.subplots()
    im = ax.imshow(np.log1p(counts), cmap="Blues")
    for t in range(K):
        for p in range(K):
            if counts[t, p]:
                ax.text(p, t, str(counts[t, p]), ha="center", va="center", fontsize=7,
                        color="white" if counts[t, p] > counts.max() / 3 else "black")
    ax.set_xticks(np.arange(K))
    ax.set_yticks(np.arange(K))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    total = counts.sum()
    ax.set_title(f"{total} images, accuracy {np.trace(counts) / max(total, 1):.4f}", fontsize=9)
    fig.colorbar(im, ax=ax, label="log(1 + count)", shrink=0.8)
    return _save(fig, path)


# --- every plot of a checkpoint (what `minicaps plot` runs) -------------------------------------

KINDS = ("reconstructions", "perturbation", "routing", "lengths", "curves", "confusion")
DEFAULT_COUNT = {"reconstructions": 8, "perturbation": 2, "routing": 1, "lengths": 4}


def render(kinds, out_dir, model=None, x=None, labels=None, metrics=None, indices=None,
           dpi=100):
    """Draw each of ``kinds`` into out_dir and return the PNG paths.

    x, labels: the images (N, H, W, C) in [0, 1] and their classes (the test set);
    ``indices`` picks the ones drawn (default: the first few, DEFAULT_COUNT per kind;
    confusion always uses all of x). metrics: metrics.jsonl's path, for "curves".
    Perturbation and routing write one file per image, named after its index.
    """
    out_dir = Path(out_dir)
    paths = []
    for kind in kinds:
        if kind not in KINDS:
            raise ValueError(f"unknown plot kind {kind!r}, expected one of {KINDS}")
        if kind == "curves":
            paths.append(plot_curves(read_metrics(metrics), out_dir / "curves.png", dpi))
            continue
        if model is None or x is None:
            raise ValueError(f"the {kind} plot needs a model and images")
        if kind == "confusion":
            counts = confusion_matrix(labels, model.predict(x), model.config.num_classes)
            paths.append(plot_confusion(counts, out_dir / "confusion.png", dpi))
            continue
        picked = list(range(min(DEFAULT_COUNT[kind], len(x)))) if indices is None else list(indices)
        if not picked or max(picked) >= len(x) or min(picked) < 0:
            raise ValueError(f"image indices must be in 0..{len(x) - 1}, got {picked}")
        chosen = None if labels is None else np.asarray(labels)[picked]
        if kind == "reconstructions":
            paths.append(plot_reconstructions(model, x[picked], chosen, out_dir / f"{kind}.png", dpi))
        elif kind == "lengths":
            paths.append(plot_lengths(model, x[picked], chosen, out_dir / f"{kind}.png", dpi))
        elif kind == "perturbation":
            paths += [plot_perturbation(model, x[k], out_dir / f"{kind}-{k}.png", dpi=dpi)
                      for k in picked]
        else:
            paths += [plot_routing(model, x[k], out_dir / f"{kind}-{k}.png", dpi=dpi)
                      for k in picked]
    return paths
