"""Every plot of a checkpoint, by kind: what `minicaps plot` runs."""
from pathlib import Path

import numpy as np

from minicaps.viz.accuracy import plot_confusion
from minicaps.viz.arrays import confusion_matrix, lengths_of_all, read_metrics, wrong_pairs
from minicaps.viz.capsules import (plot_lengths, plot_perturbation, plot_reconstructions,
                                   plot_routing)
from minicaps.viz.curves import plot_curves
from minicaps.viz.heuristics import accuracy_warning
from minicaps.viz.pairs import plot_pairs

KINDS = ("reconstructions", "perturbation", "routing", "lengths", "curves", "confusion",
         "pairs")
DEFAULT_COUNT = {"reconstructions": 8, "perturbation": 2, "routing": 1, "lengths": 4,
                 "pairs": 8}


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
