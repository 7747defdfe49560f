"""2-D convolution through the discrete Fourier transform: the function of the
reference ops.conv2d_forward with far fewer multiplications when the kernel is big.

Why it is the same function. A valid convolution (a correlation, as in ops/conv.py)
of an H x W image with a kh x kw kernel at stride s reads only the first
U = (Ho - 1) s + kh rows and V = (Wo - 1) s + kw columns. On that U x V grid
the *circular* correlation

    y[p, q] = sum_{a, b} x[(p + a) mod U, (q + b) mod V] w[a, b]

equals the valid one at the output positions (p, q) = (i s, j s), since no
window there reaches past the grid. Circular correlation is a product in the
frequency domain, one bin (u, v) at a time, summed over the input channels:

    Y[u, v][n, o] = sum_c X[u, v][n, c] conj(Wf[u, v][c, o])       X = DFT(x), Wf = DFT(w)

so the convolution becomes one small complex matrix product per bin, and
out = IDFT(Y) read at the output positions. x and w are real, so only the
V // 2 + 1 first columns of their spectra are needed (Hermitian symmetry).

Cost. For the primary capsules (20 x 20 input read as 19 x 19, 9 x 9 kernel,
stride 2, 256 -> 256 channels) that is 19 * 10 = 190 bins, each a complex
(N, 256) @ (256, 256) product: 190 * 256 * 256 * 8 = 100 MFLOP per image,
against 36 * 20736 * 256 * 2 = 382 MFLOP for the im2col GEMM; transforming
each image adds 11 MFLOP (and as much again for dx). The price is
the weights' spectrum (2 * 190 * 256 * 256 floats, 100 MB in float32), made
in the forward pass and kept in the cache for dx (20 ms on 2 cores, about as
long as the per-bin products of 16 images), and its adjoint for dW (21 ms), so
the DFT route pays from about 15 images per batch on (see ``fft_pays``).

How it is computed. Every transform is a product with a small real DFT matrix
(no FFT library: NumPy and CuPy run the same code, and float32 stays float32),
so each is a GEMM. Every 2-D transform is separable: along the columns, then
along the rows, for the images (image_spectrum) and for the kernels
(weight_spectrum). Real and imaginary parts sit side by side on an axis of size 2.
Between the transforms the spectra are laid out (bins, 2N, C), real rows over
imaginary rows, and each bin's complex product is two real GEMMs with 2N rows.
The backward pass applies the transposes of the same real matrices: it is the
exact adjoint of the forward computation.
"""
import functools

import numpy as np

from minicaps import backend
from minicaps.backend import get_xp
from minicaps.fast.inplace import matmul_into


def fft_grid(x_shape, w_shape, stride):
    """(U, V, Ho, Wo): the rows and columns of the input that the valid convolution
    reads, and the output size."""
    _, H, W, _ = x_shape
    kh, kw = w_shape[:2]
    Ho, Wo = (H - kh) // stride + 1, (W - kw) // stride + 1
    return (Ho - 1) * stride + kh, (Wo - 1) * stride + kw, Ho, Wo


