"""The fast path: the ops of ``minicaps.ops`` made fast, and the networks that walk them
(FastCapsNet, FastBaselineCNN: what ``build_model(config)`` builds, nn/registry.py).

Each fast op computes the function of its reference twin in ``minicaps.ops`` (the tests
compare them in float64 to 1e-10), only faster: the convolution in chunks of images or
through the DFT (conv.py, conv_fft.py), predictions and routing a chunk of the batch at a
time on every core with the logits laid out for BLAS (capsules.py), results written in
place (inplace.py), and on the GPU elementwise chains fused into one kernel each
(fused.py). docs/fast-path.md sets each trick beside the op it replaces.

This package holds every op the fast model calls: the fast twins, and the reference ops
that need none (squash, lengths, primary capsules, dense, sigmoid, the losses), the same
functions re-exported.
"""
from ..ops.conv import conv_output_size
from ..ops.capsules import (SQUASH_EPS, squash_forward, squash_backward, length_forward,
                            length_backward, primary_capsules_forward,
                            primary_capsules_backward)
from ..ops.dense import dense_forward, dense_backward, sigmoid_forward, sigmoid_backward
from ..ops.losses import (one_hot, margin_loss_forward, margin_loss_backward, mask_forward,
                          mask_backward, reconstruction_loss_forward,
                          reconstruction_loss_backward)
from .inplace import matmul_into, relu_forward, relu_backward
from .conv import windows, im2col, col2im, conv2d_forward, conv2d_backward
from .capsules import (predictions_forward, predictions_backward, softmax_forward,
                       softmax_backward, weighted_sum, agreement, outer_sums, routing_forward,
                       routing_backward, capsule_chunks, digit_capsules_forward,
                       digit_capsules_backward)
from . import conv_fft
