"""Training curves from a run's metrics.jsonl: loss and accuracy per epoch, the training
set's running mean, the test (and validation) set with the trained parameters and their
moving average."""
import math
from pathlib import Path

from minicaps.viz.arrays import images_seen, read_metrics
from minicaps.viz.canvas import new_figure, save, warned

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
    fig = new_figure(10.0, 4.5, dpi)
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
    return save(fig, path, warned(warn, None, notes))


def _count(n):
    """60000 -> "60k", 1500000 -> "1.5M"."""
    if n >= 1e6:
        return f"{n / 1e6:.3g}M"
    return f"{n / 1e3:.3g}k" if n >= 1e3 else str(int(n))


def run_budget(metrics, split="test"):
    """One run's accuracy against its budget, from read_metrics' list: (images seen by the
    end of each epoch, training seconds by then, the accuracy of ``split`` after it), each a
    list over the epochs. The accuracy is the moving average's where the run kept one (the
    network it delivers), else the trained parameters'. Training seconds are the epochs'
    own (evaluation left out). A ValueError when an epoch lacks its size or time."""
    seen = images_seen(metrics)
    if seen is None:
        raise ValueError("these metrics do not say how many images each epoch saw "
                         "(images_per_second and epoch_seconds)")
    key = f"avg_{split}_accuracy" if all(m.get(f"avg_{split}_accuracy") is not None
                                          for m in metrics) else f"{split}_accuracy"
    if any(m.get(key) is None for m in metrics):
        raise ValueError(f"not every epoch has a {split} accuracy")
    seconds, total = [], 0.0
    for m in metrics:
        total += m["epoch_seconds"]
        seconds.append(total)
    return [int(s) for s in seen], seconds, [m[key] for m in metrics]


def plot_runs(runs, labels, path, split="test", dpi=100, title=None):
    """Two or more runs' accuracy on one picture: against the images (pairs) seen on the
    left, against training time on the right, so that runs compare at equal budgets of
    either kind. ``runs``: read_metrics' lists; ``labels``: one name each."""
    fig = new_figure(10.0, 4.5, dpi)
    axes = fig.subplots(1, 2)
    for metrics, label in zip(runs, labels):
        seen, seconds, accuracy = run_budget(metrics, split)
        line = f"{label} (last {accuracy[-1]:.4f})"
        axes[0].plot(seen, accuracy, marker="o", markersize=4, label=line)
        axes[1].plot([s / 60 for s in seconds], accuracy, marker="o", markersize=4, label=line)
    axes[0].set_xlabel("images seen in training")
    axes[1].set_xlabel("training time (minutes; evaluation left out)")
    for ax in axes:
        ax.set_ylabel(f"{split} accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].xaxis.set_major_formatter(_thousands())
    fig.suptitle(title or f"{split} accuracy at equal images seen (left) and equal training "
                 "time (right)", fontsize=9)
    return save(fig, path)


def _thousands():
    from matplotlib.ticker import FuncFormatter
    return FuncFormatter(lambda x, _: _count(x))
