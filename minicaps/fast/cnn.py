"""The fast CNN baseline: FastBaselineCNN, cnn.BaselineCNN with its convolutions swapped for
the fast one; what build_model(config) builds for a CNNConfig (nn/registry.py).

The network, its layers and their order are BaselineCNN's (read minicaps/nn/cnn.py); only the
convolution changes, and with it the speed and the rounding (tests/nn/test_cnn.py compares
the two in float64):
- SAME convolution = the zero frame of ops/cnn_layers.py, then fast.conv2d_forward: im2col
  + GEMM a chunk of images at a time, or in training the DFT route where
  conv_fft.fft_pays says a step gains (the 5x5 convolutions on 256 or 512 channels);
- the first convolution's dx, which nothing needs, is never made;
- 2x2 max-pooling as three elementwise maxima, its gradient found by comparing again
  (the reference stacks the four candidates and keeps their argmax);
- inside fixed_weights (evaluate, predict) the DFT route's weights' spectrum made once;
- on the CPU, malloc keeps freed memory for the next step (backend.keep_freed_memory).
A training step of the pooled baseline on 40x40 (batch 100, 2 cores) took 2.5 s against
the reference's 6.2 s (docs/claims.md).
"""
from minicaps.nn.cnn import BaselineCNN
from minicaps.backend import get_xp
from minicaps.ops.cnn_layers import POOL_OFFSETS, same_padding, pad_forward, pad_backward
from minicaps.fast.conv import conv2d_forward, conv2d_backward
from minicaps.fast.network import FastNetwork


def conv2d_same_forward(x, W, b, training=True, spectrum=None):
    """ops.conv2d_same_forward through the fast convolution: out (N, H, W, C_out).
    ``spectrum``: the weights' DFT made beforehand (fixed_weights), as conv2d_forward's."""
    kh, kw = W.shape[:2]
    xpad, pad = pad_forward(x, same_padding(kh), same_padding(kw))
    out, conv = conv2d_forward(xpad, W, b, training=training, spectrum=spectrum)
    return out, (pad, conv)


def conv2d_same_backward(dout, cache, need_dx=True):
    """(dx, dW, db) of conv2d_same_forward; dx is None when need_dx is False."""
    pad, conv = cache
    dxpad, dW, db = conv2d_backward(dout, conv, need_dx)
    return (pad_backward(dxpad, pad) if need_dx else None), dW, db


def max_pool_forward(x):
    """ops.max_pool_forward without stacking the four candidates: the max of the four
    strided slices, three elementwise maxima over a quarter of x each; the cache keeps
    x and the output, from which the backward pass finds the winners."""
    xp = get_xp(x)
    N, H, W, C = x.shape
    Ho, Wo = H // 2, W // 2
    a, b, c, d = (x[:, i:2 * Ho:2, j:2 * Wo:2, :] for i, j in POOL_OFFSETS)
    out = xp.maximum(a, b)
    xp.maximum(out, c, out=out)
    xp.maximum(out, d, out=out)
    return out, (x, out)


def max_pool_backward(dout, cache):
    """ops.max_pool_backward: the gradient to the first candidate, in reading order,
    that equals the window's max (the reference's argmax), found by comparing again."""
    x, out = cache
    xp = get_xp(dout)
    dx = xp.zeros(x.shape, dtype=dout.dtype)
    Ho, Wo = out.shape[1:3]
    free = xp.ones(out.shape, dtype=bool)            # windows whose winner is not found yet
    for i, j in POOL_OFFSETS:
        won = (x[:, i:2 * Ho:2, j:2 * Wo:2, :] == out) & free
        dx[:, i:2 * Ho:2, j:2 * Wo:2, :] = dout * won
        free &= ~won
    return dx


class FastBaselineCNN(FastNetwork, BaselineCNN):
    """FastBaselineCNN(config, seed=0, dtype="float32", device=None, params=None), the fast
    twin of BaselineCNN. Inside fixed_weights (evaluate, predict) each convolution for which
    the DFT route pays makes its weights' spectrum once, for every batch of the block (the
    released baseline's forward pass over 256 images on one core: 15.1 s by im2col + GEMM,
    6.4 s by the DFT with its spectrum made per batch)."""

    def __init__(self, config=None, seed=0, dtype="float32", device=None, params=None):
        super().__init__(config, seed, dtype, device, params)
        self._fixed = {}      # conv name -> (weights copy, spectrum), inside fixed_weights()

    def _spectrum_inputs(self, n_images):
        k = self.config.conv_kernel
        return [(f"conv{l}", (n_images, h + k - 1, w + k - 1, c_in), 1)      # padded (SAME)
                for l, (h, w, c_in, _, _) in enumerate(self.config.conv_layers(), start=1)]

    def conv_forward(self, x, W, b, training=False, name=None):
        spectrum = None if training or name is None else self._fixed_spectrum(name)
        return conv2d_same_forward(x, W, b, training, spectrum)

    def pool_forward(self, x):
        return max_pool_forward(x)

    def pool_backward(self, dout, cache):
        return max_pool_backward(dout, cache)

    def conv_backward(self, dout, cache, need_dx=True):
        return conv2d_same_backward(dout, cache, need_dx)
