"""Which files of an image folder (data.folder) are pictures, of which class, in which
split.

The walk: every .png, .jpg or .jpeg under a class's folder, its subfolders too, links to
folders followed (each real folder once), hidden names left out; a picture reached twice
through links is read once, and refused in two classes or two splits. The split: the
folder's own (DIR/train with DIR/test or DIR/val, split_folders), or a seeded share of
each class held out for testing (seeded_parts), said by a hash of the test files' names
(test_files_sha256). A folder or file that cannot be read is an error naming it, or
skipped with a warning naming it (``bad_images``, report_bad).
"""
import errno
import hashlib
import os
import stat
from pathlib import Path

import numpy as np

from minicaps.data.dataset import DataError

SUFFIXES = (".png", ".jpg", ".jpeg")
VAL_DIRS = ("val", "valid", "validation")     # a validation (or test) folder's names
SPLIT_NAMES = ("train", "test") + VAL_DIRS


def split_folders(root):
    """(train, test, val or None) when ``root`` holds a split of its own: DIR/train with
    DIR/test, or with DIR/val (valid, validation), which then is the test set; with all
    three, val is the validation set (names in any case: Train/ too). None when
    ``root``'s subfolders are the classes (a lone DIR/train is then a class, such as
    CIFAR-100's)."""
    found = _subfolders(root)
    train, test = found.get("train"), found.get("test")
    val = next((found[name] for name in VAL_DIRS if name in found), None)
    if train is None or (test is None and val is None):
        return None
    return (train, test, val) if test is not None else (train, val, None)


def _subfolders(root):
    """{lower-case name: path} of ``root``'s folders that are not hidden."""
    return {p.name.lower(): p for p in sorted(Path(root).iterdir())
            if p.is_dir() and not p.name.startswith(".")}


def scan_root(root, log, bad_images):
    """(class names, [(path, label)], None) from ``root``'s subfolders; refused when two
    of them are split folders without a train/ (test/ and val/)."""
    splits = sorted(set(_subfolders(root)) & set(SPLIT_NAMES))
    if len(splits) >= 2:                 # test/ and val/, but no train/ beside them
        raise DataError(f"{root} holds {', '.join(n + '/' for n in splits)} but no train/: "
                        f"put the training images in {root}/train/<class>/")
    classes, files = _scan(root, log, bad_images)
    return classes, files, None


def scan_split(root, folders, log, bad_images):
    """(class names, [(path, label)], part_of) for DIR/train + DIR/test (+ DIR/val):
    the classes are train's; part_of(path) says "train", "test" or "val"."""
    train, test, val = folders
    reached = {}                 # one picture in two split folders is refused
    classes, files = _scan(train, log, bad_images, reached=reached)
    parts = [(train, "train"), (test, "test")] + ([(val, "val")] if val is not None else [])
    for folder, _ in parts[1:]:
        other_classes, other_files = _scan(folder, log, bad_images, min_classes=1,
                                           reached=reached)
        unknown = sorted(set(other_classes) - set(classes))
        if unknown:
            raise DataError(f"{folder} has class folders that {train} does not: "
                            f"{', '.join(unknown)}; its classes must be training classes "
                            f"(the same folder names)")
        # their labels are positions among the training classes
        files += [(path, classes.index(other_classes[label])) for path, label in other_files]
    used = {folder.name for folder, _ in parts}
    others = sorted(p.name for p in root.iterdir()
                    if p.is_dir() and not p.name.startswith(".") and p.name not in used)
    log(f"{root}: the split is its own: {train.name}/ to train on, {test.name}/ to test on"
        + (f", {val.name}/ to validate on" if val is not None else "")
        + (f"; ignoring the other folders ({some_names(others)})" if others else ""))

    def part_of(path):
        return next(name for folder, name in parts if path.is_relative_to(folder))
    return classes, files, part_of


