"""The training loop of the paper: Adam, exponential learning-rate decay, 2-pixel shifts.

    for each epoch:
        for each minibatch (shuffled):
            x = random_shift(images, 2)                  # the paper's only augmentation
                                                         # (6 on expanded MNIST: section 5.2)
            loss, grads = model.loss_and_grads(x, y)     # decoder masked by the label
            Adam step with lr = lr0 * 0.96^(step / 2000)
        evaluate on test (and validation): decoder masked by the prediction
        append a line to metrics.jsonl; save last.npz and best.npz

Every random draw after the network's initialisation (shuffling, shifts) comes from one
numpy Generator seeded by ``seed``; its state is saved with each checkpoint, so
``resume=`` continues a run exactly: on the CPU two epochs in one go and one epoch, save,
resume, one more epoch give bit-for-bit the same parameters.

The same loop trains the paper's CNN baseline (model="cnn", minicaps.nn.cnn): its loss is
the cross-entropy alone, its dropout masks a function of (seed, step), so a resumed CNN
run is exact too.
"""
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from minicaps import backend
from minicaps.data import multimnist
from minicaps.io.checkpoint import load_checkpoint
from minicaps.nn.registry import build_model, model_kind
from minicaps.nn.base import check_network_fits
from minicaps.nn.capsnet import CapsNet
from minicaps.nn.registry import layout_config
from minicaps.training import clock, distributed, runfolder
from minicaps.training.epoch import learning_rate, train_epoch
from minicaps.training.evaluation import EVAL_BATCH, evaluate
from minicaps.training.optim import Adam, ParameterAverage
from minicaps.training.resume import (check_nothing_overwritten, check_resume, restore_best,
                                      score_key, truncate_metrics)
from minicaps.training.saving import (BEST, LAST, METRICS_FILE, checkpoint_bytes, save_epoch,
                                     save_snapshot)
from minicaps.training.config import RunSettings, TrainConfig, check_before_loading, settings_of
from minicaps.training.splits import (as_dataset, check_shape, config_for_data, load_data,
                                      pairs_per_digit, prepare_data)


@dataclass
class TrainResult:
    """Where a run stands: the model and optimizer, and what this call did."""
    model: CapsNet                                 # or a cnn.BaselineCNN
    optimizer: Adam
    rng: np.random.Generator
    epoch: int
    step: int
    out_dir: Path
    best_accuracy: float = None                    # best.npz: validation (else test) accuracy
    history: list = field(default_factory=list)   # the metrics dicts of this call's epochs
    average: ParameterAverage = None               # the parameters' moving average, if kept
    resumed_metrics: dict = None                   # the checkpoint's metrics, when resumed
    lock: object = None                            # rank 0's runfolder.RunLock while it trains
    keep_epochs: bool = False                      # also write epoch-NNN.npz each epoch
    keep_every: int = 0                            # and step-NNNNNNN.npz every N steps
    routes: dict = field(default_factory=dict)     # the fast routes run with (fast/plans.py)

    @property
    def last_checkpoint(self):
        return self.out_dir / LAST

    @property
    def best_checkpoint(self):
        return self.out_dir / BEST


