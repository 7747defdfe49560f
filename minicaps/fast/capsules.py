"""The capsule part of ops/capsules.py made fast: predictions written in place, routing
with its logits laid out (N, J, I) in memory, every gradient to u_hat gathered into one
product (outer_sums), and predictions + routing run a chunk of the batch at a time on
every core (digit_capsules_forward). Squash and the softmax's gradient are fused.py's: the
reference ops on the CPU, one kernel each (and a reduction) on the GPU.

Shape letters: N batch, I input capsules, J output capsules, D_in and D_out
capsule dimensions. u (N, I, D_in), u_hat (N, I, J, D_out), v (N, J, D_out),
logits b and coupling c (N, I, J) (as views of (N, J, I) arrays).
"""
from minicaps import backend
from minicaps.backend import get_xp
from minicaps.ops.capsules import SQUASH_EPS
from minicaps.fast.fused import SHIFTED_EXP_KERNEL, squash_forward, squash_backward
from minicaps.fast.fused import softmax_backward as fused_softmax_backward
from minicaps.fast.inplace import matmul_into


# ---------------------------------------------------------------- predictions (eq. 2)
def predictions_forward(u, W, u_t=None):
    """u_hat[n, i, j] = W[i, j] @ u[n, i].

    u: (N, I, D_in), W: (I, J, D_out, D_in) -> u_hat (N, I, J, D_out).
    One batched matmul over i, (N, D_in) @ (D_in, J*D_out): W is never tiled
    over the batch. Each product is written straight into its (N, J*D_out)
    slice of a contiguous u_hat. On the GPU: predictions_gpu (``u_t``: its cache's
    transposed u, made once).
    """
    if backend.is_gpu_array(u):
        return predictions_gpu(u, W, u_t)
    xp = get_xp(u, W)
    N, I, D_in = u.shape
    _, J, D_out, _ = W.shape
    W2 = W.reshape(I, J * D_out, D_in)
    u_hat = xp.empty((N, I, J, D_out), dtype=u.dtype)
    matmul_into(u.transpose(1, 0, 2), W2.transpose(0, 2, 1),
                out=u_hat.reshape(N, I, J * D_out).transpose(1, 0, 2))    # (I, N, J*D_out)
    return u_hat, (u, W)


def predictions_backward(du_hat, cache):
    """du[n, i] = sum_j W[i, j]^T du_hat[n, i, j];  dW[i, j] = sum_n du_hat[n, i, j] u[n, i]^T."""
    if backend.is_gpu_array(du_hat):
        return predictions_gpu_backward(du_hat, cache)
    xp = get_xp(du_hat)
    u, W = cache
    N, I, D_in = u.shape
    _, J, D_out, _ = W.shape
    g = du_hat.reshape(N, I, J * D_out).transpose(1, 0, 2)            # (I, N, J*D_out)
    W2 = W.reshape(I, J * D_out, D_in)
    du = xp.matmul(g, W2).transpose(1, 0, 2)                          # (N, I, D_in)
    dW = xp.matmul(g.transpose(0, 2, 1), u.transpose(1, 0, 2))        # (I, J*D_out, D_in)
    return du, dW.reshape(W.shape)


# On the GPU u_hat is laid out (N, J, I, D_out) in memory (the (N, I, J, D_out) array
# is a transposed view of it), so that routing's products (weighted_sum, agreement,
# outer_sums) read each (n, j)'s (I, D) matrix as a C-contiguous batch: CuPy's batched
# matmul copies any operand that is not C-contiguous, ten copies of u_hat a step in the
# CPU's layout. The CPU keeps (N, I, J, D_out), which its chunks and BLAS read as they are.
def predictions_gpu(u, W, u_t=None):
    """predictions_forward on the GPU: (I, J D_out, D_in) @ (I, D_in, N), one product,
    u transposed to (I, D_in, N) once (``u_t``, kept in the cache for the backward pass's
    second forward) and the result copied once into u_hat's routing layout."""
    xp = get_xp(u, W)
    N, I, D_in = u.shape
    _, J, D_out, _ = W.shape
    if u_t is None:
        u_t = xp.ascontiguousarray(u.transpose(1, 2, 0))                   # (I, D_in, N)
    R = xp.matmul(W.reshape(I, J * D_out, D_in), u_t)                       # (I, J D_out, N)
    u_hat = xp.ascontiguousarray(R.reshape(I, J, D_out, N).transpose(3, 1, 0, 2))  # (N, J, I, D)
    return u_hat.transpose(0, 2, 1, 3), (u, W, u_t)


