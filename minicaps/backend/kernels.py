"""Fused kernels on the GPU: CuPy's elementwise and reduction kernels, compiled at their
first call so that each rounds as NumPy does."""
from minicaps.backend.device import loaded_cupy


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
            self._kernel = loaded_cupy().ElementwiseKernel(in_params, out_params, body,
                                                          name, options=self.OPTIONS)
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
            self._kernel = loaded_cupy().ReductionKernel(*self.spec, options=self.OPTIONS)
        return self._kernel(*args, axis=axis, keepdims=keepdims)
