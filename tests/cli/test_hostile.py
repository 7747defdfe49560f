"""Hostile and careless inputs: each is answered by one clear error, within bounded memory
and time, and leaves the files saved earlier as they were.

Every case runs under ``bounded`` (tests/limits.py: an address-space cap of at most a few
hundred MB above what the process holds, and a time limit), asserts the error's type and
message, and where a run folder exists, that its files' SHA-256 did not change. The classes:

- a run folder belongs to one run (refused fresh runs, the lock, temp files, writability);
- checkpoints are read by an allow-list (members, headers, sizes, dtypes, values, metadata);
- training refuses nonsense before it starts and stops at the first NaN;
- the CLI answers in one line with exit status 2.

(Pictures given to ``predict``: tests/data/test_hostile_images.py.)
"""
import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

import minicaps as mc
import minicaps.training.run
from minicaps import cli
from minicaps.training import runfolder
from minicaps.io.checkpoint import load_checkpoint, read_epoch
from minicaps.training.optim import Adam
from minicaps.training.evaluation import DivergedError
from minicaps.training.run import train

from limits import file_hashes
from synthetic import bars_data, synthetic_mnist
from tiny_runs import CONFIG, quiet, run_tiny
from hostile_cases import one_line_error

MB = 1 << 20


# --- a run folder belongs to one run -----------------------------------------------------------

def test_a_fresh_run_into_a_folder_holding_a_run_is_refused(run_dir, bounded):
    before = file_hashes(run_dir)
    with bounded(memory=512 * MB, seconds=30):
        with pytest.raises(runfolder.RunFolderError,
                           match=r"already holds a run .*--resume .*last\.npz.*--out NEWDIR.*--overwrite"):
            run_tiny(run_dir)
    assert file_hashes(run_dir) == before