def predictions_gpu_backward(du_hat, cache):
    """predictions_backward on the GPU, from du_hat in u_hat's routing layout: one copy
    of it as (I, J D_out, N), then du^T = W^T G and dW = G u, a product each."""
    xp = get_xp(du_hat)
    u, W, _ = cache
    N, I, D_in = u.shape
    _, J, D_out, _ = W.shape
    G = xp.ascontiguousarray(du_hat.transpose(1, 2, 3, 0)).reshape(I, J * D_out, N)
    du = xp.matmul(W.reshape(I, J * D_out, D_in).transpose(0, 2, 1), G)     # (I, D_in, N)
    dW = xp.matmul(G, u.transpose(1, 0, 2))                                 # (I, J D_out, D_in)
    return du.transpose(2, 0, 1), dW.reshape(W.shape)


# ---------------------------------------------------------------- routing (Procedure 1)
# Logits b and couplings c are (N, I, J) arrays laid out (N, J, I) in memory:
# the softmax over j then runs across rows of length I, and the two sums over
# u_hat below are one small matmul per (n, j) with u_hat[n, :, j, :] as an
# (I, D) matrix, the layout BLAS reads directly.
def softmax_forward(b, axis=-1):
    """c = exp(b) / sum exp(b) along axis (shifted by the max for stability)."""
    xp = get_xp(b)
    if backend.is_gpu_array(b):                         # exp(b - max) one kernel
        e = SHIFTED_EXP_KERNEL(b, b.max(axis=axis, keepdims=True), xp.empty_like(b))
    else:
        e = xp.exp(b - b.max(axis=axis, keepdims=True))
    e /= e.sum(axis=axis, keepdims=True)
    return e


def softmax_backward(dc, c, axis=-1):
    """db = c * (dc - sum_k c_k dc_k) (on the GPU the sum and one kernel, fused.softmax_backward)."""
    return fused_softmax_backward(dc, c, axis)


def weighted_sum(c, u_hat):
    """s[n, j] = sum_i c[n, i, j] u_hat[n, i, j]  (eq. 2, right half): (1, I) @ (I, D) per (n, j)."""
    xp = get_xp(u_hat)
    s = xp.matmul(c.transpose(0, 2, 1)[:, :, None, :], u_hat.transpose(0, 2, 1, 3))
    return s[:, :, 0, :]


def agreement(u_hat, v):
    """a[n, i, j] = u_hat[n, i, j] . v[n, j]: how well prediction i agrees with output j.

    (I, D) @ (D, 1) per (n, j); the result is laid out (N, J, I) like the logits.
    """
    xp = get_xp(u_hat)
    a = xp.matmul(u_hat.transpose(0, 2, 1, 3), v[..., None])        # (N, J, I, 1)
    return a[..., 0].transpose(0, 2, 1)


def outer_sums(alphas, betas, like):
    """du_hat[n, i, j] = sum_k alphas[k][n, i, j] betas[k][n, j], laid out like ``like``.

    Every gradient that routing sends to u_hat has this form, a coefficient per
    (n, i, j) times a vector per (n, j); the sum over k is one matmul per (n, j),
    (I, K) @ (K, D), writing du_hat once.
    """
    xp = get_xp(like)
    A = xp.stack([a.transpose(0, 2, 1) for a in alphas], axis=-1)      # (N, J, I, K)
    B = xp.stack(betas, axis=2)                                         # (N, J, K, D)
    du_hat = xp.empty_like(like)
    matmul_into(A, B, out=du_hat.transpose(0, 2, 1, 3))
    return du_hat


