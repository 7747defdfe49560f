"""A stand-in for CuPy on machines without a GPU: device arrays that live in host memory
but keep CuPy's rules, so the library's GPU code paths run and are checked everywhere.

What it checks is the discipline those paths need, not CuPy's numerics:

* a device array is not a numpy.ndarray (``isinstance(a, np.ndarray)`` is False);
* mixing a device array with a NumPy array in an operation raises TypeError, as CuPy does;
  so does assigning NumPy values into a device array (``a[k] = host``), which CuPy may
  take as a transfer: here the stand-in is the stricter, and the library never does it;
* turning a device array into a NumPy array implicitly (``np.asarray(a)``) raises TypeError,
  as CuPy does: the way back is ``asnumpy(a)`` or ``a.get()``;
* reductions give 0-d device arrays, not Python or NumPy scalars, as CuPy's do; so do
  ``array_equal``, ``array_equiv`` and ``allclose``, where NumPy gives a Python bool;
* ``asarray`` of a NumPy array copies (a host-to-device transfer).

``made`` counts the device arrays made, by dtype, so a test can see that a float32 model
does no float64 work on the GPU; ``waits`` counts what makes the host wait for the device
(``get``, ``asnumpy``, ``float``, ``int``, ``bool``, ``item``); ``launches`` counts the
kernels CuPy would launch, by kind, and ``launched`` by operation (see count_launch): on a
GPU a small step is bound by how many it launches, not by its arithmetic.

``broken`` makes the stand-in fail the way CuPy does on a machine that lacks part of CUDA
(an ImportError naming libcublas.so.12 at the first matrix product, a CUDARuntimeError
from getDeviceCount without a GPU), for the tests of the backend's GPU check.

The numbers come from NumPy underneath, so parity with the CPU is exact; tests against the
real CuPy (tests marked ``gpu`` on a machine with one) check the numerics.

    from minicaps.backend import device
    monkeypatch.setattr(device, "_cupy", cupy_stand_in)     # what conftest does
"""
import collections
import re
import sys
import types

import numpy as np
from numpy.lib.mixins import NDArrayOperatorsMixin

__version__ = "0+stand-in"     # not NumPy's, which every other name passes on
HOST_MIX = "Unsupported type <class 'numpy.ndarray'>: a device array met a NumPy array"


def _unwrap(value):
    """The NumPy array under a device array; refuses NumPy arrays (host data)."""
    if isinstance(value, ndarray):
        return value._a
    if isinstance(value, np.ndarray):
        raise TypeError(HOST_MIX)
    if isinstance(value, (list, tuple)):
        return type(value)(_unwrap(v) for v in value)
    return value


# dtype -> how many device arrays of it were made (by operations, views and transfers):
# tests clear it and look for float64 work in float32 models.
made = collections.Counter()
# what made the host wait for the device -> how often (get, asnumpy, float, int, bool, item)
waits = collections.Counter()
# kernels a GPU would launch: by kind (elementwise, reduction, matmul, fft, copy, fill, gather,
# transfer) and by operation name ("multiply", "matmul", "setitem", ...); tests clear them
launches = collections.Counter()
launched = collections.Counter()
# kind ("matmul", "elementwise", ...) or "device" -> the exception that the next such call
# raises, as real CuPy fails where CUDA's libraries or the GPU are missing; tests set it
# with monkeypatch.setitem, so it is empty again after them
broken = {}

# What launches what. Views (reshape, transpose, slicing, as_strided) and allocations
# (empty) launch nothing; an operation whose result is a view of its inputs launches
# nothing either (reshape of a contiguous array), and one that must copy launches a copy
# (reshape of a transposed one), as on CuPy. A host-to-device copy (asarray of NumPy data)
# counts as a "transfer": no kernel, but a call into CUDA like one.
KINDS = {name: kind for kind, names in {
    "matmul": "matmul dot einsum tensordot inner vdot",
    "reduction": "sum mean max min amax amin argmax argmin prod any all std var cumsum cumprod "
                 "norm count_nonzero nonzero",
    "fill": "zeros ones full zeros_like ones_like full_like arange linspace eye identity fill",
    "copy": "copy astype ascontiguousarray asfortranarray concatenate stack vstack hstack "
            "tile repeat pad take take_along_axis copyto put place putmask reshape ravel "
            "flatten transpose swapaxes moveaxis broadcast_to",
}.items() for name in names.split()}
NO_LAUNCH = {"empty", "empty_like"}
IN_PLACE = {"fill", "copyto", "put", "place", "putmask", "sort"}   # give None, launch anyway


