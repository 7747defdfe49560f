"""One epoch of the paper's training: shuffled minibatches, random shifts (crops, flips), a
forward and backward pass, an Adam step with the learning rate lr0 * 0.96^(step / 2000).

Every random draw of an epoch (the order, the shifts) comes from the run's one generator, in
a fixed order, so that a resumed run draws what the uninterrupted one would have."""
import numpy as np

from minicaps import backend
from minicaps.data import multimnist
from minicaps.data.augment import crop_images, draw_crops, draw_flips, flip_images
from minicaps.data.augment import draw_shifts, shift_images
from minicaps.data.dataset import to_model_input
from minicaps.training.evaluation import (DivergedError, add_losses, loss_terms, loss_totals,
                                          pair_batch)
from minicaps.training.optim import NonFiniteGradientError
from minicaps.training import clock
from minicaps.training.progress import Progress


def learning_rate(step, lr0=1e-3, decay_rate=0.96, decay_steps=2000):
    """lr0 * decay_rate^(step / decay_steps): continuous exponential decay, as the authors'
    code (tf.train.exponential_decay), where ``step`` counts the updates already made."""
    return lr0 * decay_rate ** (step / decay_steps)


def epoch_draws(n, batch_size, rng, shift, size):
    """The random draws of one epoch, in the order the loop of examples/train_mnist.py
    makes them: a permutation of the n images, then each batch's shifts (dy, dx), here
    as arrays over the permuted positions (None without shifts)."""
    order, draws = epoch_plan(n, batch_size, rng, shift, size)
    return order, draws.get("dy"), draws.get("dx")


def epoch_plan(n, batch_size, rng, shift, size, crop=None, flip=False):
    """A permutation of the n images, then for each batch in turn its crop corners (cy,
    cx), shifts (dy, dx) and flips, each drawn only when asked for (so that shifts alone
    draw what epoch_draws always has). Returns (order, draws): arrays over the permuted
    positions, keyed "cy", "cx", "dy", "dx", "flip"."""
    order = rng.permutation(n)
    crop_size = size if crop is None else (crop, crop)
    parts = []
    for k in range(0, n, batch_size):
        m, batch = len(order[k:k + batch_size]), {}
        if crop is not None:
            batch["cy"], batch["cx"] = draw_crops(m, crop, rng, size)
        if shift:
            batch["dy"], batch["dx"] = draw_shifts(m, shift, rng, crop_size)
        if flip:
            batch["flip"] = draw_flips(m, rng)
        parts.append(batch)
    keys = parts[0].keys() if parts else ()
    return order, {key: np.concatenate([p[key] for p in parts]) for key in keys}


def augment_batch(batch, draws, k, m, shift, crop):
    """Batch ``k:k + m`` of the epoch cropped, shifted and flipped as ``draws`` say."""
    if crop is not None:
        batch = crop_images(batch, draws["cy"][k:k + m], draws["cx"][k:k + m], crop)
    if shift:
        batch = shift_images(batch, draws["dy"][k:k + m], draws["dx"][k:k + m], shift)
    if "flip" in draws:
        batch = flip_images(batch, draws["flip"][k:k + m])
    return batch


def train_epoch(model, optimizer, train, rng, step, *, batch_size, lr, lr_decay, decay_steps,
                shift, crop=None, flip=False, average=None, progress=True, desc="train",
                log=print, pairs_per_digit=0, comm=None, after_step=None):
    """One pass over ``train`` in an order drawn from ``rng``; returns (step, stats).

    The epoch's random draws are made first (epoch_plan); the images, the order and the
    draws then go to the model's device once, and every batch is gathered, cropped
    (``crop``: random crop x crop squares), shifted, flipped (``flip``) and scaled there: no
    transfer from the host per batch on a GPU. ``average``: a ParameterAverage to update
    after every step.

    stats: the mean loss and each of its terms (loss_terms: margin and reconstruction
    loss, or the cross-entropy) and the accuracy over the epoch's images (each batch's
    value weighted by its size), seconds, images per second.

    ``pairs_per_digit`` K > 0: MultiMNIST. The epoch is K rounds of pairs, each training
    digit once the first of a pair whose second is of another class, both shifted by up to
    4 pixels on 36x36 (multimnist.iterate_epoch, drawn from ``rng``); both classes are
    present in the margin loss and each digit is reconstructed from its own capsule; the
    accuracy counts a pair right when its labels are the two longest capsules.

    ``comm``: a distributed.Communicator. Every rank draws the whole epoch's plan, takes
    its share of each batch and adds its gradients to the others' (Communicator.
    loss_and_grads): every rank then takes one process's step.

    ``after_step``: called with the step count after every update (train's keep_every).
    """
    if pairs_per_digit:
        return _train_pairs_epoch(model, optimizer, train, rng, step, batch_size, lr, lr_decay,
                                  decay_steps, pairs_per_digit, average, progress, desc, log,
                                  comm, after_step)
    device, n = model.device, len(train)
    order, draws = epoch_plan(n, batch_size, rng, shift, train.images.shape[1:3], crop, flip)
    order = backend.to_device(order, device)
    draws = {key: backend.to_device(value, device) for key, value in draws.items()}
    images = backend.to_device(train.images, device)
    labels = model.check_y(backend.to_device(train.labels, device), n)   # the range, once
    totals, name = loss_totals(model), loss_terms(model)[0]
    # The batches' losses and correct counts stay on the device and are read when the bar
    # shows them (every 10 steps) or at the end of the epoch: on a GPU the host queues
    # batch after batch without waiting for one (images made from uint8 pixels and
    # labels checked above need no check of their values per batch).
    pending, correct, seen = [], 0, 0
    start = clock.now()
    bar = Progress(n, desc, enabled=progress, log=log)   # a bar, or a line every 30 s
    for k in range(0, n, batch_size):
        idx = order[k:k + batch_size]
        mine = _share(comm, len(idx))               # all of it in one process
        batch = augment_batch(images[idx[mine]], draws, k + mine.start, len(idx[mine]), shift,
                              crop)
        x, y = to_model_input(batch, model.dtype), labels[idx[mine]]
        step, out = _step(model, optimizer, average, step, (lr, lr_decay, decay_steps), x, y,
                          (len(idx), mine.start, _labels_right), comm=comm)
        if after_step is not None:
            after_step(step)
        pending.append((len(idx), out[name], out.get("reconstruction_loss"), step))
        correct = correct + out["correct"]
        bar.update(len(idx))
        # On the CPU the losses are read every step (they are host numbers already), so a
        # NaN stops the run at once; on a GPU when the progress shows them and at the end.
        show = bar.wants_stats(step)
        if device == "cpu" or show:
            seen += add_losses(totals, pending, model)
        if show:
            bar.show(**{"running loss": totals["loss"] / seen,
                        "running acc": int(correct) / seen})
    return step, _epoch_stats(totals, pending, model, int(correct), n, start, bar)


