"""2-D convolution in NHWC as one GEMM over im2col windows.

Shapes: x (N, H, W, C_in), weights (kh, kw, C_in, C_out), valid padding, any
stride; output (N, Ho, Wo, C_out) with Ho = (H - kh) // stride + 1.

im2col copies every kernel offset (a, b) as one strided slice, so the
windows end up contiguous as (N, Ho, Wo, kh, kw, C_in) and the convolution is
a single matrix product. col2im walks the same offsets and adds the slices
back: no scatter-add, no fancy indexing, the same code on NumPy and CuPy.
"""
from ..backend import get_xp


def conv_output_size(size, kernel, stride):
    return (size - kernel) // stride + 1


def im2col(x, kh, kw, stride=1):
    """(N, H, W, C) -> windows (N, Ho, Wo, kh, kw, C), a contiguous copy."""
    xp = get_xp(x)
    N, H, W, C = x.shape
    Ho, Wo = conv_output_size(H, kh, stride), conv_output_size(W, kw, stride)
    cols = xp.empty((N, Ho, Wo, kh, kw, C), dtype=x.dtype)
    for a in range(kh):
        for b in range(kw):
            cols[:, :, :, a, b, :] = x[:, a:a + stride * (Ho - 1) + 1:stride,
                                        b:b + stride * (Wo - 1) + 1:stride, :]
    return cols


def col2im(cols, x_shape, stride=1):
    """Adjoint of im2col: (N, Ho, Wo, kh, kw, C) -> (N, H, W, C), overlaps summed."""
    xp = get_xp(cols)
    N, Ho, Wo, kh, kw, C = cols.shape
    x = xp.zeros(x_shape, dtype=cols.dtype)
    for a in range(kh):
        for b in range(kw):
            x[:, a:a + stride * (Ho - 1) + 1:stride,
              b:b + stride * (Wo - 1) + 1:stride, :] += cols[:, :, :, a, b, :]
    return x


def conv2d_forward(x, W, b, stride=1):
    """out[n, y, x, o] = sum_{a, b, c} x[n, y*s + a, x*s + b, c] W[a, b, c, o] + b[o].

    x: (N, H, W, C_in), W: (kh, kw, C_in, C_out), b: (C_out,) -> (N, Ho, Wo, C_out).
    """
    kh, kw, C_in, C_out = W.shape
    cols = im2col(x, kh, kw, stride)
    N, Ho, Wo = cols.shape[:3]
    out = cols.reshape(N * Ho * Wo, kh * kw * C_in) @ W.reshape(kh * kw * C_in, C_out)
    out += b
    return out.reshape(N, Ho, Wo, C_out), (x.shape, cols, W, stride)


def conv2d_backward(dout, cache, need_dx=True):
    """Gradients (dx, dW, db) of conv2d_forward; dx is None when need_dx is False
    (the first layer never needs the gradient of the image)."""
    x_shape, cols, W, stride = cache
    kh, kw, C_in, C_out = W.shape
    dout2 = dout.reshape(-1, C_out)
    cols2 = cols.reshape(dout2.shape[0], kh * kw * C_in)
    dW = (cols2.T @ dout2).reshape(W.shape)
    db = dout2.sum(axis=0)
    dx = None
    if need_dx:
        dcols = dout2 @ W.reshape(kh * kw * C_in, C_out).T
        dx = col2im(dcols.reshape(cols.shape), x_shape, stride)
    return dx, dW, db
