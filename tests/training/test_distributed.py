"""Data-parallel training on 2 ranks (mpiexec -n 2, tests/distributed_driver.py) against one
process: the same parameters to float32 rounding, the same accuracy exactly, one set of
checkpoints, exact resumes; and the faults: a killed, failing, silent or diverging rank
ends every rank within a bound, with the checkpoints whole."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from minicaps.training import distributed
from minicaps.io.checkpoint import load_checkpoint

HERE = Path(__file__).resolve().parents[1]       # tests/: the driver and helpers
sys.path.insert(0, str(HERE))
import distributed_driver as driver          # noqa: E402  (the runs' settings, on one process)

try:
    import mpi4py  # noqa: F401
    MPIEXEC = shutil.which("mpiexec")
except ImportError:
    MPIEXEC = None
needs_mpi = pytest.mark.skipif(MPIEXEC is None, reason="needs mpi4py and mpiexec: "
                               "pip install -e '.[mpi]' (mpi4py and MPICH from PyPI)")
BOUND = 20          # seconds within which every rank must be gone after a fault
# one thread a rank: 2 ranks on 2 cores
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
       "MKL_NUM_THREADS": "1", "MINICAPS_THREADS": "1", "MINICAPS_PEER_TIMEOUT": "4"}


def mpiexec(mode, folder, timeout=60, wait=True):
    command = [MPIEXEC, "-n", "2", sys.executable, str(HERE / "distributed_driver.py"), mode,
               str(folder)]
    process = subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    if not wait:
        return process
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        raise
    return process.returncode, output


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """The driver's train mode: its folder after 2 ranks ran every run once."""
    if MPIEXEC is None:
        pytest.skip("needs mpi4py and mpiexec: pip install -e '.[mpi]'")
    folder = tmp_path_factory.mktemp("two-ranks")
    rc, output = mpiexec("train", folder)
    assert rc == 0, output
    return folder


def assert_same_state(a, b, exact=False):
    """Two checkpoints' parameters, moments and average: equal, or to float32 rounding."""
    check = (np.testing.assert_array_equal if exact else
             lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6))
    assert a.epoch == b.epoch and a.step == b.step and a.rng_state == b.rng_state
    for name, p in a.model.params.items():
        check(b.model.params[name], p)
        assert b.model.params[name].dtype == np.float32
    for key, m in a.optimizer.state_dict()[1].items():
        check(b.optimizer.state_dict()[1][key], m)
    for name, p in a.average.params.items():
        check(b.average.params[name], p)


@needs_mpi
def test_two_ranks_train_the_model_one_process_trains(two_ranks, tmp_path):
    one = driver.run(None, tmp_path / "A", 3)
    assert_same_state(load_checkpoint(tmp_path / "A" / "last.npz"),
                      load_checkpoint(two_ranks / "A" / "last.npz"))
    # the batches' losses and counts are the whole batch's: the metrics agree too
    lines = [json.loads(line) for line in (two_ranks / "A" / "metrics.jsonl").open()]
    assert [m["ranks"] for m in lines] == [2, 2, 2]
    for mine, theirs in zip(one.history, lines):
        assert mine["train_accuracy"] == theirs["train_accuracy"]
        assert mine["test_accuracy"] == theirs["test_accuracy"]
        assert mine["train_loss"] == pytest.approx(theirs["train_loss"], rel=1e-5)


@needs_mpi
def test_the_cnns_dropout_masks_are_the_whole_batchs_rows(two_ranks, tmp_path):
    driver.run(None, tmp_path / "C", 2, config=driver.CNN)
    assert_same_state(load_checkpoint(tmp_path / "C" / "last.npz"),
                      load_checkpoint(two_ranks / "C" / "last.npz"))


@needs_mpi
def test_sharded_evaluation_gives_the_same_accuracy_exactly(two_ranks):
    results = json.loads((two_ranks / "eval.json").read_text())
    shared, alone = results["shared"], results["alone"]
    assert shared["n"] == alone["n"] == 203            # 13 batches of 16: 7 and 6 per rank
    assert shared["accuracy"] == alone["accuracy"]
    for key in ("margin_loss", "reconstruction_loss", "loss"):
        assert shared[key] == pytest.approx(alone[key], rel=1e-12)


@needs_mpi
def test_rank_0_alone_writes_one_set_of_checkpoints(two_ranks):
    for run in "ABCG":
        assert sorted(p.name for p in (two_ranks / run).iterdir()) == [
            "best.npz", "last.npz", "metrics.jsonl"]        # no lock, no temp files left
    epochs = [json.loads(line)["epoch"] for line in (two_ranks / "A" / "metrics.jsonl").open()]
    assert epochs == [1, 2, 3]                               # one line an epoch, not one a rank


@needs_mpi
def test_a_resume_on_two_ranks_is_exact(two_ranks):
    assert_same_state(load_checkpoint(two_ranks / "A" / "last.npz"),
                      load_checkpoint(two_ranks / "B" / "last.npz"), exact=True)
    epochs = [json.loads(line)["epoch"] for line in (two_ranks / "B" / "metrics.jsonl").open()]
    assert epochs == [1, 2, 3]