def _scan(folder, log, bad_images, min_classes=2, reached=None):
    """(class names, [(path, label)]) from folder's subfolders, in sorted order; a
    subfolder that cannot be read as ``bad_images`` says (_readable_files_under). A picture
    reached twice through links (``reached``: {identity: (path, class folder)}, shared by
    the folders of one split) is read once within a class, and refused across classes or
    split folders: it would have two labels, or be trained and tested on."""
    reached = {} if reached is None else reached
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    class_dirs = [p for p in entries if p.is_dir()]
    loose = [p for p in entries if p.is_file() and p.suffix.lower() in SUFFIXES]
    if not class_dirs:
        what = (f"holds {len(loose)} images but no class subfolders" if loose
                else "has no subfolders")
        raise DataError(f"{folder} {what}: put each class's images into a subfolder named "
                        f"after the class ({folder}/<class>/image.png)")
    if len(class_dirs) < min_classes:
        lone, hint = class_dirs[0], ""
        if lone.name.lower() == "train":
            hint = (f"; if {lone} holds the class folders, put a test/ (or val/) folder of "
                    f"them beside it, or move them up into {folder} for a seeded split")
        elif lone.name.lower() in SPLIT_NAMES:
            hint = f"; if {lone} holds the class folders, put a train/ folder of them beside it"
        raise DataError(f"{folder} has one class folder ({class_dirs[0].name}): a classifier "
                        f"needs at least 2 classes{hint}")
    for class_dir in class_dirs:
        try:
            class_dir.name.encode("utf-8")
        except UnicodeEncodeError:
            raise DataError(f"the class folder {printable(class_dir.name)} in {folder} has a "
                            f"name that is not UTF-8: rename it (class names go into the "
                            f"run's checkpoints as text)") from None
    if loose:
        log(f"{folder}: ignoring {len(loose)} images outside the class folders "
            f"(such as {loose[0].name})")
    files, ignored, broken, twice = [], [], [], 0
    for label, class_dir in enumerate(class_dirs):
        found, dangling, not_files = _readable_files_under(class_dir, bad_images, log)
        broken += dangling
        images = [(p, real) for p, real in found if p.suffix.lower() in SUFFIXES]
        ignored += [p for p, _ in found if p.suffix.lower() not in SUFFIXES] + not_files
        if not images:
            raise DataError(f"class folder {class_dir} has no .png, .jpg or .jpeg images: "
                            f"add some, or remove the folder")
        for path, real in images:
            if real not in reached:
                reached[real] = (path, class_dir)
                files.append((path, label))
                continue
            first, first_dir = reached[real]
            if first_dir != class_dir:
                raise DataError(f"{first} and {path} are one picture (linked) in "
                                f"{first_dir} and {class_dir}: keep it in one of them")
            twice += 1
    if ignored:
        are = "is" if len(ignored) == 1 else "are"
        log(f"{folder}: ignoring {_count(len(ignored), 'file')} that {are} not .png, .jpg or "
            f".jpeg (such as {ignored[0]})")
    if broken:
        leads = "leads" if len(broken) == 1 else "lead"
        log(f"{folder}: ignoring {_count(len(broken), 'link')} that {leads} nowhere (such as "
            f"{broken[0]})")
    if twice:
        log(f"{folder}: {_count(twice, 'picture')} reached twice through links, read once")
    return [p.name for p in class_dirs], files


def picture_files(folder):
    """Every .png, .jpg or .jpeg under ``folder``, sorted, as a class folder's are found
    (its subfolders and links to folders too, hidden names left out). ValueError naming
    a folder under it that cannot be read: its pictures would be missed."""
    found, _, _, unreadable = _files_under(folder)
    if unreadable:
        where, e = unreadable[0]
        more = f" (and {_count(len(unreadable) - 1, 'folder')} more)" if len(unreadable) > 1 else ""
        raise ValueError(f"{where}: {_cannot_read(e)}{more}")
    return [path for path, _ in found if path.suffix.lower() in SUFFIXES]


def _files_under(folder):
    """([(file, its identity)], broken links, other entries, [(path, OSError)] of the
    folders that cannot be read and the entries that cannot be opened, such as a path too
    long for the system) under ``folder``, each sorted: its subfolders too, links
    to folders followed (each real folder once, so a link to an ancestor ends), hidden
    names left out (a visible link to a hidden file is read). A file's identity, (device,
    inode), is the same however it is reached: through links, or as a hard link. The
    folders to visit wait in a list, so that no depth of nesting runs out of stack."""
    seen, files, broken, other, unreadable = set(), [], [], [], []
    waiting = [Path(folder)]
    while waiting:
        where = waiting.pop()
        try:
            status = os.stat(where)
            if (status.st_dev, status.st_ino) in seen:
                continue
            seen.add((status.st_dev, status.st_ino))
            with os.scandir(where) as entries:
                names = [entry.name for entry in entries if not entry.name.startswith(".")]
        except OSError as e:
            unreadable.append((where, e))
            continue
        for name in names:
            path = where / name
            try:
                status = os.stat(path)            # through a link to what it leads to
            except PermissionError as e:          # the folder can be listed, not entered
                unreadable.append((where, e))
                break
            except OSError as e:
                if e.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR):
                    broken.append(path)           # a link that leads nowhere (or round)
                else:                             # there, but cannot be opened: too long
                    unreadable.append((path, e))
                continue
            if stat.S_ISDIR(status.st_mode):
                waiting.append(path)
            elif stat.S_ISREG(status.st_mode):
                files.append((path, (status.st_dev, status.st_ino)))
            else:                                 # a pipe, a device: not a picture
                other.append(path)
    return sorted(files), sorted(broken), sorted(other), sorted(unreadable, key=lambda u: u[0])


