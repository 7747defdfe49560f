"""Which array library runs: NumPy on the CPU, CuPy on the GPU.

This is the only module that imports cupy. Every op asks ``get_xp(*arrays)``
for the module its inputs live in and then uses only what NumPy and CuPy share,
so the same code runs on both.
"""
import ctypes
import os
import re
import sys

# OpenBLAS's worker threads spin for 2^28 cycles (about 0.1 s) after each of its calls
# before they sleep. The capsule part runs on this module's worker threads (parallel_map)
# right after the primary convolution's big GEMMs, and the spinning threads took the
# cores from it: 48-57 ms instead of 28 ms at batch 32. OpenBLAS reads
# OPENBLAS_THREAD_TIMEOUT (log2 of the cycles) once, when NumPy loads it, so it is set
# here, before NumPy is imported: 2^10 cycles. Left alone when the variable is set
# already or NumPy was imported before minicaps (see blas_thread_timeout).
BLAS_THREAD_TIMEOUT = 10
_blas_timeout_at_load = None          # what OpenBLAS read, where minicaps saw it read
if "numpy" not in sys.modules:
    _blas_timeout_at_load = os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT",
                                                  str(BLAS_THREAD_TIMEOUT))

import numpy as np  # noqa: E402

DEVICES = ("cpu", "gpu")

_cupy = None          # the cupy module once imported and proven on the GPU
_cupy_error = None    # why it could not be used, as a sentence

GPU_INSTALL = "README.md, section Install"


def _cupy_package():
    """The name of the installed CuPy distribution (such as cupy-cuda12x), or None."""
    try:
        from importlib.metadata import packages_distributions
        names = packages_distributions().get("cupy") or []
    except Exception:       # no metadata: a CuPy built from source, or an old Python
        names = []
    return names[0] if names else None


def _missing_library_advice(e, cupy=None):
    """What to install when the exception ``e`` (from importing CuPy or its first use)
    names a shared library that the loader could not find ("libcublas.so.12: cannot open
    shared object file"), as a sentence; None when it names none."""
    found = re.search(r"\b(lib[A-Za-z0-9_+-]+\.so(?:\.[0-9]+)*)", str(e))
    if found is None:
        return None
    lib = found.group(1)
    if lib.startswith("libcuda.so"):
        return (f"{lib} is the NVIDIA driver's library, which pip cannot install: install the "
                f"GPU's driver (nvidia-smi then works)")
    package = _cupy_package()
    if package is None:
        major = None
        try:
            major = int(cupy.cuda.runtime.runtimeGetVersion()) // 1000
        except Exception:
            pass
        package = f"cupy-cuda{major or 12}x"
    return (f"{lib} is missing: CuPy's wheel does not ship CUDA's libraries. Install them with "
            f"`pip install \"{package}[ctk]\"` (CuPy 14's extra; `pip install -e \".[gpu]\"` "
            f"brings it), or install the CUDA toolkit of that version and put its lib64 folder "
            f"on LD_LIBRARY_PATH (see {GPU_INSTALL})")


def _prove_gpu(cupy):
    """Compute on the GPU once and read it back: a small matrix product (cuBLAS) and an
    elementwise kernel (compiled at first use by NVRTC), each compared with NumPy; None when
    both agree, else why not as a sentence that names a missing library and its fix.

    CuPy imports and counts devices without loading either library, so a machine without
    CUDA's libraries fails only here, before any data loads, instead of at the first
    product of a training step. Small integers: exact in float32, and in TF32 too."""
    a_host = np.arange(12, dtype=np.float32).reshape(3, 4) % 5
    b_host = np.arange(8, dtype=np.float32).reshape(4, 2) % 3
    stage = "copying a 3 x 4 array to the GPU"
    try:
        a, b = cupy.asarray(a_host), cupy.asarray(b_host)
        stage = "a 3 x 4 by 4 x 2 matrix product (cuBLAS)"
        product = cupy.asnumpy(a @ b)
        stage = "an elementwise kernel (compiled by NVRTC)"
        elementwise = cupy.asnumpy(a * 2 + 1)
    except Exception as e:
        advice = _missing_library_advice(e, cupy)
        return (f"CuPy is installed and sees a GPU, but {stage} failed there "
                f"({type(e).__name__}: {e}). " + (advice + ". " if advice else "")
                + "Or use device='cpu'.")
    for what, got, want in (("matrix product", product, a_host @ b_host),
                            ("elementwise kernel", elementwise, a_host * 2 + 1)):
        if not np.array_equal(got, want):
            return (f"CuPy's test {what} on the GPU gave {got.tolist()} instead of "
                    f"{want.tolist()}: this GPU or its CUDA libraries compute wrongly. "
                    "Use device='cpu'.")
    return None