def _step(model, optimizer, average, step, schedule, x, y, batch, targets=None, comm=None):
    """One training step: the gradients, Adam at the scheduled rate (schedule: lr, decay
    rate, decay steps), the average; returns (the step count after it, forward's out, with
    "correct": how many it got right). batch: (its size, the first image of x in it, how to
    count the right answers: right(lengths, y)); with a communicator ``comm``, x and y
    are this rank's share, and the gradients, losses and count the whole batch's."""
    more = {} if targets is None else {"targets": targets}
    size, first, right = batch
    if comm is not None:
        grads, out = comm.loss_and_grads(model, x, y, size, first, right, check_values=False,
                                         host_losses=False, **more)
    else:
        _, grads, out = model.loss_and_grads(x, y, check_values=False, host_losses=False,
                                             **more)
        out["correct"] = right(out["lengths"], y)
    optimizer.lr = learning_rate(step, *schedule)
    try:
        optimizer.step(model.params, grads)
    except NonFiniteGradientError as e:     # a NaN loss says so, as it would on a GPU
        add_losses(loss_totals(model), [(len(y), out[loss_terms(model)[0]],
                                           out.get("reconstruction_loss"), step + 1)], model)
        raise DivergedError(f"{e} at step {step + 1}: the run diverged (a learning rate too "
                            f"high for this network?), so it stopped without saving this "
                            f"epoch; its last checkpoint is as the last good epoch left it. "
                            f"Try a smaller --lr") from e
    if average is not None:
        average.update(model.params, optimizer.t)
    return step + 1, out


def _share(comm, m):
    """This rank's slice of a batch of m (all of it without a communicator)."""
    return slice(0, m) if comm is None else comm.share(m)


def _labels_right(lengths, y):
    return (lengths.argmax(axis=1) == y).sum()


def _pairs_right(lengths, y):
    return (multimnist.pair_hits(lengths, y) == 2).sum()       # on the device


def _epoch_stats(totals, pending, model, correct, n, start, bar):
    """The epoch's mean losses and accuracy, seconds and images per second (the pending
    losses brought in first)."""
    add_losses(totals, pending, model)
    bar.close()
    seconds = clock.now() - start
    stats = {key: value / n for key, value in totals.items()}
    stats.update(accuracy=correct / n, seconds=seconds,
                 images_per_second=n / seconds if seconds > 0 else None)
    return stats


def _train_pairs_epoch(model, optimizer, train, rng, step, batch_size, lr, lr_decay,
                       decay_steps, pairs, average, progress, desc, log, comm=None,
                       after_step=None):
    """train_epoch for MultiMNIST: the pairs made on the host as the epoch goes."""
    n = len(train) * pairs
    totals, name = loss_totals(model), loss_terms(model)[0]
    pending, correct, seen = [], 0, 0
    start = clock.now()
    bar = Progress(n, desc, enabled=progress, log=log)
    for batch in multimnist.iterate_epoch(train.images, train.labels, pairs, batch_size, rng):
        m, mine = len(batch.labels), _share(comm, len(batch.labels))
        x, y, targets = pair_batch(model, batch.images[mine], batch.labels[mine],
                                    batch.digits[mine])
        step, out = _step(model, optimizer, average, step, (lr, lr_decay, decay_steps), x, y,
                          (m, mine.start, _pairs_right), targets, comm)
        if after_step is not None:
            after_step(step)
        pending.append((m, out[name], out.get("reconstruction_loss"), step))
        correct = correct + out["correct"]
        bar.update(m)
        show = bar.wants_stats(step)
        if model.device == "cpu" or show:
            seen += add_losses(totals, pending, model)
        if show:
            bar.show(**{"running loss": totals["loss"] / seen, "running acc": int(correct) / seen})
    return step, _epoch_stats(totals, pending, model, int(correct), n, start, bar)




