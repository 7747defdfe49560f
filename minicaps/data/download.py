"""Verified downloads, shared by every data set (MNIST's IDX files, CIFAR-10, SVHN, smallNORB).

A file is fetched from a list of mirrors in order into a temporary ``.part`` file beside its
destination; ``load`` checks it (its SHA-256, then its format) and only a file that passed gets
its real name. A failed mirror leaves nothing behind. When every mirror fails, the error says
which files to put where, and where to get them.
"""
import hashlib
import os
import tempfile

from minicaps.data.dataset import ChecksumError, DataError, DataNotFoundError

_CHUNK = 1 << 24        # read and hash in 16 MiB pieces
DOWNLOAD_TIMEOUT = 30   # seconds without an answer before a mirror counts as failed


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
        url = mirror.rstrip("/") + "/" + fname
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


def not_found_error(dataset, files, where, why, sources=()):
    """The DataNotFoundError of a data set: which files to put where, and where to get them.

    files: lines naming the files (one each); where: the folder; sources: the URLs to get
    them from."""
    listed = "\n".join(f"  {line}" for line in files)
    got = ("\nGet them from:\n" + "\n".join(f"  {url}" for url in sources)) if sources else ""
    return DataNotFoundError(
        f"{dataset} data not found ({why}). Put these files\n{listed}\ninto {where}, "
        f"or into a folder named by the MINICAPS_DATA environment variable, or with network "
        f"access let them download (minicaps train --dataset {dataset}, or "
        f"load_dataset({dataset!r}, download=True)).{got}")


def sha256_of(path):
    """The SHA-256 of a file's bytes, read in pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def check_sha256(path, actual, expected, dataset, what="file"):
    """ChecksumError unless ``actual`` (a hex digest of ``what`` in ``path``) is ``expected``."""
    if actual != expected:
        raise ChecksumError(
            f"{path}: SHA-256 of the {what} is {actual}, expected {expected} for {dataset}. "
            "Delete the file so that it is downloaded again, or replace it with a good copy.")


def expected_digest(table, name, path, dataset, verify):
    """The digest to check ``name`` against: None when verify is off; a DataError when verify
    is on and nothing publishes one for this file (say how to load it anyway)."""
    if not verify:
        return None
    if name not in table:
        raise DataError(
            f"{path}: no SHA-256 is known for {name}, so it cannot be verified. Use the files "
            f"as they are published ({', '.join(sorted(table))}), pass its digest in "
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