def load_cupy():
    """Import cupy once, check that a GPU answers and prove that it computes (_prove_gpu);
    remember why not, as a sentence that says what to install."""
    global _cupy, _cupy_error
    if _cupy is not None or _cupy_error is not None:
        return _cupy
    try:
        import cupy
    except Exception as e:  # ImportError, or a broken CUDA install
        advice = _missing_library_advice(e)
        _cupy_error = (f"CuPy is not installed or cannot be imported ({type(e).__name__}: {e}). "
                       + (advice + ". " if advice else
                          "Install it with `pip install \"minicaps[gpu]\"` (CuPy for CUDA 12 "
                          f"with CUDA's libraries; see {GPU_INSTALL}), ")
                       + "or use device='cpu'.")
        return None
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            raise RuntimeError("no CUDA device found")
    except Exception as e:
        advice = _missing_library_advice(e, cupy)
        _cupy_error = (f"CuPy is installed but no GPU can be used ({type(e).__name__}: {e}). "
                       + (advice + ". " if advice else "") + "Use device='cpu'.")
        return None
    _cupy_error = _prove_gpu(cupy)
    if _cupy_error is None:
        _cupy = cupy
    return _cupy


def gpu_summary():
    """What runs on the GPU, for a log: CuPy's version, CUDA's runtime and driver versions,
    the device's name and memory ({} without a usable GPU; a field that cannot be read is
    left out)."""
    if load_cupy() is None:
        return {}
    cuda, info = _cupy.cuda, {"cupy": _cupy.__version__, "package": _cupy_package()}
    reads = {"cuda_runtime": lambda: cuda.runtime.runtimeGetVersion(),
             "cuda_driver": lambda: cuda.runtime.driverGetVersion(),
             "devices": lambda: cuda.runtime.getDeviceCount(),
             "name": lambda: cuda.runtime.getDeviceProperties(0)["name"].decode(),
             "compute_capability": lambda: cuda.Device(0).compute_capability,
             "memory_gib": lambda: round(cuda.runtime.memGetInfo()[1] / 2 ** 30, 1)}
    for key, read in reads.items():
        try:
            info[key] = read()
        except Exception:
            pass
    return info


def gpu_available():
    """True when CuPy imports, sees a GPU and computes on it (a matrix product and an
    elementwise kernel, checked once)."""
    return load_cupy() is not None


def resolve_device(device=None):
    """'cpu' or 'gpu': the argument, else $MINICAPS_DEVICE, else 'cpu'.

    Asking for the GPU when CuPy, a GPU or CUDA's libraries are missing raises a
    RuntimeError that says what to install (naming a missing library, such as
    libcublas.so.12), never an ImportError traceback; the GPU is tried once first, on a
    small matrix product and an elementwise kernel (_prove_gpu).
    """
    if device is None:
        device = os.environ.get("MINICAPS_DEVICE", "cpu") or "cpu"
    device = str(device).lower()
    if device in ("cuda", "cupy"):
        device = "gpu"
    if device in ("numpy",):
        device = "cpu"
    if device not in DEVICES:
        raise ValueError(f"device must be 'cpu' or 'gpu', got {device!r} "
                         "(check the device argument or $MINICAPS_DEVICE)")
    if device == "gpu" and load_cupy() is None:
        raise RuntimeError(_cupy_error)
    return device


