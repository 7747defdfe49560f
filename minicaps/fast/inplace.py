"""Writing results where they belong instead of into fresh arrays: a matrix product into
a strided slice of a bigger array, and a ReLU that overwrites its input. Their reference
twins (ops.dense.relu_forward, a plain ``a @ b``) allocate a new array each time."""
import numpy as np

from minicaps import backend
from minicaps.backend import get_xp
from minicaps.fast.fused import RELU_BACKWARD_KERNEL


def matmul_into(a, b, out):
    """out[...] = a @ b, written in place. NumPy hands ``out`` (any strides with a
    unit last stride) straight to BLAS; CuPy writes a C-contiguous ``out`` directly and
    otherwise computes the product and copies it in, the safe path for a strided one."""
    if backend.is_gpu_array(out):
        if out.flags.c_contiguous:      # (CuPy itself copies when out overlaps an operand)
            return get_xp(out).matmul(a, b, out=out)
        out[...] = get_xp(out).matmul(a, b)
        return out
    return np.matmul(a, b, out=out)


def relu_forward(x, out=None):
    """max(0, x), any shape. ``out=x`` overwrites x (for a fresh array nobody else holds).

    The cache is the output y itself: y > 0 exactly where x > 0, and the next
    layer keeps y anyway.
    """
    xp = get_xp(x)
    y = xp.maximum(x, 0, out=out)
    return y, y


def relu_backward(dout, cache, out=None):
    """d max(0, x)/dx = 1 where x > 0, else 0 (0 at the kink). ``out=dout`` works in place."""
    xp = get_xp(dout)
    if backend.is_gpu_array(dout):                      # one kernel, not a compare and a multiply
        return RELU_BACKWARD_KERNEL(dout, cache, xp.empty_like(dout) if out is None else out)
    return xp.multiply(dout, cache > 0, out=out)
