"""Scoring a network on a test set: accuracy and mean losses, batch by batch, with no gradients
(the decoder masked by the prediction, as at test time in the paper); MultiMNIST pairs
counted both right and one or more right."""
import numpy as np

from minicaps import backend
from minicaps.data import multimnist
from minicaps.data.dataset import to_model_input
from minicaps.ops import margin_loss_forward, reconstruction_loss_forward
from minicaps.training.shared_evaluation import evaluate_shared
from minicaps.training.progress import Progress
from minicaps.values import is_int


def loss_terms(model):
    """The names of the terms of ``model``'s loss, as its forward's out, train_epoch's and
    evaluate's results and the metrics carry them: model.loss_terms (BaselineCNN:
    "cross_entropy"), else a CapsNet's "margin_loss" and "reconstruction_loss". The first
    is the classification loss; the total, "loss", adds config.recon_weight times the
    reconstruction loss (0 for the CNN, which has none)."""
    return getattr(model, "loss_terms", ("margin_loss", "reconstruction_loss"))


def loss_totals(model):
    return {"loss": 0.0, **dict.fromkeys(loss_terms(model), 0.0)}


def evaluation_losses(model, out, x, y):
    """(classification loss, reconstruction loss or None) of an evaluation batch, on the
    device, from forward's ``out`` without labels: model.evaluation_losses when the model
    has one (BaselineCNN: the cross-entropy), else a CapsNet's: the margin loss (eq. 4) of
    the lengths and the reconstruction loss of the decoder masked by the prediction."""
    if hasattr(model, "evaluation_losses"):
        return model.evaluation_losses(out, x, y)
    cfg = model.config
    margin = margin_loss_forward(out["lengths"], y, cfg.m_plus, cfg.m_minus, cfg.lam)[0]
    recon = (reconstruction_loss_forward(out["reconstruction"], x.reshape(len(y), -1))[0]
             if "reconstruction" in out else None)
    return margin, recon


def evaluate(model, images, labels, batch_size=256, progress=False, desc="evaluate", log=print,
             per_class=False, targets=None, comm=None):
    """Accuracy and mean losses of ``model`` on uint8 ``images`` with true ``labels``.

    The decoder is masked by the predicted class, as at test time in the paper, and no
    gradients are computed (nor dropout applied). Returns a dict: accuracy, the mean of
    each term of the loss by its name (loss_terms: a CapsNet's margin_loss and
    reconstruction_loss, None without a decoder; the CNN's cross_entropy), loss (their
    total: margin + recon_weight * reconstruction, or the cross-entropy), n; with
    ``per_class``, also per_class: (images, accuracy) of each true class (accuracy None
    for a class without images). Labels (N, 2) with ``targets``: MultiMNIST pairs
    (evaluate_pairs). ``comm``: a distributed.Communicator; each rank then evaluates whole
    batches of the set and the counts are added up (the same accuracy, exactly).
    """
    cfg, n = model.config, len(labels)
    if not is_int(batch_size) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if n == 0:
        raise ValueError("cannot evaluate on an empty set")
    if comm is not None:
        return evaluate_shared(comm, evaluate, model, images, labels, batch_size,
                                           targets, per_class, progress=progress, desc=desc,
                                           log=log)
    if np.ndim(labels) == 2:
        return evaluate_pairs(model, images, labels, targets, batch_size, progress, desc, log)
    if len(images) != n:
        raise ValueError(f"{len(images)} images but {n} labels: evaluate needs one label per image")
    # Everything goes to the device once and every batch's results stay there until the
    # end: one transfer of the losses and one of the count, not a wait per batch on a GPU.
    images = backend.to_device(images, model.device)
    labels = model.check_y(backend.to_device(labels, model.device), n)   # the range, once
    correct, pending, predictions = 0, [], []
    bar = Progress(n, desc, enabled=progress, log=log)
    with model.fixed_weights(n, batch_size):   # the weights' spectrum once for all batches
        for start in range(0, n, batch_size):
            x = to_model_input(images[start:start + batch_size], model.dtype)
            y = labels[start:start + batch_size]
            out, _ = model.forward(x, check_values=False)   # pixels from uint8: finite
            predicted = out["lengths"].argmax(axis=1)
            correct = correct + (predicted == y).sum()
            if per_class:
                predictions.append(predicted)
            pending.append((len(y), *evaluation_losses(model, out, x, y)))
            bar.update(len(y))
            if bar.lines and bar.wants_stats():
                bar.show()
    # The losses are batch means: weighted by the batch size for the mean over all n.
    totals, name = loss_totals(model), loss_terms(model)[0]
    add_losses(totals, pending, model)
    correct = int(correct)
    bar.close()
    result = {"accuracy": correct / n, name: totals[name] / n}
    recon = totals.get("reconstruction_loss", 0.0) / n
    if "reconstruction_loss" in totals:
        result["reconstruction_loss"] = recon if cfg.use_decoder else None
    result["n"] = n
    result["loss"] = result[name] + cfg.recon_weight * recon
    if per_class:
        truth = backend.to_numpy(labels)
        right = backend.to_numpy(model.xp.concatenate(predictions)) == truth
        counts = np.bincount(truth, minlength=cfg.num_classes)
        hits = np.bincount(truth, weights=right, minlength=cfg.num_classes)
        result["per_class"] = [(int(c), float(h / c) if c else None)
                               for c, h in zip(counts, hits)]
    return result


