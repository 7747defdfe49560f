"""Tests for minicaps.data.download: a toy data set's files described once (DataFiles),
then found, verified, downloaded from a 127.0.0.1 server, or said missing by load_files.

The digests are computed here with hashlib from the bytes written, not by the code tested."""
import dataclasses
import functools
import gzip
import hashlib
import http.server
import threading

import numpy as np
import pytest

from minicaps.data.dataset import ChecksumError, DataError, DataNotFoundError
from minicaps.data.download import DataFiles, load_files

GOOD = np.arange(6, dtype="<u2").tobytes()
OTHER = np.arange(6, 12, dtype="<u2").tobytes()     # the same format, not the published file
PUBLISHED = "https://example.org/toy/"              # never contacted: only named in messages


def sha(data):
    return hashlib.sha256(data).hexdigest()


TOY = DataFiles("toy", files=("numbers.bin",), sha256={"numbers.bin": sha(GOOD)},
                mirrors=(PUBLISHED,), listed=("numbers.bin (little-endian uint16)",),
                max_bytes=1024)


def read_numbers(path):
    """The toy format: little-endian uint16s, nothing else."""
    raw = path.read_bytes()
    if len(raw) % 2:
        raise DataError(f"{path}: {len(raw)} bytes, not a whole number of uint16s")
    return np.frombuffer(raw, "<u2")


