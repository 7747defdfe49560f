"""Which array library runs: NumPy on the CPU, CuPy on the GPU.

This package is the only place that imports cupy (device.py). Every op asks
``get_xp(*arrays)`` for the module its inputs live in and then uses only what NumPy and
CuPy share, so the same code runs on both. Its modules:

    device.py    CuPy loaded and proven on the GPU, get_xp, to_device / to_numpy, TF32
    memory.py    free memory on the CPU and the GPU, check_fits, CuPy's pool, malloc's
    threads.py   OpenBLAS's idle threads, cpu_threads, parallel_map
    buffers.py   FlatArrays: named arrays as views into one flat buffer
    kernels.py   CuPy's elementwise and reduction kernels, compiled as NumPy rounds

Everything is imported from here (``from minicaps import backend``; ``backend.get_xp``).
"""
# (minicaps/__init__.py sets OPENBLAS_THREAD_TIMEOUT before NumPy loads)
from minicaps.backend.threads import (BLAS_THREAD_TIMEOUT, blas_thread_timeout,
                                      cpu_threads, parallel_map)
from minicaps.backend.device import (CUBLAS_DEFAULT_MATH, CUBLAS_TF32_TENSOR_OP_MATH,
                                     DEVICES, GPU_INSTALL, as_strided, device_of, get_xp,
                                     gpu_available, gpu_summary, is_gpu_array, load_cupy,
                                     loaded_cupy, params_to_device, params_to_numpy,
                                     resolve_device, set_tf32, synchronize, tf32_enabled,
                                     to_device, to_numpy, xp_for)
from minicaps.backend.memory import (available_memory, check_fits, gpu_pool_bytes,
                                     keep_freed_memory)
from minicaps.backend.buffers import FlatArrays, flat_buffer, same_layout
from minicaps.backend.kernels import ElementwiseKernel, ReductionKernel

__all__ = ["BLAS_THREAD_TIMEOUT", "blas_thread_timeout", "cpu_threads", "parallel_map",
           "CUBLAS_DEFAULT_MATH", "CUBLAS_TF32_TENSOR_OP_MATH", "DEVICES", "GPU_INSTALL",
           "as_strided", "device_of", "get_xp", "gpu_available", "gpu_summary",
           "is_gpu_array", "load_cupy", "loaded_cupy", "params_to_device", "params_to_numpy",
           "resolve_device", "set_tf32", "synchronize", "tf32_enabled", "to_device",
           "to_numpy", "xp_for", "available_memory", "check_fits", "gpu_pool_bytes",
           "keep_freed_memory", "FlatArrays", "flat_buffer", "same_layout",
           "ElementwiseKernel", "ReductionKernel"]
