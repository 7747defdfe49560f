"""The fast path's fused GPU kernels (minicaps/fast/fused.py) against the NumPy formulas
they replace, run on the CuPy stand-in: each kernel's CUDA body executes there as NumPy
expressions, one launch, so every result must equal the reference op on the host to the
bit (the same operations in the same order), in float32 and float64."""
import numpy as np
import pytest

from minicaps import backend, ops
from minicaps.fast import fused, capsules, inplace

DTYPES = [np.float32, np.float64]


def gpu(a):
    return backend.to_device(a, "gpu")


def host(a):
    return backend.to_numpy(a)


def same(got, want):
    np.testing.assert_array_equal(host(got), want)
    assert host(got).dtype == want.dtype


@pytest.mark.parametrize("dtype", DTYPES)
def test_squash_forward_and_backward_kernels_are_the_reference_squash(stand_in, rng, dtype):
    s = rng.normal(0, 1, (5, 7, 8)).astype(dtype)
    s[0, 0] = 0                                          # squash(0) = 0, finite gradient
    dv = rng.normal(0, 1, s.shape).astype(dtype)
    v_ref, cache = ops.squash_forward(s)
    s_dev, dv_dev = gpu(s), gpu(dv)
    stand_in.launched.clear()
    v, gcache = fused.squash_forward(s_dev)
    assert stand_in.launched == {"minicaps_sum_of_products": 1, "minicaps_squash": 1}
    same(v, v_ref)
    stand_in.launched.clear()
    same(fused.squash_backward(dv_dev, gcache), ops.squash_backward(dv, cache))
    assert sum(stand_in.launched.values()) == 2
    # the primary capsules around them
    h = rng.normal(0, 1, (2, 3, 3, 16)).astype(dtype)
    u_ref, pcache = ops.primary_capsules_forward(h, 8)
    u, gpcache = fused.primary_capsules_forward(gpu(h), 8)
    same(u, u_ref)
    du = rng.normal(0, 1, u_ref.shape).astype(dtype)
    same(fused.primary_capsules_backward(gpu(du), gpcache),
         ops.primary_capsules_backward(du, pcache))


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_kernels_are_the_reference_softmax(stand_in, rng, dtype):
    b = rng.normal(0, 2, (4, 10, 6)).astype(dtype).transpose(0, 2, 1)    # (N, I, J) as (N, J, I)
    dc = rng.normal(0, 1, b.shape).astype(dtype)
    before = rng.normal(0, 1, b.shape).astype(dtype)
    same(capsules.softmax_forward(gpu(b), axis=2), capsules.softmax_forward(b, axis=2))
    c = ops.softmax_forward(b, axis=2)
    same(fused.softmax_backward(gpu(dc), gpu(c), axis=2), ops.softmax_backward(dc, c, axis=2))
    same(fused.softmax_backward(gpu(dc), gpu(c), axis=2, before=gpu(before)),
         before + ops.softmax_backward(dc, c, axis=2))
    # the first coupling, softmax of b = 0, is the fill 1/J
    u_hat = np.zeros((3, 10, 7, 4), dtype)
    same(capsules.uniform_coupling(gpu(u_hat)),
         ops.softmax_forward(np.zeros((3, 10, 7), dtype), axis=2))


@pytest.mark.parametrize("dtype", DTYPES)
def test_sum_of_products_kernel_is_the_product_then_its_sum(stand_in, rng, dtype):
    a, b = (rng.normal(0, 1, (6, 5, 9)).astype(dtype) for _ in range(2))
    for axis in (-1, 1):
        same(fused.SUM_OF_PRODUCTS_KERNEL(gpu(a), gpu(b), axis=axis, keepdims=True),
             (a * b).sum(axis=axis, keepdims=True))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("decoder", [False, True])
def test_margin_length_mask_kernel_is_the_reference_chain(stand_in, rng, dtype, decoder):
    N, J, D = 6, 10, 16
    v = rng.normal(0, 0.3, (N, J, D)).astype(dtype)
    y = rng.integers(0, J, N)
    lengths, length_cache = ops.length_forward(v)
    _, margin_cache = ops.margin_loss_forward(lengths, y, 0.9, 0.1, 0.5)
    want = ops.length_backward(ops.margin_loss_backward(1.0, margin_cache), length_cache)
    g_margin = tuple(gpu(a) for a in margin_cache[:3]) + (margin_cache[3],)
    g_length = tuple(gpu(a) for a in length_cache)
    if not decoder:
        same(fused.margin_length_backward(g_margin, g_length), want)
        return
    mask = ops.one_hot(y, J, dtype)
    _, mask_cache = ops.mask_forward(v, mask)
    dr = rng.normal(0, 1, (N, J * D)).astype(dtype)
    g_dr, g_mask = gpu(dr), gpu(mask)
    stand_in.launches.clear()
    got = fused.margin_length_backward(g_margin, g_length, g_dr, (g_mask, (N, J, D)))
    assert sum(stand_in.launches.values()) == 1
    same(got, want + ops.mask_backward(dr, mask_cache))


