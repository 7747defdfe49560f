"""Capsules: squash (eq. 1), lengths, primary capsules, predictions (eq. 2)
and routing by agreement (Procedure 1, eq. 3).

Shape letters: N batch, I input capsules, J output capsules, D_in and D_out
capsule dimensions. u (N, I, D_in), u_hat (N, I, J, D_out), v (N, J, D_out),
logits b and coupling c (N, I, J). In the einsum strings: n image, i input capsule,
j output capsule, k input dimension, d output dimension.
"""
from minicaps.backend import get_xp

SQUASH_EPS = 1e-7


# ---------------------------------------------------------------- squash (eq. 1)
def squash_forward(s, eps=SQUASH_EPS):
    """v = |s|^2 / (1 + |s|^2) * s / |s| over the last axis.

    Written v = f(n) s with n = |s|^2 and f(n) = n / ((1 + n) sqrt(n + eps)):
    the eps sits inside the square root, so squash(0) = 0 with a finite
    gradient instead of 0/0.
    """
    xp = get_xp(s)
    n = (s * s).sum(axis=-1, keepdims=True)
    g = 1 / ((1 + n) * xp.sqrt(n + eps))
    f = n * g
    return f * s, (s, n, f, g, eps)


def squash_backward(dv, cache):
    """ds = f(n) dv + 2 f'(n) s (s . dv), from v = f(n) s and dn/ds = 2 s.

    f'(n) = g (1/(1 + n) - n / (2 (n + eps))) with g = 1/((1 + n) sqrt(n + eps)),
    finite at n = 0 (where it equals 1/sqrt(eps)).
    """
    s, n, f, g, eps = cache
    df = g * (1 / (1 + n) - n / (2 * (n + eps)))
    s_dot_dv = (s * dv).sum(axis=-1, keepdims=True)
    return f * dv + (2 * df * s_dot_dv) * s


# ---------------------------------------------------------------- lengths
def length_forward(v, eps=SQUASH_EPS):
    """|v| = sqrt(sum_d v_d^2 + eps) over the last axis; safe at v = 0."""
    xp = get_xp(v)
    length = xp.sqrt((v * v).sum(axis=-1) + eps)
    return length, (v, length)


def length_backward(dlength, cache):
    """d|v|/dv = v / |v|."""
    v, length = cache
    return (dlength / length)[..., None] * v


# ---------------------------------------------------------------- primary capsules
def primary_capsules_forward(conv_out, dims, eps=SQUASH_EPS):
    """(N, H, W, maps*dims) -> squashed capsules u (N, H*W*maps, dims).

    Channel = map*dims + dim, and capsule index i = (row*W + col)*maps + map:
    a plain reshape of the NHWC conv output.
    """
    u, cache = squash_forward(as_capsules(conv_out, dims), eps)
    return u, (conv_out.shape, cache)


