"""MultiMNIST pairs, the paper's fig. 5: each pair over what its two longest capsules
reconstruct, one decoded alone in red and the other in green."""
from minicaps import backend
from minicaps.viz.arrays import as_batch, overlay, pair_reconstructions
from minicaps.viz.canvas import one_image, save, show, titled, two_row_grid, warned


def plot_pairs(model, x, labels, path, dpi=100, weights=None, notes=(), warn=None):
    """The paper's fig. 5: each MultiMNIST pair, then the reconstructions from its two
    longest capsules, red and green over it, titled with the true labels (labels (N, 2))
    and the two predicted (longest capsules), "right" or "wrong" as the paper counts.
    n pairs in columns of up to 8: (1.5 cols) x (3 rows + 0.6) inches."""
    x_np = backend.to_numpy(as_batch(model, x))
    preds, recons = pair_reconstructions(model, x_np)
    n = len(preds)
    fig, axes, cols = two_row_grid(n, 0.6, dpi)
    for k in range(n):
        r, c = divmod(k, cols)
        truth = sorted(int(t) for t in labels[k])
        guess = [int(p) for p in preds[k]]
        verdict = "right" if sorted(guess) == truth else "wrong"
        show(axes[2 * r, c], one_image(x_np, k), f"true {truth[0]} and {truth[1]}")
        axes[2 * r + 1, c].imshow(overlay(one_image(x_np, k), recons[k, 0], recons[k, 1]),
                                  interpolation="nearest")
        axes[2 * r + 1, c].set_title(f"red {guess[0]}, green {guess[1]}: {verdict}",
                                     fontsize=8, color="black" if verdict == "right" else "darkred")
    fig.suptitle(titled("Two overlapping digits (top); below, over the pair in gray, what "
                        "the two longest capsules reconstruct,\neach decoded alone: the "
                        "longest in red, the second in green (yellow where both draw)",
                        weights), fontsize=9)
    return save(fig, path, warned(warn, None, notes))
