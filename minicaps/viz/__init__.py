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

The modules, in the order they build on each other:

    arrays.py      the numbers behind each picture (no matplotlib)
    heuristics.py  is there anything to see? the warnings, their thresholds and measures
    canvas.py      the Figure, its title and notes, the PNG, and shared drawing pieces
    capsules.py    reconstructions, pose perturbation, routing, capsule lengths
    pairs.py       MultiMNIST pairs (fig. 5)
    curves.py      training curves from metrics.jsonl; runs side by side at equal budgets
    accuracy.py    confusion matrix, two networks compared, robustness
    dispatch.py    render: every plot of a checkpoint (`minicaps plot`)

A checkpoint holds two sets of weights, the trained parameters and their moving average
(checkpoint.model_with); ``weights=`` ("trained" or "average") puts the one drawn in every
title. A network that has learned little draws pictures of nothing (couplings all 1/J, a
perturbation grid of one image repeated); routing_warning, perturbation_warning and
accuracy_warning say so, in red in the picture and to render's ``warn``. Their thresholds
and the measurements behind them are in heuristics.py.
"""
from minicaps.viz.arrays import (NUDGES, agreement, confusion_matrix, decode, images_seen,
                                 lengths_of_all, mosaic, overlay, pair_reconstructions,
                                 perturbation_grid, primary_capsules, read_metrics,
                                 reconstructions, routing_couplings, wrong_pairs)
from minicaps.viz.heuristics import (COUPLING_MIN, PIXEL_CHANGE_MIN, accuracy_warning,
                                     coupling_spread, perturbation_warning, pixel_changes,
                                     routing_warning)
from minicaps.viz.capsules import (plot_lengths, plot_perturbation, plot_reconstructions,
                                   plot_routing)
from minicaps.viz.pairs import plot_pairs
from minicaps.viz.curves import plot_curves, plot_runs, run_budget
from minicaps.viz.accuracy import plot_compare, plot_confusion, plot_robustness
from minicaps.viz.dispatch import KINDS, render

__all__ = [
    "NUDGES", "agreement", "confusion_matrix", "decode", "images_seen", "lengths_of_all",
    "mosaic", "overlay", "pair_reconstructions", "perturbation_grid", "primary_capsules",
    "read_metrics", "reconstructions", "routing_couplings", "wrong_pairs",
    "COUPLING_MIN", "PIXEL_CHANGE_MIN", "accuracy_warning", "coupling_spread",
    "perturbation_warning", "pixel_changes", "routing_warning",
    "plot_lengths", "plot_perturbation", "plot_reconstructions", "plot_routing", "plot_pairs",
    "plot_curves", "plot_runs", "run_budget", "plot_compare", "plot_confusion", "plot_robustness",
    "KINDS", "render",
]
