"""The layers of the paper's CNN baseline (section 5) that CapsNet does not use: zero padding
for SAME convolution, 2x2 max-pooling, dropout, and softmax with cross-entropy. The
convolution itself, dense layers and ReLU are minicaps.ops' own.

Shapes as elsewhere: x (N, H, W, C) images and maps, logits (N, K) for K classes.
"""
from minicaps.backend import get_xp
from minicaps.ops.conv import conv2d_forward, conv2d_backward
from minicaps.ops.losses import one_hot


# ------------------------------------------------------------------ SAME convolution
def same_padding(kernel):
    """(before, after): the zeros SAME padding puts on each side of an axis for a stride-1
    convolution with ``kernel`` taps, so the output keeps the input's size. kernel - 1 in
    all; an even kernel puts the extra zero after (below, to the right), as TensorFlow."""
    before = (kernel - 1) // 2
    return before, kernel - 1 - before


def pad_forward(x, pad_h, pad_w):
    """x framed by zeros: pad_h = (top, bottom), pad_w = (left, right) rows and columns.

        out[n, top + y, left + x, c] = x[n, y, x, c], and 0 in the frame

    (N, H, W, C) -> (N, top + H + bottom, left + W + right, C).
    """
    xp = get_xp(x)
    N, H, W, C = x.shape
    (top, bottom), (left, right) = pad_h, pad_w
    out = xp.zeros((N, top + H + bottom, left + W + right, C), dtype=x.dtype)
    out[:, top:top + H, left:left + W, :] = x
    return out, (top, left, H, W)


def pad_backward(dout, cache):
    """dx = dout inside the frame: each x lands in one place, the zeros depend on nothing."""
    top, left, H, W = cache
    return dout[:, top:top + H, left:left + W, :]


def conv2d_same_forward(x, W, b):
    """Stride-1 convolution whose output has the input's H and W ("SAME"): zero padding
    (same_padding of each kernel axis), then the valid convolution of minicaps.ops.

        out[n, y, x, o] = sum_{a, b, c} xpad[n, y + a, x + b, c] W[a, b, c, o] + b[o]

    x (N, H, W, C_in), W (kh, kw, C_in, C_out), b (C_out,) -> out (N, H, W, C_out).
    """
    kh, kw = W.shape[:2]
    xpad, pad = pad_forward(x, same_padding(kh), same_padding(kw))
    out, conv = conv2d_forward(xpad, W, b)
    return out, (pad, conv)


def conv2d_same_backward(dout, cache):
    """(dx, dW, db): the convolution's gradients, dx then cut out of the padded frame."""
    pad, conv = cache
    dxpad, dW, db = conv2d_backward(dout, conv)
    return pad_backward(dxpad, pad), dW, db


# ------------------------------------------------------------------ max-pooling
POOL_OFFSETS = ((0, 0), (0, 1), (1, 0), (1, 1))   # the 2x2 window in reading order


def max_pool_forward(x):
    """2x2 max-pooling, stride 2:

        out[n, h, w, c] = max_{p, q in {0, 1}} x[n, 2h + p, 2w + q, c]

    (N, H, W, C) -> (N, H // 2, W // 2, C). An odd H or W leaves its last row or column
    out of every window (as a VALID pooling), so it gets no gradient. One strided slice
    per window offset (p, q), as im2col: the four candidates stacked on a first axis.
    """
    xp = get_xp(x)
    N, H, W, C = x.shape
    Ho, Wo = H // 2, W // 2
    candidates = xp.stack([x[:, p:2 * Ho:2, q:2 * Wo:2, :] for p, q in POOL_OFFSETS])
    winner = candidates.argmax(axis=0)       # the first of equal maxima, in reading order
    chosen = winner[None] == xp.arange(len(POOL_OFFSETS)).reshape(-1, 1, 1, 1, 1)
    return candidates.max(axis=0), (chosen, x.shape)


def max_pool_backward(dout, cache):
    """dx = dout at the element each window took its max from, 0 elsewhere:

        d out[n, h, w, c] / d x[n, 2h + p, 2w + q, c] = 1 if (p, q) won, else 0

    Ties: the max is not differentiable there; the whole gradient goes to one element,
    the first maximum in reading order ((0, 0), (0, 1), (1, 0), (1, 1)), never shared.
    """
    chosen, x_shape = cache
    xp = get_xp(dout)
    dx = xp.zeros(x_shape, dtype=dout.dtype)
    Ho, Wo = dout.shape[1:3]
    for k, (p, q) in enumerate(POOL_OFFSETS):
        dx[:, p:2 * Ho:2, q:2 * Wo:2, :] = dout * chosen[k]
    return dx


# ------------------------------------------------------------------ dropout
def dropout_forward(x, rate, rng=None, training=True):
    """Inverted dropout: each entry kept with probability 1 - rate and scaled by 1 / (1 - rate),
    so the expected output is x and the test-time network needs no rescaling:

        out = x * keep / (1 - rate),   keep ~ Bernoulli(1 - rate), one per entry of x

    ``rng``: a numpy Generator that draws the mask (on the host; it then goes to x's
    device), so the caller decides where the randomness comes from and a run can replay
    it. At test time (training=False) or with rate 0 it is the identity: out is x itself.
    """
    if not 0 <= rate < 1:
        raise ValueError(f"dropout rate must be in [0, 1), got {rate!r}")
    if not training or rate == 0:
        return x, None
    if rng is None:
        raise ValueError("dropout in training draws its mask from a numpy Generator: pass rng")
    xp = get_xp(x)
    keep = rng.random(x.shape) >= rate                      # True with probability 1 - rate
    scale = xp.asarray(keep.astype(x.dtype) / x.dtype.type(1 - rate))
    return x * scale, scale


def dropout_backward(dout, cache):
    """dx = dout * keep / (1 - rate): the same mask and scale (dout itself at test time)."""
    scale = cache
    return dout if scale is None else dout * scale


# ------------------------------------------------------------------ softmax + cross-entropy
def softmax_cross_entropy_forward(logits, y):
    """The mean over the batch of the cross-entropy of softmax(logits) with the labels:

        p_nk = exp(z_nk) / sum_j exp(z_nj)
        L = -(1/N) sum_n sum_k T_nk log p_nk,   T_n the labels' distribution:

    T_nk = 1 for k = y_n (L = (1/N) sum_n (log sum_j exp(z_nj) - z_{n, y_n})); with M
    different classes per image, y (N, M) as MultiMNIST's pairs, T_nk = 1/M for each of
    them, so L is the mean of the M cross-entropies and the network learns to give each
    present class an equal share. Computed from z - max_j z_nj (the same p and L, and exp
    never overflows: the largest term is exp(0) = 1, so the log never sees 0).
    logits (N, K), y (N,) or (N, M) ints -> scalar.
    """
    xp = get_xp(logits)
    N, K = logits.shape
    z = logits - logits.max(axis=1, keepdims=True)
    log_p = z - xp.log(xp.exp(z).sum(axis=1, keepdims=True))
    T = one_hot(y, K, logits.dtype)
    if y.ndim == 2:
        T = T / T.sum(axis=1, keepdims=True)
    return -(T * log_p).sum() / N, (xp.exp(log_p), T)


def softmax_cross_entropy_backward(dloss, cache):
    """dL/dz_nk = (p_nk - T_nk) / N: the softmax's Jacobian and the log's 1/p cancel
    (sum_k T_nk = 1)."""
    p, T = cache
    return (dloss / p.shape[0]) * (p - T)
