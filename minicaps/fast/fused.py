"""Elementwise chains fused into one kernel each on the GPU, where each NumPy operation
would be a kernel launch of its own (at batch 100 a GPU step is bound by its launches).

Each kernel is the reference op's formula, operation for operation in CUDA C
(backend.ElementwiseKernel compiles it with --fmad=false, so it rounds as NumPy does);
what a reference op keeps in its cache for the backward pass (squash's f and g) is
recomputed per element from the same inputs, the same bits. The sums over an axis stay
CuPy reductions. On the CPU every function here is the reference op itself, untouched:
NumPy has no launches to save.

Shape letters as in ops/capsules.py: N batch, J output capsules, D capsule dimensions.
"""
from minicaps import backend
from minicaps.backend import get_xp
from minicaps.ops import capsules as ref_capsules
from minicaps.ops import dense as ref_dense
from minicaps.ops import losses as ref_losses
from minicaps.ops.capsules import SQUASH_EPS

# sum_k a_k b_k over an axis, one launch: (a * b).sum(axis), the product and its sum
SUM_OF_PRODUCTS_KERNEL = backend.ReductionKernel(
    "T a, T b", "T y", "a * b", "a + b", "y = a", "0", "minicaps_sum_of_products")
# v = f(n) s, f = n g, g = 1 / ((1 + n) sqrt(n + eps)): ops.capsules.squash_forward
SQUASH_KERNEL = backend.ElementwiseKernel(
    "T s, T n, T eps", "T v",
    "T g = 1 / ((1 + n) * sqrt(n + eps));"
    "T f = n * g;"
    "v = f * s;",
    "minicaps_squash")
# ds = f dv + 2 f'(n) (s . dv) s: ops.capsules.squash_backward
SQUASH_BACKWARD_KERNEL = backend.ElementwiseKernel(
    "T dv, T s, T n, T s_dot_dv, T eps", "T ds",
    "T g = 1 / ((1 + n) * sqrt(n + eps));"
    "T f = n * g;"
    "T df = g * (1 / (1 + n) - n / (2 * (n + eps)));"
    "ds = f * dv + 2 * df * s_dot_dv * s;",
    "minicaps_squash_backward")
# exp(b - max b): fast.capsules.softmax_forward's numerator
SHIFTED_EXP_KERNEL = backend.ElementwiseKernel(
    "T b, T b_max", "T e", "e = exp(b - b_max);", "minicaps_shifted_exp")
# db = c (dc - sum_k c_k dc_k), plus the logits' gradient so far: softmax_backward
SOFTMAX_BACKWARD_KERNEL = backend.ElementwiseKernel(
    "T c, T dc, T c_dot_dc", "T db", "db = c * (dc - c_dot_dc);", "minicaps_softmax_backward")
SOFTMAX_BACKWARD_ADD_KERNEL = backend.ElementwiseKernel(
    "T c, T dc, T c_dot_dc, T before", "T db", "db = before + c * (dc - c_dot_dc);",
    "minicaps_softmax_backward_add")
# margin_loss_backward then length_backward (then + mask_backward of the decoder's dv):
# dv = dL/d|v| / |v| v (+ dr mask)
_MARGIN_IN = "T t, T present, T absent, T length, T v, T scale, T two_lam"
_DLENGTH = "T dlength = scale * (-2 * t * present + two_lam * (1 - t) * absent);"
MARGIN_LENGTH_BACKWARD_KERNEL = backend.ElementwiseKernel(
    _MARGIN_IN, "T dv", _DLENGTH + "dv = dlength / length * v;",
    "minicaps_margin_length_backward")
MARGIN_LENGTH_MASK_BACKWARD_KERNEL = backend.ElementwiseKernel(
    _MARGIN_IN + ", T dr, T mask", "T dv", _DLENGTH + "dv = dlength / length * v + dr * mask;",
    "minicaps_margin_length_mask_backward")
# reconstruction_loss_backward then sigmoid_backward: dr = (2 dL / N) diff y (1 - y)
RECON_SIGMOID_BACKWARD_KERNEL = backend.ElementwiseKernel(
    "T diff, T y, T scale", "T dr", "dr = scale * diff * y * (1 - y);",
    "minicaps_recon_sigmoid_backward")
# ops.dense.sigmoid_forward: e = exp(-|x|), y = 1/(1+e) where x >= 0, else e/(1+e)
SIGMOID_KERNEL = backend.ElementwiseKernel(
    "T x", "T y",
    "T e = exp(-fabs(x));"
    "y = x >= 0 ? 1 / (1 + e) : e / (1 + e);",
    "minicaps_sigmoid")
# relu_backward: dout where the ReLU's output y > 0, else 0
RELU_BACKWARD_KERNEL = backend.ElementwiseKernel(
    "T dout, T y", "T dx", "dx = dout * (y > 0);", "minicaps_relu_backward")