def names_in(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.fixture
def server(tmp_path):
    """Serves www/good/ (the published file), www/other/ (other content), www/missing/ (404);
    yields its URL and the list of paths asked for, in order."""
    www = tmp_path / "www"
    for folder, data in (("good", GOOD), ("other", OTHER)):
        (www / folder).mkdir(parents=True)
        (www / folder / "numbers.bin").write_bytes(data)
    (www / "missing").mkdir()
    asked = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            asked.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(www)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", asked
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def test_a_download_is_verified_read_and_kept_under_its_name(tmp_path, server):
    url, asked = server
    mirrors = [f"{url}/missing/", f"{url}/other/", f"{url}/good/"]
    folder, got = load_files(TOY, read_numbers, tmp_path, mirrors=mirrors, timeout=5)
    assert folder == tmp_path / "toy"
    np.testing.assert_array_equal(got["numbers.bin"], np.arange(6))
    # the mirrors in the order given: a 404, then a file whose digest is not the published one
    assert asked == ["/missing/numbers.bin", "/other/numbers.bin", "/good/numbers.bin"]
    assert names_in(folder) == ["numbers.bin"]              # no .part left behind
    assert (folder / "numbers.bin").read_bytes() == GOOD
    # kept: read from disk now, no network
    folder, again = load_files(TOY, read_numbers, tmp_path, download=False)
    np.testing.assert_array_equal(again["numbers.bin"], got["numbers.bin"])
    assert len(asked) == 3


def test_a_download_with_a_wrong_digest_is_refused_and_not_kept(tmp_path, server):
    url, _ = server
    with pytest.raises(ChecksumError) as info:
        load_files(TOY, read_numbers, tmp_path, mirrors=[f"{url}/other/"], timeout=5)
    message = str(info.value)
    assert isinstance(info.value, DataNotFoundError)        # and it says what to put where
    assert sha(OTHER) in message and sha(GOOD) in message and f"{url}/other/numbers.bin" in message
    assert "numbers.bin (little-endian uint16)" in message
    assert names_in(tmp_path / "toy") == []
    # the user's own digest for that content lets it in
    _, got = load_files(TOY, read_numbers, tmp_path, mirrors=[f"{url}/other/"], timeout=5,
                        sha256={"numbers.bin": sha(OTHER)})
    np.testing.assert_array_equal(got["numbers.bin"], np.arange(6, 12))


def test_a_missing_file_offline_is_named_with_where_to_put_and_get_it(tmp_path):
    with pytest.raises(DataNotFoundError) as info:
        load_files(TOY, read_numbers, tmp_path, download=False)
    message = str(info.value)
    assert "numbers.bin (little-endian uint16)" in message            # which file
    assert f"{tmp_path / 'toy'} (or directly into {tmp_path})" in message   # where to put it
    assert "MINICAPS_DATA" in message
    assert PUBLISHED + "numbers.bin" in message                       # where to get it
    assert list(tmp_path.iterdir()) == []                             # nothing created


def test_the_first_folder_holding_every_file_is_used(tmp_path):
    pair = dataclasses.replace(TOY, files=("a.bin", "b.bin"), sha256={}, folders=(
        str(tmp_path / "system"),))
    for folder, data in (("root/toy", GOOD), ("root", OTHER), ("system", GOOD[:4])):
        (tmp_path / folder).mkdir(parents=True, exist_ok=True)
        for name in ("a.bin", "b.bin"):
            (tmp_path / folder / name).write_bytes(data)
    load = functools.partial(load_files, pair, read_numbers, verify=False, download=False)
    assert load(tmp_path / "root")[0] == tmp_path / "root" / "toy"
    (tmp_path / "root" / "toy" / "b.bin").unlink()           # the subfolder lacks one now
    folder, got = load(tmp_path / "root")
    assert folder == tmp_path / "root" and got["a.bin"].tolist() == list(range(6, 12))
    folder, got = load(tmp_path / "elsewhere")
    assert folder == tmp_path / "system" and got["b.bin"].tolist() == [0, 1]


def test_instead_and_gunzipped_files_and_one_reader_per_file(tmp_path):
    described = DataFiles("toy", files=("all.bin.gz",), sha256={}, mirrors=(), gunzipped=True,
                          instead=("parts/one.bin", "parts/two.bin"))
    read = {"all.bin.gz": lambda path: ("whole", path.name),
            "parts/one.bin": lambda path: ("one", path.name),
            "parts/two.bin": lambda path: ("two", path.name)}
    (tmp_path / "all.bin").write_bytes(b"")                  # gunzipped, as X for X.gz
    load = functools.partial(load_files, described, read, tmp_path, download=False,
                             verify=False)
    assert load()[1] == {"all.bin.gz": ("whole", "all.bin")}
    (tmp_path / "parts").mkdir()
    (tmp_path / "parts" / "one.bin").write_bytes(b"")
    (tmp_path / "parts" / "two.bin").write_bytes(b"")        # all of instead: taken first
    assert load()[1] == {"parts/one.bin": ("one", "one.bin"), "parts/two.bin": ("two", "two.bin")}


def test_unknown_digests_sizes_and_content_digests(tmp_path):
    (tmp_path / "numbers.bin").write_bytes(GOOD)
    unknown = dataclasses.replace(TOY, sha256={})
    with pytest.raises(DataError, match="no SHA-256 is known for numbers.bin.*verify=False"):
        load_files(unknown, read_numbers, tmp_path, download=False)
    assert load_files(unknown, read_numbers, tmp_path, download=False,
                      verify=False)[1]["numbers.bin"].tolist() == list(range(6))
    none_published = dataclasses.replace(TOY, sha256={"numbers.bin": None})  # reader checks
    assert load_files(none_published, read_numbers, tmp_path, download=False)[1][
        "numbers.bin"].tolist() == list(range(6))
    never = pytest.fail                                      # refused before it is read
    with pytest.raises(DataError, match="12 bytes, more than the limit of 11 bytes"):
        load_files(dataclasses.replace(TOY, max_bytes=11), never, tmp_path, download=False)
    # digests of what the reader sees: the gunzipped bytes, under the name without .gz
    (tmp_path / "numbers.bin").unlink()
    (tmp_path / "numbers.bin.gz").write_bytes(gzip.compress(GOOD))
    content = dataclasses.replace(TOY, files=("numbers.bin.gz",), digest_of="gunzipped content")
    seen = []

    def read_checked(path, expected):
        seen.append((path.name, expected))
        return gzip.decompress(path.read_bytes())
    assert load_files(content, read_checked, tmp_path, download=False)[1] == {
        "numbers.bin.gz": GOOD}
    assert seen == [("numbers.bin.gz", sha(GOOD))]