def _raw_arrays(values):
    """The NumPy arrays in (nested lists and tuples of) call arguments or results."""
    if isinstance(values, np.ndarray):
        yield values
    elif isinstance(values, (list, tuple)):
        for v in values:
            yield from _raw_arrays(v)


# What real CuPy launches around a matrix product besides it (see _matmul_launches):
# (place in the library, operand "a"/"b"/"out" copied or "ptrs" for the pointer arrays,
# shape, strides in elements) -> how many kernels; tests and reports read it.
matmul_copies = collections.Counter()


def _caller():
    """file:line of the innermost frame in the library (minicaps/) that led here, and of
    its caller when that is a helper (fast/inplace.py's matmul_into)."""
    frame, places = sys._getframe(1), []
    while frame is not None:
        path = frame.f_code.co_filename.replace("\\", "/")
        if "/minicaps/" in path:
            places.append(f"{path[path.rindex('/minicaps/') + 1:]}:{frame.f_lineno}")
            if not path.endswith("/inplace.py"):
                break
        frame = frame.f_back
    return " <- ".join(places) or "?"


def _elements(a):
    return tuple(s // a.itemsize for s in a.strides)


def _matmul_launches(a, b, out=None):
    """The kernels real CuPy launches for matmul(a, b, out=out) besides the product itself,
    as [(kind, name, operand)], following cupy/_core/_routines_linalg.pyx (read at cupy/cupy
    v14.0.0rc1, v14.0.1 and 6b6d956 = 15.0.0a1, the same there; CuPy 13 not read; cupy.matmul is the _GUFunc of
    cupy/linalg/_product.py, whose _try_fastcall_matmul calls _core.matmul directly):

    * both operands at most 2-D: matmul() calls dot(a, b, out) -> tensordot_core(), which
      hands each operand, as the (k, n) / (k, m) matrix cuBLAS reads, to
      _mat_to_cublas_contiguous(): used as it is (transposed or not) when C- or
      F-contiguous, otherwise ``a.copy()``: one copy kernel. So a 2-D operand is copied
      unless it is C- or F-contiguous (a transposed view is free, a sliced one is not).
      An ``out`` that is not C-contiguous (or of another dtype) gets a fresh C result
      and elementwise_copy(c, out) (matmul(), ndim <= 2 branch); one that may share
      memory bounds with an operand the same (tensordot_core, copy_to_out).
    * either operand 3-D or more (batched): matmul() calls ``ascontiguousarray(a, dtype)``
      and ``ascontiguousarray(b, dtype)`` (cupy/_core/core.pyx: returns the array itself
      only when C-contiguous and of the dtype, else elementwise_copy to a new one): one
      copy per operand that is not C-contiguous -- F-contiguous or transposed views are
      copied too, cuBLAS is called with transa = transb = 0. Operands of fewer dimensions
      get leading axes of length 1 first (views; contiguity as NumPy's relaxed flags,
      CuPy's internal.get_c_contiguity likewise ignores axes of length 1). ``out`` is
      written directly only when C-contiguous, of the dtype and not sharing bounds with
      the (possibly copied) operands; otherwise a fresh c and elementwise_copy(c, out).
      When a batch axis is broadcast (length 1 in one operand, > 1 in the result) the
      product is sgemmBatched on pointer arrays, and _mat_ptrs() builds each of the three
      (a, b, c) with the cupy_mat_ptrs ElementwiseKernel, once per batch axis: 3 * (ndim -
      2) elementwise kernels; without broadcasting gemmStridedBatchedEx needs none.

    Only what the library's float paths reach is modelled (no integer kernels, no float16
    casts, no 1 x 1 products, which CuPy turns into a reduction)."""
    launches_ = []
    one_d = a.ndim == 1, b.ndim == 1
    a2 = a.reshape(1, -1) if one_d[0] else a
    b2 = b.reshape(-1, 1) if one_d[1] else b
    dtype = np.promote_types(a.dtype, b.dtype)
    fresh = []
    if max(a.ndim, b.ndim) <= 2:
        for operand, m in (("a", a2), ("b", b2)):
            if not (m.flags.c_contiguous or m.flags.f_contiguous):
                launches_.append(("copy", "matmul_operand_copy", operand))
                fresh.append(operand)
    else:
        for operand, m in (("a", a2), ("b", b2)):
            if not m.flags.c_contiguous or m.dtype != dtype:
                launches_.append(("copy", "matmul_operand_copy", operand))
                fresh.append(operand)
        ndim = max(a2.ndim, b2.ndim)
        sa = (1,) * (ndim - a2.ndim) + a2.shape[:-2]
        sb = (1,) * (ndim - b2.ndim) + b2.shape[:-2]
        if any(x != y and 0 not in (x, y) for x, y in zip(sa, sb)):
            launches_ += [("elementwise", "cupy_mat_ptrs", "ptrs")] * (3 * (ndim - 2))
    if out is not None:
        shares = any(np.may_share_memory(out, m) for operand, m in (("a", a), ("b", b))
                     if operand not in fresh)
        if not out.flags.c_contiguous or out.dtype != dtype or shares:
            launches_.append(("copy", "matmul_out_copy", "out"))
    return launches_


def _count_matmul(a, b, out=None):
    """The product's launch and the copies (and pointer arrays) CuPy makes around it."""
    count_launch("matmul", "matmul")
    arrays = {"a": a, "b": b, "out": out}
    for kind, name, operand in _matmul_launches(a, b, out):
        count_launch(kind, name)
        m = arrays.get(operand)
        matmul_copies[(_caller(), operand, None if m is None else m.shape,
                       None if m is None else _elements(m))] += 1


def count_launch(kind, name):
    """One kernel of ``kind`` launched by operation ``name`` (or the planted failure)."""
    if kind in broken:
        raise broken[kind]
    launches[kind] += 1
    launched[name] += 1


def _count_call(fn, args, kwargs, result, this=None, kind=None):
    """Count the kernel (if any) that CuPy launches for ``fn(*args, **kwargs) -> result``,
    all NumPy data already; ``this``: the array a method was called on."""
    if fn is np.matmul:
        out = kwargs.get("out")
        _count_matmul(*args[:2], out[0] if isinstance(out, tuple) else out)
        return
    if isinstance(fn, np.ufunc):
        count_launch("matmul" if fn is np.matmul else "elementwise", fn.__name__)
        return
    name = getattr(fn, "__name__", "call")
    if name in NO_LAUNCH:
        return
    outs = list(_raw_arrays(result))
    if not outs:
        if result is None and name in IN_PLACE:
            count_launch(KINDS.get(name, "copy"), name)
        return                                  # shapes, dtypes, Python numbers
    ins = list(_raw_arrays([this, args, [v for k, v in kwargs.items() if k != "out"]]))
    if all(any(np.may_share_memory(o, i) for i in ins) for o in outs):
        return                                  # a view of its inputs
    count_launch(kind or KINDS.get(name, "elementwise"), name)


def _wrap(value):
    """Device arrays for the arrays (and the NumPy scalars) a NumPy call returned."""
    if isinstance(value, np.generic) and not isinstance(value, (np.str_, np.bytes_)):
        value = np.asarray(value)                  # reductions give 0-d arrays on CuPy
    if isinstance(value, np.ndarray):
        made[value.dtype] += 1
        return ndarray(value)
    if isinstance(value, tuple):
        return tuple(_wrap(v) for v in value)
    if isinstance(value, list):
        return [_wrap(v) for v in value]
    return value


def _device_call(fn, this=None, kind=None):
    def call(*args, **kwargs):
        args, kwargs = _unwrap(args), {k: _unwrap(v) for k, v in kwargs.items()}
        result = fn(*args, **kwargs)
        _count_call(fn, args, kwargs, result, this, kind)
        return _wrap(result)
    call.__name__ = getattr(fn, "__name__", "call")
    return call


def _index(key):
    """Indices may be device arrays or host integers/slices."""
    if isinstance(key, tuple):
        return tuple(_index(k) for k in key)
    return key._a if isinstance(key, ndarray) else key


class ndarray(NDArrayOperatorsMixin):
    """A device array: a NumPy array held inside, never handed out implicitly."""

    __array_priority__ = 100

    def __init__(self, a):
        self._a = a

    # what NumPy would otherwise take as an invitation to convert
    def __array__(self, dtype=None, copy=None):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. "
                        "Please use `.get()` to construct a NumPy array explicitly.")

    def __array_ufunc__(self, ufunc, method, *inputs, out=None, **kwargs):
        if out is not None:
            kwargs["out"] = tuple(_unwrap(o) for o in out)
        result = getattr(ufunc, method)(*_unwrap(inputs), **kwargs)
        if ufunc is np.matmul and method == "__call__":
            _count_matmul(*_unwrap(inputs), kwargs["out"][0] if out is not None else None)
            return out[0] if out is not None else _wrap(result)
        count_launch("matmul" if ufunc is np.matmul else
                     "elementwise" if method in ("__call__", "outer", "at") else "reduction",
                     ufunc.__name__ if method == "__call__" else f"{ufunc.__name__}.{method}")
        if out is not None:
            return out[0] if len(out) == 1 else out
        return _wrap(result)

    def __array_function__(self, func, types_, args, kwargs):
        return _device_call(func)(*args, **kwargs)

    def get(self):
        waits["get"] += 1
        return self._a.copy()

    # attributes (shape, dtype, strides, flags, T, ...), methods and views: NumPy's, with
    # every array they give back a device array
    def __getattr__(self, name):
        # Not NumPy's protocols (__array_interface__, buffers): those would hand the host
        # data out. Nor _a before it is set (copy, pickle): no recursion.
        if name.startswith("__") or name == "_a":
            raise AttributeError(name)
        value = getattr(self._a, name)
        if name in ("item", "tolist"):
            waits[name] += 1
        return _device_call(value, this=self._a) if callable(value) else _wrap(value)

    def __getitem__(self, key):
        value = self._a[_index(key)]
        if isinstance(value, np.ndarray) and not np.may_share_memory(value, self._a):
            count_launch("gather", "getitem")     # integer or boolean arrays as indices
        return _wrap(value)

    def __setitem__(self, key, value):
        self._a[_index(key)] = _unwrap(value)
        count_launch("copy", "setitem")           # a fill or a copy kernel

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        return (_wrap(row) for row in self._a)

    def __float__(self):
        waits["float"] += 1
        return float(self._a)

    def __int__(self):
        waits["int"] += 1
        return int(self._a)

    def __index__(self):
        return self._a.__index__()

    def __bool__(self):
        waits["bool"] += 1
        return bool(self._a)

    def __repr__(self):
        return f"device {self._a!r}"