@distributed.guarded          # with comm=: a fault in one rank ends every rank
def train(config=None, *, training=None, model=None, out_dir, device=None, data=None,
          data_root=None, resume=None, overwrite=False, progress=True, log=print, comm=None,
          keep_epochs=False, keep_every=0, **settings):
    """Train a CapsNet, or the paper's CNN baseline, until ``epochs`` epochs are done in
    all; returns a TrainResult.

    training: a TrainConfig (training/config.py), every choice of the run: epochs,
    batch_size, lr, lr_decay, decay_steps, seed, shift, dtype, dataset, val_size,
    limit_train, limit_test, crop, flip, average; ``settings`` are the same fields given
    one by one (train(epochs=2, lr=2e-3, ...)), over ``training``'s when both are given.
    ``shift`` None (the default) takes the data's: 2 pixels, 6 on expanded MNIST (the
    affnist sets, whose digits come centred), 0 for MultiMNIST's pairs.

    config: a CapsNetConfig or a CNNConfig (None: the checkpoint's with ``resume``, else
    the network ``model`` names fitted to the data by config_for_data). model: a name of
    nn.registry.LAYOUTS, "capsnet" (None: the default), "cnn" (CNNConfig.paper()) or "cnn-pooled"
    (CNNConfig.pooled()); given with a config or a checkpoint, it must be their kind of
    network. data: a data.Dataset (load_dataset, folder.load_image_folder) or (x_train,
    y_train, x_test, y_test) with uint8 images, else ``dataset`` is loaded (load_data)
    from ``data_root``. ``crop``: train on random crop x crop squares and test on the
    centre one; ``flip``: mirror half the training images at random; None takes each from
    the data's info (smallNORB's crop), 0 and False turn them off. The class names go into
    the checkpoints. Each epoch appends a line to ``out_dir/metrics.jsonl`` and saves
    ``out_dir/last.npz``, and ``out_dir/best.npz`` when the validation accuracy (test
    accuracy if val_size is 0) is the best so far, the average's when there is one;
    ``keep_epochs`` keeps every epoch's checkpoint too, as ``out_dir/epoch-NNN.npz`` (to
    pick a network at a given validation accuracy afterwards); ``keep_every`` N > 0 keeps
    the parameters every N steps as ``out_dir/step-NNNNNNN.npz`` (finer than an epoch, to
    be evaluated, not resumed from). ``resume``: a checkpoint path to continue from; the
    settings that change the computation, and the test set (limit_test), must be the ones
    it was trained with.
    ``average``: the decay of a moving average of the parameters (optim.ParameterAverage)
    kept beside training and evaluated too, as "avg_test_accuracy" and so on; None keeps
    none. Training itself is the same with or without it; the average is the model the run
    delivers (Checkpoint.model_with). A run resumed from a checkpoint without an average of
    this decay starts one there.

    ``out_dir`` belongs to this run (runfolder.claim): a fresh run into a folder that holds
    one is refused unless ``overwrite`` (which deletes that run's checkpoints and metrics),
    and a second process training there at the same time is refused. Every setting is
    checked before the data loads, and whether a batch fits in memory before the first
    step; a loss that becomes NaN or infinite stops the run with a ValueError, the last
    checkpoint left as the last good epoch wrote it.

    ``comm``: a distributed.Communicator (distributed.from_environment() under mpiexec or
    srun): data-parallel training, each rank computing its share of every batch of
    ``batch_size`` images, and the same model as one process to float32 rounding. Rank 0
    alone logs, holds the folder's lock and writes; every rank reads the data and the
    checkpoint it resumes from. A run may go on with another number of ranks.
    """
    if comm is not None and not comm.is_root:
        progress, log = False, lambda line: None
    if training is None and "epochs" not in settings:
        raise TypeError("train() needs epochs=N (or training=TrainConfig(epochs=N, ...)): "
                        "how many epochs to have done in all, a resumed run's included")
    training = (TrainConfig(**settings) if training is None
                else training.replace(**settings) if settings else training)
    kind = None if model is None else model_kind(layout_config(model))
    if config is not None and kind not in (None, model_kind(config)):
        raise ValueError(f"model={model!r} builds a {kind} network, but the config "
                         f"describes a {model_kind(config)} ({type(config).__name__})")
    check_before_loading(training, out_dir=out_dir, resume=resume, overwrite=overwrite)
    device = backend.resolve_device(device)     # a missing GPU is said before the data loads
    dataset = training.dataset
    if comm is not None:
        comm.use_device(device)                 # this rank's GPU, and NCCL
        if data is None:                        # rank 0 downloads what is missing, alone
            _on_root(comm, lambda: load_data(dataset, data_root) and None, "rank 0's download",
                     seconds=3600)
    data = as_dataset(load_data(dataset, data_root) if data is None else data)
    info = data.info or {}
    pairs = pairs_per_digit(data)
    if pairs and training.shift:
        raise ValueError("MultiMNIST's pairs are shifted by up to 4 pixels as they are made: "
                         "give shift=0 (--shift 0)")
    training = training.for_data(info, pairs)
    if pairs and training.flip:
        raise ValueError("MultiMNIST's digits are not mirrored: give no --flip")
    crop = training.crop
    train_set, val_set, test_set = prepare_data(data, dataset, data_root, training.limit_train,
                                                training.limit_test, training.val_size,
                                                training.seed, crop)
    found = RunSettings(training.replace(dataset=data.name or dataset),
                        n_train=len(train_set), n_test=len(test_set),
                        classes=tuple(data.classes) or None, data_info=info,
                        pairs_per_digit=pairs, ranks=None if comm is None else comm.size)
    if config is None and resume is None:
        config = config_for_data(data, crop, model or "capsnet")
    epochs, batch_size = training.epochs, training.batch_size
    run = _start(config, found, device, Path(out_dir), resume, log, epochs, kind)
    run.keep_epochs = bool(keep_epochs)
    run.keep_every = _check_keep_every(keep_every)
    found = replace(found, model=model_kind(run.model))   # into the checkpoints, for evaluate
    settings = found.to_dict()                                # & co.: what each epoch saves
    _check_classes(data, run.model.config)
    for split, name in ((train_set, "training"), (val_set, "validation"), (test_set, "test")):
        if split is not None:
            is_train = split is train_set
            check_shape(split, run.model.config, name, crop if is_train else None,
                         multimnist.MAX_SHIFT if pairs and is_train else 0)
    if run.epoch >= epochs:
        return run                       # nothing to do: nothing claimed, nothing changed
    run.model.check_batch_fits(batch_size, training=True)
    run.model.check_batch_fits(EVAL_BATCH, training=False, option=None)   # no option sets it
    fresh = resume is None or Path(resume).resolve().parent != run.out_dir.resolve()
    locks = []            # rank 0's
    _on_root(comm, lambda: locks.append(runfolder.claim(
        run.out_dir, fresh=fresh, overwrite=overwrite, checkpoint_bytes=checkpoint_bytes(run),
        log=log)), "rank 0's claim of the run folder")
    run.lock = locks[0] if locks else None
    best_was_there = run.best_checkpoint.exists()
    try:
        if resume is not None:
            _on_root(comm, lambda: (truncate_metrics(run.out_dir / METRICS_FILE, run.epoch, log),
                                    restore_best(run, settings, score_key(run, val_set), log)),
                     "rank 0's restore of the run folder")
        with clock.pauses_left_out():     # Ctrl-Z / kill -TSTP: the pause is not training time
            _train_epochs(run, found, settings, train_set, val_set, test_set, progress, log,
                          comm)
    except BaseException:
        # stopped (Ctrl-C) before a first epoch of a resume into a new folder: the best.npz
        # written there would refuse the same command ("already holds a run"), so it goes
        if (resume is not None and fresh and not best_was_there
                and not run.last_checkpoint.exists() and (comm is None or comm.is_root)):
            run.best_checkpoint.unlink(missing_ok=True)
        raise
    finally:
        for lock in locks:
            lock.release()
        run.lock = None
    return run


