"""Evaluation shared out over the ranks of a distributed run: each takes whole batches, and
the counts and loss sums are added up, so the accuracy is the one a single process finds."""
import numpy as np


def evaluate_shared(comm, evaluate, model, images, labels, batch_size, targets=None,
                    per_class=False, **options):
    """evaluate() with every rank taking whole batches of the set (batch_share) and the
    counts and loss sums added up: the accuracy one process computes, exactly."""
    from minicaps.training.evaluation import DivergedError
    n = len(labels)
    mine = comm.batch_share(n, batch_size)
    m, part = mine.stop - mine.start, {}
    try:
        if m:
            part = evaluate(model, images[mine], labels[mine], batch_size,
                            targets=None if targets is None else targets[mine],
                            per_class=per_class, **options)
    except DivergedError:            # NaN here: every rank learns it from the sums below
        part = {"loss": float("nan")}
    # rank 0 always has a share: its keys, in its order, name the sums
    keys = comm.gather_objects([k for k in part if k != "per_class"], "the evaluation's keys")[0]
    sums = np.array([(1 if k == "n" else m) * (part.get(k) or 0.0) for k in keys], dtype=np.float64)
    if per_class:
        counts = np.zeros((2, model.config.num_classes))
        for c, (count, acc) in enumerate(part.get("per_class", [])):
            counts[:, c] = count, round(count * acc) if acc is not None else 0
        sums = np.concatenate([sums, counts.ravel()])
    comm.allreduce(sums, "the evaluation's sums")
    if not np.isfinite(sums).all():
        error = DivergedError("the loss became nan in evaluation: the parameters hold NaN "
                              "or infinite values")
        error.all_ranks = True
        raise error
    result = {}
    for k, total in zip(keys, sums):
        # counts of images are exact; a term the network has not (no decoder) stays None
        result[k] = (round(total) if k == "n" else
                     round(total) / n if k in ("accuracy", "one_or_more") else
                     None if comm.is_root and part[k] is None else total / n)
    result = comm.on_root(lambda: result, "the evaluation's result")
    if per_class:
        counts, hits = sums[len(keys):].reshape(2, -1)
        result["per_class"] = [(int(c), float(round(h) / c) if c else None)
                               for c, h in zip(counts, hits)]
    return result