# --- the module's functions ------------------------------------------------------------------

def asarray(a, dtype=None, order=None):
    """Host data is copied to the "device"; device data stays (cast if asked)."""
    if isinstance(a, ndarray):
        return a if dtype is None or a.dtype == np.dtype(dtype) else a.astype(dtype)
    count_launch("transfer", "asarray")
    return _wrap(np.array(a, dtype=dtype, order=order or "K", copy=True))


array = asarray


def asnumpy(a):
    return a.get() if isinstance(a, ndarray) else np.asarray(a)


def get_array_module(*arrays):
    return sys.modules[__name__] if any(isinstance(a, ndarray) for a in arrays) else np


# NumPy answers these with a Python bool, CuPy with a 0-d device array (reading it waits)
DEVICE_BOOLS = {"array_equal", "array_equiv", "allclose"}


def __getattr__(name):
    """Every other name is NumPy's: functions take and give device arrays, dtypes and
    constants pass through."""
    value = getattr(np, name)
    if name in DEVICE_BOOLS:
        fn = value
        value = lambda *args, **kw: np.asarray(fn(*args, **kw))
        value.__name__ = name
    if callable(value) and not isinstance(value, type):
        return _device_call(value)
    return value


class ElementwiseKernel:
    """cupy.ElementwiseKernel(in_params, out_params, operation, name): the body, CUDA C for
    one element, run here on the whole arrays as NumPy expressions, statement by
    statement (the subset the library writes: ``x = expression;`` or ``T x = expression;``
    (a local of the kernel's type) with + - * /, comparisons, parentheses, sqrt, exp, log and
    fabs, which read the same in C and in Python, and ``x = cond ? a : b;``, run as
    where(cond, a, b)), each scalar argument cast to the type of its parameter first as
    CUDA does; one launch, of kind "elementwise", named after the kernel. Outputs are
    passed in and updated in place."""

    FUNCTIONS = {"sqrt": np.sqrt, "exp": np.exp, "log": np.log, "fabs": np.abs,
                 "where": np.where}
    LOCAL = re.compile(r"^(?:const\s+)?(?:T|float|double)\s+(?=\w+\s*=)")
    TERNARY = re.compile(r"^(\w+)\s*=\s*([^?]+?)\s*\?\s*([^:]+?)\s*:\s*(.+)$")

    def __init__(self, in_params, out_params, operation, name="kernel", options=(), **kwargs):
        self.ins, self.outs = self._params(in_params), self._params(out_params)
        self.statements = [self._python(s.strip()) for s in operation.split(";") if s.strip()]
        self.name, self.options = name, tuple(options)

    @classmethod
    def _python(cls, statement):
        """The C statement as Python: a local's type dropped, a ?: as where()."""
        statement = cls.LOCAL.sub("", statement)
        return cls.TERNARY.sub(r"\1 = where(\2, \3, \4)", statement)

    @staticmethod
    def _params(spec):
        """[(type, name)] of "T g, float32 x"."""
        return [tuple(p.split()) for p in spec.split(",") if p.strip()]

    def __call__(self, *args):
        params = self.ins + self.outs
        if len(args) != len(params):
            raise TypeError(f"{self.name} takes {len(params)} arguments, got {len(args)}")
        values = [_unwrap(a) for a in args]
        types = {}
        for (kind, _), v in zip(params, values):
            if isinstance(v, np.ndarray):
                types.setdefault(kind, v.dtype)
        scope = dict(self.FUNCTIONS)
        for (kind, name), v in zip(params, values):
            scope[name] = v if isinstance(v, np.ndarray) else np.dtype(types.get(kind, kind)).type(v)
        for statement in self.statements:
            exec(statement, {"__builtins__": {}}, scope)
        for (_, name), out in zip(self.outs, values[len(self.ins):]):
            if scope[name] is not out:
                np.copyto(out, scope[name], casting="same_kind")
        count_launch("elementwise", self.name)
        return args[len(self.ins)] if len(self.outs) == 1 else args[len(self.ins):]


