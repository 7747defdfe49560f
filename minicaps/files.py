"""Files named by the user, looked at before they are opened.

Opening a named pipe to read waits until something writes to it, which may be never; a
folder or a device is no file to read either. So a file that a command reads by its name
(a picture, a checkpoint) is first looked at with os.stat, and refused, by name, unless
it is a regular file (or a link to one).
"""
import os
import stat

KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"),
         (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def regular_file(path, what):
    """``path`` when it names a regular file. FileNotFoundError ("no such <what>") when
    nothing is there, ValueError when something else is: ``what`` names what was expected,
    such as "checkpoint file"."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such {what}") from None
    if not stat.S_ISREG(mode):
        kind = next((name for is_kind, name in KINDS if is_kind(mode)), "not a regular file")
        raise ValueError(f"{path}: not a {what} but {kind}; give the path of a {what}")
    return path