def _check_keep_every(n):
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"keep_every must be a whole number of steps, 0 or more (0 keeps "
                         f"none), not {n!r}")
    return int(n)


def _on_root(comm, fn, what, seconds=None):
    """fn() here without a communicator; else on rank 0 alone, and its result (or its
    error) on every rank (distributed.Communicator.on_root)."""
    return fn() if comm is None else comm.on_root(fn, what, seconds)


def _check_classes(data, config):
    if data.classes and len(data.classes) != config.num_classes:
        raise ValueError(f"the data has {len(data.classes)} classes but the network "
                         f"{config.num_classes} ({type(config).__name__}.num_classes)")


def _train_epochs(run, found, settings, train_set, val_set, test_set, progress, log,
                  comm=None):
    """The epochs from run.epoch + 1 to found.config.epochs: train, evaluate, save
    ``settings`` (found's dict) with each (rank 0 alone, with a communicator ``comm``)."""
    c = found.config
    epochs, lr, lr_decay, decay_steps = c.epochs, c.lr, c.lr_decay, c.decay_steps
    def keep_parameters(step):              # keep_every: step-NNNNNNN.npz every N steps
        if step % run.keep_every == 0:
            run.step = step
            _note_routes(run, log)
            rate = learning_rate(step - 1, lr, lr_decay, decay_steps)
            _on_root(comm, lambda: save_snapshot(run, settings, rate), "rank 0's save")
    after_step = keep_parameters if run.keep_every else None
    paused = clock.paused_seconds()     # pauses since the last epoch's line count to the next
    while run.epoch < epochs:
        run.epoch += 1
        run.step, stats = train_epoch(run.model, run.optimizer, train_set, run.rng, run.step,
                                      batch_size=c.batch_size, lr=lr, lr_decay=lr_decay,
                                      decay_steps=decay_steps, shift=c.shift,
                                      crop=c.crop, flip=c.flip,
                                      pairs_per_digit=found.pairs_per_digit,
                                      average=run.average,
                                      progress=progress, desc=f"epoch {run.epoch}/{epochs}",
                                      log=log, comm=comm, after_step=after_step)
        seconds, images_per_second = stats.pop("seconds"), stats.pop("images_per_second")
        metrics = {"epoch": run.epoch, "step": run.step,
                   "lr": learning_rate(run.step - 1, lr, lr_decay, decay_steps),  # last update's
                   **{f"train_{k}": v for k, v in stats.items()},
                   "epoch_seconds": seconds, "images_per_second": images_per_second}
        if run.model.device == "gpu":     # float32 products strict or through TF32
            metrics["tf32"] = backend.tf32_enabled()
        if comm is not None:              # the ranks, and their time in the all-reduce
            metrics.update(ranks=comm.size, allreduce_seconds=comm.reduce_seconds)
            comm.reduce_seconds = 0.0
            comm.check_in_step(run, log)
        start = clock.now()
        for prefix, split in (("val", val_set), ("test", test_set)):
            if split is not None:
                scores = evaluate(run.model, split.images, split.labels, EVAL_BATCH,
                                  progress=progress, desc=f"{prefix} set", log=log,
                                  targets=split.targets, comm=comm)
                metrics.update({f"{prefix}_{k}": v for k, v in scores.items()})
                if run.average is not None:
                    trained, run.model.params = run.model.params, run.average.params
                    try:
                        scores = evaluate(run.model, split.images, split.labels, EVAL_BATCH,
                                          progress=progress, desc=f"{prefix} set, average",
                                          log=log, targets=split.targets, comm=comm)
                    finally:
                        run.model.params = trained
                    metrics.update({f"avg_{prefix}_{k}": v for k, v in scores.items()})
        metrics["eval_seconds"] = clock.now() - start
        if clock.paused_seconds() > paused:   # left out of epoch_seconds and eval_seconds
            metrics["paused_seconds"] = clock.paused_seconds() - paused
        _note_routes(run, log)
        score = metrics[score_key(run, val_set)]
        is_best = _on_root(comm, lambda: save_epoch(run, metrics, settings, score), "rank 0's save")
        log(_epoch_line(metrics, epochs, is_best))
        if "paused_seconds" in metrics:
            log(f"(paused {metrics['paused_seconds']:.1f} s during epoch {run.epoch}: "
                f"left out of its seconds)")
        paused = clock.paused_seconds()
        run.history.append(metrics)


