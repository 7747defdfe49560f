"""Every reference op's backward pass (minicaps.ops) against central finite differences in
float64, on shapes and values drawn by hypothesis, plus the properties the paper states; and
the fast-only pieces (minicaps.fast: the convolution's chunks and DFT route, the capsule
chunks) likewise. tests/fast/test_reference_fast.py checks every fast op against its twin."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

from minicaps import fast, ops
from minicaps.gradcheck import check_op, relative_error
from paper_reference import conv_valid     # the convolution as loops over output positions

TOL = 1e-7
seeds = st.integers(0, 2**32 - 1)


def away_from(a, points, margin):
    """Move entries of a at least ``margin`` away from each kink in ``points``."""
    for p in points:
        close = np.abs(a - p) < margin
        a = np.where(close, p + np.where(a >= p, margin, -margin), a)
    return a


def assert_grads(errors, tol=TOL):
    assert errors and all(e <= tol for e in errors.values()), errors


# ------------------------------------------------------------------ conv2d
def conv2d_pair(route, stride):
    """(forward, backward) of the reference convolution or of a route of the fast one."""
    if route == "reference":
        return lambda x, W, b: ops.conv2d_forward(x, W, b, stride), ops.conv2d_backward
    return (lambda x, W, b: fast.conv2d_forward(x, W, b, stride, method=route),
            fast.conv2d_backward)


@pytest.mark.parametrize("route", ["reference", "gemm", "fft"])
@given(seed=seeds, n=st.integers(1, 2), h=st.integers(3, 9), w=st.integers(3, 9),
       c_in=st.integers(1, 3), c_out=st.integers(1, 3), kh=st.integers(1, 4), kw=st.integers(1, 4),
       stride=st.integers(1, 3))
def test_conv2d_gradients(route, seed, n, h, w, c_in, c_out, kh, kw, stride):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, h, w, c_in))
    W = rng.standard_normal((min(kh, h), min(kw, w), c_in, c_out))
    b = rng.standard_normal(c_out)
    fwd, bwd = conv2d_pair(route, stride)
    # The DFT route rounds at about 1e-16 of the summed magnitudes, which the finite
    # differences' step (1e-6) turns into up to ~1e-7 of a small gradient (seen with a
    # 1 x 1 kernel: 1.3e-7): a looser bound there, still far below a wrong gradient's O(1).
    tol = 1e-6 if route == "fft" else TOL
    assert_grads(check_op(fwd, bwd, [x, W, b], ["x", "W", "b"], rng=rng), tol)


@pytest.mark.parametrize("route", ["reference", "gemm", "fft"])
@given(seed=seeds, h=st.integers(1, 10), w=st.integers(1, 10), kh=st.integers(1, 4),
       kw=st.integers(1, 4), stride=st.integers(1, 3))
def test_conv2d_equals_naive_loop(route, seed, h, w, kh, kw, stride):
    # fft: odd and even grids, grids cropped (stride > 1 leaves rows unread), 1 x 1 kernels.
    rng = np.random.default_rng(seed)
    kh, kw = min(kh, h), min(kw, w)
    x = rng.standard_normal((2, h, w, 3))
    W = rng.standard_normal((kh, kw, 3, 4))
    b = rng.standard_normal(4)
    out, _ = conv2d_pair(route, stride)[0](x, W, b)
    np.testing.assert_allclose(out, conv_valid(x, W, b, stride), rtol=1e-11, atol=1e-11)


def test_conv2d_in_pieces_equals_the_naive_loop_and_its_gradients(rng, monkeypatch):
    """Big batches run in pieces: the GEMM route a few images at a time (``chunk``), the DFT
    route a few frequency bins at a time (conv_fft.bin_chunks). Cut both into the smallest
    pieces (3 images in chunks of 2; one bin at a time) and compare with the naive loop and
    with the gradients of one piece, which test_conv2d_gradients checks."""
    from minicaps.fast import conv_fft
    x, W, b = rng.standard_normal((3, 11, 10, 3)), rng.standard_normal((4, 3, 3, 5)), rng.standard_normal(5)
    dout = rng.standard_normal(conv_valid(x, W, b, 2).shape)
    whole = {m: fast.conv2d_forward(x, W, b, 2, method=m) for m in ("gemm", "fft")}
    bin_chunks = conv_fft.bin_chunks
    pieces = []
    monkeypatch.setattr(conv_fft, "bin_chunks", lambda *a, **kw: pieces.append(
        bin_chunks(*a, limit=1)) or pieces[-1])
    cut = {"gemm": fast.conv2d_forward(x, W, b, 2, chunk=2, method="gemm"),
           "fft": fast.conv2d_forward(x, W, b, 2, method="fft")}
    grads_cut = {m: fast.conv2d_backward(dout, cut[m][1]) for m in cut}
    assert pieces and all(len(p) > 1 and p[0].stop - p[0].start == 1 for p in pieces)
    for m in cut:
        np.testing.assert_allclose(cut[m][0], conv_valid(x, W, b, 2), rtol=1e-11, atol=1e-11)
        for name, a, r in zip(["dx", "dW", "db"], grads_cut[m],
                              fast.conv2d_backward(dout, whole[m][1])):
            np.testing.assert_allclose(a, r, rtol=1e-11, atol=1e-11, err_msg=f"{m} {name}")


@pytest.mark.parametrize("lib", [ops, fast], ids=["reference", "fast"])
@given(seed=seeds, h=st.integers(3, 9), w=st.integers(3, 9), k=st.integers(1, 3), stride=st.integers(1, 3))
def test_col2im_is_the_adjoint_of_im2col(lib, seed, h, w, k, stride):
    # <im2col(x), y> == <x, col2im(y)> for every x and y
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, h, w, 3))
    cols = lib.im2col(x, k, k, stride)
    y = rng.standard_normal(cols.shape)
    lhs = (cols * y).sum()
    rhs = (x * lib.col2im(y, x.shape, stride)).sum()
    assert abs(lhs - rhs) <= 1e-10 * max(1.0, abs(lhs))


# ------------------------------------------------------------------ the fast conv2d: the DFT route
def test_conv2d_fft_in_float32_stays_float32_and_agrees_with_the_gemm_route(rng):
    # The primary-capsule shape (9 x 9, stride 2, on 20 x 20), fewer channels.
    x = rng.standard_normal((3, 20, 20, 16)).astype(np.float32)
    W = (0.1 * rng.standard_normal((9, 9, 16, 8))).astype(np.float32)
    b = rng.standard_normal(8).astype(np.float32)
    out, cache = fast.conv2d_forward(x, W, b, 2, method="fft")
    dout = rng.standard_normal(out.shape).astype(np.float32)
    fft = (out,) + fast.conv2d_backward(dout, cache)
    ref_out, ref_cache = ops.conv2d_forward(*(a.astype(np.float64) for a in (x, W, b)), 2)
    ref = (ref_out,) + ops.conv2d_backward(dout.astype(np.float64), ref_cache)
    for name, a, r in zip(["out", "dx", "dW", "db"], fft, ref):
        assert a.dtype == np.float32, name
        assert relative_error(a, r) < 1e-5, name


def test_conv2d_fft_backward_takes_the_kept_spectrum_and_can_run_twice(rng, monkeypatch):
    # The forward pass keeps the weights' spectrum for dx; the backward pass takes it out
    # of the cache (so it is freed), and a second backward pass over the same cache makes
    # it again: both give the gradients of the GEMM route.
    x, W, b = rng.standard_normal((2, 11, 11, 3)), rng.standard_normal((5, 5, 3, 4)), rng.standard_normal(4)
    out, cache = fast.conv2d_forward(x, W, b, 2, method="fft")
    kept = cache[1][-1]
    assert set(kept) == {"Wf"}
    dout = rng.standard_normal(out.shape)
    ref = ops.conv2d_backward(dout, ops.conv2d_forward(x, W, b, 2)[1])
    first = fast.conv2d_backward(dout, cache)
    assert not kept
    second = fast.conv2d_backward(dout, cache)
    for grads in (first, second):
        for name, a, r in zip(["dx", "dW", "db"], grads, ref):
            np.testing.assert_allclose(a, r, rtol=1e-10, atol=1e-10, err_msg=name)
    # Without dx (the first layer) no spectrum is needed, so none is made.
    from minicaps.fast import conv_fft
    monkeypatch.setattr(conv_fft, "weight_spectrum", lambda *a: pytest.fail("spectrum made"))
    dx, dW, _ = fast.conv2d_backward(dout, cache, need_dx=False)
    assert dx is None
    np.testing.assert_allclose(dW, ref[1], rtol=1e-10, atol=1e-10)


def rfft2_on_grid(a, U, V):
    """NumPy's FFT of (..., P, Q, C) cropped or zero-padded to U x V:
    (..., 2, U, V//2+1, C), real part over imaginary."""
    P, Q = a.shape[-3:-1]
    grid = np.zeros(a.shape[:-3] + (U, V, a.shape[-1]))
    grid[..., :min(P, U), :min(Q, V), :] = a[..., :U, :V, :]
    f = np.fft.rfft2(grid, axes=(-3, -2))
    return np.stack([f.real, f.imag], axis=-4)


@given(seed=seeds, h=st.integers(1, 9), w=st.integers(1, 9), kh=st.integers(1, 4),
       kw=st.integers(1, 4), stride=st.integers(1, 3))
def test_the_separable_transforms_are_numpys_fft(seed, h, w, kh, kw, stride):
    from minicaps.fast import conv_fft
    rng = np.random.default_rng(seed)
    kh, kw = min(kh, h), min(kw, w)
    x, W = rng.standard_normal((2, h, w, 3)), rng.standard_normal((kh, kw, 3, 4))
    U, V, _, _ = conv_fft.fft_grid(x.shape, W.shape, stride)
    plan = conv_fft.dft_plan(x.shape, W.shape, stride, x)
    X = conv_fft.image_spectrum(x, plan)                               # (N, 2 bins, C)
    np.testing.assert_allclose(X.reshape(2, 2, U, V // 2 + 1, 3), rfft2_on_grid(x, U, V),
                               atol=1e-12)
    Wr, Wi = conv_fft.weight_spectrum(W, plan)                         # (bins, C, O) each
    expected = rfft2_on_grid(W.transpose(2, 0, 1, 3), U, V)            # (C, 2, U, Vf, O)
    for part, got in enumerate((Wr, Wi)):
        np.testing.assert_allclose(got.reshape(U, V // 2 + 1, 3, 4),
                                   expected[:, part].transpose(1, 2, 0, 3), atol=1e-12)
    # <image_spectrum(x), y> == <x, image_spectrum_adjoint(y)>
    y = rng.standard_normal(X.shape)
    lhs = (X * y).sum()
    rhs = (x * conv_fft.image_spectrum_adjoint(y, plan, x.shape)).sum()
    assert abs(lhs - rhs) <= 1e-10 * max(1.0, abs(lhs))
    # <weight_spectrum(W), Y> == <W, weight_spectrum_adjoint(Y)>
    Y = rng.standard_normal((2,) + Wr.shape)
    lhs = (Wr * Y[0]).sum() + (Wi * Y[1]).sum()
    rhs = (W * conv_fft.weight_spectrum_adjoint(Y, plan, W.shape)).sum()
    assert abs(lhs - rhs) <= 1e-10 * max(1.0, abs(lhs))


def test_conv2d_auto_takes_the_dft_route_only_where_it_pays():
    from minicaps.fast.conv_fft import fft_pays
    primary, conv1 = (9, 9, 256, 256), (9, 9, 1, 256)
    assert fft_pays((64, 20, 20, 256), primary, 2) and fft_pays((128, 20, 20, 256), primary, 2)
    assert not fft_pays((8, 20, 20, 256), primary, 2)      # the weights' spectrum dominates (1.43x)
    assert not fft_pays((128, 28, 28, 1), conv1, 1)        # one input channel
    # Inference with the spectrum made once for all batches (CapsNet.fixed_weights): it
    # pays over a test set, not for a handful of images, and later than in training,
    # where the spectrum serves three passes.
    assert fft_pays((10000, 20, 20, 256), primary, 2, training=False)
    assert not fft_pays((8, 20, 20, 256), primary, 2, training=False)
    assert fft_pays((16, 20, 20, 256), primary, 2)                   # measured: 0.91x the time
    assert not fft_pays((16, 20, 20, 256), primary, 2, training=False)  # measured: 1.14x
    assert not fft_pays((10000, 28, 28, 1), conv1, 1, training=False)
    x = np.zeros((2, 6, 6, 1))
    for method, expected in [("auto", "gemm"), ("gemm", "gemm"), ("fft", "fft")]:
        _, cache = fast.conv2d_forward(x, np.zeros((3, 3, 1, 2)), np.zeros(2), method=method)
        assert cache[0] == expected
    wide, W = np.zeros((128, 20, 20, 128), np.float32), np.zeros((9, 9, 128, 128), np.float32)
    assert fast.conv2d_forward(wide, W, np.zeros(128, np.float32), 2)[1][0] == "fft"
    assert fast.conv2d_forward(wide, W, np.zeros(128, np.float32), 2,
                               training=False)[1][0] == "gemm"
    with pytest.raises(ValueError, match="method must be one of"):
        fast.conv2d_forward(x, np.zeros((3, 3, 1, 2)), np.zeros(2), method="winograd")


def test_conv2d_backward_without_input_gradient(rng):
    x, W = rng.standard_normal((2, 5, 5, 2)), rng.standard_normal((3, 3, 2, 4))
    for method in ("gemm", "fft"):
        out, cache = fast.conv2d_forward(x, W, np.zeros(4), method=method)
        dout = rng.standard_normal(out.shape)
        dx, dW, db = fast.conv2d_backward(dout, cache, need_dx=False)
        _, dW_all, db_all = fast.conv2d_backward(                      # gradient-checked
            dout, fast.conv2d_forward(x, W, np.zeros(4), method=method)[1])
        assert dx is None
        np.testing.assert_allclose(dW, dW_all, rtol=1e-13, atol=1e-13)
        np.testing.assert_allclose(db, db_all, rtol=1e-13, atol=1e-13)


# ------------------------------------------------------------------ dense, relu, sigmoid
@given(seed=seeds, n=st.integers(1, 5), d_in=st.integers(1, 6), d_out=st.integers(1, 6))
def test_dense_gradients(seed, n, d_in, d_out):
    rng = np.random.default_rng(seed)
    inputs = [rng.standard_normal((n, d_in)), rng.standard_normal((d_in, d_out)), rng.standard_normal(d_out)]
    assert_grads(check_op(ops.dense_forward, ops.dense_backward, inputs, ["x", "W", "b"], rng=rng))


@given(seed=seeds, shape=st.lists(st.integers(1, 5), min_size=1, max_size=3))
def test_relu_gradient_away_from_the_kink(seed, shape):
    rng = np.random.default_rng(seed)
    x = away_from(rng.standard_normal(shape), [0.0], 1e-3)
    assert_grads(check_op(ops.relu_forward, ops.relu_backward, [x], rng=rng))


@given(seed=seeds, scale=st.floats(0.1, 20))
def test_sigmoid_gradient(seed, scale):
    rng = np.random.default_rng(seed)
    # One row unscaled: when every entry saturates (scale 13: |x| > 10) the gradient's norm
    # is ~1e-5, below the finite differences' rounding (seen: 1.9e-7 relative).
    x = np.concatenate([scale * rng.standard_normal((3, 4)), rng.standard_normal((1, 4))])
    assert_grads(check_op(ops.sigmoid_forward, ops.sigmoid_backward, [x], rng=rng))


def test_sigmoid_is_finite_and_exact_for_large_inputs():
    x = np.array([-800.0, -30.0, 0.0, 30.0, 800.0])
    with np.errstate(over="raise"):
        y, _ = ops.sigmoid_forward(x)
    np.testing.assert_allclose(y[1:4], 1 / (1 + np.exp(-x[1:4])), rtol=1e-15)
    assert y[0] == 0.0 and y[-1] == 1.0


# ------------------------------------------------------------------ squash and lengths (eq. 1)
@given(seed=seeds, shape=st.lists(st.integers(1, 4), min_size=1, max_size=3), scale=st.floats(1e-2, 4))
def test_squash_gradient(seed, shape, scale):
    # far out (|s| >> 1) squash saturates at |v| = 1 and its gradient ~ 2/|s|^3
    # drowns in the rounding noise of the differences, so scales stay moderate
    rng = np.random.default_rng(seed)
    s = scale * rng.standard_normal(shape)
    # Within ~sqrt(eps) = 3e-4 of 0 the eps inside the square root bends squash on that
    # scale, and central differences (h = 1e-6) miss by ~(h / 3e-4)^2 of the gradient
    # (seen: 2e-7 for a 1-D capsule of length 1e-4): capsules keep a length >= 5e-3.
    norm = np.linalg.norm(s, axis=-1, keepdims=True)
    s = np.where(norm < 5e-3, s / np.maximum(norm, 1e-300) * 5e-3, s)
    assert_grads(check_op(ops.squash_forward, ops.squash_backward, [s], rng=rng))


@given(seed=seeds, scale=st.floats(1e-3, 1e3))
def test_squash_shrinks_below_one_and_keeps_direction(seed, scale):
    s = scale * np.random.default_rng(seed).standard_normal((6, 8))
    v, _ = ops.squash_forward(s)
    norm_s, norm_v = np.linalg.norm(s, axis=-1), np.linalg.norm(v, axis=-1)
    assert np.all(norm_v >= 0) and np.all(norm_v < 1)
    # closed form of eq. 1: |v| = |s|^2 / (1 + |s|^2) |s| / sqrt(|s|^2 + eps)
    n = norm_s**2
    np.testing.assert_allclose(norm_v, n / (1 + n) * norm_s / np.sqrt(n + ops.SQUASH_EPS), rtol=1e-12)
    cosine = (s * v).sum(-1) / (norm_s * norm_v)
    np.testing.assert_allclose(cosine, 1.0, rtol=1e-12)


def test_squash_of_zero_has_finite_value_and_gradient():
    s = np.zeros((3, 8))
    v, cache = ops.squash_forward(s)
    ds = ops.squash_backward(np.ones_like(v), cache)
    assert np.all(v == 0) and np.all(np.isfinite(ds))
    # at s = 0 the gradient is exactly 0: v ~ |s|^2 s / sqrt(eps) is cubic in s
    assert np.all(ds == 0)
    # a zero capsule beside non-zero ones keeps the check tight
    s = np.vstack([np.zeros((1, 4)), np.random.default_rng(0).standard_normal((2, 4))])
    assert_grads(check_op(ops.squash_forward, ops.squash_backward, [s]))


def test_squash_float32_keeps_dtype_and_matches_float64(rng):
    s = rng.standard_normal((5, 3, 8))
    v64, cache64 = ops.squash_forward(s)
    v32, cache = ops.squash_forward(s.astype(np.float32))
    dv = rng.standard_normal(s.shape)
    ds32 = ops.squash_backward(dv.astype(np.float32), cache)
    assert v32.dtype == np.float32 and ds32.dtype == np.float32
    np.testing.assert_allclose(v32, v64, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ds32, ops.squash_backward(dv, cache64), rtol=1e-4, atol=1e-5)


@given(seed=seeds)
def test_length_gradient(seed):
    rng = np.random.default_rng(seed)
    assert_grads(check_op(ops.length_forward, ops.length_backward, [rng.standard_normal((3, 4, 5))], rng=rng))


# ------------------------------------------------------------------ primary capsules, predictions (eq. 2)
@given(seed=seeds, h=st.integers(1, 3), maps=st.integers(1, 3), dims=st.integers(1, 4))
def test_primary_capsules_gradient(seed, h, maps, dims):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, h, h + 1, maps * dims))
    fwd = lambda x: ops.primary_capsules_forward(x, dims)
    assert_grads(check_op(fwd, ops.primary_capsules_backward, [x], rng=rng))


def test_primary_capsule_index_and_channel_layout(rng):
    # capsule i = (row*W + col)*maps + map holds channels map*dims .. map*dims + dims - 1
    N, H, W, maps, dims = 2, 3, 4, 5, 8
    conv = rng.standard_normal((N, H, W, maps * dims))
    u, _ = ops.primary_capsules_forward(conv, dims)
    row, col, m = 2, 1, 3
    i = (row * W + col) * maps + m
    expected, _ = ops.squash_forward(conv[:, row, col, m * dims:(m + 1) * dims])
    np.testing.assert_allclose(u[:, i], expected, rtol=1e-13)


@given(seed=seeds, n=st.integers(1, 4), i=st.integers(1, 6), j=st.integers(1, 4),
       d_in=st.integers(1, 4), d_out=st.integers(1, 4))
def test_predictions_gradient(seed, n, i, j, d_in, d_out):
    rng = np.random.default_rng(seed)
    inputs = [rng.standard_normal((n, i, d_in)), rng.standard_normal((i, j, d_out, d_in))]
    assert_grads(check_op(ops.predictions_forward, ops.predictions_backward, inputs, ["u", "W"], rng=rng))


def test_predictions_equal_a_naive_loop(rng):
    u, W = rng.standard_normal((3, 5, 4)), rng.standard_normal((5, 2, 6, 4))
    u_hat, _ = ops.predictions_forward(u, W)
    for n in range(3):
        for i in range(5):
            for j in range(2):
                np.testing.assert_allclose(u_hat[n, i, j], W[i, j] @ u[n, i], rtol=1e-12)


# ------------------------------------------------------------------ routing (Procedure 1)
def routing_v(u_hat, *args, **kw):
    (v, _), cache = ops.routing_forward(u_hat, *args, **kw)
    return v, cache


@given(seed=seeds, iters=st.integers(1, 4), n=st.integers(1, 3), i=st.integers(1, 6),
       j=st.integers(2, 4), d=st.integers(1, 4), scale=st.floats(0.1, 2.0))
def test_routing_gradient_through_every_iteration(seed, iters, n, i, j, d, scale):
    rng = np.random.default_rng(seed)
    u_hat = scale * rng.standard_normal((n, i, j, d))
    assert_grads(check_op(lambda u: routing_v(u, iters), ops.routing_backward, [u_hat], rng=rng))


@given(seed=seeds, iters=st.integers(1, 4))
def test_routing_stop_gradient_is_the_gradient_with_frozen_coupling(seed, iters):
    # "stop" differentiates s = sum_i c_ij u_hat_j|i with c held at its routed value
    rng = np.random.default_rng(seed)
    u_hat = rng.standard_normal((2, 5, 3, 4))
    (v, c), cache = ops.routing_forward(u_hat, iters, "stop")
    frozen = lambda u: routing_v(u, iters, "stop", coupling=c)
    assert_grads(check_op(frozen, ops.routing_backward, [u_hat], rng=np.random.default_rng(seed)))
    # the backward pass of the routed "stop" (what training runs) is that checked gradient
    dv = rng.standard_normal(v.shape)
    np.testing.assert_allclose(ops.routing_backward(dv, cache),
                               ops.routing_backward(dv, frozen(u_hat)[1]), rtol=1e-12, atol=1e-15)
    # same forward value as "full"; and with c frozen, v is the routed v
    (v_full, _), _ = ops.routing_forward(u_hat, iters, "full")
    np.testing.assert_allclose(v, v_full, rtol=1e-14)
    np.testing.assert_allclose(frozen(u_hat)[0], v, rtol=1e-14)


def test_stop_and_full_gradients_differ_after_several_iterations(rng):
    # the check above would pass a "full" backward only if the agreement path were dead
    u_hat = rng.standard_normal((2, 5, 3, 4))
    dv = rng.standard_normal((2, 3, 4))
    full = ops.routing_backward(dv, ops.routing_forward(u_hat, 3, "full")[1])
    stop = ops.routing_backward(dv, ops.routing_forward(u_hat, 3, "stop")[1])
    assert relative_error(full, stop) > 1e-3


def naive_routing(u_hat, iters):
    """Procedure 1 with explicit loops over n, i, j: an independent computation."""
    N, I, J, D = u_hat.shape
    b = np.zeros((N, I, J))
    for it in range(iters):
        c = np.exp(b) / np.exp(b).sum(axis=2, keepdims=True)
        v = np.zeros((N, J, D))
        for n in range(N):
            for j in range(J):
                s = sum(c[n, i, j] * u_hat[n, i, j] for i in range(I))
                sq = s @ s
                v[n, j] = sq / (1 + sq) * s / np.sqrt(sq + ops.SQUASH_EPS)
        if it < iters - 1:
            for n in range(N):
                for i in range(I):
                    for j in range(J):
                        b[n, i, j] += u_hat[n, i, j] @ v[n, j]
    return v, c


@pytest.mark.parametrize("iters", [1, 2, 3, 5])
def test_routing_equals_procedure_1_written_as_loops(rng, iters):
    u_hat = rng.standard_normal((2, 6, 3, 4))
    (v, c), _ = ops.routing_forward(u_hat, iters)
    v_ref, c_ref = naive_routing(u_hat, iters)
    np.testing.assert_allclose(v, v_ref, rtol=1e-12)
    np.testing.assert_allclose(c, c_ref, rtol=1e-12)


@given(seed=seeds, iters=st.integers(1, 5), scale=st.floats(0.01, 50))
def test_coupling_coefficients_sum_to_one_over_output_capsules(seed, iters, scale):
    u_hat = scale * np.random.default_rng(seed).standard_normal((3, 7, 4, 5))
    (_, c), _ = ops.routing_forward(u_hat, iters)
    assert np.all(c >= 0)
    np.testing.assert_allclose(c.sum(axis=2), 1.0, rtol=1e-12)


def test_routing_sharpens_coupling_towards_agreeing_predictions():
    # 4 predictions agree on output 0, so routing should send them there
    rng = np.random.default_rng(0)
    u_hat = 0.05 * rng.standard_normal((1, 8, 2, 4))
    u_hat[0, :4, 0] = [1.0, 0.0, 0.0, 0.0]
    c1 = ops.routing_forward(u_hat, 1)[0][1]
    c3 = ops.routing_forward(u_hat, 3)[0][1]
    np.testing.assert_allclose(c1, 0.5)
    assert np.all(c3[0, :4, 0] > 0.6)


def test_routing_rejects_bad_arguments(rng):
    u_hat = rng.standard_normal((1, 2, 2, 2))
    with pytest.raises(ValueError, match="routing_grad"):
        ops.routing_forward(u_hat, 3, "sometimes")
    with pytest.raises(ValueError, match="iteration"):
        ops.routing_forward(u_hat, 0)


# ------------------------------------------------------------------ losses (eq. 4), masking
def margin_closed_form(lengths, y, m_plus=0.9, m_minus=0.1, lam=0.5):
    total = 0.0
    for n in range(lengths.shape[0]):
        for k in range(lengths.shape[1]):
            if k == y[n]:
                total += max(0.0, m_plus - lengths[n, k]) ** 2
            else:
                total += lam * max(0.0, lengths[n, k] - m_minus) ** 2
    return total / lengths.shape[0]


@given(seed=seeds, n=st.integers(1, 5), k=st.integers(2, 6))
def test_margin_loss_value_and_gradient(seed, n, k):
    rng = np.random.default_rng(seed)
    lengths = away_from(rng.uniform(0, 1, (n, k)), [0.1, 0.9], 1e-3)
    y = rng.integers(0, k, n)
    loss, _ = ops.margin_loss_forward(lengths, y)
    assert loss >= 0
    assert abs(loss - margin_closed_form(lengths, y)) <= 1e-12
    assert_grads(check_op(lambda l: ops.margin_loss_forward(l, y), ops.margin_loss_backward,
                          [lengths], rng=rng))


def test_margin_loss_is_zero_for_confident_correct_capsules():
    lengths = np.array([[0.95, 0.05, 0.0], [0.02, 0.08, 0.91]])
    assert float(ops.margin_loss_forward(lengths, np.array([0, 2]))[0]) == 0.0


@given(seed=seeds)
def test_mask_gradient_and_value(seed):
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((3, 4, 5))
    y = rng.integers(0, 4, 3)
    mask = ops.one_hot(y, 4, np.float64)
    out, _ = ops.mask_forward(v, mask)
    for n in range(3):
        expected = np.zeros((4, 5))
        expected[y[n]] = v[n, y[n]]
        np.testing.assert_array_equal(out[n], expected.reshape(-1))
    assert_grads(check_op(lambda v: ops.mask_forward(v, mask), ops.mask_backward, [v], rng=rng))


@given(seed=seeds, n=st.integers(1, 4), p=st.integers(1, 9))
def test_reconstruction_loss_value_and_gradient(seed, n, p):
    rng = np.random.default_rng(seed)
    r, t = rng.uniform(0, 1, (n, p)), rng.uniform(0, 1, (n, p))
    loss, _ = ops.reconstruction_loss_forward(r, t)
    assert abs(loss - sum(((r[k] - t[k]) ** 2).sum() for k in range(n)) / n) <= 1e-12
    assert_grads(check_op(lambda r: ops.reconstruction_loss_forward(r, t),
                          ops.reconstruction_loss_backward, [r], rng=rng))


# ------------------------------------------------------------------ the fast capsule part in chunks
@given(n=st.integers(1, 300), chunk=st.integers(1, 40), threads=st.integers(1, 8))
def test_capsule_chunks_split_the_batch_in_whole_rounds_over_the_threads(n, chunk, threads):
    from minicaps.fast.capsules import capsule_chunks
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINICAPS_THREADS", str(threads))
        parts = capsule_chunks(n, chunk)
    sizes = [p.stop - p.start for p in parts]
    assert [i for p in parts for i in range(p.start, p.stop)] == list(range(n))   # each image once
    assert max(sizes) <= chunk and max(sizes) - min(sizes) <= 1 and min(sizes) >= 1
    assert len(parts) % threads == 0 or len(parts) == n           # whole rounds over the threads
    assert len(parts) - threads < -(-n // chunk) or len(parts) == n   # and no round more than needed


@pytest.mark.parametrize("threads", ["1", "3"])
@pytest.mark.parametrize("routing_grad, frozen", [("full", False), ("stop", False), ("stop", True)])
def test_digit_capsules_in_chunks_equal_predictions_then_routing_of_the_whole_batch(
        rng, monkeypatch, threads, routing_grad, frozen):
    """The fast model's capsule part runs a few images at a time, on every thread; chunks
    of 2 of 5 images must give what fast.predictions_forward then fast.routing_forward give
    for all 5, forward and backward (both equal to their gradient-checked reference twins,
    tests/fast/test_reference_fast.py)."""
    monkeypatch.setenv("MINICAPS_THREADS", threads)
    u, W = rng.standard_normal((5, 6, 3)), rng.standard_normal((6, 4, 2, 3))
    coupling = ops.softmax_forward(rng.standard_normal((5, 6, 4))) if frozen else None
    (v, c), cache = fast.digit_capsules_forward(u, W, 3, routing_grad, coupling=coupling, chunk=2)
    assert len(cache[1]) >= 3                                       # it did run in chunks
    u_hat, pred_cache = fast.predictions_forward(u, W)
    (v_ref, c_ref), route_cache = fast.routing_forward(u_hat, 3, routing_grad, coupling=coupling)
    np.testing.assert_allclose(v, v_ref, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(c, c_ref, rtol=1e-13, atol=1e-15)
    dv = rng.standard_normal(v.shape)
    du, dW = fast.digit_capsules_backward(dv, cache)
    du_ref, dW_ref = fast.predictions_backward(fast.routing_backward(dv, route_cache), pred_cache)
    np.testing.assert_allclose(du, du_ref, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(dW, dW_ref, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("limit", [1, 5760, 10 ** 9])      # blocks of 1; of 2, 2 and 1; all
def test_the_dft_routes_weight_gradient_in_blocks_of_channels_is_the_whole_one(rng, limit):
    """weight_gradient a block of input channels at a time (one channel, a few, all) equals
    the whole X^T dY per bin taken back through weight_spectrum_adjoint."""
    from minicaps.fast import conv_fft
    N, H, C, O, k, s = 3, 9, 5, 4, 3, 2
    x, W = rng.standard_normal((N, H, H, C)), rng.standard_normal((k, k, C, O))
    plan = conv_fft.dft_plan(x.shape, W.shape, s, x)
    X = conv_fft.to_bins(conv_fft.image_spectrum(x, plan))
    bins = X.shape[0]
    dY = rng.standard_normal((bins, 2 * N, O))
    Xr, Xi, dYr, dYi = X[:, :N], X[:, N:], dY[:, :N], dY[:, N:]
    dWf = np.stack([np.einsum("bnc,bno->bco", Xr, dYr) + np.einsum("bnc,bno->bco", Xi, dYi),
                    np.einsum("bnc,bno->bco", Xi, dYr) - np.einsum("bnc,bno->bco", Xr, dYi)])
    whole = conv_fft.weight_spectrum_adjoint(dWf, plan, W.shape)
    np.testing.assert_allclose(conv_fft.weight_gradient(X, dY, plan, W.shape, limit=limit),
                               whole, rtol=1e-10, atol=1e-10)
