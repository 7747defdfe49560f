"""Data-parallel training over several processes, on existing engines: MPI through mpi4py
between processes (CPUs), NCCL through CuPy between GPUs. The shape is ChainerMN's.

    mpiexec -n N minicaps train ...          (or srun under Slurm; docs/distributed.md)

Every rank holds the whole model and draws the same random numbers, so each batch is the
batch one process would take. Rank r computes the gradients of its fixed share of it
(share: n_r images), and one in-place all-reduce sums them:

    dL/dp = sum_r (n_r / B) dL_r/dp      L_r: the mean loss over rank r's share, B = sum n_r

which is the gradient of the mean over the whole batch, as one process computes it (to
float32 rounding: the sum is added up in another order). The batch's losses and its count
of right answers ride at the end of the same buffer, so every rank sees the whole
batch's numbers and stops alike on a NaN. Then every rank takes the same Adam step.
Evaluation gives each rank whole batches of the test set and adds up the counts.
Rank 0 alone writes (run.on_root); every other collective is watched (Watchdog): a
rank that waits longer than ``timeout`` seconds for its peers ends every rank, as does
an exception in any one rank (Communicator.guard: MPI_Abort after printing it).
"""
import contextlib
import functools
import hashlib
import os
import sys
import threading
import time
import traceback

import numpy as np

from minicaps import backend
from minicaps.training import clock
from minicaps.training.evaluation import loss_terms
from minicaps.training.nccl import NCCLAllReduce, nccl_module

TIMEOUT = 300.0       # seconds a rank may wait for its peers in one collective
# Set by the launchers (mpiexec of MPICH and Open MPI, srun): the number of ranks.
LAUNCHER_SIZES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "SLURM_STEP_NUM_TASKS")
INSTALL = 'pip install "minicaps[mpi]"    (mpi4py and MPICH, from PyPI)'


def launched_ranks():
    """How many ranks the launcher that started this process says there are (1: none)."""
    sizes = [os.environ.get(name, "1") for name in LAUNCHER_SIZES]
    return max(int(s) if s.isdigit() else 1 for s in sizes)


def import_mpi():
    """mpi4py's MPI, or an ImportError that says in one line what to install."""
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise ImportError(f"training on several processes needs mpi4py ({e}): "
                          f"{INSTALL}") from None
    return MPI


def from_environment(timeout=None):
    """The Communicator of the ranks that mpiexec or srun started, or None when this
    process runs alone."""
    if launched_ranks() <= 1:
        return None
    MPI = import_mpi()
    if MPI.COMM_WORLD.Get_size() == 1:
        return None
    return Communicator(MPI.COMM_WORLD, timeout)


class Watchdog:
    """A thread that ends every rank when this one waits too long in a collective: a dead
    peer that the launcher did not clean up (an MPI launcher need not), or one that hangs."""

    def __init__(self, on_timeout):
        self._on_timeout, self._deadline, self._what = on_timeout, None, None
        self._thread = None

    @contextlib.contextmanager
    def watch(self, what, seconds):
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, daemon=True,
                                            name="minicaps-watchdog")
            self._thread.start()
        self._what, self._seconds = what, seconds
        self._deadline = time.monotonic() + seconds
        try:
            yield
        finally:
            self._deadline = None

    def _run(self):
        while True:
            time.sleep(0.25)
            deadline = self._deadline
            if deadline is not None and time.monotonic() > deadline:
                self._on_timeout(self._what, self._seconds)
                return


