"""What the capsules learned, drawn: inputs over their reconstructions, the pose
perturbation of the paper's fig. 4, the couplings of routing by agreement iteration by
iteration, and the capsule lengths. The arrays come from viz.arrays, the warnings from
viz.heuristics; each PNG's size in inches is in its docstring (times ``dpi``)."""
import math

import numpy as np

from minicaps import backend
from minicaps.viz.arrays import (NUDGES, as_batch, mosaic, perturbation_grid, reconstructions,
                                 routing_couplings)
from minicaps.viz.canvas import (also_named, class_name, class_ticks, new_figure, one_image,
                                 save, show, titled, two_row_grid, warned)
from minicaps.viz.heuristics import perturbation_warning, pixel_changes, routing_warning

SEPARATOR = "0.45"            # the grey between capsule maps: in no colour map used here


def plot_reconstructions(model, x, labels, path, dpi=100, weights=None, notes=(), warn=None,
                         classes=None):
    """Inputs (top) over their reconstructions (below), titled with the true and the
    predicted class (by name, given ``classes``). n images in columns of up to 8:
    (1.5 cols) x (3 rows + 0.5) inches."""
    x_np = backend.to_numpy(as_batch(model, x))
    preds, recons = reconstructions(model, x_np)
    n = len(preds)
    fig, axes, cols = two_row_grid(n, 0.5, dpi)
    for k in range(n):
        r, c = divmod(k, cols)
        truth = "?" if labels is None else int(labels[k])
        show(axes[2 * r, c], one_image(x_np, k),
             f"true {class_name(classes, truth)}\npred {class_name(classes, preds[k])}"
             if classes is not None else f"true {truth}, pred {preds[k]}")
        show(axes[2 * r + 1, c], recons[k], "reconstruction")
    fig.suptitle(titled("Each input over its reconstruction: the decoder sees only the "
                        "longest capsule (the prediction)", weights), fontsize=9)
    return save(fig, path, warned(warn, None, notes))


def plot_perturbation(model, x, path, label=None, dpi=100, weights=None, notes=(), warn=None,
                      classes=None):
    """Fig. 4 of the paper: the input and its reconstruction, then one row per dimension of
    the winning capsule, each column a nudge in [-0.25, 0.25] added to that dimension before
    decoding; the framed column (nudge 0) is the reconstruction. A row's label gives the
    largest change of a pixel along it. Warns when no nudge moves a pixel by
    PIXEL_CHANGE_MIN. (0.5 * 11 + 3) x (max(0.5 D, 3.5) + 1.5) inches."""
    from matplotlib.patches import Rectangle
    x_np = backend.to_numpy(as_batch(model, x))
    grid, label = perturbation_grid(model, x_np, label)
    D, S, h, w = grid.shape[:4]
    zero = list(NUDGES).index(0)
    changes = pixel_changes(grid)
    height = max(0.5 * D, 3.5) + 1.5
    fig = new_figure(0.5 * S + 3.0, height, dpi)
    left, right = fig.subfigures(1, 2, width_ratios=[1.6, 0.5 * S + 1.4])
    top, bottom, rest = left.subplots(3, 1, height_ratios=[1.8, 1.8, max(height - 4.6, 0.1)])
    rest.axis("off")
    show(top, one_image(x_np, 0), "input")
    named = also_named(classes, label)
    show(bottom, grid[0, zero], f"its reconstruction\n(capsule {label}{named}, no nudge)")
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
    fig.suptitle(titled(f"Pose perturbation (the paper's fig. 4): each of the {D} dimensions "
                        f"of capsule {label}{named}, nudged and decoded", weights), fontsize=9)
    return save(fig, path, warned(warn, perturbation_warning(grid), notes))


def plot_routing(model, x, path, iters=None, dpi=100, weights=None, notes=(), warn=None,
                 classes=None):
    """The input, then one row per routing iteration: the c(i -> k) that iteration used, for
    the predicted class k, on the primary capsule grid (one tile per capsule map, grey
    between tiles), and how far the couplings summed per map and per class are from uniform.
    The colour scale runs from 0 (blue) through the uniform 1/J (white) to 2/J or more
    (red). Warns when the couplings barely left uniform (COUPLING_MIN). 14 x (2 T + 1.5)
    inches."""
    from matplotlib import colormaps
    x_np = backend.to_numpy(as_batch(model, x))
    r = routing_couplings(model, x_np, iters)
    T, rows, cols, maps = r["grid"].shape
    J, k = r["per_class"].shape[1], r["label"]
    per_row = min(maps, 4 if maps <= 16 else 8)
    tile_rows = math.ceil(maps / per_row)
    tiles = np.full((tile_rows * per_row, rows, cols), np.nan)
    fig = new_figure(14.0, 2.0 * T + 1.5, dpi)
    tiles_wide = (per_row * (cols + 1)) / (tile_rows * (rows + 1))    # the map's width / height
    gs = fig.add_gridspec(T, 4, width_ratios=[1.4, min(1.8 * tiles_wide, 5.0), 3.4, 2.2])
    show(fig.add_subplot(gs[:, 0]), one_image(x_np, 0),
         f"input\npredicted {k}"
         + also_named(classes, k)
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
                        f"class (outlined: {class_name(classes, k)}, predicted)",
                        f"$\\sum_i c_{{ij}}$ minus\nuniform {uniform_class:g}", "per class",
                        outline=k)
        if classes is not None:
            class_ticks(per_class, classes, J)
    bar = fig.colorbar(im, ax=fig.axes[1::3], shrink=0.8, pad=0.01, extend="max")
    bar.set_label(f"c(i -> {k}): white = uniform 1/{J}, darkest red = 2/{J} or more;\n"
                  f"grey: between maps", fontsize=7)
    bar.ax.tick_params(labelsize=6)
    named = also_named(classes, k)
    fig.suptitle(titled(f"Routing by agreement: how the {rows * cols * maps} primary capsules "
                        f"i send their output to class {k}{named}, iteration by iteration",
                        weights), fontsize=9)
    return save(fig, path, warned(warn, routing_warning(r), notes))


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
    x_np = backend.to_numpy(as_batch(model, x))
    lengths = model.predict_lengths(x_np)
    n, J = lengths.shape
    cfg = model.config
    fig = new_figure(8.0, 1.75 * n + 0.75, dpi)
    axes = fig.subplots(n, 2, squeeze=False, width_ratios=[1, 4])
    for k in range(n):
        pred = int(lengths[k].argmax())
        truth = None if labels is None else int(labels[k])
        show(axes[k, 0], one_image(x_np, k), f"true {class_name(classes, truth)}")
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
            class_ticks(ax, classes, J)
        else:
            ax.set_xticks(np.arange(J), [""] * J)
        ax.tick_params(labelsize=7)
        ax.set_ylabel("|v_j|", fontsize=8)
        ax.set_title(f"predicted {class_name(classes, pred)} (red), true class outlined",
                     fontsize=8)
    axes[-1, 1].set_xlabel("class j", fontsize=8)
    fig.suptitle(titled(f"Capsule lengths |v_j|: the probability that class j is present "
                        f"(dotted: margins m+ = {cfg.m_plus}, m- = {cfg.m_minus})", weights),
                 fontsize=9)
    return save(fig, path, warned(warn, None, notes))

