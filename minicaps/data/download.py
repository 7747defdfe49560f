"""A data set's files, described once, then found, verified and downloaded: shared by every
data set (MNIST's IDX files, CIFAR-10, SVHN, smallNORB).

A data set module says what its files are (``DataFiles``: their names, their published
SHA-256 digests, its mirrors) and how to read one; ``load_files`` does the rest. It looks in
``<root>/<name>/``, then ``<root>/``, and checks each file (its size, its SHA-256) before the
data set's reader opens it. A missing file is fetched from the mirrors in order into a
temporary ``.part`` file beside its destination and checked the same way; only a file that
passed gets its real name, and a failed mirror leaves nothing behind. When the files are not
there and cannot be downloaded, the error says which files to put where, and where to get them.
"""
import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from minicaps.data.dataset import ChecksumError, DataError, DataNotFoundError, data_root
from minicaps.io.files import data_file

_CHUNK = 1 << 24        # read and hash in 16 MiB pieces
DOWNLOAD_TIMEOUT = 30   # seconds without an answer before a mirror counts as failed


@dataclass(frozen=True)
class DataFiles:
    """What a data set's files are, and where they come from.

    name: the data set; its files are looked for in ``<root>/<name>/``, then ``<root>/``.
    files: their names as served: downloaded, and kept, under these names.
    sha256: the published digests, {file name: hex digest, or None where nothing publishes
        one and the reader checks the content (CIFAR-10's class names)}. A file that has
        no entry cannot be verified: the user passes its digest, or verify=False.
    mirrors: base URLs, tried in order: ``mirror + file name``.
    listed: the lines that name the files in the DataNotFoundError (default: ``files``).
    digest_of: what a digest covers: "file", the bytes on disk, checked here before the
        reader opens the file; or what only the reader sees ("gunzipped content": MNIST's
        mirrors gzip the same arrays differently), under the name without ``.gz``: then
        ``read(path, expected)`` checks it (expected None: not verified).
    gunzipped: a file ``X.gz`` may be on disk gunzipped, as ``X``.
    instead: files that stand in for all of ``files`` where every one of them is there,
        looked for first in each folder (CIFAR-10's folder extracted from its archive).
    folders: folders looked in after the data root (where a system package installs them).
    max_bytes: the biggest file accepted, refused before it is hashed or read.
    """
    name: str
    files: tuple
    sha256: dict
    mirrors: tuple
    listed: tuple = ()
    digest_of: str = "file"
    gunzipped: bool = False
    instead: tuple = ()
    folders: tuple = ()
    max_bytes: int = None


def load_files(files, read, root=None, download=True, verify=True, mirrors=None, sha256=None,
               timeout=DOWNLOAD_TIMEOUT):
    """Each of a data set's files, found, verified and read: (folder, {name: read(path)}).

    files: its DataFiles. read: path -> what one file holds, raising DataError for a bad
    format; or {file name: such a function} where the files differ. Uses the first of
    ``<root>/<name>/``, ``<root>/`` (root: data.dataset.data_root) and ``files.folders``
    that holds every file (or every file ``instead``); otherwise downloads the missing ones
    into ``<root>/<name>/``, trying ``mirrors`` (default files.mirrors) in order, each
    waiting ``timeout`` seconds at most. ``verify`` checks each file against its digest:
    ``sha256`` ({file name: hex digest}) adds to the published ones, or replaces them.
    """
    base = data_root(root)
    table = {**files.sha256, **(sha256 or {})}
    mirrors = files.mirrors if mirrors is None else list(mirrors)

    def load(wanted, path, name):   # wanted: as files names it; name: its own (a .part's too)
        reader = read[wanted] if isinstance(read, dict) else read
        return _read_verified(files, path, name, reader, table, verify)

    sets = (files.instead, files.files) if files.instead else (files.files,)
    for folder in [base / files.name, base] + [Path(d) for d in files.folders]:
        for names in sets:
            found = _find_all(folder, names, files.gunzipped)
            if found is not None:
                return folder, {n: load(n, path, path.name) for n, path in found.items()}
    target = base / files.name
    where = f"{target} (or directly into {base})"
    if not download:
        raise _not_found(files, where, "download=False")
    arrays = {}
    for name in files.files:   # the missing ones are downloaded, the others read
        path = _find(target, name, files.gunzipped)
        if path is not None:
            arrays[name] = load(name, path, path.name)
        else:
            arrays[name] = fetch(name, target, mirrors,
                                 lambda tmp, name=name: load(name, tmp, name), timeout,
                                 lambda why: _not_found(files, where, why))
    return target, arrays


def _read_verified(files, path, name, read, table, verify):
    """read(path), once the file passed: its size, then the digest published for ``name``."""
    path = Path(path)   # a .part being downloaded comes as a str
    key = name if files.digest_of == "file" else name.removesuffix(".gz")
    expected = expected_digest(table, key, path, files.name, verify)
    if files.max_bytes is not None:
        check_size(path, files.max_bytes, files.name)
    if files.digest_of != "file":
        return read(path, expected)   # the digest covers what only the reader sees
    if expected is not None:
        check_sha256(path, sha256_of(path), expected, files.name)
    return read(path)


