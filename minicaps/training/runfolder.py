"""A training run's folder: it belongs to one run, and to one process at a time.

    OUT/metrics.jsonl    a line per epoch
    OUT/last.npz         the latest epoch's checkpoint
    OUT/best.npz         the best epoch's checkpoint
    OUT/.minicaps.lock   while a process trains there: its pid, host and start time

``claim(out_dir, ...)`` is what train calls before the first batch:

- a fresh run into a folder that already holds a run is refused (the message names
  --resume and a new --out), unless ``overwrite`` says to delete that run's files; a
  metrics.jsonl of one epoch with no checkpoint beside it is what a run stopped during
  its first checkpoint left, and is removed with a notice;
- a run folder's own files are never followed out of it: where anything but a regular
  file of its own stands in place of one (the lock, metrics.jsonl, last.npz, best.npz) -
  a symbolic link, a hard link to another file, a named pipe, a device, a folder - the
  run is refused, naming it. Each time one is opened (``open_run_file``) it is opened
  without following a link and without waiting, then looked at with fstat, so a link
  swapped in while the run trains is refused too;
- the lock keeps a second process out; a lock whose process is gone (killed, crashed) is
  taken over with a notice. The lock is an flock on the file, so the kernel releases it
  when its process dies, whatever the pid written inside says;
- temp files that a killed checkpoint write left behind (``.last.npz.*.tmp``) are removed;
- the folder must be writable and have room for the checkpoints still to be written
  (a temp copy, and last.npz and best.npz where they are not there yet), checked now and
  not after the first epoch.
"""
import json
import os
import shutil
import socket
import stat
import time
from pathlib import Path

from minicaps.io.files import kind_of

try:
    import fcntl
except ImportError:          # not on Windows: the pid in the file is all there is
    fcntl = None

LOCK_FILE = ".minicaps.lock"
RUN_FILES = ("last.npz", "best.npz", "metrics.jsonl")
TEMP_PATTERNS = (".last.npz.*.tmp", ".best.npz.*.tmp", ".epoch-*.npz.*.tmp", ".step-*.npz.*.tmp")
EPOCH_PATTERN = "epoch-*.npz"         # train(keep_epochs=True): every epoch's checkpoint
STEP_PATTERN = "step-*.npz"           # train(keep_every=N): every N steps' parameters
CHECKPOINTS = ("last.npz", "best.npz")
MAX_LEFTOVER_BYTES = 1 << 16     # one epoch's metrics line is about 1 kB
MAX_METRICS_BYTES = 1 << 26      # 64 MiB: some 60000 epochs' lines
OPEN_FLAGS = {"rb": os.O_RDONLY, "r+b": os.O_RDWR,
              "ab": os.O_WRONLY | os.O_APPEND | os.O_CREAT}


class RunFolderError(ValueError):
    """The folder cannot take this run: it holds another, is in use, or is not writable."""


class RunLock:
    """The lock of a run folder, held from claim() until release()."""

    def __init__(self, path, fd):
        self.path, self._fd = path, fd
        folder = os.stat(os.path.dirname(path))
        self._folder = (folder.st_dev, folder.st_ino)    # the folder claimed, as it was

    def check_held(self):
        """RunFolderError unless the lock's name still leads to the lock held: the run folder
        was moved, or swapped for a link, while the run wrote to it."""
        try:
            there, folder = os.stat(self.path), os.stat(os.path.dirname(self.path))
        except OSError:
            there = folder = None
        held = os.fstat(self._fd)
        if (there is None or (held.st_dev, held.st_ino) != (there.st_dev, there.st_ino)
                or (folder.st_dev, folder.st_ino) != self._folder):
            folder = os.path.dirname(self.path)
            raise RunFolderError(
                f"{folder} was moved or replaced while the run wrote to it (its lock is no "
                f"longer at {self.path}): nothing more is written there. The run's files are "
                f"where the folder went; resume from its last.npz there")

    def release(self):
        """Remove the lock file and let the lock go (once; later calls do nothing)."""
        if self._fd is None:
            return
        try:       # only the lock this run made: not a file met through a folder swapped since
            held, there = os.fstat(self._fd), os.stat(self.path, follow_symlinks=False)
            if (held.st_dev, held.st_ino) == (there.st_dev, there.st_ino):
                os.remove(self.path)
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def claim(out_dir, *, fresh, overwrite=False, checkpoint_bytes=0, log=print):
    """Take ``out_dir`` for a run: returns the RunLock (release() it when the run ends).

    fresh: a new run (not a resume): the folder must hold no run's files, or
    ``overwrite`` deletes them (said through ``log``). checkpoint_bytes: the size of one
    checkpoint; the disk must have room for a temp copy, and for last.npz and best.npz
    where they are not there yet (three checkpoints for a fresh run)."""
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunFolderError(f"cannot create the run folder {out_dir} ({e.strerror or e}); "
                             f"give another --out") from e
    _refuse_strangers(out_dir)
    lock = _lock(out_dir, log)
    try:
        if fresh:
            _make_room(out_dir, overwrite, log)
        _remove_temp_files(out_dir, log)
        _check_writable(out_dir, checkpoint_bytes)
    except BaseException:
        lock.release()
        raise
    return lock