@pytest.mark.parametrize("dtype", DTYPES)
def test_decoder_kernels_are_the_reference_sigmoid_and_relu(stand_in, rng, dtype):
    x = rng.normal(0, 4, (5, 784)).astype(dtype)
    x[0, :3] = 0
    y_ref, _ = ops.sigmoid_forward(x)
    y, _ = fused.sigmoid_forward(gpu(x))
    same(y, y_ref)
    diff = rng.normal(0, 1, (5, 784)).astype(dtype)
    same(fused.recon_sigmoid_backward(0.0005, gpu(diff), gpu(y_ref)),
         ops.sigmoid_backward(ops.reconstruction_loss_backward(0.0005, diff), y_ref))
    h = np.maximum(rng.normal(0, 1, (5, 32)).astype(dtype), 0)
    dout = rng.normal(0, 1, h.shape).astype(dtype)
    want = ops.relu_backward(dout, h)
    same(inplace.relu_backward(gpu(dout), gpu(h)), want)
    g, g_h = gpu(dout), gpu(h)
    stand_in.launches.clear()
    assert inplace.relu_backward(g, g_h, out=g) is g
    same(g, want)
    assert stand_in.launches["elementwise"] == 1


def test_the_cpu_takes_the_reference_ops_untouched(rng):
    s = rng.normal(0, 1, (3, 4, 8))
    v, cache = fused.squash_forward(s)
    assert len(cache) == 5 and cache[2] is not None       # the reference op's own cache
    np.testing.assert_array_equal(v, ops.squash_forward(s)[0])


# ------------------------------------------------------------------ the GPU's layouts
def close(got, want, tol=1e-12):
    got = host(got)
    assert got.shape == want.shape and got.dtype == want.dtype
    assert np.abs(got - want).max() <= tol * max(1.0, np.abs(want).max())


@pytest.mark.parametrize("stride, H", [(2, 12), (1, 9)])
def test_the_dft_convolutions_gpu_route_is_the_reference_convolution(stand_in, rng, stride, H):
    """On the GPU the DFT route transforms every row of x (its rows' matrix is zero past
    the U rows the convolution reads: stride 2 on 12 rows reads 11) and repeats the DFT
    matrices over the batch (conv_fft.batched): forward, dx and dW as ops.conv2d's."""
    from minicaps.fast import conv2d_forward, conv2d_backward, conv_fft
    x = rng.normal(0, 1, (3, H, 10, 4))
    W, b = rng.normal(0, 1, (5, 4, 4, 6)), rng.normal(0, 1, 6)
    out, cache = ops.conv2d_forward(x, W, b, stride)
    dout = rng.normal(0, 1, out.shape)
    dx, dW, db = ops.conv2d_backward(dout, cache)
    got, got_cache = conv2d_forward(gpu(x), gpu(W), gpu(b), stride, method="fft")
    assert got_cache[0] == "fft"
    close(got, out)
    gdx, gdW, gdb = conv2d_backward(gpu(dout), got_cache)
    for g, want in ((gdx, dx), (gdW, dW), (gdb, db)):
        close(g, want)
    if stride == 2:
        U = conv_fft.fft_grid(x.shape, W.shape, stride)[0]
        assert U < H and np.all(host(gdx)[:, U:] == 0)       # rows no window reads


def test_predictions_in_the_gpu_layout_are_the_reference_predictions(stand_in, rng):
    """u_hat on the GPU is a (N, I, J, D) view of (N, J, I, D) memory, so that routing's
    products read contiguous (I, D) matrices; the values and both gradients are the
    reference's."""
    u, W = rng.normal(0, 1, (4, 6, 3)), rng.normal(0, 1, (6, 5, 2, 3))
    u_hat, cache = ops.predictions_forward(u, W)
    du_hat = rng.normal(0, 1, u_hat.shape)
    du, dW = ops.predictions_backward(du_hat, cache)
    got, got_cache = capsules.predictions_forward(gpu(u), gpu(W))
    assert got.shape == (4, 6, 5, 2) and got.transpose(0, 2, 1, 3).flags.c_contiguous
    close(got, u_hat)
    again, _ = capsules.predictions_forward(*got_cache)       # the backward pass's remake
    close(again, u_hat)
    gdu, gdW = capsules.predictions_backward(gpu(du_hat), got_cache)
    close(gdu, du)
    close(gdW, dW)
