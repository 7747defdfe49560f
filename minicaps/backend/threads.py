"""Threads on the CPU: OpenBLAS's idle workers told to sleep soon, and the worker threads
that share a batch out over the cores (parallel_map).

OpenBLAS reads OPENBLAS_THREAD_TIMEOUT once, when NumPy loads it: the package's
__init__ sets it before anything imports NumPy.
"""
import os

# OpenBLAS's worker threads spin for 2^28 cycles (about 0.1 s) after each of its calls
# before they sleep. The capsule part runs on this module's worker threads (parallel_map)
# right after the primary convolution's big GEMMs, and the spinning threads took the
# cores from it: 48-57 ms instead of 28 ms at batch 32. OpenBLAS reads
# OPENBLAS_THREAD_TIMEOUT (log2 of the cycles) once, when NumPy loads it, so it is set
# here, before NumPy is imported: 2^10 cycles. Left alone when the variable is set
# already or NumPy was imported before minicaps (see blas_thread_timeout).
# minicaps/__init__.py sets it, as the first thing the package does.
from minicaps import BLAS_THREAD_TIMEOUT, BLAS_TIMEOUT_AT_LOAD  # noqa: F401


def blas_thread_timeout():
    """The OPENBLAS_THREAD_TIMEOUT that OpenBLAS read when NumPy loaded it (minicaps sets
    it to BLAS_THREAD_TIMEOUT unless it was set already), or None where NumPy was
    imported before minicaps, so OpenBLAS kept its default (28, unless the variable
    was set outside). Measured with it: a training step 0.89x the time at batch 32 and
    0.91x at 128 (medians of 3 rounds, the settings taking turns in fresh processes).
    Set OPENBLAS_THREAD_TIMEOUT=28 before the import to keep OpenBLAS's default."""
    try:
        return int(BLAS_TIMEOUT_AT_LOAD)
    except (TypeError, ValueError):       # not seen, or not a number (OpenBLAS ignores it)
        return None


_pool = None          # the worker threads of parallel_map, started on first use


def cpu_threads():
    """Threads for CPU work that BLAS does not spread itself: $MINICAPS_THREADS,
    else the cores this process may run on."""
    env = os.environ.get("MINICAPS_THREADS")
    if env:
        return max(1, int(env))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def parallel_map(fn, items, on_gpu=False):
    """[fn(item) for item in items], the items shared out over cpu_threads() threads.

    NumPy and BLAS let go of the interpreter lock inside their loops, so chunks of
    a batch run on every core at once; for work made of small BLAS calls (which
    BLAS runs single-threaded) and memory-bound loops. On the GPU (``on_gpu``),
    or with one thread, the items run in order on this thread.
    """
    global _pool
    items = list(items)
    n = cpu_threads()
    if on_gpu or n == 1 or len(items) < 2:
        return [fn(item) for item in items]
    if _pool is None:
        from concurrent.futures import ThreadPoolExecutor
        _pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="minicaps")
    return list(_pool.map(fn, items))