def _readable_files_under(class_dir, bad_images, log):
    """_files_under(class_dir) but the folders that cannot be read: the class folder
    itself is refused (its class would be left empty); one under it stops the read, or
    is left out with a warning naming it (``bad_images``, as an unreadable picture)."""
    found, broken, other, unreadable = _files_under(class_dir)
    for folder, e in unreadable:
        if folder == class_dir:
            raise DataError(f"class folder {class_dir} cannot be read ({e.strerror or e}): "
                            f"give this user read access to it, or move it out")
        report_bad(folder, _cannot_read(e), bad_images, log)
    return found, broken, other


def _cannot_read(e):
    """What is wrong with an entry of _files_under's unreadable list, and what to do."""
    if e.errno == errno.ENAMETOOLONG:
        return (f"a path too long to open (ENAMETOOLONG: {len(os.fsencode(e.filename or ''))} "
                f"bytes, over the system's limit); move it nearer the top of the folder")
    return f"a folder that cannot be read ({e.strerror or e}); give this user read access to it"


def report_bad(path, why, bad_images, log):
    """An unreadable image (or folder of them): an error, or a warning and None."""
    message = f"{path}: {why}"
    if bad_images == "error":
        raise DataError(f"{message} (--bad-images skip leaves it out)")
    log(f"warning: skipping {message}")


def _count(n, thing):
    return f"{n} {thing}{'' if n == 1 else 's'}"


def some_names(names, n=4):
    """The first ``n`` names, and how many there are in all, for a line of the log."""
    return ", ".join(names[:n]) + (f", ... ({len(names)} in all)" if len(names) > n else "")


def held_out_files(root, files, classes, part_of, test_fraction, seed, info):
    """The (path, label) of the test images among ``files``: by their folder, or by the
    seeded split drawn over all of them (its hash into ``info``)."""
    found = [path for path, _ in files]
    if part_of is not None:
        part = np.array([part_of(p) for p in found])
    else:
        labels = np.array([label for _, label in files])
        part = seeded_parts(labels, len(classes), test_fraction, seed)
        info["test_files_sha256"] = test_files_sha256(root, found, part == "test")
    return [f for f, p in zip(files, part) if p == "test"]


def check_parts(root, classes, labels, part, skipped, folders, only):
    """A DataError when no test image (or, reading all, no training image or none of a
    class) is left."""
    needed = [("test", "test")] if only else [("train", "training"), ("test", "test")]
    for name, what in needed:
        if not (part == name).any():
            if skipped:
                why = f" ({skipped} images were skipped)"
            elif not folders:
                why = " (each class has a single image, and that one is trained on)"
            else:
                why = ""
            where = "" if folders else ", or give DIR/train and DIR/test folders"
            raise DataError(f"{root}: no {what} images are left{why}; add images{where}")
    if not only:
        missing = sorted(set(range(len(classes))) - set(labels[part == "train"].tolist()))
        if missing:
            raise DataError(f"{root}: no training images of class "
                            f"{', '.join(classes[c] for c in missing)} are left")


def test_files_sha256(root, paths, is_test):
    """SHA-256 of the held-out files' names (relative to ``root``, sorted): what says a
    seeded split is the one a run was trained with. Names that are not UTF-8 count by
    their bytes."""
    names = sorted(str(p.relative_to(root)) for p, t in zip(paths, is_test) if t)
    return hashlib.sha256("\n".join(names).encode("utf-8", "surrogateescape")).hexdigest()


def seeded_parts(labels, n_classes, fraction, seed):
    """Each image's part, "test" or "train": _seeded_split's choice."""
    return np.where(_seeded_split(labels, n_classes, fraction, seed), "test", "train")


def _seeded_split(labels, n_classes, fraction, seed):
    """True for the images held out: of each class's n images, round(fraction n) drawn
    with ``seed`` (at least 1 and at most n - 1 when n >= 2; none of a class of 1)."""
    rng = np.random.default_rng(seed)
    is_test = np.zeros(len(labels), dtype=bool)
    for c in range(n_classes):
        members = np.flatnonzero(labels == c)
        n = len(members)
        k = min(max(round(fraction * n), 1), n - 1) if n >= 2 else 0
        is_test[members[rng.permutation(n)[:k]]] = True
    return is_test


def printable(text):
    """``text`` with the bytes of a file name that is not UTF-8 (Python keeps them as lone
    surrogates) written as \\xNN, so that printing it cannot fail."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")
