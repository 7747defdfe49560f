"""The CNN baselines of Sabour, Frosst & Hinton (2017, section 5), by hand like CapsNet.

CNNConfig.paper(), the MNIST baseline: "three convolutional layers of 256, 256, 128
channels. Each has 5x5 kernels and stride of 1. The last convolutional layers are followed
by two fully connected layers of size 328, 192. The last fully connected layer is
connected with dropout to a 10 class softmax layer with cross entropy loss."

    x (N, 28, 28, 1)
    -> conv1 5x5 SAME, 256, ReLU        (N, 28, 28, 256)       6,656 parameters
    -> conv2 5x5 SAME, 256, ReLU        (N, 28, 28, 256)   1,638,656
    -> conv3 5x5 SAME, 128, ReLU        (N, 28, 28, 128)     819,328
    -> flatten                          (N, 100352)
    -> fc1 328, ReLU                    (N, 328)          32,915,784
    -> fc2 192, ReLU                    (N, 192)              63,168
    -> dropout 0.5 -> softmax 10        (N, 10)                1,930
    -> cross-entropy                                      35,445,522 in all

The paper's 35.4M comes out only this way: SAME padding and no pooling, so fc1 sees all
28 x 28 x 128 activations (93% of the parameters). With VALID convolutions (28 -> 24 ->
20 -> 16) it would be 13.3M; with biases or without, 35.4M.

CNNConfig.pooled(), the max-pooling baseline of the affNIST experiment (section 5.2: "a
traditional convolutional model with a similar number of parameters which had max-pooling
and dropout"). The paper gives no layout; here: the same three convolutions and dropout,
a 2x2 max-pool after conv1 and after conv2, on 40 x 40 inputs (MNIST padded to affNIST's
size, as the paper trains it): 40 -> 20 -> 10, so fc1 sees 10 x 10 x 128 = 12,800
activations, and fc1 widened from 328 to 847, the width that brings the count nearest
CapsNet's at 40 x 40 (13,475,648 with its decoder; its digit capsules and the decoder's
last layer grow with the input): 13,471,833 (-0.03%). On 28 x 28 inputs the same layout
has 7,942,617 parameters (CapsNet: 8,215,568). The authors' released baseline
(tensorflow/models, research/capsules/models/conv_model.py) is another such network:
5x5 convolutions of 512 and 256 channels, each followed by a 2x2 max-pool, fc 1024, fc 10.

CNNConfig.released(), the MultiMNIST baseline of Table 1: that released network, 5x5 SAME
convolutions of 512 and 256 channels each followed by a 2x2 max-pool, fc 1024, no dropout:
24,535,306 parameters at 36 x 36 (the paper: "24.56M parameters", against CapsNet's
11.36M). For pairs it is trained with both labels in its cross-entropy (T = 1/2 on each,
ops/cnn_layers.py) and read as CapsNet is: right when its two most probable classes are
the two labels.

Parameters live in one dict keyed by name ("conv1.W", "fc1.b", "softmax.W", ...), like
CapsNet's, so Adam, the parameter average and the gradient checker walk the same keys.
Two implementations, as for CapsNet: BaselineCNN composes the reference ops (minicaps.ops
and ops/cnn_layers.py), read it to learn the network; FastBaselineCNN (minicaps/fast/cnn.py),
what build_model(config) builds and so what trains, swaps in the fast convolution (im2col
+ GEMM in chunks, or the DFT route), the same function to rounding (tests/nn/test_cnn.py).
"""
import math
from dataclasses import dataclass, asdict, fields
from typing import ClassVar

import numpy as np

from minicaps import backend
from minicaps.nn.base import Network, glorot_uniform
from minicaps.ops import (dense_forward, dense_backward, relu_forward, relu_backward,
                          softmax_forward, conv2d_same_forward, conv2d_same_backward,
                          max_pool_forward, max_pool_backward, dropout_forward,
                          dropout_backward, softmax_cross_entropy_forward,
                          softmax_cross_entropy_backward)
from minicaps.values import is_int, is_real

# Dropout's masks come from np.random.default_rng((DROPOUT_STREAM, seed, step)). The tag
# keeps them apart from a run's own default_rng(seed): a SeedSequence pads its entropy
# with zeros, so default_rng((seed, 0)) would replay default_rng(seed)'s numbers.
DROPOUT_STREAM = 0x64726F70             # "drop"


