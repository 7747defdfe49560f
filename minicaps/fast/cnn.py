"""The fast CNN baseline: cnn.BaselineCNN with its convolutions swapped for the fast one
(``BaselineCNN(config)``, impl="fast", the default).

The network, its layers and their order are BaselineCNN's (read minicaps/cnn.py); only the
convolution changes, and with it the speed and the rounding (tests/test_cnn.py compares
the two in float64):
- SAME convolution = the zero frame of ops/cnn_layers.py, then fast.conv2d_forward: im2col
  + GEMM a chunk of images at a time, or in training the DFT route where
  conv_fft.fft_pays says a step gains (the 5x5 convolutions on 256 or 512 channels);
- the first convolution's dx, which nothing needs, is never made;
- on the CPU, malloc keeps freed memory for the next step (backend.keep_freed_memory).
A training step of the pooled baseline on 40x40 (batch 100, 2 cores) took 2.5 s against
the reference's 6.2 s (docs/claims.md).
"""
from .. import backend
from ..cnn import BaselineCNN
from ..ops.cnn_layers import same_padding, pad_forward, pad_backward
from .conv import conv2d_forward, conv2d_backward


def conv2d_same_forward(x, W, b, training=True):
    """ops.conv2d_same_forward through the fast convolution: out (N, H, W, C_out)."""
    kh, kw = W.shape[:2]
    xpad, pad = pad_forward(x, same_padding(kh), same_padding(kw))
    out, conv = conv2d_forward(xpad, W, b, training=training)
    return out, (pad, conv)


def conv2d_same_backward(dout, cache, need_dx=True):
    """(dx, dW, db) of conv2d_same_forward; dx is None when need_dx is False."""
    pad, conv = cache
    dxpad, dW, db = conv2d_backward(dout, conv, need_dx)
    return (pad_backward(dxpad, pad) if need_dx else None), dW, db


class FastBaselineCNN(BaselineCNN):
    """BaselineCNN(config, seed=0, dtype="float32", device=None, params=None), the fast twin."""
    impl = "fast"

    def __init__(self, config=None, seed=0, dtype="float32", device=None, params=None, *,
                 impl="fast"):
        super().__init__(config, seed, dtype, device, params)

    def _place_on(self, device):
        BaselineCNN._place_on(self, device)
        if self.device == "cpu":
            backend.keep_freed_memory()

    def conv_forward(self, x, W, b, training=False):
        return conv2d_same_forward(x, W, b, training)

    def conv_backward(self, dout, cache, need_dx=True):
        return conv2d_same_backward(dout, cache, need_dx)
