"""The math of CapsNet as the paper writes it, as forward/backward pairs:
``out, cache = op_forward(...)`` and ``grads = op_backward(dout, cache)``. No state, no
files, no speed tricks, NumPy or CuPy alike (backend.get_xp): minicaps.fast holds the fast twin of each op."""
from .conv import im2col, col2im, conv2d_forward, conv2d_backward, conv_output_size
from .dense import (dense_forward, dense_backward, relu_forward, relu_backward,
                    sigmoid_forward, sigmoid_backward)
from .capsules import (SQUASH_EPS, squash_forward, squash_backward, length_forward,
                       length_backward, primary_capsules_forward, primary_capsules_backward,
                       predictions_forward, predictions_backward, softmax_forward,
                       softmax_backward, routing_forward, routing_backward)
from .losses import (one_hot, margin_loss_forward, margin_loss_backward, mask_forward,
                     mask_backward, reconstruction_loss_forward, reconstruction_loss_backward)
from .cnn_layers import (same_padding, pad_forward, pad_backward, conv2d_same_forward,
                         conv2d_same_backward, max_pool_forward, max_pool_backward,
                         dropout_forward, dropout_backward, softmax_cross_entropy_forward,
                         softmax_cross_entropy_backward)