def get_xp(*arrays):
    """The array module (numpy or cupy) that holds these arrays."""
    if _cupy is not None:
        for a in arrays:
            if isinstance(a, _cupy.ndarray):
                return _cupy
    return np


def xp_for(device):
    """The array module for a device name."""
    return load_cupy() if resolve_device(device) == "gpu" else np


def is_gpu_array(a):
    return _cupy is not None and isinstance(a, _cupy.ndarray)


def to_numpy(a):
    """A NumPy copy (or the same array, if already NumPy) of an array."""
    if is_gpu_array(a):
        return _cupy.asnumpy(a)
    return np.asarray(a)


def to_device(a, device):
    """Move an array to 'cpu' or 'gpu' (no copy when it is already there)."""
    if resolve_device(device) == "gpu":
        return _cupy.asarray(a)
    return to_numpy(a)


def device_of(a):
    return "gpu" if is_gpu_array(a) else "cpu"


def params_to_device(params, device):
    """A new dict with every array of ``params`` on ``device``."""
    return {k: to_device(v, device) for k, v in params.items()}


def params_to_numpy(params):
    """A new dict with every array of ``params`` as a NumPy array."""
    return {k: to_numpy(v) for k, v in params.items()}


def synchronize(a=None):
    """Wait for the GPU to finish (for timing); no-op on the CPU."""
    if _cupy is not None:
        _cupy.cuda.get_current_stream().synchronize()


def as_strided(a, shape, strides):
    """A view of ``a`` with the given shape and byte strides (numpy's or cupy's
    stride_tricks.as_strided); only read from it, its elements may overlap."""
    if is_gpu_array(a):
        return _cupy.lib.stride_tricks.as_strided(a, shape=shape, strides=strides)
    return np.lib.stride_tricks.as_strided(a, shape=shape, strides=strides, writeable=False)


# ---------------------------------------------------------------- TF32 on the GPU
# Float32 stays float32 unless asked: TF32 rounds the inputs of float32 matrix products to
# 10 bits of mantissa (accumulating in float32) on the tensor cores of Ampere and later
# GPUs, much faster and about 1e-3 relative error per product. Two switches hold it: CuPy's
# compute type per dtype, which its 2-D products (a @ b, dot) pass to cuBLAS, strict for
# float32 by default (unless CUPY_TF32=1 was set before it first multiplied float32
# matrices); and the math mode of the cuBLAS handle, which its batched products (matmul of
# 3-D and more, where the capsule part and the DFT route spend their time) follow instead.
CUBLAS_DEFAULT_MATH, CUBLAS_TF32_TENSOR_OP_MATH = 0, 3     # cublasMath_t


def _cublas_math_mode(mode=None):
    """The math mode of this thread's cuBLAS handle on the current device; set it first
    when ``mode`` is given."""
    cuda = _cupy.cuda
    handle = cuda.device.get_cublas_handle()
    if mode is not None:
        cuda.cublas.setMathMode(handle, mode)
    return cuda.cublas.getMathMode(handle)


def _cupy_products():
    """CuPy's module of matrix products, which holds the per-dtype compute type."""
    linalg = getattr(getattr(_cupy, "_core", None), "_routines_linalg", None)
    if linalg is None:
        import importlib
        try:
            linalg = importlib.import_module(_cupy.__name__ + "._core._routines_linalg")
        except ImportError as e:
            raise RuntimeError(f"this CuPy offers no switch for TF32 ({e}); set CUPY_TF32=1 "
                               "before starting Python instead") from e
    return linalg


