"""The convolution of ops/conv.py made fast: im2col + GEMM in chunks of images, with
buffers reused, or the DFT route (conv_fft.py) where it pays.

Shapes: x (N, H, W, C_in), weights (kh, kw, C_in, C_out), valid padding, any
stride; output (N, Ho, Wo, C_out) with Ho = (H - kh) // stride + 1.

im2col here is a strided view of x (window (h, w) of image n starts at
x[n, h*s, w*s]) copied once into a reused buffer, so the windows end up contiguous as
(N, Ho, Wo, kh, kw, C_in) and each chunk's convolution is a single matrix product.
col2im is its adjoint: it adds every window back where it came from, one
strided slice per window position (or per kernel offset, whichever loop is
shorter). No scatter-add, no fancy indexing: the same code on NumPy and CuPy.

Memory: the windows of the primary capsule convolution take 3 MB per image
(36 windows of 9*9*256 floats), 380 MB for a batch of 128. So the batch runs
through the GEMMs in chunks whose windows fit in ``WINDOW_BYTES``; the cache
keeps only x, and the backward pass copies the windows of each chunk again
(a copy costs far less than the GEMMs that use it).

For big kernels on many channels (the primary capsules) conv_fft.py computes
the same function through the discrete Fourier transform, whose per-frequency
products need about a quarter of the multiplications of the GEMM here;
``method="auto"`` picks that route where a training step gains from it.
"""
from minicaps import backend
from minicaps.backend import get_xp
from minicaps.ops.conv import conv_output_size
from minicaps.fast.conv_fft import conv2d_fft_forward, conv2d_fft_backward, fft_pays

METHODS = ("auto", "gemm", "fft")

WINDOW_BYTES = 48 * 2 ** 20     # im2col buffer per chunk (16 images of the primary conv), reused


def windows(x, kh, kw, stride=1):
    """A read-only strided view (N, Ho, Wo, kh, kw, C) of the windows of x; no copy."""
    N, H, W, C = x.shape
    Ho, Wo = conv_output_size(H, kh, stride), conv_output_size(W, kw, stride)
    sN, sH, sW, sC = x.strides
    return backend.as_strided(x, (N, Ho, Wo, kh, kw, C),
                              (sN, stride * sH, stride * sW, sH, sW, sC))


def im2col(x, kh, kw, stride=1, out=None):
    """(N, H, W, C) -> windows (N, Ho, Wo, kh, kw, C), a contiguous copy (into ``out`` if given)."""
    xp = get_xp(x)
    view = windows(x, kh, kw, stride)
    if out is None:
        return xp.ascontiguousarray(view)
    out[...] = view
    return out


def col2im(cols, x_shape, stride=1, out=None):
    """Adjoint of im2col: (N, Ho, Wo, kh, kw, C) -> (N, H, W, C), overlaps summed.

    Adds into ``out`` when given (it must hold zeros for a plain col2im).
    """
    xp = get_xp(cols)
    N, Ho, Wo, kh, kw, C = cols.shape
    x = xp.zeros(x_shape, dtype=cols.dtype) if out is None else out
    if Ho * Wo <= kh * kw:       # one slice per window position
        for i in range(Ho):
            for j in range(Wo):
                x[:, i * stride:i * stride + kh, j * stride:j * stride + kw, :] += cols[:, i, j]
    else:                        # one slice per kernel offset
        for a in range(kh):
            for b in range(kw):
                x[:, a:a + stride * (Ho - 1) + 1:stride,
                  b:b + stride * (Wo - 1) + 1:stride, :] += cols[:, :, :, a, b, :]
    return x