class ReductionKernel:
    """cupy.ReductionKernel(in_params, out_params, map_expr, reduce_expr, post_map_expr,
    identity, name): the map expression run on the whole arrays as NumPy (as
    ElementwiseKernel's bodies), then reduced with NumPy's sum (the one reduce_expr the
    library writes, ``a + b``, identity 0, post_map_expr ``y = a``) over ``axis``; one
    launch, of kind "reduction", named after the kernel. So ``(a * b).sum(axis)`` on the
    host gives its result to the bit."""

    def __init__(self, in_params, out_params, map_expr, reduce_expr, post_map_expr,
                 identity, name="reduce_kernel", reduce_type=None, options=(), **kwargs):
        if reduce_expr.replace(" ", "") != "a+b" or str(identity).strip() != "0":
            raise NotImplementedError(f"the stand-in sums only (a + b, 0), not {reduce_expr!r}")
        self.ins = ElementwiseKernel._params(in_params)
        self.outs = ElementwiseKernel._params(out_params)
        if post_map_expr.replace(" ", "") != f"{self.outs[0][1]}=a":
            raise NotImplementedError(f"the stand-in's post map is y = a, not {post_map_expr!r}")
        self.map_expr, self.name, self.options = map_expr, name, tuple(options)

    def __call__(self, *args, axis=None, keepdims=False):
        if len(args) != len(self.ins):
            raise TypeError(f"{self.name} takes {len(self.ins)} inputs, got {len(args)}")
        values = [_unwrap(a) for a in args]
        types = {}
        for (kind, _), v in zip(self.ins, values):
            if isinstance(v, np.ndarray):
                types.setdefault(kind, v.dtype)
        scope = dict(ElementwiseKernel.FUNCTIONS)
        for (kind, name), v in zip(self.ins, values):
            scope[name] = v if isinstance(v, np.ndarray) else np.dtype(types.get(kind, kind)).type(v)
        mapped = eval(self.map_expr, {"__builtins__": {}}, scope)
        count_launch("reduction", self.name)
        return _wrap(np.sum(mapped, axis=axis, keepdims=keepdims))