# ---------------------------------------------------------------- the DFT matrices
def real_dft(V, Q):
    """The DFT along one axis of a real signal of length Q zero-padded (or cropped) to V,
    first V // 2 + 1 frequencies only, as a real (2 (V // 2 + 1), Q) matrix: rows (r, v)
    with r = 0 the real and r = 1 the imaginary part, entries cos and -sin of
    2 pi v q / V; zero columns for q >= V (cropped away)."""
    ang = 2 * np.pi * np.arange(V // 2 + 1)[:, None] * np.arange(Q)[None, :] / V
    return np.concatenate([np.cos(ang), -np.sin(ang)]) * (np.arange(Q) < V)


def complex_dft(U, P):
    """The DFT along one axis of a complex signal of length P (zero-padded or cropped to
    U) stored as real and imaginary parts side by side, as a real (2 U, 2 P) matrix:
    rows (r, u), columns (p, r'). With e^{-i t} = cos t - i sin t, t = 2 pi u p / U:

        Re X[u] = sum_p cos t Re Z[p] + sin t Im Z[p]
        Im X[u] = sum_p -sin t Re Z[p] + cos t Im Z[p]
    """
    ang = 2 * np.pi * np.arange(U)[:, None] * np.arange(P)[None, :] / U
    c, s = np.cos(ang) * (np.arange(P) < U), np.sin(ang) * (np.arange(P) < U)
    return np.stack([np.stack([c, s], axis=-1), np.stack([-s, c], axis=-1)]).reshape(2 * U, 2 * P)


def inverse_real_dft(U, V, rows, cols):
    """The inverse 2-D DFT of a spectrum kept in its V // 2 + 1 first columns (as the
    2-D transform real_dft along columns then complex_dft along rows makes it), read at
    the grid points (p, q), p in ``rows``, q in ``cols``:

        y[p, q] = Re sum_{u, v} m_v Y[u, v] e^{2 pi i (u p / U + v q / V)} / (U V)

    with m_v = 2 for the columns whose mirror image V - v is not stored, else 1.
    Rows (p, q), columns (r, u, v)."""
    Vf = V // 2 + 1
    m = np.full(Vf, 2.0)
    m[0] = 1.0
    if V % 2 == 0:
        m[-1] = 1.0
    ang = 2 * np.pi * (np.asarray(rows)[:, None, None, None] * np.arange(U)[None, None, :, None] / U
                       + np.asarray(cols)[None, :, None, None] * np.arange(Vf)[None, None, None, :] / V)
    inv = np.stack([m * np.cos(ang), -m * np.sin(ang)], axis=2) / (U * V)   # (p, q, r, u, v)
    return inv.reshape(len(rows) * len(cols), 2 * U * Vf)


@functools.lru_cache(maxsize=32)
def _plan_numpy(H, W, kh, kw, stride, dtype):
    U, V, Ho, Wo = fft_grid((1, H, W, 1), (kh, kw), stride)
    mats = dict(image_cols=real_dft(V, W), image_rows=complex_dft(U, U),
                image_rows_all=complex_dft(U, H),      # every row (zero columns past U): GPU
                weight_cols=real_dft(V, kw), weight_rows=complex_dft(U, kh),
                inverse=inverse_real_dft(U, V, np.arange(Ho) * stride, np.arange(Wo) * stride))
    return {k: np.ascontiguousarray(a, dtype=dtype) for k, a in mats.items()}


@functools.lru_cache(maxsize=32)
def _plan_gpu(*key):
    return backend.params_to_device(_plan_numpy(*key), "gpu")


def batched(plan, name, batch, transpose=False):
    """plan[name] (or its transpose) as the left operand of a product over the batch
    axes ``batch``: on the CPU the matrix itself (NumPy broadcasts it, no copy); on the
    GPU the matrix repeated over ``batch``, C-contiguous, made once per batch shape and
    kept with the plan. CuPy runs a product with a broadcast batch axis as a batched GEMM
    on pointer arrays, three elementwise kernels per batch axis to build them, and copies a
    transposed operand first: 30 + 4 kernels a training step of the paper's network (the
    DFT route of the primary capsules), which a plain strided batch does not need."""
    m = plan[name].T if transpose else plan[name]
    if not backend.is_gpu_array(m):
        return m
    kept = plan.setdefault("batched", {})
    key = (name, transpose, tuple(batch))
    if key not in kept:
        if len(kept) >= 16:          # many batch sizes (predictions of any length): start over
            kept.clear()
        xp = get_xp(m)
        kept[key] = xp.ascontiguousarray(xp.broadcast_to(m, tuple(batch) + m.shape))
    return kept[key]


def dft_plan(x_shape, w_shape, stride, like):
    """The DFT matrices of one convolution shape, in the dtype and on the device of
    ``like``: the images' 1-D transforms along the columns and the rows ("image_cols",
    "image_rows"), the kernels' likewise ("weight_cols", "weight_rows") and "inverse"
    (Ho Wo, 2 bins) back to the output positions. Made once per shape and kept."""
    key = (x_shape[1], x_shape[2], w_shape[0], w_shape[1], stride, np.dtype(like.dtype).str)
    return _plan_gpu(*key) if backend.is_gpu_array(like) else _plan_numpy(*key)


# ---------------------------------------------------------------- the 2-D transforms
# A 2-D DFT is a 1-D DFT along the columns (real in, complex out: real_dft), then a 1-D
# DFT along the rows (complex: complex_dft), each a GEMM with the channels as the long
# axis. Spectra come out laid out (2, U, V // 2 + 1, ...): part, row frequency, column
# frequency. Done separably the images' transform costs U (2 Vf) W + (2 U)^2 Vf
# multiplications per channel instead of (2 U Vf) H W as one matrix: 7x fewer for the
# primary capsules' 20 x 20 images. The kernels' transform runs the same two steps with
# the kernel pairs (c, o) as the long axis.
def image_spectrum(x, plan):
    """(N, H, W, C) images -> (N, 2 bins, C) spectra on the U x V grid (rows >= U unread)."""
    xp = get_xp(x)
    N, H, _, C = x.shape
    U2, two_vf = plan["image_rows"].shape[0], plan["image_cols"].shape[0]
    if backend.is_gpu_array(x):    # all H rows, the rows' transform zero past U: x itself,
        # C-contiguous, is the batched operand (CuPy would copy the slice of U rows)
        Z = xp.matmul(batched(plan, "image_cols", (N, H)), x)                # (N, H, 2 Vf, C)
        X = xp.matmul(batched(plan, "image_rows_all", (N,)), Z.reshape(N, 2 * H, -1))
        return X.reshape(N, U2 * two_vf // 2, C)
    Z = xp.matmul(batched(plan, "image_cols", (N, U2 // 2)), x[:, :U2 // 2])   # (N, U, 2 Vf, C)
    X = xp.matmul(batched(plan, "image_rows", (N,)), Z.reshape(N, U2, two_vf // 2 * C))  # (N, 2 U, Vf C)
    return X.reshape(N, U2 * two_vf // 2, C)


def image_spectrum_adjoint(dX, plan, x_shape):
    """The transpose of image_spectrum: (N, 2 bins, C) -> (N, H, W, C), zero in the rows
    the transform does not read."""
    xp = get_xp(dX)
    N, H, W, C = x_shape
    U2, two_vf = plan["image_rows"].shape[0], plan["image_cols"].shape[0]
    if backend.is_gpu_array(dX):   # image_spectrum's GPU route backwards: rows past U get 0
        dZ = xp.matmul(batched(plan, "image_rows_all", (N,), transpose=True),
                       dX.reshape(N, U2, two_vf // 2 * C))                   # (N, 2 H, Vf C)
        return xp.matmul(batched(plan, "image_cols", (N, H), transpose=True),
                         dZ.reshape(N, H, two_vf, C))
    dZ = xp.matmul(batched(plan, "image_rows", (N,), transpose=True),
                   dX.reshape(N, U2, two_vf // 2 * C))
    dx = (xp.empty if U2 // 2 == H else xp.zeros)(x_shape, dtype=dX.dtype)
    matmul_into(batched(plan, "image_cols", (N, U2 // 2), transpose=True),
                dZ.reshape(N, U2 // 2, two_vf, C), out=dx[:, :U2 // 2])
    return dx


def to_bins(spectra):
    """(N, 2 bins, C) spectra of the images -> (bins, 2N, C), real rows over imaginary."""
    xp = get_xp(spectra)
    N, two_bins, C = spectra.shape
    t = spectra.reshape(N, 2, two_bins // 2, C).transpose(2, 1, 0, 3)
    return xp.ascontiguousarray(t).reshape(two_bins // 2, 2 * N, C)


def weight_spectrum(W, plan):
    """Wf = DFT(W zero-padded to the grid) as (Wr, Wi), each (bins, C, O), contiguous.

    Separable, with the C O kernel pairs as the long axis: along the kernel's columns
    (one (2 Vf, kw) @ (kw, C O) product per kernel row), then along its rows (one
    (2 U, 2 kh) @ (2 kh, Vf C O) product). For the primary capsules 19.9 ms against
    28.8 ms for one (2 bins, kh kw) matrix per input channel (2 cores, float32, freed
    memory kept), at a 47 MB intermediate.
    """
    xp = get_xp(W)
    kh, kw, C, O = W.shape
    two_vf, two_u = plan["weight_cols"].shape[0], plan["weight_rows"].shape[0]
    Z = xp.matmul(batched(plan, "weight_cols", (kh,)), W.reshape(kh, kw, C * O))  # (kh, 2 Vf, C O)
    Wf = xp.matmul(plan["weight_rows"], Z.reshape(2 * kh, two_vf // 2 * C * O))  # (r, u, v, c, o)
    Wf = Wf.reshape(2, two_u // 2 * two_vf // 2, C, O)
    return Wf[0], Wf[1]


def weight_spectrum_adjoint(dWf, plan, w_shape):
    """The transpose of weight_spectrum: (2, bins, C, O) -> (kh, kw, C, O), the same two
    products transposed in reverse order (21.0 ms against 39.6 ms as one matrix)."""
    xp = get_xp(dWf)
    kh, kw, C, O = w_shape
    two_vf, two_u = plan["weight_cols"].shape[0], plan["weight_rows"].shape[0]
    dZ = xp.matmul(plan["weight_rows"].T, dWf.reshape(two_u, -1))          # (2 kh, Vf C O)
    dW = xp.empty(w_shape, dtype=dWf.dtype)
    matmul_into(batched(plan, "weight_cols", (kh,), transpose=True),
                dZ.reshape(kh, two_vf, C * O), out=dW.reshape(kh, kw, C * O))
    return dW


def bin_chunks(bins, N, C, like, limit=8 * 2 ** 20):
    """Slices of the bins whose (bins, 2N, C) products take at most about ``limit`` bytes
    (all bins at once on the GPU, whose batched GEMMs want big batches)."""
    if backend.is_gpu_array(like):
        return [slice(0, bins)]
    step = max(1, min(bins, limit // (2 * N * C * like.itemsize)))
    return [slice(k, min(bins, k + step)) for k in range(0, bins, step)]


# ---------------------------------------------------------------- the convolution
def conv2d_fft_forward(x, W, b, stride=1, spectrum=None):
    """ops.conv2d_forward through the DFT: x (N, H, W, C_in), W (kh, kw, C_in, C_out),
    b (C_out,) -> (N, Ho, Wo, C_out), cache. ``spectrum``: weight_spectrum(W) made
    beforehand (for many batches with the same weights), else made here."""
    xp = get_xp(x, W)
    kh, kw, C, O = W.shape
    N, H, Wd, _ = x.shape
    _, _, Ho, Wo = fft_grid(x.shape, W.shape, stride)
    plan = dft_plan(x.shape, W.shape, stride, x)
    X = to_bins(image_spectrum(x, plan))                               # (bins, 2N, C)
    Wr, Wi = spectrum if spectrum is not None else weight_spectrum(W, plan)   # (bins, C, O) each
    bins = X.shape[0]
    # Y = X conj(Wf): Yr = Xr Wr + Xi Wi, Yi = Xi Wr - Xr Wi, stored per image. A few
    # bins at a time, so the products' temporaries stay small.
    Y = xp.empty((N, 2, bins, O), dtype=x.dtype)
    for k in bin_chunks(bins, N, O, x):
        XWr = xp.matmul(X[k], Wr[k])                                   # [Xr Wr; Xi Wr]
        XWi = xp.matmul(X[k], Wi[k])                                   # [Xr Wi; Xi Wi]
        xp.add(XWr[:, :N], XWi[:, N:], out=Y[:, 0, k].transpose(1, 0, 2))
        xp.subtract(XWr[:, N:], XWi[:, :N], out=Y[:, 1, k].transpose(1, 0, 2))
    out = xp.matmul(batched(plan, "inverse", (N,)), Y.reshape(N, 2 * bins, O))   # (N, Ho Wo, O)
    out += b
    # The cache keeps X (as big as x) and the weights' spectrum, in a dict that the
    # backward pass empties so the spectrum is freed as soon as dx no longer needs it.
    return out.reshape(N, Ho, Wo, O), (X, W, x.shape, stride, {"Wf": (Wr, Wi)})


def conv2d_fft_backward(dout, cache, need_dx=True):
    """(dx, dW, db) of conv2d_fft_forward: the transposed steps in reverse order."""
    X, W, x_shape, stride, kept = cache
    xp = get_xp(dout)
    w_shape = _, _, C, O = W.shape
    N, Ho, Wo, _ = dout.shape
    bins = X.shape[0]
    plan = dft_plan(x_shape, w_shape, stride, dout)
    dY = to_bins(xp.matmul(batched(plan, "inverse", (N,), transpose=True),
                           dout.reshape(N, Ho * Wo, O)))                # [dYr; dYi]
    # The forward pass's spectrum, taken out of the cache so that it is freed once dx
    # is made (and made again if a backward pass over the same cache took it already).
    Wf = kept.pop("Wf", None)
    dx = None
    if need_dx:
        Wr, Wi = Wf or weight_spectrum(W, plan)
        del Wf
        # dXr = dYr Wr^T - dYi Wi^T,  dXi = dYr Wi^T + dYi Wr^T, stored per image.
        dX = xp.empty((N, 2, bins, C), dtype=dout.dtype)
        for k in bin_chunks(bins, N, C, dout):
            P = xp.matmul(dY[k], Wr[k].transpose(0, 2, 1))             # [dYr Wr^T; dYi Wr^T]
            Q = xp.matmul(dY[k], Wi[k].transpose(0, 2, 1))             # [dYr Wi^T; dYi Wi^T]
            xp.subtract(P[:, :N], Q[:, N:], out=dX[:, 0, k].transpose(1, 0, 2))
            xp.add(Q[:, :N], P[:, N:], out=dX[:, 1, k].transpose(1, 0, 2))
        del Wr, Wi, P, Q   # the spectrum's 100 MB (primary capsules) are free before dx and dW
        dx = image_spectrum_adjoint(dX.reshape(N, 2 * bins, C), plan, x_shape)
        del dX
    else:
        del Wf
    dW = weight_gradient(X, dY, plan, w_shape)
    return dx, dW, dout.reshape(-1, O).sum(axis=0)


def weight_gradient(X, dY, plan, w_shape, limit=48 * 2 ** 20):
    """dW from the bins' image spectra X and output gradients dY (each (bins, 2N, .)):

        dWr = Xr^T dYr + Xi^T dYi = X^T [dYr; dYi],  dWi = Xi^T dYr - Xr^T dYi = X^T [-dYi; dYr]

    per bin, then weight_spectrum_adjoint. On the CPU a block of input channels at a time,
    each block's spectrum gradient (2, bins, c, O) at most about ``limit`` bytes, taken
    back to its kernels before the next: the whole (2, bins, C, O) gradient and its first
    adjoint product are 147 MB for the paper's primary capsules, the step's peak at batch
    32; the blocks' gradients are the same sums in the same order. The GPU takes all the
    channels at once (its batched GEMMs want big batches)."""
    xp = get_xp(dY)
    _, _, C, O = w_shape
    bins, two_n, _ = X.shape
    N = two_n // 2
    swapped = xp.concatenate([-dY[:, N:], dY[:, :N]], axis=1)           # [-dYi; dYr]
    if backend.is_gpu_array(dY):
        blocks = [slice(0, C)]
    else:
        step = max(1, min(C, limit // (2 * bins * O * dY.itemsize)))
        blocks = [slice(c, min(C, c + step)) for c in range(0, C, step)]
    if len(blocks) == 1:
        dW = None
    else:
        dW = xp.empty(w_shape, dtype=dY.dtype)
    for c in blocks:
        # written straight into the (r, bin, c, o) layout that the weights' adjoint reads
        dWf = xp.empty((2, bins, c.stop - c.start, O), dtype=dY.dtype)
        for k in bin_chunks(bins, N, O, dY):
            XT = X[k, :, c].transpose(0, 2, 1)
            matmul_into(XT, dY[k], out=dWf[0, k])
            matmul_into(XT, swapped[k], out=dWf[1, k])
        part = weight_spectrum_adjoint(dWf, plan, w_shape[:2] + dWf.shape[2:])
        if dW is None:
            return part
        dW[:, :, c] = part
    return dW


def fft_pays(x_shape, w_shape, stride, training=True):
    """Whether this convolution should be faster through the DFT than through im2col +
    GEMM: a training step (forward, dW and dx) of x_shape[0] images, or with
    training=False forward passes over x_shape[0] images in all with one weights'
    spectrum (the spectrum is then made once, not once per batch). Counts
    multiplications: the direct GEMMs against the per-bin products, the images'
    transforms (forward and dx) and the weights' spectrum (with its adjoint in
    training), the images' transforms weighted 3x and the weights' 5x (thin GEMMs; the
    weights' 100 MB spectrum is also read by every per-bin product and written by dW's,
    memory traffic that the count leaves out; weights fitted on the CPU). Needs C_in >= 16:
    with few input channels the images' transforms dominate. For the primary capsules the
    DFT wins from about 15 images per batch in training and about 22 images in all for
    inference (the count's crossovers: 15 and 23; measured on 2 cores with the separable
    weights' transform: the convolution's forward and backward pass took 2.3-2.4x the
    GEMM route's time at 4 images, 1.43x at 8, 1.09-1.13x at 12, 0.91-0.93x at 16,
    0.69-0.71x at 24, 0.61x at 32; the forward pass with its spectrum made for it
    1.33-1.37x at 12, 1.14-1.15x at 16, 0.88x at 24, 0.71-0.74x at 32, 0.63-0.64x at 48)."""
    N, _, W, C = x_shape
    kh, kw, _, O = w_shape
    U, V, Ho, Wo = fft_grid(x_shape, w_shape, stride)
    Vf = V // 2 + 1
    bins = U * Vf
    products = 3 if training else 1      # forward, dW, dx: a GEMM or per-bin product each
    transforms = 2 if training else 1    # the images' spectrum (and its adjoint for dx)
    spectra = 2 if training else 1       # the weights' spectrum (and its adjoint for dW)
    direct = products * Ho * Wo * kh * kw * C * O * 2 * N
    transform = U * (2 * Vf) * W * C * 2 + (2 * U) ** 2 * Vf * C * 2   # image_spectrum
    per_image = products * bins * C * O * 8 + 3 * transforms * transform
    weights = spectra * ((2 * Vf) * kw * kh + (2 * U) * (2 * kh) * Vf) * C * O * 2
    return C >= 16 and direct > per_image * N + 5 * weights