def _note_routes(run, log):
    """The routes the network ran with (fast/plans.py) into run.routes, which the
    checkpoints keep, and a line for each one it had not run with before."""
    used = getattr(run.model, "plans_used", lambda: {})()
    if not used:
        return
    from minicaps.fast.plans import describe
    for name, plan in used.items():
        if name not in run.routes:
            log(f"routes for {name}: {describe(plan)}")
        run.routes[name] = {k: plan[k] for k in ("primary", "capsule_chunk", "how")}


def _start(config, found, device, out_dir, resume, log, epochs, kind=None):
    """A fresh run (initial weights, dropout masks and generator from the seed), or one
    resumed (a CNN's dropout going on from the checkpoint's step: load_checkpoint), as the
    RunSettings ``found`` say. Nothing in ``out_dir`` changes when a resumed run has no
    epochs left to train. ``kind``: the kind of network asked for ("capsnet", "cnn"; None:
    any), checked against the checkpoint's."""
    c = found.config
    decay = c.average
    if resume is None:
        if config is None:
            raise ValueError("train needs a CapsNetConfig or CNNConfig (or resume=CHECKPOINT)")
        check_network_fits(config, c.dtype, device)
        model = build_model(config, seed=c.seed, dtype=c.dtype, device=device)
        return TrainResult(model, Adam(lr=c.lr), np.random.default_rng(c.seed), 0, 0, out_dir,
                           average=None if decay is None else ParameterAverage(model.params, decay))
    ckpt = load_checkpoint(resume, device=device)
    check_resume(ckpt, config, found.to_dict(), kind)
    if hasattr(ckpt.model, "adopt_plans"):      # the routes it ran with, whatever the plan file says
        ckpt.model.adopt_plans(ckpt.extra.get("routes"))
    log(f"resumed from {resume} at epoch {ckpt.epoch}, step {ckpt.step}")
    saved = settings_of(ckpt).ranks or 1
    ranks = found.ranks or 1
    if saved != ranks:      # the state carries over whole; only the batches split otherwise
        log(f"note: saved by {saved} rank(s), going on with {ranks}: the same run to float32 "
            f"rounding (bit for bit only with {saved})")
    if ckpt.epoch < epochs:
        check_nothing_overwritten(out_dir, resume, ckpt.epoch)
    average = ckpt.average
    if decay is None:
        average = None
    elif average is None or average.decay != decay:
        log(f"the checkpoint keeps no average of the parameters with decay {decay}: "
            f"starting one here")
        average = ParameterAverage(ckpt.model.params, decay)
    # best_accuracy scored the checkpoint's average (or its trained weights without one):
    # it compares only if this run goes on with the same average.
    best = ckpt.extra.get("best_accuracy") if average is ckpt.average else None
    return TrainResult(ckpt.model, ckpt.optimizer, ckpt.rng(), ckpt.epoch, ckpt.step, out_dir,
                       best_accuracy=best, average=average, resumed_metrics=ckpt.metrics)