def set_tf32(enabled=True):
    """Let the GPU's float32 matrix products use TF32 (enabled=True) or keep them strict
    float32 (False, the default): CuPy's compute type for the whole process, and the math
    mode of this thread's cuBLAS handle on the current device (minicaps multiplies on the
    GPU in the thread that calls it). Returns the previous setting. Needs CuPy and a GPU
    (a RuntimeError says what is missing); the CPU has no TF32."""
    if load_cupy() is None:
        raise RuntimeError("TF32 is a math mode of the GPU's matrix products. " + _cupy_error)
    linalg = _cupy_products()
    previous = tf32_enabled()
    mode = (getattr(linalg, "COMPUTE_TYPE_TF32", 7) if enabled
            else getattr(linalg, "COMPUTE_TYPE_DEFAULT", 1))
    linalg.set_compute_type(np.float32, mode)
    _cublas_math_mode(CUBLAS_TF32_TENSOR_OP_MATH if enabled else CUBLAS_DEFAULT_MATH)
    return previous


def tf32_enabled():
    """Whether the GPU's float32 matrix products use TF32 now, 2-D and batched (False
    without CuPy)."""
    if _cupy is None:
        return False
    linalg = _cupy_products()
    return (linalg.get_compute_type(np.float32) == getattr(linalg, "COMPUTE_TYPE_TF32", 7)
            and _cublas_math_mode() == CUBLAS_TF32_TENSOR_OP_MATH)


def gpu_pool_bytes():
    """Bytes CuPy's default memory pool holds on the GPU (it keeps what it once
    allocated, so after a step this is that step's high-water mark); 0 without CuPy."""
    if _cupy is None:
        return 0
    return int(_cupy.get_default_memory_pool().total_bytes())


def available_memory(device="cpu"):
    """Bytes a new allocation can still get, or None where that is unknown.

    CPU: the smaller of the kernel's MemAvailable (/proc/meminfo) and what the address-space
    limit (ulimit -v, RLIMIT_AS) leaves above this process's size. GPU: the device's free
    memory plus what CuPy's pool holds free for reuse."""
    if device == "gpu":
        if _cupy is None:
            return None
        free, _ = _cupy.cuda.runtime.memGetInfo()
        return int(free) + int(_cupy.get_default_memory_pool().free_bytes())
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
            M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3     # glibc's malloc.h
            _heap_kept = bool(mallopt(M_MMAP_THRESHOLD, 2 ** 30)) and bool(
                mallopt(M_TRIM_THRESHOLD, 2 ** 31 - 1))
    return _heap_kept


def blas_thread_timeout():
    """The OPENBLAS_THREAD_TIMEOUT that OpenBLAS read when NumPy loaded it (minicaps sets
    it to BLAS_THREAD_TIMEOUT unless it was set already), or None where NumPy was
    imported before minicaps, so OpenBLAS kept its default (28, unless the variable
    was set outside). Measured with it: a training step 0.89x the time at batch 32 and
    0.91x at 128 (medians of 3 rounds, the settings taking turns in fresh processes).
    Set OPENBLAS_THREAD_TIMEOUT=28 before the import to keep OpenBLAS's default."""
    try:
        return int(_blas_timeout_at_load)
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


