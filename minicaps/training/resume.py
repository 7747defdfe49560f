"""Going on from a checkpoint: what must match for a resumed run to compute what the original
would have, and the run folder's files brought back to the checkpoint's epoch (metrics.jsonl
cut, best.npz restored)."""
import json
from pathlib import Path

from minicaps.io.checkpoint import read_epoch, read_meta
from minicaps.nn.registry import model_kind
from minicaps.training import runfolder
from minicaps.training.config import RESUME_SETTINGS
from minicaps.training.saving import LAST, write_checkpoints


def score_key(run, val_set):
    """The metric best.npz goes by: the validation accuracy (the test accuracy without a
    validation set), the average's when the run keeps one."""
    prefix = "avg_" if run.average is not None else ""
    return f"{prefix}{'val' if val_set is not None else 'test'}_accuracy"


def restore_best(run, settings, key, log):
    """Write best.npz from the resumed epoch where a stop left it behind: missing (stopped
    while it was written), or holding an earlier epoch when the resumed one is the best."""
    best, score = run.best_checkpoint, (run.resumed_metrics or {}).get(key)
    if run.best_accuracy is None or score is None:    # a new average: nothing compares
        if not best.is_file():
            run.best_accuracy = None                  # the next epoch writes it
        return
    there = best.is_file()
    if there and (score < run.best_accuracy or holds_as_good(best, run.epoch, key, score)):
        return
    run.best_accuracy = score
    write_checkpoints(run, [best], run.resumed_metrics, settings)
    log(f"wrote {best} from epoch {run.epoch} ({key} {score:.4f}), the best epoch this run "
        f"has: it was {'behind' if there else 'missing'} after an interrupted save")


def holds_as_good(best, epoch, key, score):
    """Whether ``best`` holds ``epoch``, or an earlier epoch that scored as well: a tie is
    no new best (save_epoch), so the earlier epoch stays."""
    try:
        meta = read_meta(best)
    except ValueError:
        return False
    return meta["epoch"] == epoch or (meta.get("metrics") or {}).get(key, -1) >= score




def check_resume(ckpt, config, settings, kind=None):
    """A resumed run must compute what the original would have: same network, same settings."""
    have = model_kind(ckpt.model)
    for asked in (kind, None if config is None else model_kind(config)):
        if asked not in (None, have):
            raise ValueError(f"{ckpt.path} holds a {have} network, not a {asked}; to resume "
                             f"it, train a {have} (minicaps train --model {have}, and the "
                             f"options of the original run)")
    within = ckpt.extra.get("mid_epoch")
    if within:
        raise ValueError(f"{ckpt.path} was kept after step {ckpt.step}, in epoch "
                         f"{within} (--keep-every), to be evaluated: a run goes on only from "
                         f"the end of an epoch; resume from the run's last.npz or an "
                         f"epoch-NNN.npz")
    problems = []
    if config is not None:
        a, b = config.to_dict(), ckpt.model.config.to_dict()
        problems += [f"{k}={a[k]!r} (checkpoint {b[k]!r})" for k in a if a[k] != b[k]]
    saved = ckpt.extra.get("settings")
    if not saved:
        raise ValueError(f"{ckpt.path} keeps no training settings (a weights file, or a "
                         f"damaged checkpoint): a run cannot go on from it, since nothing "
                         f"says how it trained; start a new run, or resume from the run's "
                         f"own last.npz")
    check_same_split(ckpt, saved.get("data_info") or {}, settings.get("data_info") or {})
    problems += [f"{k}={settings[k]!r} (checkpoint {saved[k]!r})"
                 for k in RESUME_SETTINGS if k in saved and saved[k] != settings[k]]
    if problems:
        raise ValueError(f"{ckpt.path} was trained with other settings; to resume, pass the "
                         f"same ones: " + ", ".join(problems))


def check_same_split(ckpt, then, now):
    """An image folder must split as it did when the run began (the same split folders,
    the same seeded test share): otherwise going on would train on pictures it tested on.
    And expanded MNIST must be placed as it was: a run begun on the digits placed once
    (before the authors' 169 placements drawn each epoch) cannot go on with them."""
    if then.get("train") == "expanded-mnist" and then.get("shift") != now.get("shift"):
        raise ValueError(
            f"{ckpt.path} began on expanded MNIST placed the earlier way (each digit once, "
            f"seeded, then shifted by up to 2 pixels); minicaps now centres the digits and "
            f"shifts them by up to 6 each epoch (the authors' placements), so the run "
            f"cannot go on the same: start a new run")
    for key in ("split", "test_files_sha256"):
        if then.get(key) is not None and now.get(key) != then[key]:
            raise ValueError(
                f"{ckpt.path} began on {then.get('folder', 'its image folder')}, which has "
                f"changed since (files added, removed or renamed, or other split folders): "
                f"its test images are not those of the run any more, and going on would "
                f"train on pictures it was tested on. Resume on the folder as it was, or "
                f"start a new run")


def check_nothing_overwritten(out_dir, resume, epoch):
    """Refuse to continue from epoch ``epoch`` in a folder whose last.npz is further on (a
    run resumed from its own best.npz, say): its next epoch would replace that checkpoint
    and the metrics of the later epochs."""
    last = out_dir / LAST
    if not last.is_file() or last.resolve() == Path(resume).resolve():
        return
    try:
        done = read_epoch(last)
    except ValueError:        # unreadable: not a run this one could lose
        return
    if done > epoch:
        raise ValueError(
            f"{out_dir} holds a run trained to epoch {done} ({last}); going on from epoch "
            f"{epoch} ({resume}) there would overwrite it and the metrics of epochs "
            f"{epoch + 1}-{done}. To branch off from {resume}, give another folder "
            f"(--out NEWDIR); to go on with the run, resume from {last}")


def truncate_metrics(path, epoch, log=print):
    """Keep the metrics lines of epochs 1..``epoch``, in order: lines of later epochs
    (written before a crash, not checkpointed) go, and so do torn, repeated or out-of-order
    ones, with a note; a history shorter than ``epoch`` epochs is said too."""
    try:
        f = runfolder.open_run_file(path, "r+b")       # never through a link, nor waiting
    except FileNotFoundError:
        return
    with f:
        text = f.read(runfolder.MAX_METRICS_BYTES + 1)
        if len(text) > runfolder.MAX_METRICS_BYTES:
            raise runfolder.RunFolderError(
                f"{path} holds more than {runfolder.MAX_METRICS_BYTES >> 20} MiB, more than "
                f"a run's metrics: move it out of the folder, or give another --out")
        kept, dropped = [], 0
        for line in text.splitlines():
            try:
                number = json.loads(line)["epoch"]
            except (ValueError, KeyError, TypeError, RecursionError):   # torn by the crash
                dropped += bool(line.strip())
                continue
            if number == len(kept) + 1 and number <= epoch:
                kept.append(line)
            elif not (isinstance(number, int) and number > epoch):   # not just after the crash
                dropped += 1
        if dropped:
            log(f"dropped {dropped} line{'s' * (dropped != 1)} of {path} that were not the "
                f"next epoch's (repeated, out of order or torn)")
        if len(kept) < epoch:
            log(f"{path} holds the metrics of {len(kept)} epochs of the checkpoint's {epoch}: "
                f"the history of the epochs after {len(kept)} is missing there")
        f.seek(0)
        f.truncate()
        f.write(b"".join(line + b"\n" for line in kept))
