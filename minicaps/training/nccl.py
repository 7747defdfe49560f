"""The sum of the ranks' gradients on their GPUs with NCCL (ChainerMN's pure_nccl
communicator, reduced to what a step needs), where CuPy was built with it."""
import importlib

import numpy as np


class NCCLAllReduce:
    """The in-place sum of a CuPy buffer over the ranks' GPUs with NCCL, on the current
    stream (ChainerMN's pure_nccl communicator, reduced to what a step needs)."""

    def __init__(self, cupy, nccl, communicator):
        self.cupy, self.nccl, self.communicator = cupy, nccl, communicator
        self.types = {np.dtype("float16"): nccl.NCCL_FLOAT16,
                      np.dtype("float32"): nccl.NCCL_FLOAT32,
                      np.dtype("float64"): nccl.NCCL_FLOAT64}

    def allreduce(self, buffer):
        stream = self.cupy.cuda.get_current_stream()
        self.communicator.allReduce(buffer.data.ptr, buffer.data.ptr, buffer.size,
                                    self.types[np.dtype(buffer.dtype)], self.nccl.NCCL_SUM,
                                    stream.ptr)
        stream.synchronize()       # under the watchdog: a dead peer does not hang this rank


def nccl_module(cupy):
    """cupy.cuda.nccl where CuPy was built with NCCL, else None."""
    nccl = getattr(cupy.cuda, "nccl", None)
    if nccl is None:
        try:
            nccl = importlib.import_module(f"{cupy.__name__}.cuda.nccl")
        except ImportError:
            return None
    return nccl if getattr(nccl, "available", True) else None
