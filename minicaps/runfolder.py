"""A training run's folder: it belongs to one run, and to one process at a time.

    OUT/metrics.jsonl    a line per epoch
    OUT/last.npz         the latest epoch's checkpoint
    OUT/best.npz         the best epoch's checkpoint
    OUT/.minicaps.lock   while a process trains there: its pid, host and start time

``claim(out_dir, ...)`` is what train calls before the first batch:

- a fresh run into a folder that already holds a run is refused (the message names
  --resume and a new --out), unless ``overwrite`` says to delete that run's files;
- the lock keeps a second process out; a lock whose process is gone (killed, crashed) is
  taken over with a notice. The lock is an flock on the file, so the kernel releases it
  when its process dies, whatever the pid written inside says;
- temp files that a killed checkpoint write left behind (``.last.npz.*.tmp``) are removed;
- the folder must be writable and have room for the checkpoints, checked now and not
  after the first epoch.
"""
import json
import os
import shutil
import socket
import time
from pathlib import Path

try:
    import fcntl
except ImportError:          # not on Windows: the pid in the file is all there is
    fcntl = None

LOCK_FILE = ".minicaps.lock"
RUN_FILES = ("last.npz", "best.npz", "metrics.jsonl")
TEMP_PATTERNS = (".last.npz.*.tmp", ".best.npz.*.tmp")


class RunFolderError(ValueError):
    """The folder cannot take this run: it holds another, is in use, or is not writable."""


class RunLock:
    """The lock of a run folder, held from claim() until release()."""

    def __init__(self, path, fd):
        self.path, self._fd = path, fd

    def release(self):
        """Remove the lock file and let the lock go (once; later calls do nothing)."""
        if self._fd is None:
            return
        try:
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
    checkpoint; the disk must have room for three (last, best and a temp copy)."""
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunFolderError(f"cannot create the run folder {out_dir} ({e.strerror or e}); "
                             f"give another --out") from e
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
    """The run files in ``out_dir`` (names from RUN_FILES that exist)."""
    return [name for name in RUN_FILES if (Path(out_dir) / name).exists()]


def check_room(out_dir, overwrite=False):
    """Refuse a fresh run into ``out_dir`` when it holds a run and ``overwrite`` is off
    (train calls this first, before the data loads; claim checks again under the lock)."""
    out_dir = Path(out_dir)
    found = existing_run(out_dir)
    if found and not overwrite:
        raise RunFolderError(
            f"{out_dir} already holds a run ({', '.join(found)}); a new run would replace "
            f"it. To continue that run: --resume {out_dir / 'last.npz'} (with its options); "
            f"to start a new one: another folder (--out NEWDIR), or --overwrite to delete "
            f"{', '.join(found)} there")


def _make_room(out_dir, overwrite, log):
    check_room(out_dir, overwrite)
    found = existing_run(out_dir)
    for name in found:
        os.remove(out_dir / name)
    if found:
        log(f"--overwrite: deleted {', '.join(found)} in {out_dir}")


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
    need = 3 * checkpoint_bytes
    if need > free:
        raise RunFolderError(f"{out_dir} has {free / 2**20:.0f} MiB free; the checkpoints need "
                             f"about {need / 2**20:.0f} MiB (last.npz, best.npz and a temp copy "
                             f"while one is written): free some space or give another --out")


def _lock(out_dir, log):
    """Open and lock OUT/.minicaps.lock, writing our pid into it; RunFolderError if another
    live process holds it."""
    path = out_dir / LOCK_FILE
    for _ in range(10):      # the lock file can be replaced between open and lock: retry
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise RunFolderError(f"cannot write in the run folder {out_dir} ({e.strerror or e}); "
                                 f"make it writable or give another --out") from e
        try:
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
