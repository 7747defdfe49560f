"""The one writer of every file minicaps writes: replace_file, atomically.

The file is written into a temporary file in the same folder, flushed and fsynced, then
renamed over the old one with ``os.replace``. A crash mid-write leaves the previous file
as it was, and a symbolic link standing at the path is replaced, never followed. A full
disk is a DiskFullError saying what the file needed.
"""
import errno
import os
import shutil
from pathlib import Path

import numpy as np

from minicaps.io.files import output_folder, writable_file


class DiskFullError(OSError):
    """A file could not be written for want of disk space; what was on disk is as it was."""


def write_atomically(path, arrays):
    """np.savez ``arrays`` into ``path`` (replace_file); a DiskFullError when the disk is
    full, saying what the file needed."""
    try:
        replace_file(path, lambda f: np.savez(f, **arrays), archive=True)
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise DiskFullError(disk_full_message(path, sum(a.nbytes for a in arrays.values()))) from e


def disk_full_message(path, needed):
    """Why ``path`` could not be written: the disk is full, with what is free and the
    ``needed`` bytes; and that the file on disk is as it was before."""
    try:
        free = f"{_size_text(shutil.disk_usage(path.parent).free)} free, "
    except OSError:
        free = ""
    kept = (f"{path} is as it was: the previous checkpoint is intact" if path.is_file()
            else f"nothing was written to {path}")
    return (f"could not write {path}: the disk is full ({free}the file needs about "
            f"{_size_text(needed)}); {kept}")


def _size_text(nbytes):
    return f"{nbytes / 2**20:.1f} MiB" if nbytes >= 2**20 else f"{nbytes / 2**10:.0f} KiB"


def replace_file(path, write, inputs=(), archive=False):
    """``write(f)`` into a temp file beside ``path``, fsync, then rename over ``path``: a
    crash or a full disk leaves ``path`` as it was, and a link at ``path`` is replaced, not
    followed (os.replace renames over the link itself). The one writer of every file
    minicaps writes.

    Refused (ValueError naming ``path``) before anything is written: a folder, pipe or
    device at ``path`` or in its folder's place, one of the ``inputs`` the command reads,
    and, unless ``archive`` (a checkpoint or weights file is being written), a .npz (ZIP)
    archive: a picture never replaces a checkpoint. An OSError says which file it was
    writing (never the temp file): a DiskFullError for a full disk."""
    path = Path(path)
    output_folder(path.parent, f"cannot write {path}: its folder")
    writable_file(path, inputs)
    if not archive and _zip_at(path):
        raise ValueError(f"{path} holds a .npz (ZIP) archive, such as a checkpoint or weights "
                         f"file: it is left as it was; give another name for the file to write")
    try:
        _replace(path, write)
    except OSError as e:
        raise _naming(e, path) from e


def _zip_at(path):
    """Whether a regular file (not a link) at ``path`` starts as a ZIP archive does."""
    if not path.is_file() or path.is_symlink():
        return False
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


def _naming(e, path):
    """The OSError ``e``, met writing ``path``, said of ``path`` (not of the temp file)."""
    kept = f"{path} is as it was" if path.exists() else f"nothing was written to {path}"
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        said = DiskFullError(f"disk full writing {path}: {e.strerror}; {kept}; free some space")
    elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        said = type(e)(f"permission denied writing {path} ({e.strerror}); {kept}; give a "
                       f"folder you can write to")
    else:
        said = type(e)(f"could not write {path}: {e.strerror or e}; {kept}")
    said.errno = e.errno
    return said


def _replace(path, write):
    """replace_file's writing: temp file, fsync, rename, the folder fsynced. The temp file
    is made, renamed and (on failure) removed in the folder as it was opened, by its file
    descriptor: a folder swapped for a link meanwhile leads nowhere else."""
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = os.open(path.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        tmp = _write_temp(folder, path.name, write)
        try:
            os.replace(tmp, path.name, src_dir_fd=folder, dst_dir_fd=folder)
        except BaseException:
            os.remove(tmp, dir_fd=folder)
            raise
        try:   # make the rename itself durable; not every file system allows it
            os.fsync(folder)
        except OSError:
            pass
    finally:
        os.close(folder)


def _write_temp(folder, name, write):
    """``write(f)`` into a new temp file ``.NAME.XXXXXXXX.tmp`` in the open ``folder``,
    flushed to disk; its name. Removed again if anything fails (Ctrl-C too)."""
    import secrets
    for _ in range(100):
        tmp = f".{name}.{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0),
                         0o666, dir_fd=folder)       # the usual mode, less the umask
            break
        except FileExistsError:
            continue
    else:
        raise FileExistsError(f"no free temp name beside {name}")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:   # never leave a half-written temp file
        os.remove(tmp, dir_fd=folder)
        raise
    return tmp