def fuse(*args, kernel_name=None):
    """cupy.fuse: the function run on the NumPy arrays underneath, one launch."""
    def decorate(fn):
        def fused(*call_args):
            result = fn(*_unwrap(call_args))
            count_launch("elementwise", kernel_name or fn.__name__)
            return _wrap(result)
        fused.__name__ = kernel_name or fn.__name__
        return fused
    if len(args) == 1 and callable(args[0]):
        return decorate(args[0])
    return decorate


def _namespace(source, kind=None, **extra):
    ns = types.SimpleNamespace(**extra)
    for name in dir(source):
        if not name.startswith("_"):
            value = getattr(source, name)
            if callable(value):
                setattr(ns, name, _device_call(value, kind=kind))
    return ns


fft = _namespace(np.fft, kind="fft")           # cuFFT: one plan's launch per call
linalg = _namespace(np.linalg)
lib = types.SimpleNamespace(stride_tricks=types.SimpleNamespace(
    as_strided=lambda a, shape=None, strides=None: _wrap(
        np.lib.stride_tricks.as_strided(_unwrap(a), shape=shape, strides=strides))))


class _MemoryPool:
    def total_bytes(self):
        return 0

    def used_bytes(self):
        return 0

    def free_bytes(self):
        return 0

    def free_all_blocks(self):
        pass


