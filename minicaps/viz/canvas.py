"""What every picture shares: a matplotlib Figure of a checked size, its title naming the
weights drawn, its warnings, the PNG written, and the small pieces the plots draw with.

Plots are drawn on a matplotlib ``Figure`` without pyplot, so nothing touches a display
or the global backend; matplotlib is imported when the first figure is made, so the
arrays behind the pictures need none (``pip install "minicaps[viz]"``). Every plot_*
function takes weights= (said in its titles: None, "trained" or "average"), notes=
(warnings to write into it) and warn= (called with the plot's own warning,
routing_warning or perturbation_warning, when there is one).
"""
import math
from pathlib import Path

import numpy as np

VIZ_EXTRA = 'pip install "minicaps[viz]"'
WEIGHTS = {"trained": "trained parameters", "average": "moving average of the parameters"}

# The most pixels a picture may have (4 bytes each while it is drawn: about 270 MB), and
# on a side (matplotlib draws fewer than 65,536).
MAX_PIXELS, MAX_SIDE = 1 << 26, 1 << 15


# --- the figure, its title, its notes, its file ----------------------------------------------

def new_figure(width, height, dpi):
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


def titled(title, weights):
    """The title, and a second line naming the weights drawn (none when weights is None)."""
    if weights is None:
        return title
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be None, 'trained' or 'average', got {weights!r}")
    return f"{title}\nweights: {WEIGHTS[weights]}"


def warned(warn, own, notes):
    """Pass the plot's own warning (None: none) to ``warn``; return every note to draw."""
    if own and warn is not None:
        warn(own)
    return [n for n in (*notes, own) if n]


def save(fig, path, notes=()):
    """Write the figure as a PNG, with ``notes`` (warnings) in red along its bottom. The
    file is replaced whole (checkpoint.replace_file): a link in its place is replaced, not
    followed out of the folder."""
    import textwrap
    from minicaps.io.writer import replace_file
    path = Path(path)
    if notes:
        width = int(fig.get_figwidth() * 14)        # about the characters of 8 pt in a line
        fig.supxlabel("\n".join(textwrap.fill("Note: " + n, width) for n in notes),
                      color="darkred", fontsize=8)
    replace_file(path, lambda f: fig.savefig(f, format="png", dpi=fig.dpi))
    return path


# --- classes by name -------------------------------------------------------------------------

def class_name(classes, j, width=14):
    """Class j as the pictures say it: its name when the data has names (a folder's,
    CIFAR-10's), cut to ``width`` characters; else the number j."""
    if j is None or j == "?":
        return "?"
    name = str(classes[int(j)]) if classes is not None and len(classes) else str(int(j))
    return name if len(name) <= width else name[:width - 1] + "…"


def also_named(classes, j):
    """What follows class j's number in a title: its name in brackets where the data has
    names, else nothing."""
    return "" if classes is None else f" ({class_name(classes, j)})"


def class_ticks(ax, classes, n, axis="x"):
    """Ticks 0..n-1 on ``axis`` labelled with the class names (slanted when long)."""
    names = [class_name(classes, j) for j in range(n)]
    long = max(len(name) for name in names) > 2
    if axis == "x":
        ax.set_xticks(np.arange(n), names, rotation=45 if long else 0,
                      ha="right" if long else "center")
    else:
        ax.set_yticks(np.arange(n), names)


# --- images ----------------------------------------------------------------------------------

def show(ax, image, title=None, **kw):
    """A grey image in [0, 1] on ``ax``, without ticks, with a small title."""
    ax.imshow(image, cmap="gray", vmin=0, vmax=1, interpolation="nearest", **kw)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)


def one_image(x_np, k):
    """Image k of a (N, H, W, C) batch as imshow takes it: (H, W) for one channel."""
    return x_np[k, ..., 0] if x_np.shape[-1] == 1 else x_np[k]


def two_row_grid(n, title_inches, dpi):
    """A figure of n cells in columns of up to 8, each an input over a picture made from
    it: (figure, axes (2 rows, cols), cols), 1.5 x 3 inches a cell, axes off."""
    cols = min(n, 8)
    rows = math.ceil(n / cols)
    fig = new_figure(1.5 * cols, 3.0 * rows + title_inches, dpi)
    axes = fig.subplots(2 * rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    return fig, axes, cols