def _epoch_line(m, epochs, is_best):
    """One line an epoch. For MultiMNIST pairs the accuracy counts a pair right when both its
    digits are the two longest capsules ("both right"), and says how many have one or more."""
    pairs = "test_one_or_more" in m
    acc = "both right" if pairs else "acc"
    line = (f"epoch {m['epoch']}/{epochs}: train loss {m['train_loss']:.4f} "
            f"{acc} {m['train_accuracy']:.4f} | ")
    if "val_accuracy" in m:
        line += f"val {acc} {m['val_accuracy']:.4f} | "
    line += f"test {acc} {m['test_accuracy']:.4f} "
    if pairs:
        line += f"one or more {m['test_one_or_more']:.4f} "
    if "test_margin_loss" in m:           # a CapsNet's two terms
        line += (f"margin {m['test_margin_loss']:.4f} "
                 f"recon {m['test_reconstruction_loss'] or 0:.2f} | ")
    else:                                 # the CNN's cross-entropy: its whole loss
        line += f"loss {m['test_loss']:.4f} | "
    if "avg_test_accuracy" in m:
        line += f"average: test {acc} {m['avg_test_accuracy']:.4f} | "
    line += (f"lr {m['lr']:.2e} | "
             f"{m['epoch_seconds']:.1f} s, {m['images_per_second'] or 0:.0f} img/s")
    return line + (" (best)" if is_best else "")


