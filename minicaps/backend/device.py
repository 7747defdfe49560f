"""Which array library runs: CuPy loaded once and proven on the GPU, the dispatch of arrays
to NumPy or CuPy (get_xp, to_device, to_numpy), and TF32, the GPU's math mode.

The only module of minicaps that imports cupy: the others ask ``loaded_cupy()`` for it.
"""
import os
import re

import numpy as np

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


def loaded_cupy():
    """The cupy module once load_cupy has proven it on the GPU, else None (nothing is
    tried here): what the other modules of the backend run CuPy's calls on."""
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