def routing_forward(u_hat, iters=3, routing_grad="full", eps=SQUASH_EPS, coupling=None):
    """Dynamic routing between capsules (Procedure 1).

        b = 0
        repeat iters times:
            c = softmax(b) over the output capsules j        (eq. 3)
            s_j = sum_i c_ij u_hat_j|i                        (eq. 2)
            v_j = squash(s_j)                                 (eq. 1)
            b_ij += u_hat_j|i . v_j         (all but the last iteration)

    u_hat: (N, I, J, D) -> v (N, J, D) and the last coupling c (N, I, J); routing_grad
    and ``coupling`` as in the reference, ops.capsules.routing_forward, which this equals.
    Returns (v, c), cache.
    """
    xp = get_xp(u_hat)
    if routing_grad not in ("full", "stop"):
        raise ValueError(f"routing_grad must be 'full' or 'stop', got {routing_grad!r}")
    if coupling is not None:
        s = weighted_sum(coupling, u_hat)
        v, sq = squash_forward(s, eps)
        return (v, coupling), (u_hat, [(coupling, sq, v)], "stop")
    if iters < 1:
        raise ValueError(f"routing needs at least 1 iteration, got {iters}")
    N, I, J, D = u_hat.shape
    # On the GPU the first softmax, of b = 0, is the array 1/J that it computes (exp(0) = 1,
    # the sum of J ones is J exactly): one fill instead of a fill and four launches, and
    # b_2 = b_1 + a_1 is a_1 itself (only a zero's sign may differ, which no exp sees).
    uniform = backend.is_gpu_array(u_hat)
    b = None if uniform else xp.zeros((N, J, I), dtype=u_hat.dtype).transpose(0, 2, 1)
    steps = []
    for t in range(iters):
        c = uniform_coupling(u_hat) if b is None else softmax_forward(b, axis=2)
        v, sq = squash_forward(weighted_sum(c, u_hat), eps)
        steps.append((c, sq, v))
        if t < iters - 1:
            a = agreement(u_hat, v)
            b = a if b is None else b + a
    return (v, c), (u_hat, steps, routing_grad)


def uniform_coupling(u_hat):
    """softmax_forward(0) for the logits of u_hat (N, I, J, D): c = 1/J everywhere,
    (N, I, J) laid out (N, J, I), as the division 1/J rounds in u_hat's dtype."""
    xp = get_xp(u_hat)
    N, I, J, _ = u_hat.shape
    one_over_j = u_hat.dtype.type(1) / u_hat.dtype.type(J)
    return xp.full((N, J, I), one_over_j, dtype=u_hat.dtype).transpose(0, 2, 1)


def routing_backward(dv, cache):
    """du_hat of routing_forward, walking the iterations backwards.

    Each iteration t uses u_hat twice, in s_t (gradient c_t ds_t) and in the
    agreement a_t (gradient db_{t+1} v_t), so du_hat is the sum of those
    outer products over t, gathered in lists and added by outer_sums. db
    carries the gradient of the logits b_{t+1} = b_t + a_t back to earlier
    iterations.
    """
    u_hat, steps, routing_grad = cache
    c, sq, v = steps[-1]
    ds = squash_backward(dv, sq)
    alphas, betas = [c], [ds]                                          # s = sum_i c u_hat
    if routing_grad == "full":
        db = softmax_backward(agreement(u_hat, ds), c, axis=2)          # dL/db_{r-1}
        for c, sq, v in reversed(steps[:-1]):
            # b_{t+1} = b_t + u_hat . v_t: db flows to u_hat, to v_t and on to b_t
            alphas.append(db)
            betas.append(v)
            ds = squash_backward(weighted_sum(db, u_hat), sq)
            alphas.append(c)
            betas.append(ds)
            db = fused_softmax_backward(agreement(u_hat, ds), c, axis=2, before=db)
    return outer_sums(alphas, betas, like=u_hat)


