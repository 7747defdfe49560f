"""2-D convolution (NHWC, valid padding, any stride) as im2col + one matrix product.

    out[n, h, w, o] = sum_{p, q, c} x[n, h*s + p, w*s + q, c] W[p, q, c, o] + b[o]

n: image; h, w: output row and column; p, q: kernel offset (row, column); c: input
channel; o: output channel; s: stride. x (N, H, W, C_in), W (kh, kw, C_in, C_out),
b (C_out,) the bias -> out (N, Ho, Wo, C_out), Ho = (H - kh) // s + 1. im2col copies
every window of x into a row, so the sum over (p, q, c) is one product of the whole
batch's windows with W reshaped to (kh kw C_in, C_out).
"""
from minicaps.backend import get_xp


def conv_output_size(size, kernel, stride):
    return (size - kernel) // stride + 1


def im2col(x, kh, kw, stride=1):
    """(N, H, W, C) -> windows (N, Ho, Wo, kh, kw, C): cols[n, h, w, p, q] = x[n, h*s + p, w*s + q].

    One strided slice per kernel offset (p, q): the pixels that offset reads in every window.
    """
    xp = get_xp(x)
    N, H, W, C = x.shape
    Ho, Wo = conv_output_size(H, kh, stride), conv_output_size(W, kw, stride)
    cols = xp.empty((N, Ho, Wo, kh, kw, C), dtype=x.dtype)
    for p in range(kh):
        for q in range(kw):
            cols[:, :, :, p, q, :] = x[:, p:p + stride * (Ho - 1) + 1:stride,
                                       q:q + stride * (Wo - 1) + 1:stride, :]
    return cols


def col2im(cols, x_shape, stride=1):
    """The adjoint of im2col: every window's entries added back where they were read,
    (N, Ho, Wo, kh, kw, C) -> (N, H, W, C). Windows overlap, so the additions matter."""
    xp = get_xp(cols)
    N, Ho, Wo, kh, kw, C = cols.shape
    x = xp.zeros(x_shape, dtype=cols.dtype)
    for p in range(kh):
        for q in range(kw):
            x[:, p:p + stride * (Ho - 1) + 1:stride,
              q:q + stride * (Wo - 1) + 1:stride, :] += cols[:, :, :, p, q, :]
    return x


def conv2d_forward(x, W, b, stride=1):
    """out = im2col(x) @ W + b, the whole batch in one product."""
    kh, kw, C_in, C_out = W.shape
    cols = im2col(x, kh, kw, stride)                  # (N, Ho, Wo, kh, kw, C_in)
    N, Ho, Wo = cols.shape[:3]
    out = cols.reshape(N * Ho * Wo, -1) @ W.reshape(-1, C_out) + b
    return out.reshape(N, Ho, Wo, C_out), (x.shape, cols, W, stride)


def conv2d_backward(dout, cache):
    """(dx, dW, db): the forward product read backwards,

        dW = cols^T @ dout     db = sum of dout over n, h, w
        dcols = dout @ W^T     dx = col2im(dcols)
    """
    x_shape, cols, W, stride = cache
    C_out = W.shape[-1]
    d = dout.reshape(-1, C_out)                       # (N Ho Wo, C_out)
    cols2 = cols.reshape(d.shape[0], -1)              # (N Ho Wo, kh kw C_in)
    dW = (cols2.T @ d).reshape(W.shape)
    dcols = (d @ W.reshape(-1, C_out).T).reshape(cols.shape)
    return col2im(dcols, x_shape, stride), dW, d.sum(axis=0)