# ---------------------------------------------------------------- squash (eq. 1)
def squash_forward(s, eps=SQUASH_EPS):
    """ops.capsules.squash_forward; on the GPU |s|^2 (one reduction) and one kernel, the
    cache (s, n, None, None, eps): the backward kernel recomputes f and g from n."""
    if not backend.is_gpu_array(s):
        return ref_capsules.squash_forward(s, eps)
    xp = get_xp(s)
    n = SUM_OF_PRODUCTS_KERNEL(s, s, axis=-1, keepdims=True)
    v = SQUASH_KERNEL(s, n, eps, xp.empty(s.shape, dtype=s.dtype))
    return v, (s, n, None, None, eps)


def squash_backward(dv, cache):
    """ops.capsules.squash_backward; on the GPU s . dv (one reduction) and one kernel."""
    if not backend.is_gpu_array(dv):
        return ref_capsules.squash_backward(dv, cache)
    s, n, _, _, eps = cache
    s_dot_dv = SUM_OF_PRODUCTS_KERNEL(s, dv, axis=-1, keepdims=True)
    return SQUASH_BACKWARD_KERNEL(dv, s, n, s_dot_dv, eps,
                                  get_xp(dv).empty(dv.shape, dtype=dv.dtype))


def primary_capsules_forward(conv_out, dims, eps=SQUASH_EPS):
    """ops.capsules.primary_capsules_forward with this module's squash."""
    if not backend.is_gpu_array(conv_out):
        return ref_capsules.primary_capsules_forward(conv_out, dims, eps)
    u, cache = squash_forward(ref_capsules.as_capsules(conv_out, dims), eps)
    return u, (conv_out.shape, cache)


def primary_capsules_backward(du, cache):
    shape, squash_cache = cache
    return squash_backward(du, squash_cache).reshape(shape)


# ---------------------------------------------------------------- the softmax's gradient
def softmax_backward(dc, c, axis=-1, before=None):
    """``before`` + c (dc - sum_k c_k dc_k) (db itself when ``before`` is None): the
    softmax's Jacobian applied to dc, added to the logits' gradient so far."""
    if not backend.is_gpu_array(dc):
        db = c * (dc - (c * dc).sum(axis=axis, keepdims=True))
        return db if before is None else before + db
    c_dot_dc = SUM_OF_PRODUCTS_KERNEL(c, dc, axis=axis, keepdims=True)
    out = get_xp(c).empty_like(c)
    if before is None:
        return SOFTMAX_BACKWARD_KERNEL(c, dc, c_dot_dc, out)
    return SOFTMAX_BACKWARD_ADD_KERNEL(c, dc, c_dot_dc, before, out)


# ---------------------------------------------------------------- the losses' gradients
def margin_length_backward(margin_cache, length_cache, dr=None, mask_cache=None):
    """dv of the margin loss through the lengths (margin_loss_backward(1.0, ...) then
    length_backward), plus mask_backward(dr, ...) when the decoder's dr (N, J*D) is
    given: one kernel on the GPU."""
    T, present, absent, lam = margin_cache
    v, length = length_cache
    if not backend.is_gpu_array(v):
        dv = ref_capsules.length_backward(ref_losses.margin_loss_backward(1.0, margin_cache),
                                          length_cache)
        return dv if dr is None else dv + ref_losses.mask_backward(dr, mask_cache)
    per_capsule = [a[..., None] for a in (T, present, absent, length)]
    scale, two_lam = 1.0 / T.shape[0], 2 * lam       # (dloss / N), 2 lam as the CPU's
    out = get_xp(v).empty(v.shape, dtype=v.dtype)
    if dr is None:
        return MARGIN_LENGTH_BACKWARD_KERNEL(*per_capsule, v, scale, two_lam, out)
    mask, shape = mask_cache
    return MARGIN_LENGTH_MASK_BACKWARD_KERNEL(*per_capsule, v, scale, two_lam,
                                              dr.reshape(shape), mask[:, :, None], out)


def recon_sigmoid_backward(dloss, diff, y):
    """sigmoid_backward(reconstruction_loss_backward(dloss, diff), y): one kernel on the
    GPU."""
    if not backend.is_gpu_array(diff):
        dr = ref_losses.reconstruction_loss_backward(dloss, diff)
        return ref_dense.sigmoid_backward(dr.reshape(y.shape), y)
    scale = 2 * dloss / diff.shape[0]
    return RECON_SIGMOID_BACKWARD_KERNEL(diff.reshape(y.shape), y, scale,
                                         get_xp(y).empty(y.shape, dtype=y.dtype))


def sigmoid_forward(x):
    """ops.dense.sigmoid_forward: one kernel on the GPU."""
    if not backend.is_gpu_array(x):
        return ref_dense.sigmoid_forward(x)
    y = SIGMOID_KERNEL(x, get_xp(x).empty(x.shape, dtype=x.dtype))
    return y, y