def _find(folder, name, gunzipped=False):
    """The path of ``name`` in folder (or, if ``gunzipped``, of ``name`` without its .gz),
    or None; DataError naming one that is there but is no regular file (files.data_file)."""
    names = [name] + ([name.removesuffix(".gz")] if gunzipped and name.endswith(".gz") else [])
    return next((folder / n for n in names if data_file(folder / n)), None)


def _find_all(folder, names, gunzipped):
    """{name: path} when every one of ``names`` is in folder, else None."""
    found = {}
    for name in names:
        found[name] = _find(folder, name, gunzipped)
        if found[name] is None:
            return None
    return found


def _not_found(files, where, why):
    """The DataNotFoundError of a data set: which files to put where, and where to get them."""
    listed = "\n".join(f"  {line}" for line in files.listed or files.files)
    sources = ""
    if files.mirrors:
        first, *others = files.mirrors
        sources = "\nGet them from:\n" + "\n".join(
            [f"  {_url(first, n)}" for n in files.files]
            + [f"  (or the same names under {m})" for m in others])
    return DataNotFoundError(
        f"{files.name} data not found ({why}). Put these files\n{listed}\ninto {where}, "
        f"or into a folder named by the MINICAPS_DATA environment variable, or with network "
        f"access let them download (minicaps train --dataset {files.name}, or "
        f"load_dataset({files.name!r}, download=True)).{sources}")


def _url(mirror, fname):
    return mirror.rstrip("/") + "/" + fname


# --- one download, checked -------------------------------------------------------------------

class DownloadChecksumError(DataNotFoundError, ChecksumError):
    """Every mirror failed, and at least one served a file whose SHA-256 is not the published
    one: the data is not on disk (DataNotFoundError) and what came was wrong (ChecksumError)."""


def fetch(fname, folder, mirrors, load, timeout, not_found):
    """Download ``fname`` from the first mirror whose copy ``load(path)`` accepts; keep it as
    ``folder/fname`` and return what ``load`` returned.

    ``load`` raises for a bad file (ChecksumError for wrong content, DataError for a bad
    format). ``not_found(why)`` makes the DataNotFoundError raised when no mirror served a good
    file, or when ``folder`` cannot be written.
    """
    import pooch
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=fname + ".", suffix=".part", dir=folder)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise not_found(f"cannot write there to download {fname}: "
                        f"{type(e).__name__}: {e}") from None
    errors, wrong_content = [], False
    for mirror in mirrors:
        url = _url(mirror, fname)
        fd, tmp = tempfile.mkstemp(prefix=fname + ".", suffix=".part", dir=folder)
        os.close(fd)
        try:
            downloader = pooch.HTTPDownloader(progressbar=True, chunk_size=1 << 16,
                                              timeout=timeout)
            downloader(url, tmp, None)
            result = load(tmp)
            os.replace(tmp, folder / fname)   # only a verified file gets the real name
            return result
        except Exception as e:   # any failure of one mirror means: try the next
            wrong_content |= isinstance(e, ChecksumError)
            errors.append(f"  {url}: {type(e).__name__}: {e}")
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    error = not_found(f"every mirror failed for {fname}:\n" + "\n".join(errors))
    if wrong_content:
        error = DownloadChecksumError(str(error))
    raise error


def sha256_of(path):
    """The SHA-256 of a file's bytes, read in pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def check_sha256(path, actual, expected, dataset, what="file", advice=None):
    """ChecksumError unless ``actual`` (a hex digest of ``what`` in ``path``) is ``expected``;
    ``advice``: what to do about it (default: get the file again)."""
    if actual != expected:
        advice = advice or ("Delete the file so that it is downloaded again, or replace it "
                            "with a good copy.")
        raise ChecksumError(f"{path}: SHA-256 of the {what} is {actual}, expected {expected} "
                            f"for {dataset}. {advice}")


def expected_digest(table, name, path, dataset, verify):
    """The digest to check ``name`` against: None when verify is off; a DataError when verify
    is on and nothing publishes one for this file (say how to load it anyway)."""
    if not verify:
        return None
    if name not in table:
        published = ", ".join(sorted(n for n in table if table[n]))
        raise DataError(
            f"{path}: no SHA-256 is known for {name}, so it cannot be verified. Use the files "
            f"as they are published ({published}), pass its digest in "
            f"sha256={{{name!r}: ...}}, or load with verify=False to trust it.")
    return table[name]


def check_size(path, limit, dataset):
    """DataError unless the file at ``path`` holds at most ``limit`` bytes; returns its size."""
    size = os.path.getsize(path)
    if size > limit:
        raise DataError(f"{path}: {size} bytes, more than the limit of {limit} bytes for a "
                        f"{dataset} file")
    return size


def read_exactly(f, n_bytes, path, what):
    """Read ``n_bytes`` from a stream in pieces (memory follows the data, not a header's
    promise); a DataError naming the file if it ends early."""
    data = bytearray()
    while len(data) < n_bytes:
        chunk = f.read(min(_CHUNK, n_bytes - len(data)))
        if not chunk:
            raise DataError(f"{path}: truncated: {what} needs {n_bytes} bytes, "
                            f"the stream ends after {len(data)}")
        data += chunk
    return data
