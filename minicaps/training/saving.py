"""What a run writes each epoch into its folder: a line of metrics.jsonl, last.npz, best.npz
when the score is the best so far (and epoch-NNN.npz when asked), each through the run
folder's checks; and what to say when a write fails."""
import errno
import json

from minicaps.io.checkpoint import read_epoch, save_checkpoint
from minicaps.io.writer import DiskFullError
from minicaps.training import runfolder


METRICS_FILE = "metrics.jsonl"


LAST, BEST = "last.npz", "best.npz"


def checkpoint_bytes(run):
    """The size of one checkpoint: parameters, Adam's two moments, the average."""
    copies = 3 + (run.average is not None)
    return copies * run.model.num_params() * run.model.dtype.itemsize


def save_epoch(run, metrics, settings, score):
    """The metrics line, last.npz, and best.npz when ``score`` beats the best so far.
    Returns whether it did. (A crash before last.npz is written leaves a metrics line that
    a resume from the previous checkpoint drops, so no epoch is lost or logged twice.)"""
    if run.lock is not None:
        run.lock.check_held()        # the folder claimed, not one swapped in since
    append_line(run, run.out_dir / METRICS_FILE, json.dumps(metrics))
    is_best = run.best_accuracy is None or score > run.best_accuracy
    if is_best:
        run.best_accuracy = score
    paths = [run.last_checkpoint] + ([run.best_checkpoint] if is_best else [])
    if run.keep_epochs:
        paths.append(run.out_dir / runfolder.epoch_file(run.epoch))
    write_checkpoints(run, paths, metrics, settings)
    return is_best


def save_snapshot(run, settings, lr):
    """The parameters (and average) after run.step updates, mid-epoch, as
    ``step-NNNNNNN.npz`` (train's keep_every): a checkpoint to evaluate and pick from, not
    to resume (its generator is part-way through an epoch's draws; check_resume refuses it)."""
    if run.lock is not None:
        run.lock.check_held()
    metrics = {"epoch": run.epoch, "step": run.step, "lr": lr, "mid_epoch": True}
    state = dict(epoch=run.epoch - 1, step=run.step, rng_state=run.rng.bit_generator.state,
                 metrics=metrics, average=run.average,
                 extra={"settings": settings, "best_accuracy": run.best_accuracy,
                        "mid_epoch": run.epoch, "routes": run.routes})
    try:
        save_checkpoint(run.out_dir / runfolder.step_file(run.step), run.model, run.optimizer,
                        **state)
    except DiskFullError as e:
        raise DiskFullError(f"{e}; {how_to_go_on(run)}") from e


def append_line(run, path, line):
    try:
        with runfolder.open_run_file(path, "ab") as f:     # never through a link
            f.write((line + "\n").encode())
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise DiskFullError(f"could not add epoch {run.epoch}'s line to {path}: the disk is "
                            f"full, and no checkpoint was touched; {how_to_go_on(run)}") from e


def write_checkpoints(run, paths, metrics, settings):
    """The run as it stands into each of ``paths``; a full disk says how to go on."""
    state = dict(epoch=run.epoch, step=run.step, rng_state=run.rng.bit_generator.state,
                 metrics=metrics, extra={"settings": settings, "best_accuracy": run.best_accuracy,
                                         "routes": run.routes},
                 average=run.average)
    try:
        for path in paths:
            save_checkpoint(path, run.model, run.optimizer, **state)
    except DiskFullError as e:
        raise DiskFullError(f"{e}; {how_to_go_on(run)}") from e


def how_to_go_on(run):
    """After a failed write: the checkpoint the run can go on from, or that there is none."""
    last = run.last_checkpoint
    done = epoch_of(last) if last.is_file() else None
    if done is None:
        return "no epoch was saved: free some space, then start the run again"
    return (f"free some space, then go on from epoch {done} with --resume {last} and the "
            f"same options")


def epoch_of(path):
    try:
        return read_epoch(path)
    except ValueError:
        return None
