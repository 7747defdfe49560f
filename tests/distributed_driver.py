"""What tests/training/test_distributed.py runs on every rank: mpiexec -n N python distributed_driver.py
MODE FOLDER. The tests compare what it leaves in FOLDER with one process's run.

    train    tiny CapsNet on bars: A (3 epochs straight), B (2 epochs, copied to B2.npz,
             then resumed to 3), a CNN with dropout (C), the GPU path on the CuPy stand-in
             with NCCL (G, NCCL faked over MPI), and evaluate with and without the
             communicator on A's parameters (eval.json)
    kill     long training; each rank writes its pid to pid.<rank>
    raise    rank 1 raises at its 4th step
    hang     rank 1 stops answering at its 4th step (it sleeps)
    nan      rank 1's loss is NaN at its 4th step
"""
import ctypes
import json
import os
import shutil
import sys
import time
import types
from pathlib import Path

import numpy as np

from minicaps import backend
from minicaps.training import distributed
from minicaps.gradcheck import tiny_cnn_config, tiny_config
from minicaps.training.evaluation import evaluate
from minicaps.training.run import train

from synthetic import bars, bars_data

# 106 training images in batches of 15: uneven shares (8 and 7) and a last batch of one
# image, which leaves rank 1 nothing to do at that step
N_TRAIN, BATCH = 106, 15
CONFIG = tiny_config(recon_weight=0.0005)
CNN = tiny_cnn_config(input_shape=(10, 10, 1))          # dropout 0.3
QUIET = dict(progress=False, log=lambda line: None)


def data():
    x_train, y_train, x_test, y_test = bars_data(n_train=N_TRAIN, n_test=60)
    return x_train, y_train, x_test, y_test


def run(comm, folder, epochs, config=CONFIG, **kw):
    kw = {"batch_size": BATCH, "lr": 0.01, "shift": 1, "seed": 3, "data": data(), **QUIET, **kw}
    return train(config, epochs=epochs, out_dir=folder, comm=comm, **kw)


def fake_nccl_over_mpi(comm):
    """cupy.cuda.nccl for the CuPy stand-in: allReduce sums the memory at the pointers
    over the ranks with MPI, as NCCL sums the GPUs' memory."""
    import cupy_stand_in
    mpi = comm.MPI
    cupy_stand_in.ndarray.data = property(
        lambda self: types.SimpleNamespace(ptr=self._a.ctypes.data))
    cupy_stand_in._stream.ptr = 0
    types_ = {1: (ctypes.c_float, mpi.FLOAT), 2: (ctypes.c_double, mpi.DOUBLE)}
    calls = []

    class NcclCommunicator:
        def __init__(self, size, uid, rank):
            assert (size, rank) == (comm.size, comm.rank) and uid == b"uid"

        def allReduce(self, send, recv, count, dtype, op, stream):
            assert send == recv and op == 0
            calls.append(count)
            c_type, _ = types_[dtype]
            memory = np.ctypeslib.as_array(ctypes.cast(recv, ctypes.POINTER(c_type)), (count,))
            comm.comm.Allreduce(mpi.IN_PLACE, memory, op=mpi.SUM)

    cupy_stand_in.cuda.nccl = types.SimpleNamespace(
        NCCL_FLOAT16=0, NCCL_FLOAT32=1, NCCL_FLOAT64=2, NCCL_SUM=0, available=True,
        get_unique_id=lambda: b"uid", NcclCommunicator=NcclCommunicator)
    cupy_stand_in.cuda.Device = lambda i: types.SimpleNamespace(
        use=lambda: calls.append(("device", i)))
    backend.device._cupy = cupy_stand_in
    return calls


def train_mode(comm, folder):
    run(comm, folder / "A", 3)
    run(comm, folder / "B", 2)
    if comm.is_root:
        shutil.copy(folder / "B" / "last.npz", folder / "B2.npz")
    run(comm, folder / "B", 3, resume=folder / "B" / "last.npz")
    run(comm, folder / "C", 2, config=CNN)
    # the sharded evaluation against the whole set on one rank, on A's parameters
    from minicaps.io.checkpoint import load_checkpoint
    model = load_checkpoint(folder / "A" / "last.npz").model
    x, y = bars(203, 7)
    shared = evaluate(model, x, y, 16, comm=comm)
    alone = evaluate(model, x, y, 16)
    if comm.is_root:
        (folder / "eval.json").write_text(json.dumps({"shared": shared, "alone": alone}))
    calls = fake_nccl_over_mpi(comm)
    result = run(comm, folder / "G", 1, device="gpu")
    if comm.is_root:
        (folder / "nccl.json").write_text(json.dumps(
            {"device": result.model.device, "calls": [c for c in calls if isinstance(c, int)],
             "devices": [list(c) for c in calls if isinstance(c, tuple)]}))


def faulty(comm, folder, fault):
    """Rank 1's model raises, hangs or gives NaN at its 4th step."""
    from minicaps.nn.registry import build_model
    cls = type(build_model(CONFIG))                 # the class run() builds: the fast one
    real = cls.loss_and_grads
    calls = [0]

    def loss_and_grads(self, x, y, **kw):
        calls[0] += 1
        if comm.rank == 1 and calls[0] == 4:
            if fault == "raise":
                raise RuntimeError("a fault planted in rank 1")
            if fault == "hang":
                time.sleep(3600)
            if fault == "nan":
                loss, grads, out = real(self, x, y, **kw)
                out["margin_loss"] = out["margin_loss"] * np.float32("nan")
                return loss, grads, out
        return real(self, x, y, **kw)

    cls.loss_and_grads = loss_and_grads
    try:
        run(comm, folder / "F", 2)
    except distributed.PeerError as e:
        print(f"rank {comm.rank}: {e}", file=sys.stderr)
        sys.exit(2)
    except ValueError as e:     # the DivergedError, on every rank
        print(f"rank {comm.rank}: {e}", file=sys.stderr)
        sys.exit(2)


def main():
    mode, folder = sys.argv[1], Path(sys.argv[2])
    comm = distributed.from_environment()
    assert comm is not None and comm.size == 2, "run me under mpiexec -n 2"
    if mode == "train":
        train_mode(comm, folder)
    elif mode == "kill":
        (folder / f"pid.{comm.rank}").write_text(str(os.getpid()))
        x, y = bars(4000, 0)
        run(comm, folder / "K", 100, data=(x, y) + bars(60, 1), batch_size=100)
    else:
        faulty(comm, folder, mode)


if __name__ == "__main__":
    main()
