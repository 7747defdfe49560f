"""Is there anything to see? The warnings a picture of a network that has learned little
carries (in red in the picture, and to render's ``warn``), and the measures behind them.

A picture of a network that has learned little looks like a picture of nothing. Measured
on MNIST test images 0-7 with a CapsNet of 64 conv1 channels and 16 primary maps (and
the numbers a reviewer gave for a weakly trained quick-start run):

                                     untrained    weak run     1 epoch      2 epochs
  test accuracy (the average's)         0.10      0.94-0.95     0.988        0.991
  max_ij |c_ij - 1/J|, last iteration  < 1e-8       0.016     0.10-0.29    0.25-0.57
  largest change of a pixel from the
  reconstruction in the fig. 4 grid     0.006     0.03-0.06   0.51-0.77    0.79-0.93

Untrained capsules are about 3e-4 long, so no prediction agrees with any output and
routing leaves every coupling at 1/J. COUPLING_MIN: warn when no coupling moved by half
of 1/J (0.05 for 10 classes). PIXEL_CHANGE_MIN: warn when no nudge moves a pixel by a
tenth of the grey range, about the least change two grey cells side by side show.
LINEAR_ACCURACY: a softmax regression on the raw pixels (no hidden layer) reaches 0.923
on MNIST (measured: 10 epochs of SGD, batch 100, step 0.5) and about 0.84 on
Fashion-MNIST (that data set's own benchmark); a capsule network below it has learned
less than a linear classifier. The accuracy alone is not enough: the weak run passes it
while its routing and perturbation pictures show nothing, hence the two other rules.
"""
import numpy as np

from minicaps.viz.arrays import NUDGES

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