def test_overwrite_deletes_the_old_run_and_says_so(run_dir, bounded):
    lines = []
    with bounded(memory=512 * MB, seconds=30):
        run_tiny(run_dir, log=lines.append, overwrite=True, seed=1)
    assert any("--overwrite: deleted last.npz, best.npz, metrics.jsonl" in line for line in lines)
    epochs = [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").open()]
    assert epochs == [1]                    # not 1, 1: the old lines went with the old run
    saved = load_checkpoint(run_dir / "last.npz").extra["settings"]
    assert saved["seed"] == 1


def test_a_second_process_is_kept_out_by_the_lock(run_dir, bounded):
    """A real second process holds the folder's lock: training there is refused, naming its
    pid, and nothing in the folder changes."""
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; sys.path.insert(0, sys.argv[1]);"
         "from minicaps.training import runfolder;"
         "lock = runfolder.claim(sys.argv[2], fresh=False, log=lambda s: None);"
         "print('locked', flush=True); time.sleep(60)",
         os.path.dirname(os.path.dirname(mc.__file__)), str(run_dir)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = file_hashes(run_dir)
        with bounded(memory=512 * MB, seconds=30):
            with pytest.raises(runfolder.RunFolderError,
                               match=rf"in use by another training \(pid {holder.pid} .*--out NEWDIR"):
                run_tiny(run_dir, epochs=2, resume=run_dir / "last.npz")
        assert file_hashes(run_dir) == before
    finally:
        holder.kill()
        holder.wait()


def test_a_stale_lock_is_taken_over_with_a_notice(run_dir, bounded):
    """The lock of a process that is gone (killed: its file stays, unlocked)."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    (run_dir / runfolder.LOCK_FILE).write_text(json.dumps(
        {"pid": int(dead), "host": "elsewhere", "started": "2026-01-01 00:00:00"}))
    lines = []
    with bounded(memory=512 * MB, seconds=30):
        run_tiny(run_dir, epochs=2, resume=run_dir / "last.npz", log=lines.append)
    assert any(f"taking over the lock of {run_dir}: pid {dead}" in line for line in lines)
    assert read_epoch(run_dir / "last.npz") == 2
    assert not (run_dir / runfolder.LOCK_FILE).exists()     # released at the end


def test_two_claims_of_one_folder_exclude_each_other(tmp_path, bounded):
    with bounded(memory=64 * MB, seconds=10):
        with runfolder.claim(tmp_path / "run", fresh=True, log=quiet):
            with pytest.raises(runfolder.RunFolderError, match=f"pid {os.getpid()}"):
                runfolder.claim(tmp_path / "run", fresh=True, log=quiet)
        runfolder.claim(tmp_path / "run", fresh=True, log=quiet).release()   # free again


def test_temp_files_of_a_killed_write_are_removed_when_the_next_run_starts(run_dir, bounded):
    for name in (".last.npz.abc123.tmp", ".best.npz.xyz.tmp"):
        (run_dir / name).write_bytes(b"\0" * 1000)
    (run_dir / "notes.txt").write_text("mine")
    lines = []
    with bounded(memory=512 * MB, seconds=30):
        run_tiny(run_dir, epochs=2, resume=run_dir / "last.npz", log=lines.append)
    assert not list(run_dir.glob("*.tmp"))
    assert (run_dir / "notes.txt").read_text() == "mine"          # only the temp files
    assert any("removed 2 temp file(s)" in line for line in lines)


def test_an_out_folder_that_cannot_be_created_fails_before_the_first_batch(tmp_path, bounded,
                                                                           monkeypatch):
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setattr(minicaps.training.run, "train_epoch", pytest.fail)   # never reached
    with bounded(memory=512 * MB, seconds=30):
        with pytest.raises(runfolder.RunFolderError, match="cannot create the run folder .*--out"):
            run_tiny(tmp_path / "file" / "run")


def test_an_unwritable_out_folder_fails_before_the_first_batch(tmp_path, bounded, monkeypatch):
    """The lock file cannot be created (as in a read-only folder; root could write one)."""
    real_open = os.open

    def read_only(path, flags, *args):
        if str(path).endswith(runfolder.LOCK_FILE):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(runfolder.os, "open", read_only)
    monkeypatch.setattr(minicaps.training.run, "train_epoch", pytest.fail)
    with bounded(memory=512 * MB, seconds=30):
        with pytest.raises(runfolder.RunFolderError, match="cannot write in the run folder"):
            run_tiny(tmp_path / "run")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                    reason="root writes into read-only folders")
def test_a_read_only_folder_fails_before_the_first_batch(tmp_path, bounded, monkeypatch):
    out = tmp_path / "run"
    out.mkdir()
    out.chmod(0o555)
    monkeypatch.setattr(minicaps.training.run, "train_epoch", pytest.fail)
    try:
        with bounded(memory=512 * MB, seconds=30):
            with pytest.raises(runfolder.RunFolderError, match="cannot write in the run folder"):
                run_tiny(out)
    finally:
        out.chmod(0o755)


def test_a_full_disk_is_said_before_the_first_batch(tmp_path, bounded, monkeypatch):
    import collections
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(runfolder.shutil, "disk_usage", lambda path: usage(10**9, 10**9, 1000))
    monkeypatch.setattr(minicaps.training.run, "train_epoch", pytest.fail)
    with bounded(memory=512 * MB, seconds=30):
        with pytest.raises(runfolder.RunFolderError, match="has 0 MiB free; the checkpoints need"):
            run_tiny(tmp_path / "run")
    assert not (tmp_path / "run" / runfolder.LOCK_FILE).exists()


def test_resuming_into_the_folder_of_another_run_is_refused(run_dir, tmp_path, bounded):
    other = tmp_path / "other"
    run_tiny(other, seed=3)
    before = file_hashes(other)
    with bounded(memory=512 * MB, seconds=30):
        with pytest.raises(runfolder.RunFolderError, match="already holds a run"):
            run_tiny(other, epochs=2, resume=run_dir / "last.npz")
    assert file_hashes(other) == before


# --- checkpoints are read by an allow-list -----------------------------------------------------

def members_of(path):
    """{name: array} of a checkpoint we wrote ourselves (trusted, so np.load is fine)."""
    with np.load(path) as npz:
        return {k: npz[k] for k in npz.files}


def write_members(path, members):
    """An .npz of these arrays, as np.savez writes it."""
    with open(path, "wb") as f:
        np.savez(f, **members)


def edit_meta(path, change):
    members = members_of(path)
    meta = json.loads(members["meta"].tobytes())
    change(meta)
    members["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    write_members(path, members)


def npy_bytes(array=None, header=None):
    """The bytes of a .npy file of ``array``, or a bare header dict with no data."""
    import io
    buf = io.BytesIO()
    if header is not None:
        np.lib.format.write_array_header_1_0(buf, header)
    else:
        np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def add_member(path, name, data, compress=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "a", compression=compress) as z:
        z.writestr(name, data)


def deflated_member(path, name, head, filler, size):
    """Append member ``name``: ``head`` then ``size`` bytes of ``filler``, deflated as it is
    written (a few MB on disk for a GB inside)."""
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as z:
        with z.open(name, "w", force_zip64=True) as f:
            f.write(head)
            chunk = filler * (MB // len(filler))
            for _ in range(size // len(chunk)):
                f.write(chunk)


@pytest.fixture
def ckpt(run_dir):
    return run_dir / "last.npz"


def assert_refused(path, pattern, bounded, memory=256 * MB):
    before = file_hashes(path.parent)
    with bounded(memory=memory, seconds=30):
        with pytest.raises(ValueError, match=pattern) as info:
            load_checkpoint(path)
    assert str(path) in str(info.value)            # every loading error names the file
    assert file_hashes(path.parent) == before


def test_an_unused_member_is_refused_before_it_is_decompressed(ckpt, bounded):
    """6 MB on disk, 1 GiB inside: refused by its name, under a 256 MB cap."""
    deflated_member(ckpt, "junk.npy", b"", b"\0", 1 << 30)
    assert ckpt.stat().st_size < 8 * MB
    assert_refused(ckpt, r"unexpected members \['junk'\]", bounded)


def test_metadata_followed_by_a_gigabyte_of_spaces_is_refused_unread(ckpt, bounded):
    members = members_of(ckpt)
    meta = members.pop("meta").tobytes()
    write_members(ckpt, members)
    head = npy_bytes(header={"descr": "|u1", "fortran_order": False, "shape": (len(meta) + (1 << 30),)})
    deflated_member(ckpt, "meta.npy", head + meta, b" ", 1 << 30)
    assert_refused(ckpt, r"checkpoint metadata of \d+ bytes; a checkpoint's is at most 1048576",
                   bounded)


def test_a_member_promising_4_tib_is_refused_from_its_header(ckpt, bounded):
    members = members_of(ckpt)
    del members["param/conv1.W"]
    write_members(ckpt, members)
    add_member(ckpt, "param/conv1.W.npy",
               npy_bytes(header={"descr": "<f4", "fortran_order": False, "shape": (1 << 40,)}))
    assert_refused(ckpt, r"param/conv1\.W has shape \(1099511627776,\), the network in the "
                         r"checkpoint's config needs", bounded)


def test_data_shorter_than_its_header_promises_is_refused(ckpt, bounded):
    members = members_of(ckpt)
    W = members.pop("param/digit.W")
    write_members(ckpt, members)
    add_member(ckpt, "param/digit.W.npy", npy_bytes(W)[:-8])
    assert_refused(ckpt, r"param/digit\.W' holds \d+ bytes of data, its header promises", bounded)


def test_json_nested_200000_deep_is_refused(ckpt, bounded):
    members = members_of(ckpt)
    members["meta"] = np.frombuffer(b"[" * 200_000 + b"]" * 200_000, np.uint8)
    write_members(ckpt, members)
    assert_refused(ckpt, "damaged checkpoint metadata", bounded)


@pytest.mark.parametrize("dtype", ["int32", "float16", "complex64", "bool", "<U5",
                                   [("a", "<f4"), ("b", "<f4")]],
                         ids=["int32", "float16", "complex64", "bool", "str", "structured"])
def test_parameters_of_another_dtype_are_refused_not_cast(ckpt, bounded, dtype):
    members = members_of(ckpt)
    W = members["param/primary.W"]
    members["param/primary.W"] = (np.zeros(W.shape, dtype) if isinstance(dtype, list)
                                  else W.astype(dtype))
    write_members(ckpt, members)
    assert_refused(ckpt, r"param/primary\.W is stored as .*float32 or float64", bounded)


def test_an_object_array_is_refused_and_never_unpickled(ckpt, bounded):
    members = members_of(ckpt)
    del members["param/conv1.b"]
    write_members(ckpt, members)
    shape = CONFIG.param_shapes()["conv1.b"]
    add_member(ckpt, "param/conv1.b.npy",
               npy_bytes(header={"descr": "|O", "fortran_order": False, "shape": shape})
               + b"\x80\x04cos\nsystem\n(S'touch /tmp/pwned'\ntR.")
    assert_refused(ckpt, r"param/conv1\.b is stored as object", bounded)


@pytest.mark.parametrize("member, value, said", [
    ("param/conv1.W", np.nan, "param/conv1.W holds NaN or infinite values"),
    ("param/dec1.b", np.inf, "param/dec1.b holds NaN or infinite values"),
    ("optim/m/digit.W", -np.inf, "optim/m/digit.W holds NaN or infinite values"),
    ("optim/v/primary.b", np.nan, "optim/v/primary.b holds NaN or infinite values"),
    ("optim/v/primary.b", -1.0, r"optim/v/primary.b \(Adam's second moment\) holds negative"),
    ("average/digit.W", np.nan, "average/digit.W holds NaN or infinite values"),
])
def test_non_finite_weights_or_optimizer_state_are_refused_by_name(ckpt, bounded, member,
                                                                    value, said):
    members = members_of(ckpt)
    members[member] = members[member].copy()
    members[member].flat[3] = value
    write_members(ckpt, members)
    assert_refused(ckpt, said, bounded)


@pytest.mark.parametrize("change, said", [
    (lambda m: m.update(epoch="abc"), "epoch is 'abc', expected an integer >= 0"),
    (lambda m: m.update(epoch=2.7), "epoch is '2.7', expected an integer >= 0"),
    (lambda m: m.update(step=-5), "step is '-5', expected an integer >= 0"),
    (lambda m: m.update(extra=[1, 2]), r"extra is '\[1, 2\]', expected a JSON object"),
    (lambda m: m.update(metrics="fine"), "metrics is 'fine', expected a JSON object"),
    (lambda m: m["extra"].update(settings=[]), r"extra.settings is '\[\]'"),
    (lambda m: m["optimizer"].update(lr=float("nan")), "optimizer.lr is 'nan'"),
    (lambda m: m["optimizer"].update(eps=-1e-8), "optimizer.eps is '-1e-08'"),
    (lambda m: m["optimizer"].update(t=True), "optimizer.t is 'True'"),
    (lambda m: m.update(dtype="float16"), "dtype is 'float16'"),
    (lambda m: m.update(average={"decay": 1.5}), "average is"),
    (lambda m: m["config"].update(conv1_channels=2.5),
     "bad network config .*conv1_channels must be an integer >= 1, got 2.5"),
    (lambda m: m["config"].update(m_minus=float("nan")), "m_minus must be a finite number"),
    (lambda m: m.update(config=[]), "config is"),
])
def test_metadata_fields_are_type_checked(ckpt, bounded, change, said):
    edit_meta(ckpt, change)
    assert_refused(ckpt, said, bounded)


def test_a_bzip2_member_is_refused(ckpt, bounded):
    members = members_of(ckpt)
    b = members.pop("param/conv1.b")
    write_members(ckpt, members)
    add_member(ckpt, "param/conv1.b.npy", npy_bytes(b), compress=zipfile.ZIP_BZIP2)
    assert_refused(ckpt, "compressed with method 12; checkpoints are stored or deflated", bounded)


def test_read_epoch_of_a_damaged_epoch_names_the_file(ckpt, bounded):
    edit_meta(ckpt, lambda m: m.update(epoch="abc"))
    with bounded(memory=128 * MB, seconds=10):
        with pytest.raises(ValueError, match=f"{ckpt}: damaged checkpoint metadata: epoch"):
            read_epoch(ckpt)


def test_a_checkpoint_that_would_not_fit_in_memory_is_refused(ckpt, bounded, monkeypatch):
    # read_archive asks check_fits, which looks available_memory up in backend.memory
    monkeypatch.setattr(mc.backend.memory, "available_memory", lambda device="cpu": 1000)
    assert_refused(ckpt, "needs about .* GiB of memory and 0.00 GiB is available", bounded)


def test_a_good_checkpoint_still_loads_under_the_cap(ckpt, bounded):
    expected = members_of(ckpt)
    with bounded(memory=256 * MB, seconds=30):
        loaded = load_checkpoint(ckpt)
    for name, p in loaded.model.params.items():
        np.testing.assert_array_equal(p, expected[f"param/{name}"])
    for name, m in loaded.optimizer.m.items():
        np.testing.assert_array_equal(m, expected[f"optim/m/{name}"])


# --- training refuses nonsense before it starts, and stops at the first NaN --------------------

@pytest.mark.parametrize("setting, said", [
    (dict(lr=float("inf")), "lr must be a finite number > 0"),
    (dict(lr=float("nan")), "lr must be a finite number > 0"),
    (dict(lr=-0.1), "lr must be a finite number > 0"),
    (dict(lr_decay=1.5), r"lr_decay must be a finite number in \(0, 1\]"),
    (dict(batch_size=2.5), "batch_size must be an integer >= 1, got 2.5"),
    (dict(batch_size=0), "batch_size must be an integer >= 1, got 0"),
    (dict(epochs="3"), "epochs must be an integer >= 0, got '3'"),
    (dict(seed=-1), "seed must be an integer >= 0"),
    (dict(shift=1.5), "shift must be an integer >= 0"),
    (dict(decay_steps=0), "decay_steps must be an integer >= 1"),
    (dict(limit_train=0), "limit_train must be an integer >= 1"),
    (dict(average=float("nan")), r"average must be a finite number in \(0, 1\)"),
])
def test_bad_training_settings_are_refused_before_anything_is_written(tmp_path, bounded,
                                                                       setting, said):
    with bounded(memory=256 * MB, seconds=10):
        with pytest.raises(ValueError, match=said):
            run_tiny(tmp_path / "run", **setting)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("field, value, said", [
    ("conv1_channels", 2.5, "conv1_channels must be an integer >= 1, got 2.5"),
    ("conv1_channels", "8", "conv1_channels must be an integer >= 1, got '8'"),
    ("routing_iters", True, "routing_iters must be an integer >= 1, got True"),
    ("m_minus", float("nan"), "m_minus must be a finite number"),
    ("m_plus", 1.5, r"m_plus must be a finite number in \[0, 1\]"),
    ("squash_eps", -1e-7, "squash_eps must be a finite number > 0"),
    ("squash_eps", 0.0, "squash_eps must be a finite number > 0"),
    ("lam", float("inf"), "lam must be a finite number"),
    ("recon_weight", -1.0, "recon_weight must be a finite number >= 0"),
    ("m_minus", 0.95, "needs m_minus < m_plus"),
    ("input_shape", (28, 28.5, 1), "input_shape must be a list of integers"),
    ("use_decoder", "yes", "use_decoder must be True or False"),
])
def test_bad_network_configs_are_refused_by_field(bounded, field, value, said):
    with bounded(memory=64 * MB, seconds=10):
        with pytest.raises(ValueError, match=said):
            mc.CapsNetConfig(**{field: value})


def test_float_images_in_0_255_are_refused(bounded):
    model = mc.CapsNet(CONFIG, dtype="float64")
    x = bars_data()[0][:4, ..., None].astype(np.float64)          # forgot to divide by 255
    with bounded(memory=256 * MB, seconds=10):
        with pytest.raises(ValueError, match=r"\[0, 1\], got values in 0\.\.255; pixels 0\.\.255 "
                                             r"go in divided by 255"):
            model.predict(x)


def test_predict_with_batch_size_0_is_said(bounded):
    model = mc.CapsNet(CONFIG)
    with bounded(memory=256 * MB, seconds=10):
        with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
            model.predict(np.zeros((2, 10, 10, 1), np.float32), batch_size=0)


def test_a_batch_too_big_for_memory_is_refused_naming_one_that_fits(tmp_path, bounded):
    """The paper's network at batch 100,000 (about 360 GiB): refused before allocating,
    under a 512 MB cap, naming a batch size the estimate says fits."""
    data = tuple(np.zeros((4, 28, 28), np.uint8) if k % 2 == 0 else np.arange(4) % 10
                 for k in range(4))
    with bounded(memory=512 * MB, seconds=30):
        available = mc.backend.available_memory()            # under the cap: about 512 MB
        with pytest.raises(ValueError, match=r"a training batch of 100000 images needs about "
                                             r"\d+\.\d GiB .* give a batch size of at most \d+ "
                                             r"\(--batch-size \d+\)") as info:
            train(mc.CapsNetConfig(), epochs=1, out_dir=tmp_path / "run", batch_size=100_000,
                  data=data, progress=False, log=quiet)
    fits = int(str(info.value).rsplit("--batch-size ", 1)[1].rstrip(")"))
    model = mc.build_model(mc.CapsNetConfig())          # the model train builds
    assert 1 <= fits < 100_000 and model.batch_bytes(fits) <= available <= 512 * MB
    assert not (tmp_path / "run").exists()


def test_a_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(run_dir, bounded,
                                                                      monkeypatch):
    """Epoch 2 (steps 4-6) goes wrong after its second update (the weights become NaN):
    training stops at step 6 with an error naming it, and last.npz, best.npz and
    metrics.jsonl stay as epoch 1 left them."""
    before = file_hashes(run_dir)
    real_step, calls = Adam.step, []

    def poisoned(self, params, grads):
        real_step(self, params, grads)
        calls.append(1)
        if len(calls) == 2:
            params["digit.W"][...] = np.nan

    monkeypatch.setattr(Adam, "step", poisoned)
    with bounded(memory=512 * MB, seconds=30):
        with pytest.raises(DivergedError, match=r"the loss became nan at step 6: the run "
                                                r"diverged .* Try a smaller --lr"):
            run_tiny(run_dir, epochs=2, resume=run_dir / "last.npz")
    assert file_hashes(run_dir) == before


@pytest.mark.filterwarnings("ignore:overflow encountered", "ignore:invalid value encountered")
def test_a_learning_rate_that_diverges_saves_nothing(tmp_path, bounded):
    with bounded(memory=512 * MB, seconds=30):
        with pytest.raises(DivergedError, match="the loss became"):
            run_tiny(tmp_path / "run", lr=1e30)
    assert not (tmp_path / "run" / "last.npz").exists()
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
    assert not (tmp_path / "run" / runfolder.LOCK_FILE).exists()


def test_non_finite_parameters_are_never_saved(run_dir, bounded):
    from minicaps.io.checkpoint import save_checkpoint
    ckpt = load_checkpoint(run_dir / "last.npz")
    ckpt.model.params["conv1.b"][0] = np.inf
    before = file_hashes(run_dir)
    with bounded(memory=256 * MB, seconds=10):
        with pytest.raises(ValueError, match=r"not saving .*param/conv1\.b hold NaN or infinite"):
            save_checkpoint(run_dir / "last.npz", ckpt.model, ckpt.optimizer, epoch=2, step=6,
                            rng_state=ckpt.rng())
    assert file_hashes(run_dir) == before


# --- the CLI: one line, exit status 2 ----------------------------------------------------------

@pytest.fixture
def fake_mnist(monkeypatch):
    data = synthetic_mnist(8, 4)
    monkeypatch.setattr("minicaps.data.mnist.load_mnist", lambda *a, **k: data)
    return data


def test_cli_train_into_a_folder_holding_a_run(run_dir, capsys, bounded, fake_mnist):
    before = file_hashes(run_dir)
    err = one_line_error(capsys, ["train", "--out", str(run_dir), "--no-progress"], bounded)
    assert "already holds a run" in err and "--resume" in err and "--overwrite" in err
    assert file_hashes(run_dir) == before


def test_cli_batch_size_100000(tmp_path, capsys, bounded, fake_mnist):
    err = one_line_error(capsys, ["train", "--out", str(tmp_path / "run"), "--batch-size",
                                  "100000", "--no-progress"], bounded)
    assert "a training batch of 100000 images needs about" in err and "(--batch-size" in err


def test_cli_evaluate_a_checkpoint_with_nan_weights(ckpt, capsys, bounded):
    members = members_of(ckpt)
    members["param/conv1.W"] = members["param/conv1.W"] * np.nan
    write_members(ckpt, members)
    err = one_line_error(capsys, ["evaluate", str(ckpt), "--no-progress"], bounded)
    assert f"{ckpt}: param/conv1.W holds NaN" in err


def test_cli_evaluate_a_checkpoint_whose_extra_is_a_list(ckpt, capsys, bounded):
    edit_meta(ckpt, lambda m: m.update(extra=["settings"]))
    err = one_line_error(capsys, ["evaluate", str(ckpt), "--no-progress"], bounded)
    assert "extra is" in err and "expected a JSON object" in err


@pytest.mark.parametrize("argv, said", [
    (["train", "--lr", "inf"], "--lr: must be a finite positive number, got inf"),
    (["train", "--lr", "nan"], "--lr: must be a finite positive number, got nan"),
    (["train", "--lr-decay", "2"], r"--lr-decay: must lie in (0, 1]"),
    (["train", "--seed", "-3"], "--seed: must be 0 or more"),
    (["train", "--batch-size", "1e9"], "--batch-size: invalid positive_int value"),
    (["train", "--data-root", "/nonexistent/minicaps"], "is not a folder"),
])
def test_cli_bad_values_are_one_line(capsys, bounded, argv, said):
    with bounded(memory=256 * MB, seconds=10):
        with pytest.raises(SystemExit) as exit:
            cli.main(argv)
    err = capsys.readouterr().err
    assert exit.value.code == 2 and said in err and err.count("\n") == 1, err


def test_minicaps_data_that_is_no_folder_is_said_not_created(tmp_path, bounded, monkeypatch):
    missing = tmp_path / "nonexistent"
    monkeypatch.setenv("MINICAPS_DATA", str(missing))
    from minicaps.data.dataset import DataNotFoundError
    from minicaps.data.mnist import load_mnist
    with bounded(memory=256 * MB, seconds=10):
        with pytest.raises(DataNotFoundError, match="MINICAPS_DATA is .*which is not a folder"):
            load_mnist()
    assert not missing.exists()