# ---------------------------------------------------------------- predictions + routing, in chunks
CAPSULE_CHUNK = 16    # most images per chunk: u_hat of 16 MNIST images is 12 MB, two chunks (one per core) stay in cache


def capsule_chunks(N, chunk=CAPSULE_CHUNK, gpu=False):
    """Row slices of the batch, of sizes that differ by one at most: at most ``chunk``
    images each, and as many as a multiple of the CPU threads (so that no core waits
    alone for a last chunk: batch 100 on 2 cores runs 8 chunks of 12-13 instead of 7 of
    15, the capsule part in 0.97x the time, medians of 15 rounds) unless the batch has
    fewer images; on the GPU the whole batch at once (its kernels want big arrays)."""
    if gpu:
        return [slice(0, N)]
    threads = backend.cpu_threads()
    needed = -(-N // chunk)                                 # chunks of at most ``chunk``
    parts = min(N, -(-needed // threads) * threads)         # rounded up to whole rounds
    bounds = [k * N // parts for k in range(parts + 1)]
    return [slice(a, b) for a, b in zip(bounds, bounds[1:])]


def digit_capsules_forward(u, W, iters=3, routing_grad="full", eps=SQUASH_EPS, coupling=None,
                           chunk=CAPSULE_CHUNK):
    """routing_forward(predictions_forward(u, W)), a chunk of the batch at a time.

    Routing passes over u_hat five times forward and six times backward; a
    chunk's u_hat stays in the cache between the passes, a whole batch's
    would not. The chunks are independent, so on the CPU they run on all
    cores at once (backend.parallel_map). u: (N, I, D_in), W: (I, J, D_out,
    D_in) -> (v (N, J, D_out), c (N, I, J)), cache.
    """
    xp = get_xp(u, W)
    gpu = backend.is_gpu_array(u)

    def one_chunk(rows):
        u_hat, pred_cache = predictions_forward(u[rows], W)
        (v, c), (_, steps, grad) = routing_forward(u_hat, iters, routing_grad, eps,
                                                   None if coupling is None else coupling[rows])
        # The cache keeps u, not u_hat: the backward pass makes u_hat again, a chunk at a
        # time, instead of holding every chunk's (94 MB for 128 MNIST images) in between.
        return v, c, (rows, pred_cache, (steps, grad))

    parts = backend.parallel_map(one_chunk, capsule_chunks(u.shape[0], chunk, gpu), on_gpu=gpu)
    if gpu and len(parts) == 1:                      # the whole batch: nothing to gather
        v, c, _ = parts[0]
    else:
        v = xp.concatenate([v for v, _, _ in parts])
        c = xp.concatenate([c for _, c, _ in parts])
    return (v, c), (u.shape, [cache for _, _, cache in parts])


def digit_capsules_backward(dv, cache):
    """(du, dW) of digit_capsules_forward: routing_backward then predictions_backward
    per chunk; dW sums over the chunks."""
    xp = get_xp(dv)
    u_shape, caches = cache
    gpu = backend.is_gpu_array(dv)
    du = xp.empty(u_shape, dtype=dv.dtype)

    def one_chunk(chunk_cache):
        nonlocal du
        rows, pred_cache, (steps, grad) = chunk_cache
        u_hat, _ = predictions_forward(*pred_cache)
        du_hat = routing_backward(dv[rows], (u_hat, steps, grad))
        del u_hat
        du_rows, dW = predictions_backward(du_hat, pred_cache)
        if gpu and len(caches) == 1:                 # the whole batch: no copy into du
            du = du_rows
        else:
            du[rows] = du_rows
        return dW

    dWs = backend.parallel_map(one_chunk, caches, on_gpu=gpu)
    dW = dWs[0]
    for d in dWs[1:]:
        dW += d
    return du, dW