def evaluate_pairs(model, images, labels, targets, batch_size=256, progress=False,
                   desc="evaluate", log=print):
    """MultiMNIST: accuracy as the paper counts it (a pair is right when its two labels
    are the two longest capsules: multimnist.pair_scores), the rate with at least one of
    them right ("one_or_more"), and the losses with both classes present, each digit
    reconstructed from its own label's capsule (targets (N, 2, H, W): each digit alone)."""
    n = len(labels)
    if targets is None or len(targets) != n or len(images) != n:
        raise ValueError("MultiMNIST evaluation needs images, labels (N, 2) and targets "
                         "(N, 2, H, W) of one length")
    totals, both, some = loss_totals(model), 0, 0
    pending = []
    bar = Progress(n, desc, enabled=progress, log=log)
    with model.fixed_weights(n, batch_size):
        for start in range(0, n, batch_size):
            cut = slice(start, start + batch_size)
            x, y, t = pair_batch(model, images[cut], labels[cut], targets[cut])
            out, _ = model.forward(x, y, targets=t, training=False, check_values=False,
                                   host_losses=False)       # no backward: inference routes
            hits = multimnist.pair_hits(out["lengths"], y)       # stays on the device
            both, some = both + (hits == 2).sum(), some + (hits >= 1).sum()
            pending.append((len(y), out[loss_terms(model)[0]], out.get("reconstruction_loss")))
            bar.update(len(y))
    add_losses(totals, pending, model)
    bar.close()
    result = {"accuracy": int(both) / n, "one_or_more": int(some) / n}
    result.update({key: value / n for key, value in totals.items()})
    result["n"] = n
    return result


def pair_batch(model, images, labels, digits):
    """x (M, 36, 36, 1), labels (M, 2) and targets (M, 2, 36, 36, 1) on the model's device
    in its dtype, from MultiMNIST's uint8 pictures."""
    m = len(labels)
    images, digits = (backend.to_device(a, model.device) for a in (images, digits))
    x = to_model_input(images, model.dtype)
    targets = to_model_input(digits.reshape((2 * m,) + digits.shape[2:]), model.dtype)
    y = backend.to_device(np.asarray(labels), model.device)
    return x, y, targets.reshape((m, 2) + targets.shape[1:])


EVAL_BATCH = 256      # images per forward pass when a run evaluates


class DivergedError(ValueError):
    """The loss became NaN or infinite: training stopped before saving anything of it."""
    # On several ranks the losses are the whole batch's (or the whole set's), the same on
    # every rank: each raises this at the same step, and none needs to end the others.
    all_ranks = True


def add_losses(totals, pending, model):
    """Bring the ``pending`` batches' losses (size, classification loss, reconstruction
    or None[, the step]; on the device) to the host in one transfer and add them, weighted
    by the batch size, to ``totals`` (loss_totals: keyed by loss_terms) as floats: the
    total loss as forward's host_losses computes it. Empties ``pending``; returns the
    number of images added. A non-finite loss raises DivergedError naming its step."""
    added = sum(entry[0] for entry in pending)
    if pending:
        xp, zero = model.xp, model.xp.zeros((), dtype=model.dtype)
        values = backend.to_numpy(xp.stack([xp.stack([entry[1], zero if entry[2] is None
                                                      else entry[2]]) for entry in pending]))
        bad = ~np.isfinite(values).all(axis=1)
        if bad.any():
            entry = pending[int(np.argmax(bad))]
            where = f"at step {entry[3]}" if len(entry) > 3 else "in evaluation"
            raise DivergedError(
                f"the loss became {values[int(np.argmax(bad))].sum()} {where}: the run "
                f"diverged (a learning rate too high for this network?), so it stopped "
                f"without saving this epoch; its last checkpoint is as the last good epoch "
                f"left it. Try a smaller --lr")
        name = loss_terms(model)[0]
        for (m, _, recon, *_), (first, reconstruction) in zip(pending, values):
            first = float(first)
            reconstruction = 0.0 if recon is None else float(reconstruction)
            totals["loss"] += m * (first + model.config.recon_weight * reconstruction)
            totals[name] += m * first
            if "reconstruction_loss" in totals:
                totals["reconstruction_loss"] += m * reconstruction
        pending.clear()
    return added