# ---------------------------------------------------------------- flat buffers, fused kernels
class FlatArrays(dict):
    """A dict of arrays (name -> array, as the model's params) that are views into one flat
    buffer, ``flat``, laid out in the dict's order: readers see a dict of named arrays, and
    an update of every array at once (Adam, the parameters' average) is a few operations on
    ``flat`` instead of a few per array, each a kernel launch on the GPU.

    The dict may be changed like any dict; ``flat_buffer()`` gives the buffer only while
    every entry is still its view (else None, and callers update array by array). A copy
    or pickle is a FlatArrays again, with its own buffer."""

    def __init__(self, arrays=(), zeros=False):
        """A copy of ``arrays`` (all of one dtype and device) in one new buffer; with
        ``zeros`` only their shapes are taken and the buffer is zero (one fill)."""
        arrays = dict(arrays)
        values = list(arrays.values())
        xp = get_xp(*values)
        dtype = values[0].dtype if values else np.dtype("float32")
        if any(a.dtype != dtype or get_xp(a) is not xp for a in values):
            raise ValueError("a FlatArrays holds arrays of one dtype on one device")
        total = sum(int(a.size) for a in values)
        self.flat = xp.zeros(total, dtype) if zeros else xp.empty(total, dtype)
        views, k = {}, 0
        for name, a in arrays.items():
            views[name] = self.flat[k:k + a.size].reshape(a.shape)
            if not zeros:
                views[name][...] = a
            k += int(a.size)
        super().__init__(views)
        self._views = tuple(views.items())

    @classmethod
    def of(cls, arrays, zeros=False):
        """A FlatArrays of ``arrays`` where they share a dtype and a device, else a dict of
        copies (zeros)."""
        try:
            return cls(arrays, zeros=zeros)
        except ValueError:
            xp_of = lambda a: get_xp(a)   # noqa: E731
            return {k: xp_of(a).zeros_like(a) if zeros else a.copy() for k, a in arrays.items()}

    def flat_buffer(self):
        """The buffer, while the dict still holds exactly its views in order; else None."""
        if len(self) != len(self._views):
            return None
        for (name, view), (key, value) in zip(self._views, self.items()):
            if key != name or value is not view:
                return None
        return self.flat

    def __reduce__(self):
        return (type(self), (dict(self),))


def flat_buffer(arrays):
    """The flat buffer of a FlatArrays (see FlatArrays.flat_buffer); None for other dicts."""
    return arrays.flat_buffer() if isinstance(arrays, FlatArrays) else None


def same_layout(a, b):
    """Whether two dicts of arrays are FlatArrays with intact buffers of one dtype and
    device, the same names in the same order and the same shapes: their buffers then
    line up element for element."""
    fa, fb = flat_buffer(a), flat_buffer(b)
    return (fa is not None and fb is not None and fa.dtype == fb.dtype
            and is_gpu_array(fa) == is_gpu_array(fb) and list(a) == list(b)
            and all(a[k].shape == b[k].shape for k in a))


class ElementwiseKernel:
    """One elementwise kernel on the GPU: CuPy's ElementwiseKernel(in_params, out_params,
    body, name), compiled at its first call (cupy.ElementwiseKernel's rules: ``body`` is
    CUDA C for one element; outputs are passed in and updated in place, and may be read).

    Compiled with --fmad=false: no multiply-add contraction, so each operation rounds as
    NumPy's does and the kernel computes the CPU path's formula to the bit (IEEE sqrt and
    division are CUDA's defaults). Only for GPU arrays: the CPU runs the NumPy formula
    itself, blockwise over its threads (optim.Blockwise)."""
    OPTIONS = ("--fmad=false",)

    def __init__(self, in_params, out_params, body, name):
        self.spec = (in_params, out_params, body, name)
        self._kernel = None

    def __call__(self, *args):
        if self._kernel is None:
            in_params, out_params, body, name = self.spec
            self._kernel = _cupy.ElementwiseKernel(in_params, out_params, body, name,
                                                   options=self.OPTIONS)
        return self._kernel(*args)


class ReductionKernel:
    """One reduction kernel on the GPU: CuPy's ReductionKernel(in_params, out_params,
    map_expr, reduce_expr, post_map_expr, identity, name), compiled at its first call,
    with ElementwiseKernel's options (--fmad=false); called as ``kernel(*arrays, axis=,
    keepdims=)``. A map and its sum in one launch (``(a * b).sum(axis)`` takes two). Only
    for GPU arrays."""
    OPTIONS = ElementwiseKernel.OPTIONS

    def __init__(self, in_params, out_params, map_expr, reduce_expr, post_map_expr,
                 identity, name):
        self.spec = (in_params, out_params, map_expr, reduce_expr, post_map_expr, identity,
                     name)
        self._kernel = None

    def __call__(self, *args, axis=None, keepdims=False):
        if self._kernel is None:
            self._kernel = _cupy.ReductionKernel(*self.spec, options=self.OPTIONS)
        return self._kernel(*args, axis=axis, keepdims=keepdims)
