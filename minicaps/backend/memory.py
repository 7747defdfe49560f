"""Memory: what is free on the CPU or the GPU, the check that an allocation fits before it
is made, CuPy's pool, and glibc's malloc asked to keep freed blocks for the next step."""
import ctypes
import os
import sys

from minicaps.backend.device import loaded_cupy


def gpu_pool_bytes():
    """Bytes CuPy's default memory pool holds on the GPU (it keeps what it once
    allocated, so after a step this is that step's high-water mark); 0 without CuPy."""
    cupy = loaded_cupy()
    if cupy is None:
        return 0
    return int(cupy.get_default_memory_pool().total_bytes())


def available_memory(device="cpu"):
    """Bytes a new allocation can still get, or None where that is unknown.

    CPU: the smaller of the kernel's MemAvailable (/proc/meminfo) and what the address-space
    limit (ulimit -v, RLIMIT_AS) leaves above this process's size. GPU: the device's free
    memory plus what CuPy's pool holds free for reuse."""
    if device == "gpu":
        cupy = loaded_cupy()
        if cupy is None:
            return None
        free, _ = cupy.cuda.runtime.memGetInfo()
        return int(free) + int(cupy.get_default_memory_pool().free_bytes())
    found = []
    try:
        with open("/proc/meminfo") as f:
            found += [int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:")]
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource
        soft = resource.getrlimit(resource.RLIMIT_AS)[0]
        if soft != resource.RLIM_INFINITY:
            with open("/proc/self/status") as f:
                size = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
            found.append(max(0, soft - size))
    except (ImportError, OSError, ValueError, StopIteration):
        pass
    return min(found) if found else None


def check_fits(nbytes, what, advice, device="cpu"):
    """A ValueError (instead of a MemoryError midway) saying that ``what`` needs ``nbytes`` and how
    much is available, with ``advice``, when it cannot fit; nothing is allocated."""
    available = available_memory(device)
    if available is not None and nbytes > available:
        raise ValueError(f"{what} needs about {nbytes / 2**30:.2f} GiB of memory and "
                         f"{available / 2**30:.2f} GiB is available: {advice}")


_heap_kept = None     # whether keep_freed_memory() is in effect, once asked


def keep_freed_memory():
    """Ask the C library's malloc (glibc, on Linux) to keep freed blocks of up to 1 GiB
    for the next allocation instead of handing them back to the kernel.

    Why: by default glibc maps every block over 32 MB (at first, over 128 KB)
    afresh from the kernel and unmaps it on free, and trims freed memory at the top
    of its heap, so each training step's big arrays (the primary capsules' 100 MB
    weight spectrum and its gradient) start on fresh pages, which the kernel must
    fault in and zero: about 15 ms per 100 MB on two cores. Kept, the next step's
    arrays reuse the same pages (a batch-128 step measured 0.74-0.85x the time). The
    price: the process keeps its high-water mark of memory resident until it exits.
    And one arena for every thread (M_ARENA_MAX 1): glibc otherwise gives each thread
    that allocates its own arena, which keeps its own freed blocks, so the capsule part's
    worker threads (parallel_map) held memory the main thread could not reuse (a
    batch-32 training step of the paper's network: peak resident 319-320 MB, 235-241 MB
    with one arena; the step's speed within the machine's noise, 3 rounds each).
    Set once for the whole process, at the first call; CapsNet calls this for models
    on the CPU. $MINICAPS_KEEP_FREED_MEMORY=0 (before the first call) leaves malloc
    as it is. Returns True when the setting is in effect (False elsewhere than
    glibc, or when turned off).
    """
    global _heap_kept
    if _heap_kept is None:
        _heap_kept = False
        if os.environ.get("MINICAPS_KEEP_FREED_MEMORY", "1").strip().lower() not in ("0", "false", "no", "off") \
                and sys.platform.startswith("linux"):
            try:
                mallopt = ctypes.CDLL(None).mallopt
                mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
            except (OSError, AttributeError):
                return False
            M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8   # glibc's malloc.h
            _heap_kept = bool(mallopt(M_MMAP_THRESHOLD, 2 ** 30)) and bool(
                mallopt(M_TRIM_THRESHOLD, 2 ** 31 - 1))
            if _heap_kept:
                mallopt(M_ARENA_MAX, 1)
    return _heap_kept