def as_capsules(conv_out, dims):
    """(N, H, W, maps*dims) -> (N, H*W*maps, dims): the conv output read as capsules."""
    N, H, W, C = conv_out.shape
    if C % dims:
        raise ValueError(f"primary conv has {C} channels, not a multiple of {dims} capsule dims")
    return conv_out.reshape(N, H * W * (C // dims), dims)


def primary_capsules_backward(du, cache):
    shape, squash_cache = cache
    return squash_backward(du, squash_cache).reshape(shape)


# ---------------------------------------------------------------- predictions (eq. 2)
def predictions_forward(u, W):
    """u_hat_j|i = W_ij u_i for every image: u (N, I, D_in), W (I, J, D_out, D_in) -> u_hat
    (N, I, J, D_out). W is shared by the batch (never tiled over it)."""
    xp = get_xp(u, W)
    return xp.einsum("ijdk,nik->nijd", W, u), (u, W)


def predictions_backward(du_hat, cache):
    """du_i = sum_j W_ij^T du_hat_j|i;  dW_ij = sum_n du_hat_j|i[n] u_i[n]^T."""
    u, W = cache
    xp = get_xp(du_hat, W)
    return xp.einsum("nijd,ijdk->nik", du_hat, W), xp.einsum("nijd,nik->ijdk", du_hat, u)


# ---------------------------------------------------------------- routing (Procedure 1)
def softmax_forward(b, axis=-1):
    """c = exp(b) / sum exp(b) along axis (eq. 3), shifted by the max for stability."""
    xp = get_xp(b)
    e = xp.exp(b - b.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def softmax_backward(dc, c, axis=-1):
    """db = c * (dc - sum_k c_k dc_k): the softmax's Jacobian applied to dc."""
    return c * (dc - (c * dc).sum(axis=axis, keepdims=True))


def routing_forward(u_hat, iters=3, routing_grad="full", eps=SQUASH_EPS, coupling=None):
    """Dynamic routing between capsules (Procedure 1): u_hat (N, I, J, D) -> v (N, J, D)
    and the last coupling c (N, I, J).

        b = 0
        repeat iters times:
            c_ij = softmax_j(b_ij)                          (eq. 3, over the outputs j)
            s_j = sum_i c_ij u_hat_j|i                       (eq. 2)
            v_j = squash(s_j)                                (eq. 1)
            b_ij += u_hat_j|i . v_j                          (all but the last iteration)

    routing_grad="full" differentiates through every iteration (the agreement
    path included); "stop" treats the coupling coefficients as constants, so
    only s = sum_i c_ij u_hat_j|i of the last iteration carries gradient.
    ``coupling`` given: skip the iterations and use it as the constant c (the
    function that "stop" differentiates, for gradient checks).
    Returns (v, c), cache.
    """
    xp = get_xp(u_hat)
    if routing_grad not in ("full", "stop"):
        raise ValueError(f"routing_grad must be 'full' or 'stop', got {routing_grad!r}")
    if coupling is not None:
        v, sq = squash_forward(xp.einsum("nij,nijd->njd", coupling, u_hat), eps)
        return (v, coupling), (u_hat, [(coupling, sq, v)], "stop")
    if iters < 1:
        raise ValueError(f"routing needs at least 1 iteration, got {iters}")
    N, I, J, D = u_hat.shape
    b = xp.zeros((N, I, J), dtype=u_hat.dtype)
    steps = []                                                      # (c, squash cache, v)
    for t in range(iters):
        c = softmax_forward(b, axis=2)
        v, sq = squash_forward(xp.einsum("nij,nijd->njd", c, u_hat), eps)
        steps.append((c, sq, v))
        if t < iters - 1:
            b = b + xp.einsum("nijd,njd->nij", u_hat, v)
    return (v, c), (u_hat, steps, routing_grad)


def routing_backward(dv, cache):
    """du_hat of routing_forward, walking the iterations backwards.

    u_hat is used twice in every iteration t: in s_t (gradient c_t ds_t) and in the
    agreement b_{t+1} = b_t + u_hat . v_t (gradient db v_t), so its gradient is a sum
    over t. db carries the logits' gradient back from one iteration to the one before;
    b_1 = 0 is a constant, so the last db is dropped.
    """
    u_hat, steps, routing_grad = cache
    xp = get_xp(u_hat)
    c, sq, v = steps[-1]
    ds = squash_backward(dv, sq)
    du_hat = xp.einsum("nij,njd->nijd", c, ds)                       # from s = sum_i c u_hat
    if routing_grad == "stop":
        return du_hat
    db = softmax_backward(xp.einsum("nijd,njd->nij", u_hat, ds), c, axis=2)
    for c, sq, v in reversed(steps[:-1]):
        du_hat += xp.einsum("nij,njd->nijd", db, v)                  # from b += u_hat . v
        ds = squash_backward(xp.einsum("nij,nijd->njd", db, u_hat), sq)   # dv_t, then ds_t
        du_hat += xp.einsum("nij,njd->nijd", c, ds)                  # from s_t
        db = db + softmax_backward(xp.einsum("nijd,njd->nij", u_hat, ds), c, axis=2)
    return du_hat