class Communicator:
    """The ranks of one run over MPI (mpi4py), and over NCCL once use_device("gpu") has
    found it: ranks, shares of batches, the in-place all-reduce, rank 0's writes, faults.

    timeout: seconds one collective may wait for the peers (default TIMEOUT, or
    $MINICAPS_PEER_TIMEOUT) before every rank is ended."""

    def __init__(self, mpi_comm, timeout=None):
        self.MPI = import_mpi()
        self.comm = mpi_comm
        self.rank, self.size = mpi_comm.Get_rank(), mpi_comm.Get_size()
        self.timeout = float(timeout or os.environ.get("MINICAPS_PEER_TIMEOUT") or TIMEOUT)
        self.nccl = None                   # an NCCL communicator, once use_device found one
        self.reduce_seconds, self.reductions = 0.0, 0     # time in the gradients' all-reduce
        self._buffer = None
        self._watchdog = Watchdog(self._timed_out)
        # the first collectives, watched too: a rank that ended before them is waited for
        # (MPICH spins) only as long as any other collective
        with self._watchdog.watch("the start", self.timeout):
            node = mpi_comm.Split_type(self.MPI.COMM_TYPE_SHARED)
            self.local_rank, self.local_size = node.Get_rank(), node.Get_size()
            node.Free()
            self._errors = mpi_comm.Dup()        # for the vote of failing ranks alone
        # The cores of this machine shared among its ranks (BLAS's threads are set by
        # OMP_NUM_THREADS / OPENBLAS_NUM_THREADS before NumPy loads: docs/distributed.md).
        os.environ.setdefault("MINICAPS_THREADS",
                              str(max(1, backend.cpu_threads() // self.local_size)))

    @property
    def is_root(self):
        return self.rank == 0

    def disagreement(self, argv, failure):
        """What every rank says when the ranks' command lines do not agree, or None when
        they do: ``argv`` this rank's command line, ``failure`` its parsing's error (None:
        parsed). One gather, the first collective of a run, so that a rank whose options
        were refused, or differ from rank 0's, ends every rank at once."""
        views = self.gather_objects((list(argv), failure), "the check of the ranks' options")
        for rank, (_, error) in enumerate(views):
            if error is not None:
                return error if rank == 0 else f"{error} (on rank {rank} of {self.size})"
        mine = views[0][0]
        for rank, (theirs, _) in enumerate(views):
            if theirs != mine:
                only = [a for a in theirs if a not in mine] + [a for a in mine if a not in theirs]
                return (f"the ranks were started with different options: rank {rank} has "
                        f"{' '.join(theirs[1:])!r}, rank 0 {' '.join(mine[1:])!r} "
                        f"(differing: {' '.join(only) or 'their order'}); give every rank "
                        f"the same command line")
        return None

    # --- shares ------------------------------------------------------------------------------
    def share(self, m):
        """This rank's slice of a batch of m: contiguous, sizes as np.array_split's (the
        first m % size ranks one more), so every run with this many ranks splits alike."""
        base, extra = divmod(m, self.size)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (self.rank < extra))

    def batch_share(self, n, batch_size):
        """This rank's slice of n images evaluated in batches of batch_size: whole batches,
        so that each batch is computed as one process computes it."""
        batches = -(-n // batch_size)
        mine = self.share(batches)
        return slice(min(mine.start * batch_size, n), min(mine.stop * batch_size, n))

    # --- collectives -------------------------------------------------------------------------
    def allreduce(self, buffer, what="an all-reduce"):
        """Sum ``buffer`` (a 1-d NumPy or CuPy array) over the ranks, in place: through
        NCCL for a GPU array when there is one, else MPI (a GPU array through the host)."""
        with self._watchdog.watch(what, self.timeout):
            if backend.is_gpu_array(buffer) and self.nccl is not None:
                self.nccl.allreduce(buffer)
            elif backend.is_gpu_array(buffer):
                host = backend.to_numpy(buffer)
                self.comm.Allreduce(self.MPI.IN_PLACE, host, op=self.MPI.SUM)
                buffer[...] = backend.to_device(host, "gpu")
            else:
                self.comm.Allreduce(self.MPI.IN_PLACE, buffer, op=self.MPI.SUM)
        return buffer

    def broadcast(self, buffer, what="a broadcast"):
        """Rank 0's ``buffer`` (NumPy or CuPy) into every rank's, in place."""
        with self._watchdog.watch(what, self.timeout):
            if backend.is_gpu_array(buffer):
                host = backend.to_numpy(buffer)
                self.comm.Bcast(host, root=0)
                buffer[...] = backend.to_device(host, "gpu")
            else:
                self.comm.Bcast(buffer, root=0)
        return buffer

    def gather_objects(self, value, what="a gather"):
        """[every rank's value], on every rank (small Python objects)."""
        with self._watchdog.watch(what, self.timeout):
            return self.comm.allgather(value)

    def on_root(self, fn, what="rank 0's writes", seconds=None):
        """fn() on rank 0 alone (the run folder's lock, metrics, checkpoints), its result
        on every rank. If it raises, every rank raises: rank 0 its error, the others a
        PeerError with its message, all marked as raised on every rank (``all_ranks``)."""
        result, error = None, None
        if self.is_root:
            try:
                result = fn()
            except Exception as e:
                error = e
        with self._watchdog.watch(what, seconds or self.timeout):
            result, message = self.comm.bcast(
                (result, None if error is None else f"{type(error).__name__}: {error}")
                if self.is_root else None, root=0)
        if error is not None:
            error.all_ranks = True
            raise error
        if message is not None:
            raise PeerError(f"rank 0 stopped: {message}")
        return result

    # --- one training step -------------------------------------------------------------------
    def loss_and_grads(self, model, x, y, batch, first, right, **options):
        """The gradients of the mean loss over the whole batch of ``batch`` images, and
        forward's out with the whole batch's losses (batch means) and "correct" (the count
        that ``right(lengths, y)`` makes): from this rank's share x, y (its first image
        the batch's ``first``), summed over the ranks in one all-reduce."""
        params, name = model.params, loss_terms(model)[0]
        n = len(y)
        buf = self._gradient_buffer(params)
        size = buf.size - 3
        if n:
            if hasattr(model, "dropout_offset"):     # the CNN: the mask rows of this share
                model.dropout_offset = first
            _, grads, out = model.loss_and_grads(x, y, **options)
            weight = n / batch                   # the share's mean, as part of the batch's
            k = 0
            for key, p in params.items():
                model.xp.multiply(grads[key].reshape(-1), weight, out=buf[k:k + p.size])
                k += p.size
            buf[size] = out[name] * weight
            buf[size + 1] = out.get("reconstruction_loss", 0.0) * weight
            buf[size + 2] = right(out["lengths"], y)
        else:                                    # a last batch smaller than the ranks
            buf[...] = 0
            if hasattr(model, "dropout_step"):
                model.dropout_step += 1          # the step it would have taken
            out = {"reconstruction_loss": 0.0} if "reconstruction_loss" in loss_terms(model) else {}
        start = clock.now()                     # a pause (clock.py) left out
        self.allreduce(buf, "the all-reduce of a training step")
        self.reduce_seconds += clock.now() - start
        self.reductions += 1
        sums = buf[size:].copy()              # the buffer is reused at the next step
        out.update({name: sums[0], "correct": sums[2]})
        if out.get("reconstruction_loss") is not None:
            out["reconstruction_loss"] = sums[1]
        k, grads = 0, {}
        for key, p in params.items():
            grads[key] = buf[k:k + p.size].reshape(p.shape)
            k += p.size
        return grads, out

    def _gradient_buffer(self, params):
        """One buffer for the gradients (laid out as ``params``) and three sums after them."""
        p = next(iter(params.values()))
        size = sum(int(a.size) for a in params.values()) + 3
        xp = backend.get_xp(p)
        if (self._buffer is None or self._buffer.size != size or self._buffer.dtype != p.dtype
                or backend.get_xp(self._buffer) is not xp):
            self._buffer = xp.zeros(size, dtype=p.dtype)
        return self._buffer

    def check_in_step(self, run, log):
        """Whether every rank holds the same parameters, moments and average; if not
        (MPI need not add up alike on every rank), rank 0's go to all, with a notice."""
        arrays = _state_arrays(run)
        digest = hashlib.sha256()
        for a in arrays:
            digest.update(backend.to_numpy(a).tobytes())
        digests = self.gather_objects(digest.hexdigest(), "the check of the parameters")
        if len(set(digests)) > 1:
            log(f"the ranks' parameters differ after epoch {run.epoch} (MPI added up "
                f"differently on some rank): rank 0's go to every rank")
            for a in arrays:
                self.broadcast(a, "the parameters' broadcast")

    # --- GPUs ---------------------------------------------------------------------------------
    def use_device(self, device):
        """On "gpu": this rank's GPU, chosen by its rank on the machine, and NCCL among
        the ranks' GPUs when CuPy has it (else the all-reduce goes through MPI)."""
        if device != "gpu":
            return
        cupy = backend.load_cupy()
        cupy.cuda.Device(self.local_rank % cupy.cuda.runtime.getDeviceCount()).use()
        nccl = nccl_module(cupy)
        if nccl is not None:
            with self._watchdog.watch("NCCL's start", self.timeout):
                uid = self.comm.bcast(nccl.get_unique_id() if self.is_root else None, root=0)
            self.nccl = NCCLAllReduce(cupy, nccl, nccl.NcclCommunicator(self.size, uid, self.rank))

    # --- faults -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def guard(self):
        """An exception in this rank alone ends every rank (printed, then MPI_Abort): no
        peer is left waiting in a collective. Errors that every rank raised alike pass on:
        marked ``all_ranks`` (rank 0's write failed, the batch's loss became NaN), or
        raised by every rank within VOTE_SECONDS (a bad option: the same on each)."""
        try:
            yield self
        except BaseException as e:
            if getattr(e, "all_ranks", False) or (isinstance(e, SystemExit) and not e.code):
                raise
            if isinstance(e, Exception) and self._every_rank_failed():
                e.all_ranks = True
                raise
            print(f"minicaps: rank {self.rank} of {self.size} stopped "
                  f"({type(e).__name__}: {e}); ending every rank", file=sys.stderr, flush=True)
            if not isinstance(e, (KeyboardInterrupt, ValueError, OSError)):
                traceback.print_exc()
            self.abort(1)

    VOTE_SECONDS = 2.0

    def _every_rank_failed(self):
        """Whether every rank comes here within VOTE_SECONDS: a vote on a communicator of
        its own, which ranks still at work never join."""
        if self._errors is None:
            return False
        votes = np.ones(1, dtype=np.int32)
        request = self._errors.Iallreduce(self.MPI.IN_PLACE, votes, op=self.MPI.SUM)
        deadline = time.monotonic() + self.VOTE_SECONDS
        while not request.Test():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return int(votes[0]) == self.size

    def run(self, command):
        """command() as a CLI command: output on rank 0 only, faults ending every rank,
        errors raised alike on every rank reported once (by rank 0)."""
        with contextlib.ExitStack() as stack:
            if not self.is_root:
                quiet = stack.enter_context(open(os.devnull, "w"))
                stack.enter_context(contextlib.redirect_stdout(quiet))
            try:
                with self.guard():
                    return command()
            except Exception as e:
                if self.is_root or not getattr(e, "all_ranks", False):
                    raise
                return 2

    def abort(self, code=1):
        threading.Timer(10, os._exit, (code,)).start()     # should Abort itself hang
        sys.stderr.flush()
        self.comm.Abort(code)

    def _timed_out(self, what, seconds):
        print(f"minicaps: rank {self.rank} of {self.size} waited {seconds:.0f} s for the "
              f"other ranks in {what}: one of them has stopped or hangs; ending every rank "
              f"(MINICAPS_PEER_TIMEOUT sets the wait)", file=sys.stderr, flush=True)
        self.abort(1)


class PeerError(RuntimeError):
    """Another rank's error, raised here too so that every rank stops alike."""
    all_ranks = True


def _state_arrays(run):
    """The flat buffers (or arrays) of the parameters, Adam's moments and the average."""
    arrays = []
    for group in (run.model.params, run.optimizer.m, run.optimizer.v,
                  None if run.average is None else run.average.params):
        if group:
            flat = backend.flat_buffer(group)
            arrays += [flat] if flat is not None else list(group.values())
    return arrays


def guarded(train):
    """train(..., comm=C) run under C.guard(): a fault in one rank ends every rank."""
    @functools.wraps(train)
    def run(*args, comm=None, **kwargs):
        if comm is None:
            return train(*args, **kwargs)
        with comm.guard():
            return train(*args, comm=comm, **kwargs)
    return run