@dataclass
class CNNConfig:
    """Every size of the network. The defaults are the paper's MNIST baseline."""
    input_shape: tuple = (28, 28, 1)         # H, W, C
    conv_channels: tuple = (256, 256, 128)   # one stride-1 SAME convolution + ReLU each
    conv_kernel: int = 5
    pool_after: tuple = ()                   # conv layers (from 1) followed by a 2x2 max-pool
    fc_sizes: tuple = (328, 192)             # fully connected + ReLU, after the convolutions
    dropout: float = 0.5                     # the rate, before the softmax layer
    num_classes: int = 10

    # What the training loop reads of a CapsNetConfig (train.train_epoch, _add_losses):
    # no decoder, so no reconstruction term. Not fields: not saved, not settable.
    use_decoder: ClassVar[bool] = False
    recon_weight: ClassVar[float] = 0.0

    @classmethod
    def paper(cls, **overrides):
        """The MNIST baseline of section 5: 35,445,522 parameters at 28 x 28."""
        return cls(**overrides)

    @classmethod
    def pooled(cls, **overrides):
        """The max-pooling baseline for affNIST (section 5.2), about CapsNet's parameter
        count at 40 x 40: 13,471,833 (see the module's docstring for the choice)."""
        return cls(**{"input_shape": (40, 40, 1), "pool_after": (1, 2),
                      "fc_sizes": (847, 192), **overrides})

    @classmethod
    def pooled_quick(cls, **overrides):
        """A max-pooling baseline the size of the quick CapsNet (minicaps train --preset
        quick: 64 conv1 channels, 16 primary capsule maps) at 40 x 40, 5,865,792
        parameters: 5x5 SAME convolutions of 64, 128 and 128 channels, a 2x2 max-pool after
        the first two, fc 404-192 and dropout: 5,867,614 (+0.03%)."""
        return cls(**{"input_shape": (40, 40, 1), "conv_channels": (64, 128, 128),
                      "pool_after": (1, 2), "fc_sizes": (404, 192), **overrides})

    @classmethod
    def released(cls, **overrides):
        """The authors' released baseline, Table 1's MultiMNIST CNN: 24,535,306 parameters
        at 36 x 36 (see the module's docstring)."""
        return cls(**{"input_shape": (36, 36, 1), "conv_channels": (512, 256),
                      "pool_after": (1, 2), "fc_sizes": (1024,), "dropout": 0.0, **overrides})

    def __post_init__(self):
        for name in ("input_shape", "conv_channels", "pool_after", "fc_sizes"):
            setattr(self, name, _int_tuple(getattr(self, name), name))
        self.validate()

    def validate(self):
        """Every field of the right type and in range: a wrong config is a ValueError
        naming the field, never a TypeError deep in NumPy."""
        if len(self.input_shape) != 3 or min(self.input_shape) < 1:
            raise ValueError(f"CNNConfig.input_shape must be (H, W, C) of positive ints, "
                             f"got {self.input_shape}")
        if not self.conv_channels or min(self.conv_channels) < 1:
            raise ValueError(f"CNNConfig.conv_channels must be one or more positive ints, "
                             f"got {self.conv_channels}")
        if self.fc_sizes and min(self.fc_sizes) < 1:
            raise ValueError(f"CNNConfig.fc_sizes must be positive ints, got {self.fc_sizes}")
        for name in ("conv_kernel", "num_classes"):
            value = getattr(self, name)
            if not is_int(value) or value < 1:
                raise ValueError(f"CNNConfig.{name} must be an integer >= 1, got {value!r}")
            setattr(self, name, int(value))
        if self.num_classes < 2:
            raise ValueError("CNNConfig.num_classes must be >= 2")
        layers = len(self.conv_channels)
        if (list(self.pool_after) != sorted(set(self.pool_after))
                or any(not 1 <= l <= layers for l in self.pool_after)):
            raise ValueError(f"CNNConfig.pool_after must name conv layers 1..{layers} in "
                             f"increasing order, each once, got {self.pool_after}")
        if not is_real(self.dropout) or not 0 <= self.dropout < 1:
            raise ValueError(f"CNNConfig.dropout must be a rate in [0, 1), got {self.dropout!r}")
        self.dropout = float(self.dropout)
        h, w, _ = self.input_shape
        if min(h, w) < 2 ** len(self.pool_after):
            raise ValueError(f"input {self.input_shape} is too small for "
                             f"{len(self.pool_after)} 2x2 max-pools (each halves H and W)")

    def conv_layers(self):
        """[(H, W, C_in, C_out, pooled)] for each convolution: its input's size (its
        output's too, SAME) and whether a max-pool follows."""
        (h, w, c), layers = self.input_shape, []
        for l, c_out in enumerate(self.conv_channels, start=1):
            pooled = l in self.pool_after
            layers.append((h, w, c, c_out, pooled))
            h, w, c = (h // 2, w // 2, c_out) if pooled else (h, w, c_out)
        return layers

    @property
    def feature_shape(self):
        """(H, W, C) of the last convolution's output after its pooling: what fc1 sees."""
        h, w, _, c, pooled = self.conv_layers()[-1]
        return (h // 2, w // 2, c) if pooled else (h, w, c)

    def param_shapes(self):
        """name -> shape, in the order of the network."""
        k, shapes = self.conv_kernel, {}
        for l, (_, _, c_in, c_out, _) in enumerate(self.conv_layers(), start=1):
            shapes[f"conv{l}.W"], shapes[f"conv{l}.b"] = (k, k, c_in, c_out), (c_out,)
        sizes = (math.prod(self.feature_shape),) + self.fc_sizes
        for l in range(1, len(sizes)):
            shapes[f"fc{l}.W"], shapes[f"fc{l}.b"] = (sizes[l - 1], sizes[l]), (sizes[l],)
        shapes["softmax.W"] = (sizes[-1], self.num_classes)
        shapes["softmax.b"] = (self.num_classes,)
        return shapes

    def num_params(self):
        return sum(math.prod(shape) for shape in self.param_shapes().values())

    def to_dict(self):
        d = asdict(self)
        for name in ("input_shape", "conv_channels", "pool_after", "fc_sizes"):
            d[name] = list(d[name])
        return d

    @classmethod
    def from_dict(cls, d):
        if not isinstance(d, dict):
            raise ValueError(f"a CNNConfig is read from a dict of its fields, got "
                             f"{type(d).__name__}")
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown CNNConfig fields: {sorted(unknown)}")
        return cls(**d)


def _int_tuple(values, name):
    """A tuple of Python ints from a list or tuple of integers; ValueError otherwise."""
    if not isinstance(values, (list, tuple)) or not all(is_int(v) for v in values):
        raise ValueError(f"CNNConfig.{name} must be a list of integers, got {values!r}")
    return tuple(int(v) for v in values)


def init_params(config, seed=0, dtype="float32"):
    """Glorot-uniform weights (a convolution's fan-out counts its k x k taps), zero biases,
    as CapsNet's init_params; drawn from default_rng(seed) in the order of param_shapes."""
    rng = np.random.default_rng(seed)
    params = {}
    for name, shape in config.param_shapes().items():
        if name.endswith(".b"):
            p = np.zeros(shape)
        else:
            p = glorot_uniform(shape, rng)
        params[name] = p.astype(dtype)
    return params


class BaselineCNN(Network):
    """The CNN baseline, with the surface the training loop uses on a CapsNet.

    model = BaselineCNN(CNNConfig.paper(), seed=0, dtype="float32", device="cpu")
    loss, grads, out = model.loss_and_grads(x, y)   # x (N, H, W, C) in [0, 1], y (N,)

    out holds "logits" (N, K), "probabilities" = softmax(logits) and, under the name the
    loop reads a CapsNet's class scores by, "lengths" = the probabilities (argmax: the
    prediction, as the longest capsule is); with labels also "cross_entropy" and "loss"
    (the same: there is no other term). ``loss_terms`` names the terms for the training
    loop's metrics, where a CapsNet has its margin and reconstruction losses, and
    ``evaluation_losses`` is what train.evaluate computes on a batch.

    Dropout is on in loss_and_grads only. Its mask at training step t comes from
    np.random.default_rng((DROPOUT_STREAM, seed, t)): a pure function of the model's
    ``seed`` and t, so a resumed run draws the masks the uninterrupted one would have, as
    long as it knows both (a checkpoint keeps them). ``dropout_step`` counts the training
    passes (the next one uses it); loss_and_grads(step=t) uses t and sets it to t + 1.
    ``dropout_offset`` k: the batch is rows k, k+1, ... of a bigger one (one rank's share,
    minicaps.training.distributed), and its mask those rows of the bigger batch's mask.
    """
    config_class = CNNConfig
    init_params = staticmethod(init_params)
    dropout_offset = 0
    loss_terms = ("cross_entropy",)     # the loss's terms, as out and the metrics name them

    def __init__(self, config=None, seed=0, dtype="float32", device=None, params=None):
        if not is_int(seed) or seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
        self.seed, self.dropout_step = int(seed), 0
        super().__init__(config, seed, dtype, device, params)

    def _build_options(self):
        return {"seed": self.seed}

    def checkpoint_state(self):
        """The dropout masks' seed and the next step: a resumed run draws the masks the
        uninterrupted one would have."""
        return {"dropout": {"seed": self.seed, "step": self.dropout_step}}

    def restore_checkpoint_state(self, meta):
        if "dropout" in meta:
            self.seed, self.dropout_step = meta["dropout"]["seed"], meta["dropout"]["step"]

    # ------------------------------------------------------------ forward / backward
    # The convolution and the pooling, as methods so that the fast twin can swap them
    # (fast/cnn.py).
    def conv_forward(self, x, W, b, training=False, name=None):
        return conv2d_same_forward(x, W, b)

    def conv_backward(self, dout, cache, need_dx=True):
        return conv2d_same_backward(dout, cache)

    def pool_forward(self, x):
        return max_pool_forward(x)

    def pool_backward(self, dout, cache):
        return max_pool_backward(dout, cache)

    def forward(self, x, y=None, *, training=False, step=None, check_values=True,
                host_losses=True, targets=None):
        """Run the network: (out, caches), out as in the class's docstring.

        y: labels (N,), or (N, 2) for MultiMNIST's pairs (both in the cross-entropy).
        ``targets``, the pictures a CapsNet's decoder redraws, are accepted and unused:
        the CNN reconstructs nothing.

        ``training``: dropout on, with the mask of training step ``step`` (default
        dropout_step; forward itself never advances it). check_values and host_losses
        as in CapsNet.forward: skip reading x's and y's values to check them; leave the
        loss on the device as a 0-d array of the model's dtype. The options are keywords
        only: CapsNet's third positional argument is its coupling, which means nothing here.
        """
        cfg, p, caches = self.config, self.params, {}
        h = self.check_x(x, check_values)
        N = h.shape[0]
        for l, (*_, pooled) in enumerate(cfg.conv_layers(), start=1):
            h, caches[f"conv{l}"] = self.conv_forward(h, p[f"conv{l}.W"], p[f"conv{l}.b"],
                                                      training, f"conv{l}")
            h, caches[f"relu{l}"] = relu_forward(h)
            if pooled:
                h, caches[f"pool{l}"] = self.pool_forward(h)
        caches["flatten"] = h.shape
        h = h.reshape(N, -1)                              # (N, H W C), NHWC order
        for l in range(1, len(cfg.fc_sizes) + 1):
            h, caches[f"fc{l}"] = dense_forward(h, p[f"fc{l}.W"], p[f"fc{l}.b"])
            h, caches[f"fc{l}.relu"] = relu_forward(h)
        step = self.dropout_step if step is None else step
        rng = self.dropout_generator(step) if training else None
        if rng is not None and self.dropout_offset:       # one draw a number (PCG64)
            rng.bit_generator.advance(self.dropout_offset * h.shape[1])
        h, caches["dropout"] = dropout_forward(h, cfg.dropout, rng, training)
        logits, caches["softmax"] = dense_forward(h, p["softmax.W"], p["softmax.b"])
        probabilities = softmax_forward(logits, axis=1)
        out = {"logits": logits, "probabilities": probabilities, "lengths": probabilities}
        if y is not None:
            y = self.check_y(y, N, check_values)
            loss, caches["cross_entropy"] = softmax_cross_entropy_forward(logits, y)
            if host_losses:
                loss = float(backend.to_numpy(loss))
            out.update(cross_entropy=loss, loss=loss)
        return out, caches

    def evaluation_losses(self, out, x, y):
        """(cross-entropy, None) of an evaluation batch, from forward's ``out`` without
        labels (dropout off), on the device: what train.evaluate adds up. None: there is
        no reconstruction term. x is not needed (a CapsNet's decoder reads it)."""
        return softmax_cross_entropy_forward(out["logits"], y)[0], None

    def backward(self, caches, free=False):
        """Gradients of the cross-entropy for every parameter, from forward's caches (with
        labels): the forward's ops walked back in reverse order. ``free`` is accepted
        for the training loop's sake; the caches are only read."""
        cfg, grads = self.config, {}
        dh = softmax_cross_entropy_backward(1.0, caches["cross_entropy"])
        dh, grads["softmax.W"], grads["softmax.b"] = dense_backward(dh, caches["softmax"])
        dh = dropout_backward(dh, caches["dropout"])
        for l in range(len(cfg.fc_sizes), 0, -1):
            dh = relu_backward(dh, caches[f"fc{l}.relu"])
            dh, grads[f"fc{l}.W"], grads[f"fc{l}.b"] = dense_backward(dh, caches[f"fc{l}"])
        dh = dh.reshape(caches["flatten"])
        for l in range(len(cfg.conv_channels), 0, -1):
            if l in cfg.pool_after:
                dh = self.pool_backward(dh, caches[f"pool{l}"])
            dh = relu_backward(dh, caches[f"relu{l}"])
            dh, grads[f"conv{l}.W"], grads[f"conv{l}.b"] = self.conv_backward(
                dh, caches[f"conv{l}"], need_dx=l > 1)     # no one needs the image's gradient
        return {name: grads[name] for name in self.params}

    def loss_and_grads(self, x, y, *, check_values=True, host_losses=True, step=None,
                       targets=None):
        """(loss, grads, out) of one training pass, dropout on: the mask of ``step``
        (default dropout_step), after which dropout_step is step + 1. ``targets``: unused,
        as in forward."""
        if y is None:
            raise ValueError("loss_and_grads needs labels y")
        step = self.dropout_step if step is None else step
        if not is_int(step) or step < 0:
            raise ValueError(f"step must be an integer >= 0, got {step!r}")
        out, caches = self.forward(x, y, training=True, step=step, check_values=check_values,
                                   host_losses=host_losses)
        self.dropout_step = int(step) + 1
        return out["loss"], self.backward(caches, free=True), out

    def loss(self, x, y, *, training=True, step=None):
        """The loss alone (what the gradient checker differentiates): by default the
        training loss with the dropout mask of ``step`` (default dropout_step), which it
        does not advance."""
        return self.forward(x, y, training=training, step=step)[0]["loss"]

    def dropout_generator(self, step):
        """The numpy Generator that draws training step ``step``'s dropout mask."""
        return np.random.default_rng((DROPOUT_STREAM, self.seed, int(step)))

    def class_scores(self, x):
        """The class probabilities (N, num_classes) of checked images, dropout off."""
        return self.forward(x, check_values=False)[0]["probabilities"]

    def predict_probabilities(self, x, batch_size=256):
        """Class probabilities (N, num_classes) as NumPy, in batches, dropout off
        (Network.predict_lengths, under the name that says what they are)."""
        return self.predict_lengths(x, batch_size)

    # ------------------------------------------------------------ memory
    def batch_bytes(self, batch_size, training=True):
        """About the most memory one step over ``batch_size`` images takes beyond the
        parameters, with a 25% margin. Per image, what forward's caches hold: for each
        convolution its padded input, its im2col windows (k^2 C_in floats per pixel: the
        bulk, 6,400 for conv2 of the paper's network, 20 MB an image in float32) and its
        output before and after the ReLU, the pooling's choices; the dense layers'
        activations. Training adds the backward's largest padded input and windows (the
        gradient flowing through them) and a copy of the parameters (the gradients)."""
        k, cfg = self.config.conv_kernel, self.config
        per_image, largest = 0, 0
        for h, w, c_in, c_out, pooled in cfg.conv_layers():
            windows = h * w * k * k * c_in + (h + k - 1) * (w + k - 1) * c_in
            per_image += windows + 2 * h * w * c_out + (2 * h * w * c_out if pooled else 0)
            largest = max(largest, windows)
        sizes = (math.prod(cfg.feature_shape),) + cfg.fc_sizes + (cfg.num_classes,)
        per_image += 3 * sum(sizes)
        copies = 0
        if training:
            per_image, copies = per_image + largest, 1
        return int(1.25 * self.dtype.itemsize * (per_image * batch_size
                                                 + copies * self.num_params()))