@needs_mpi
def test_a_run_of_two_ranks_goes_on_in_one_process_to_float32_rounding(two_ranks, tmp_path):
    shutil.copy(two_ranks / "B2.npz", tmp_path / "last.npz")
    lines = []
    driver.run(None, tmp_path, 3, resume=tmp_path / "last.npz", log=lines.append)
    assert any("saved by 2 rank(s), going on with 1" in line for line in lines)
    assert_same_state(load_checkpoint(two_ranks / "A" / "last.npz"),
                      load_checkpoint(tmp_path / "last.npz"))


@needs_mpi
@pytest.mark.gpu
def test_the_gpu_path_sums_through_nccl(two_ranks, tmp_path):
    """On the CuPy stand-in, NCCL faked over MPI on the buffers' memory: one NCCL
    all-reduce a step of the whole buffer (parameters and three sums), GPU 0 for rank 0."""
    calls = json.loads((two_ranks / "nccl.json").read_text())
    params = load_checkpoint(two_ranks / "G" / "last.npz").model.num_params()
    assert calls["device"] == "gpu" and calls["devices"] == [["device", 0]]
    assert calls["calls"] == [params + 3] * 8                # 8 steps in an epoch
    driver.run(None, tmp_path / "G", 1)                      # one process on the CPU
    assert_same_state(load_checkpoint(tmp_path / "G" / "last.npz"),
                      load_checkpoint(two_ranks / "G" / "last.npz"))


# --- faults ------------------------------------------------------------------------------------

def wait_for(path, seconds):
    end = time.monotonic() + seconds
    while not path.exists():
        assert time.monotonic() < end, f"{path} did not appear in {seconds} s"
        time.sleep(0.05)


@needs_mpi
def test_a_killed_rank_ends_every_rank_and_leaves_last_npz_whole(tmp_path):
    process = mpiexec("kill", tmp_path, wait=False)
    try:
        wait_for(tmp_path / "K" / "last.npz", 40)
        killed = time.monotonic()
        os.kill(int((tmp_path / "pid.1").read_text()), signal.SIGKILL)
        process.communicate(timeout=BOUND)
        took = time.monotonic() - killed
    finally:
        os.killpg(process.pid, signal.SIGKILL) if process.poll() is None else None
    assert process.returncode != 0 and took < BOUND
    for rank in (0, 1):
        with pytest.raises(ProcessLookupError):
            os.kill(int((tmp_path / f"pid.{rank}").read_text()), 0)
    assert load_checkpoint(tmp_path / "K" / "last.npz").epoch >= 1


@needs_mpi
@pytest.mark.parametrize("fault, says", [
    ("raise", "rank 1 of 2 stopped (RuntimeError: a fault planted in rank 1)"),
    ("hang", "waited 4 s for the other ranks in the all-reduce of a training step"),
])
def test_a_failing_or_silent_rank_ends_every_rank(tmp_path, fault, says):
    start = time.monotonic()
    rc, output = mpiexec(fault, tmp_path, timeout=BOUND + 10)
    assert rc != 0 and says in output
    assert time.monotonic() - start < BOUND
    assert not (tmp_path / "F" / "last.npz").exists()        # stopped in epoch 1


@needs_mpi
def test_a_nan_on_one_rank_stops_every_rank_before_anything_is_written(tmp_path):
    rc, output = mpiexec("nan", tmp_path, timeout=BOUND)
    assert rc == 2
    assert "rank 0: the loss became nan at step 4" in output
    assert "rank 1: the loss became nan at step 4" in output
    assert sorted(p.name for p in (tmp_path / "F").iterdir()) == []


# --- one process --------------------------------------------------------------------------------

def test_shares_cover_a_batch_once_in_order():
    class Ranks(distributed.Communicator):
        def __init__(self, rank, size):
            self.rank, self.size = rank, size
    for size in (1, 2, 3, 5):
        for m in (0, 1, 4, 15, 16):
            shares = [Ranks(r, size).share(m) for r in range(size)]
            assert [i for s in shares for i in range(m)[s]] == list(range(m))
            sizes = [s.stop - s.start for s in shares]
            assert max(sizes) - min(sizes) <= 1
        for n, batch in ((203, 16), (5, 16), (256, 256)):
            shares = [Ranks(r, size).batch_share(n, batch) for r in range(size)]
            assert [i for s in shares for i in range(n)[s]] == list(range(n))
            assert all(s.start % batch == 0 for s in shares if s.stop > s.start)


def test_without_mpi4py_one_line_says_what_to_install(monkeypatch):
    monkeypatch.setenv("PMI_SIZE", "2")
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    with pytest.raises(ImportError, match=r'pip install "minicaps\[mpi\]"') as e:
        distributed.from_environment()
    assert "\n" not in str(e.value)


def test_one_process_needs_no_mpi(monkeypatch):
    for name in distributed.LAUNCHER_SIZES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    assert distributed.from_environment() is None