def _chunk_size(x_shape, kh, kw, stride, itemsize, chunk=None):
    """Images per GEMM: all of them, or as many as keep the windows under WINDOW_BYTES,
    evened out over the chunks (a last chunk of a few images makes a slow GEMM)."""
    N, H, W, C = x_shape
    if chunk is None:
        per_image = (conv_output_size(H, kh, stride) * conv_output_size(W, kw, stride)
                     * kh * kw * C * itemsize)
        chunk = WINDOW_BYTES // per_image
    parts = -(-N // max(1, min(N, int(chunk))))
    return -(-N // parts)


def conv2d_forward(x, W, b, stride=1, chunk=None, method="auto", training=True, spectrum=None):
    """out[n, h, w, o] = sum_{p, q, c} x[n, h*s + p, w*s + q, c] W[p, q, c, o] + b[o].

    x: (N, H, W, C_in), W: (kh, kw, C_in, C_out), b: (C_out,) -> (N, Ho, Wo, C_out).
    ``method``: "gemm" (im2col windows times the weights), "fft" (conv_fft.py: the
    same function through the DFT, far fewer multiplications for big kernels) or
    "auto" (fft where conv_fft.fft_pays says a training step is faster, or where the
    weights' ``spectrum`` is given; else gemm when ``training`` is False, as no backward
    pass shares the cost of the spectrum).
    ``spectrum``: conv_fft.weight_spectrum of W, made once for many batches with the
    same weights (CapsNet.fixed_weights); it must be W's, or the result is wrong.
    ``chunk``: images per GEMM (default: as many as fit in WINDOW_BYTES).
    """
    if method not in METHODS:
        raise ValueError(f"conv2d method must be one of {METHODS}, got {method!r}")
    if method == "fft" or (method == "auto" and (spectrum is not None or (
            training and fft_pays(x.shape, W.shape, stride)))):
        out, cache = conv2d_fft_forward(x, W, b, stride, spectrum)
        return out, ("fft", cache)
    xp = get_xp(x, W)
    kh, kw, C_in, C_out = W.shape
    N, H, Wd, _ = x.shape
    Ho, Wo = conv_output_size(H, kh, stride), conv_output_size(Wd, kw, stride)
    K = kh * kw * C_in
    W2 = W.reshape(K, C_out)
    chunk = _chunk_size(x.shape, kh, kw, stride, x.itemsize, chunk)
    out = xp.empty((N, Ho, Wo, C_out), dtype=x.dtype)
    buf = xp.empty((chunk, Ho, Wo, kh, kw, C_in), dtype=x.dtype)
    for n0 in range(0, N, chunk):
        n1 = min(N, n0 + chunk)
        cols = im2col(x[n0:n1], kh, kw, stride, out=buf[:n1 - n0])
        xp.matmul(cols.reshape(-1, K), W2, out=out[n0:n1].reshape(-1, C_out))
    out += b
    return out, ("gemm", (x, W, stride, chunk))


def conv2d_backward(dout, cache, need_dx=True):
    """Gradients (dx, dW, db) of conv2d_forward; dx is None when need_dx is False
    (the first layer never needs the gradient of the image).

        dW = windows^T @ dout      dwindows = dout @ W^T,  dx = col2im(dwindows)
    """
    method, cache = cache
    if method == "fft":
        return conv2d_fft_backward(dout, cache, need_dx)
    x, W, stride, chunk = cache
    xp = get_xp(dout, W)
    kh, kw, C_in, C_out = W.shape
    K = kh * kw * C_in
    W2 = W.reshape(K, C_out)
    N, Ho, Wo, _ = dout.shape
    gpu = backend.is_gpu_array(dout)
    dW = None
    dx = xp.zeros(x.shape, dtype=x.dtype) if need_dx else None
    buf = xp.empty((chunk, Ho, Wo, kh, kw, C_in), dtype=x.dtype)   # windows, then their gradient
    for n0 in range(0, N, chunk):
        n1 = min(N, n0 + chunk)
        cols = im2col(x[n0:n1], kh, kw, stride, out=buf[:n1 - n0]).reshape(-1, K)
        d = dout[n0:n1].reshape(-1, C_out)
        # The longer side of dW as the GEMM's rows: BLAS crawls on a few rows with a long K
        # (the CPU's; cuBLAS takes either, and cols.T @ d needs no copy after it).
        part = cols.T @ d if K >= C_out or gpu else (d.T @ cols).T
        if dW is None:       # the first chunk's product is dW so far (on the GPU the only one)
            dW = xp.ascontiguousarray(part)
        else:
            dW += part
        if need_dx:
            dcols = xp.matmul(d, W2.T, out=buf[:n1 - n0].reshape(-1, K))   # windows used up
            col2im(dcols.reshape(n1 - n0, Ho, Wo, kh, kw, C_in), x[n0:n1].shape, stride,
                   out=dx[n0:n1])
    return dx, dW.reshape(W.shape), dout.reshape(-1, C_out).sum(axis=0)