_pool = _MemoryPool()


def get_default_memory_pool():
    return _pool


class _Cublas:
    """cuBLAS's math mode per handle (cupy.cuda.cublas), kept but without effect."""
    CUBLAS_DEFAULT_MATH = 0

    def __init__(self):
        self.modes = {}

    def getMathMode(self, handle):
        return self.modes.get(handle, self.CUBLAS_DEFAULT_MATH)

    def setMathMode(self, handle, mode):
        self.modes[handle] = mode


# The device's (free, total) bytes as cudaMemGetInfo answers: an 80 GiB GPU, all free,
# unless a test sets less.
device_memory = [80 << 30, 80 << 30]

class CUDARuntimeError(RuntimeError):
    """cupy.cuda.runtime.CUDARuntimeError: what a failed CUDA runtime call raises, such as
    "cudaErrorNoDevice: no CUDA-capable device is detected"."""


def _device_count():
    if "device" in broken:
        raise broken["device"]
    return 1


_stream = types.SimpleNamespace(synchronize=lambda: None)
cuda = types.SimpleNamespace(
    runtime=types.SimpleNamespace(getDeviceCount=_device_count,
                                  memGetInfo=lambda: tuple(device_memory),
                                  runtimeGetVersion=lambda: 12080,      # CUDA 12.8
                                  CUDARuntimeError=CUDARuntimeError),
    Stream=types.SimpleNamespace(null=_stream),
    get_current_stream=lambda: _stream,
    cublas=_Cublas(),
    device=types.SimpleNamespace(get_cublas_handle=lambda: 1),   # one thread, one device
)


class _Products:
    """CuPy's per-dtype compute type of matrix products (cupy._core._routines_linalg), kept
    but without effect: NumPy multiplies in strict float32 whatever it says."""
    COMPUTE_TYPE_TBD, COMPUTE_TYPE_DEFAULT, COMPUTE_TYPE_TF32 = 0, 1, 7

    def __init__(self):
        self.modes = {}

    def get_compute_type(self, dtype):
        return self.modes.get(np.dtype(dtype), self.COMPUTE_TYPE_DEFAULT)

    def set_compute_type(self, dtype, mode):
        self.modes[np.dtype(dtype)] = mode


_core = types.SimpleNamespace(_routines_linalg=_Products())