def existing_run(out_dir):
    """The run files in ``out_dir`` (names from RUN_FILES that exist), leaving out the
    metrics.jsonl of a run stopped during its first checkpoint (_leftover_metrics)."""
    found = [name for name in RUN_FILES if (Path(out_dir) / name).exists()]
    if found == ["metrics.jsonl"] and _leftover_metrics(out_dir):
        found = []
    # the parameters kept every N steps (keep_every) of a run stopped before its first
    # checkpoint: a new run would mix its own with them
    return found + kept_steps(out_dir)


def kept_steps(out_dir):
    """The step-NNNNNNN.npz files in ``out_dir`` (regular files, not links), by name."""
    return sorted(p.name for p in Path(out_dir).glob(STEP_PATTERN)
                  if p.is_file() and not p.is_symlink())


def _leftover_metrics(out_dir):
    """Whether ``out_dir/metrics.jsonl``, with no checkpoint beside it, logs one epoch at
    most: the line a run appends just before its first checkpoint, left when that write
    was stopped (Ctrl-C, a full disk). No run can go on from it, and a resume would drop it."""
    with open_run_file(Path(out_dir) / "metrics.jsonl", "rb") as f:
        text = f.read(MAX_LEFTOVER_BYTES + 1)
    if len(text) > MAX_LEFTOVER_BYTES:
        return False
    epochs = set()
    for line in text.splitlines():
        try:
            epochs.add(json.loads(line)["epoch"])
        except (ValueError, KeyError, TypeError, RecursionError):   # torn by the stop
            pass
    return len(epochs) <= 1


def _refuse_strangers(out_dir):
    """RunFolderError if anything but a regular file of its own stands in place of one of
    the run's files: a run writes its folder's files and never follows them out of it."""
    for name in (LOCK_FILE,) + RUN_FILES:
        check_run_file(Path(out_dir) / name)


def check_run_file(path):
    """RunFolderError naming ``path`` and what it is, unless nothing is there or it is a
    regular file with no other name (the link itself is looked at, not followed)."""
    try:
        st = os.lstat(path)
    except OSError:         # nothing there, or no folder to look in: opening it will say
        return
    _refuse_stranger(path, st)


def open_run_file(path, mode):
    """A run folder's file opened as open(path, mode) would ("rb", "r+b", or "ab", which
    creates it), but never through a symbolic link, never waiting on a named pipe, and
    only when fstat finds a regular file with no other name (RunFolderError else): what
    is at the path may have changed since the folder was claimed."""
    try:
        fd = os.open(path, OPEN_FLAGS[mode] | getattr(os, "O_NOFOLLOW", 0)
                     | getattr(os, "O_NONBLOCK", 0), 0o666)
    except OSError:
        check_run_file(path)        # a link (ELOOP), a folder (EISDIR), a pipe (ENXIO)
        raise
    try:
        _refuse_stranger(path, os.fstat(fd))
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, mode)


def _refuse_stranger(path, st):
    """RunFolderError unless ``st`` (an lstat or fstat) is of a regular file with one name."""
    if stat.S_ISLNK(st.st_mode):
        try:
            target = os.readlink(path)
        except OSError:
            target = "elsewhere"
        raise RunFolderError(
            f"{path} is a symbolic link (to {target}), not a file of this run: a run "
            f"writes its own files in its folder and never through a link. Delete the "
            f"link, or give another folder (--out NEWDIR)")
    if stat.S_ISREG(st.st_mode) and st.st_nlink == 1:
        return
    if stat.S_ISREG(st.st_mode):
        kind, harm = (f"a hard link to another file ({st.st_nlink} names share it)",
                      "writing it would change that other file too")
    else:
        kind = kind_of(st.st_mode, "something other than a file")
        harm = "a run reads and writes only regular files of its own"
    raise RunFolderError(f"{path} is {kind}, not a file of this run: {harm}. Move it out "
                         f"of the folder (or delete it), or give another folder (--out NEWDIR)")


def check_room(out_dir, overwrite=False):
    """Refuse a fresh run into ``out_dir`` when it holds a run and ``overwrite`` is off
    (train calls this first, before the data loads; claim checks again under the lock)."""
    out_dir = Path(out_dir)
    _refuse_strangers(out_dir)
    found = existing_run(out_dir)
    if found and not overwrite:
        saved = [name for name in CHECKPOINTS if name in found]
        go_on = (f"To continue that run: --resume {out_dir / saved[0]} (with its options); to "
                 if saved else "It keeps no checkpoint to continue from. To ")
        names = listed(found)
        raise RunFolderError(
            f"{out_dir} already holds a run ({names}); a new run would replace "
            f"it. {go_on}start a new one: another folder (--out NEWDIR), or --overwrite to "
            f"delete {names} there")


