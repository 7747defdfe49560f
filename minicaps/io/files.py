"""Files named by the user, looked at before they are opened.

Opening a named pipe to read waits until something writes to it, which may be never; a
folder or a device is no file to read either. So a file that a command reads by its name
(a picture, a checkpoint) is first looked at with os.stat, and refused, by name, unless
it is a regular file (or a link to one).
"""
import errno
import os
import stat
from pathlib import Path

KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"),
         (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"      # the first 8 bytes of every PNG file
NAME_MAX, PATH_MAX = 255, 4096              # Linux's: the longest file name, the longest path


def regular_file(path, what):
    """``path`` when it names a regular file. FileNotFoundError ("no such <what>") when
    nothing is there, ValueError when something else is: ``what`` names what was expected,
    such as "checkpoint file"."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such {what}") from None
    if not stat.S_ISREG(mode):
        kind = kind_of(mode)
        raise ValueError(f"{path}: not a {what} but {kind}; give the path of a {what}")
    return path


def kind_of(mode, otherwise="not a regular file"):
    """What a file of st_mode ``mode`` is, in words ("a folder", "a named pipe", ...)."""
    return next((name for is_kind, name in KINDS if is_kind(mode)), otherwise)


def writable_file(path, inputs=()):
    """``path`` when a command may write a file there: nothing is there yet, or a regular
    file or a link (which is replaced, not followed). ValueError naming ``path`` when it is
    a folder, a pipe or a device, or one of the ``inputs`` the command reads (the same file
    by (st_dev, st_ino), under any name)."""
    try:
        here = os.lstat(path)
    except FileNotFoundError:
        return path
    if not (stat.S_ISREG(here.st_mode) or stat.S_ISLNK(here.st_mode)):
        raise ValueError(f"{path} is {kind_of(here.st_mode)}, not a file to write: nothing was "
                         f"written; give the name of a new file")
    for source in inputs:
        try:
            read = os.stat(source)
        except OSError:
            continue
        if (read.st_dev, read.st_ino) == (here.st_dev, here.st_ino):
            same = "" if os.path.abspath(path) == os.path.abspath(source) else f" (as {source})"
            raise ValueError(f"{path}{same} is a file this command reads: it is left as it "
                             f"was; give another name for the file to write")
    return path


def output_folder(path, what="--out"):
    """``path`` when the folder ``what`` names can hold the files written there: a folder,
    or nothing yet (it is made). ValueError naming it when something else is there."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return path
    if not stat.S_ISDIR(mode):
        kind = "a file" if stat.S_ISREG(mode) else kind_of(mode)
        raise ValueError(f"{what} {path} is {kind}: {what} must be a folder (made if "
                         f"missing); give a folder")
    return path


def png_file(path, what):
    """``path`` when a PNG picture may be written there: its name ends in .png, and what is
    there already, if anything, is a PNG (a link is replaced, not followed, so it may lead
    anywhere). ValueError naming ``what`` and ``path`` otherwise: a picture written over a
    script or notes would lose them."""
    if Path(path).suffix.lower() != ".png":
        raise ValueError(f"{what} {path}: a PNG picture is written, and this name does not "
                         f"end in .png; nothing was written; give another name, ending .png")
    if os.path.isfile(path) and not os.path.islink(path):
        with open(path, "rb") as f:
            if f.read(len(PNG_SIGNATURE)) != PNG_SIGNATURE:
                raise ValueError(f"{what} {path} is a file that is not a PNG picture: it is "
                                 f"left as it was; give another name, or remove that file")
    return path


def os_error_said(e):
    """The OSError ``e`` said in one sentence, naming its file and what to do, when it is
    about the path itself: a file where a folder should be (ENOTDIR), a name or a path too
    long (ENAMETOOLONG), permission denied (EACCES, EPERM). None for any other."""
    if e.filename is None:
        return None
    name = os.fsdecode(e.filename)
    if e.errno == errno.ENOTDIR:
        on_the_way = next((str(p) for p in reversed(Path(name).parents)
                           if p.exists() and not p.is_dir()), "a part of it")
        return (f"{name}: {on_the_way} is a file, not a folder, so nothing can be "
                f"under it; give a path whose folders are folders")
    if e.errno == errno.ENAMETOOLONG:
        longest = max(Path(name).parts, key=lambda part: len(os.fsencode(part)))
        if len(os.fsencode(longest)) > NAME_MAX:
            where = "" if longest == name else f"{_shortened(name)}: "
            return (f"{where}the name {_shortened(longest)} is too long "
                    f"({len(os.fsencode(longest))} bytes; a file name may have at most "
                    f"{NAME_MAX}); give a shorter name")
        return (f"{_shortened(name)}: the path is too long ({len(os.fsencode(name))} bytes; "
                f"a path may have at most {PATH_MAX}); give a shorter path")
    if e.errno in (errno.EACCES, errno.EPERM):
        return (f"{name}: permission denied ({e.strerror}); give this user access "
                f"to it (chmod, or ask its owner), or use a copy of it that you may use")
    return None


def _shortened(name, most=80):
    """``name``, its middle left out when it is longer than ``most`` characters."""
    return name if len(name) <= most else f"{name[:most // 2]}...{name[-most // 4:]}"


def data_file(path):
    """``path`` when a regular file (or a link to one) is there, None when nothing is: a
    data file to read, or to download when missing. Anything else there (a folder, a named
    pipe, a link that leads nowhere) is refused by name, so that it is neither read nor
    taken for missing and downloaded over."""
    from minicaps.data.dataset import DataError
    try:
        mode = os.stat(path).st_mode
    except NotADirectoryError:          # a file where a folder on the way should be
        return None
    except FileNotFoundError:
        if not os.path.islink(path):
            return None
        raise DataError(f"{path}: not a data file but a link that leads nowhere; remove it, "
                        f"or put the file it should lead to there") from None
    except OSError as e:
        raise DataError(f"{path}: cannot be looked at ({e.strerror or e})") from None
    if not stat.S_ISREG(mode):
        kind = kind_of(mode)
        raise DataError(f"{path}: not a data file but {kind}; remove it, or put the data "
                        f"file of that name there")
    return path
