"""Where networks are right and wrong on a test set: the confusion matrix (`minicaps
plot`), two networks' predictions side by side (`minicaps compare`), and accuracy against
the strength of each transformation (`minicaps robustness`)."""
import numpy as np

from minicaps.viz.arrays import agreement, mosaic
from minicaps.viz.canvas import (class_name, class_ticks, new_figure, one_image, save, show,
                                 titled, warned)


def plot_confusion(counts, path, dpi=100, weights=None, notes=(), warn=None, classes=None):
    """The confusion matrix with its counts written in, its rows and columns named after
    ``classes`` when given. 7 x 6.5 inches."""
    counts = np.asarray(counts)
    K = counts.shape[0]
    fig = new_figure(7.0, 6.5, dpi)
    ax = fig.subplots()
    im = ax.imshow(np.log1p(counts), cmap="Blues")
    for t in range(K):
        for p in range(K):
            if counts[t, p]:
                ax.text(p, t, str(counts[t, p]), ha="center", va="center", fontsize=7,
                        color="white" if counts[t, p] > counts.max() / 3 else "black")
    class_ticks(ax, classes, K, "x")
    class_ticks(ax, classes, K, "y")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    total = counts.sum()
    ax.set_title(titled(f"Confusion matrix: {total} test images, accuracy "
                        f"{np.trace(counts) / max(total, 1):.4f}", weights), fontsize=9)
    top = int(counts.max())
    ticks = [c for c in (0, 1, 10, 100, 1000, 10000, 100000) if c < 0.7 * top] + [top]
    bar = fig.colorbar(im, ax=ax, shrink=0.8)
    bar.set_ticks(np.log1p(ticks), labels=[str(c) for c in ticks])
    bar.set_label("images (colour on a log scale)")
    return save(fig, path, warned(warn, None, notes))


# --- two networks on one test set (what `minicaps compare` draws) ---------------------------------

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
    fig = new_figure(1.5 * per_row, 2.2 * len(rows) + 1.0, dpi)
    axes = fig.subplots(len(rows), per_row, squeeze=False)
    for r, (row_title, picked) in enumerate(rows):
        for c in range(per_row):
            ax = axes[r, c]
            ax.axis("off")
            if c >= len(picked):
                continue
            k = picked[c]
            show(ax, one_image(x, k))
            lines = [f"class {class_name(classes, labels[k])}"]
            for name, pred in zip(names, predictions):
                lines.append(f"{name}: {class_name(classes, pred[k])}")
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
    return save(fig, path, warned(warn, None, notes))


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
    fig = new_figure(4.0 * len(kinds), 5.4 if examples else 4.2, dpi)
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
            show(strip, mosaic(pictures[None], value=0.5))
            strip.set_xlabel("one test image at each strength above", fontsize=8)
    fig.suptitle(title, fontsize=10)
    return save(fig, path, warned(warn, None, notes))