def listed(names):
    """The names, with the kept epochs' and steps' checkpoints counted instead of listed."""
    kept = {"epoch-": "epoch-NNN.npz", "step-": "step-NNNNNNN.npz"}
    plain = [n for n in names if not n.startswith(tuple(kept))]
    for prefix, pattern in kept.items():
        count = sum(n.startswith(prefix) for n in names)
        if count:
            plain.append(f"{count} {pattern}")
    return ", ".join(plain)


def epoch_file(epoch):
    """The name of epoch ``epoch``'s own checkpoint (train's keep_epochs)."""
    return f"epoch-{int(epoch):03d}.npz"


def step_file(step):
    """The name of the checkpoint kept after ``step`` updates (train's keep_every)."""
    return f"step-{int(step):07d}.npz"


def _make_room(out_dir, overwrite, log):
    check_room(out_dir, overwrite)
    found = existing_run(out_dir)
    if found:                     # --overwrite: the old run's kept checkpoints go too
        found += sorted(p.name for p in out_dir.glob(EPOCH_PATTERN)
                        if p.is_file() and not p.is_symlink())
    for name in found:
        os.remove(out_dir / name)
    if found:
        log(f"--overwrite: deleted {listed(found)} in {out_dir}")
    if (out_dir / "metrics.jsonl").exists():        # left over, as existing_run saw
        os.remove(out_dir / "metrics.jsonl")
        log(f"removed {out_dir / 'metrics.jsonl'}: a run stopped before its first "
            f"checkpoint left it, and no run can go on from it")


def _remove_temp_files(out_dir, log):
    """Temp files of checkpoint writes that a killed process left (ours hold the lock, so
    none is being written now)."""
    left = [p for pattern in TEMP_PATTERNS for p in out_dir.glob(pattern) if p.is_file()]
    for p in left:
        os.remove(p)
    if left:
        log(f"removed {len(left)} temp file(s) left in {out_dir} by an interrupted "
            f"checkpoint write: {', '.join(p.name for p in left)}")


def _check_writable(out_dir, checkpoint_bytes):
    metrics = out_dir / "metrics.jsonl"
    if metrics.exists() and not os.access(metrics, os.W_OK):
        raise RunFolderError(f"{metrics} is read-only: this run could not log its epochs; "
                             f"make it writable or give another --out")
    free = shutil.disk_usage(out_dir).free
    # A checkpoint is written to a temp copy that then replaces the old file: the disk
    # must hold one copy more, and what last.npz and best.npz do not hold yet.
    need = checkpoint_bytes + sum(max(checkpoint_bytes - _size(out_dir / name), 0)
                                  for name in CHECKPOINTS)
    if need > free:
        writes = [name for name in CHECKPOINTS if not (out_dir / name).is_file()]
        writes.append("a temp copy while one is written")
        raise RunFolderError(f"{out_dir} has {free / 2**20:.0f} MiB free; the checkpoints need "
                             f"about {need / 2**20:.0f} MiB ({', '.join(writes)}): free some "
                             f"space or give another --out")


def _size(path):
    return path.stat().st_size if path.is_file() else 0


def _lock(out_dir, log):
    """Open and lock OUT/.minicaps.lock, writing our pid into it; RunFolderError if another
    live process holds it."""
    path = out_dir / LOCK_FILE
    for _ in range(10):      # the lock file can be replaced between open and lock: retry
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
                         | getattr(os, "O_NONBLOCK", 0), 0o644)
        except OSError as e:
            check_run_file(path)      # a link, a folder: said as such
            raise RunFolderError(f"cannot write in the run folder {out_dir} ({e.strerror or e}); "
                                 f"make it writable or give another --out") from e
        try:
            _refuse_stranger(path, os.fstat(fd))     # a hard link, a pipe, a device
            owner = _owner(fd)
            if not _try_lock(fd, owner):
                raise RunFolderError(
                    f"{out_dir} is in use by another training ({_describe(owner)}); wait "
                    f"for it to end, or give another folder (--out NEWDIR). If no such "
                    f"process runs, delete {path}")
            if os.path.exists(path) and os.stat(path).st_ino == os.fstat(fd).st_ino:
                break                     # locked the file that is at the path now
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    else:
        raise RunFolderError(f"could not lock {path}: it keeps being replaced")
    if owner:
        log(f"taking over the lock of {out_dir}: {_describe(owner)} ended without "
            f"releasing it")
    record = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
    return RunLock(path, fd)


def _owner(fd):
    """The record a lock file holds (pid, host, started), or None if it is empty or not one."""
    try:
        record = json.loads(os.pread(fd, 4096, 0).decode("utf-8") or "null")
    except (ValueError, UnicodeDecodeError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("pid"), int) else None


def _try_lock(fd, owner):
    """Lock fd without waiting; False if another process holds it."""
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
    # no flock: the pid written in the file decides (on this host)
    return not (owner and owner.get("host") == socket.gethostname() and _alive(owner["pid"]))


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _describe(owner):
    if not owner:
        return "a process"
    return (f"pid {owner['pid']} on {owner.get('host', '?')}, started "
            f"{owner.get('started', '?')}")
