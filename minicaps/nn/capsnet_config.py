"""The sizes of the CapsNet (nn/capsnet.py): its config, its initial parameters, and the
memory a batch of it takes.

CapsNetConfig holds every size, with the paper's MNIST model as the defaults, and checks
them once when it is made; param_shapes() names every parameter. init_params draws the
initial weights. CapsNetMemory estimates what a step over a batch needs (batch_bytes), so
that a batch too big for the memory is refused before anything is allocated.
"""
import math
from dataclasses import dataclass, asdict

import numpy as np

from minicaps.nn.base import glorot_uniform
from minicaps.ops import conv_output_size
from minicaps.values import is_int, is_real

# Routing keeps (I, J) arrays of every iteration for each image (_routing_floats_per_image);
# the paper routes 3 times.
MAX_ROUTING_ITERS = 100


@dataclass
class CapsNetConfig:
    """Every size of the network. The defaults are the paper's MNIST model."""
    input_shape: tuple = (28, 28, 1)     # H, W, C
    conv1_channels: int = 256
    conv1_kernel: int = 9
    conv1_stride: int = 1
    primary_maps: int = 32               # capsule types in the primary layer
    primary_dims: int = 8
    primary_kernel: int = 9
    primary_stride: int = 2
    primary_relu: bool = False           # ReLU before the squash (off, as in the paper's code)
    num_classes: int = 10
    digit_dims: int = 16
    routing_iters: int = 3
    routing_grad: str = "full"           # "full" or "stop"
    squash_eps: float = 1e-7
    m_plus: float = 0.9
    m_minus: float = 0.1
    lam: float = 0.5                     # down-weighting of absent classes (eq. 4)
    use_decoder: bool = True
    decoder_sizes: tuple = (512, 1024)
    recon_weight: float = 0.0005

    INT_FIELDS = ("conv1_channels", "conv1_kernel", "conv1_stride", "primary_maps",
                  "primary_dims", "primary_kernel", "primary_stride", "num_classes",
                  "digit_dims", "routing_iters")

    def __post_init__(self):
        self.input_shape = _int_tuple(self.input_shape, "input_shape")
        self.decoder_sizes = _int_tuple(self.decoder_sizes, "decoder_sizes")
        self.validate()

    def validate(self):
        """Every field of the right type and in range: a wrong config is a ValueError
        naming the field, never a TypeError deep in NumPy or a NaN loss later."""
        if len(self.input_shape) != 3 or min(self.input_shape) < 1:
            raise ValueError(f"input_shape must be (H, W, C) of positive ints, got {self.input_shape}")
        if any(s < 1 for s in self.decoder_sizes):
            raise ValueError(f"CapsNetConfig.decoder_sizes must be positive ints, got "
                             f"{self.decoder_sizes}")
        for name in self.INT_FIELDS:
            value = getattr(self, name)
            if not is_int(value) or value < 1:
                raise ValueError(f"CapsNetConfig.{name} must be an integer >= 1, got {value!r}")
            setattr(self, name, int(value))
        if self.num_classes < 2:
            raise ValueError("CapsNetConfig.num_classes must be >= 2")
        if self.routing_iters > MAX_ROUTING_ITERS:
            raise ValueError(f"CapsNetConfig.routing_iters is {self.routing_iters}, more than "
                             f"the {MAX_ROUTING_ITERS} iterations allowed (the paper uses 3): "
                             f"give --routing-iters {MAX_ROUTING_ITERS} or fewer")
        if self.routing_grad not in ("full", "stop"):
            raise ValueError(f"routing_grad must be 'full' or 'stop', got {self.routing_grad!r}")
        for name in ("primary_relu", "use_decoder"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise ValueError(f"CapsNetConfig.{name} must be True or False, got "
                                 f"{getattr(self, name)!r}")
            setattr(self, name, bool(getattr(self, name)))
        for name, low, high in (("squash_eps", 0, None), ("m_plus", 0, 1), ("m_minus", 0, 1),
                                ("lam", 0, None), ("recon_weight", 0, None)):
            value = getattr(self, name)
            if not is_real(value) or not math.isfinite(value) or value < low or (
                    high is not None and value > high) or (name == "squash_eps" and value == 0):
                where = f"in [{low}, {high}]" if high is not None else (
                    "> 0" if name == "squash_eps" else ">= 0")
                raise ValueError(f"CapsNetConfig.{name} must be a finite number {where}, "
                                 f"got {value!r}")
            setattr(self, name, float(value))
        if not self.m_minus < self.m_plus:
            raise ValueError(f"CapsNetConfig needs m_minus < m_plus (the margins of eq. 4: "
                             f"absent below m_minus, present above m_plus), got "
                             f"m_minus={self.m_minus}, m_plus={self.m_plus}")
        if self.primary_grid[0] < 1 or self.primary_grid[1] < 1:
            # conv1 must leave at least primary_kernel rows: (k2 - 1) s1 + k1 pixels
            side = (self.primary_kernel - 1) * self.conv1_stride + self.conv1_kernel
            raise ValueError(f"input {self.input_shape} is too small for conv1 kernel "
                             f"{self.conv1_kernel} and primary kernel {self.primary_kernel}: "
                             f"the network needs inputs of at least {side}x{side} pixels "
                             f"(as it reads them: after any --crop); give larger images "
                             f"(--image-size with --data-dir) or a larger --crop")

    @property
    def conv1_out(self):
        H, W, _ = self.input_shape
        return (conv_output_size(H, self.conv1_kernel, self.conv1_stride),
                conv_output_size(W, self.conv1_kernel, self.conv1_stride))

    @property
    def primary_grid(self):
        h, w = self.conv1_out
        return (conv_output_size(h, self.primary_kernel, self.primary_stride),
                conv_output_size(w, self.primary_kernel, self.primary_stride))

    @property
    def num_primary_caps(self):
        h, w = self.primary_grid
        return h * w * self.primary_maps

    def param_shapes(self):
        """name -> shape, in the order of the network."""
        C = self.input_shape[2]
        k1, k2, ch = self.conv1_kernel, self.primary_kernel, self.conv1_channels
        pc = self.primary_maps * self.primary_dims
        shapes = {
            "conv1.W": (k1, k1, C, ch), "conv1.b": (ch,),
            "primary.W": (k2, k2, ch, pc), "primary.b": (pc,),
            "digit.W": (self.num_primary_caps, self.num_classes, self.digit_dims, self.primary_dims),
        }
        if self.use_decoder:
            sizes = (self.num_classes * self.digit_dims,) + self.decoder_sizes + (math.prod(self.input_shape),)
            for k in range(len(sizes) - 1):
                shapes[f"dec{k + 1}.W"] = (sizes[k], sizes[k + 1])
                shapes[f"dec{k + 1}.b"] = (sizes[k + 1],)
        return shapes

    def to_dict(self):
        d = asdict(self)
        d["input_shape"] = list(self.input_shape)
        d["decoder_sizes"] = list(self.decoder_sizes)
        return d

    @classmethod
    def from_dict(cls, d):
        if not isinstance(d, dict):
            raise ValueError(f"a CapsNetConfig is read from a dict of its fields, got "
                             f"{type(d).__name__}")
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown CapsNetConfig fields: {sorted(unknown)}")
        return cls(**d)


def _int_tuple(values, name):
    """A tuple of Python ints from a list or tuple of integers; ValueError otherwise (2.5 is
    not silently cut to 2)."""
    if not isinstance(values, (list, tuple)) or not all(is_int(v) for v in values):
        raise ValueError(f"CapsNetConfig.{name} must be a list of integers, got {values!r}")
    return tuple(int(v) for v in values)


def init_params(config, seed=0, dtype="float32"):
    """Glorot-uniform weights for the convolutions and the decoder, zero biases,
    and N(0, 0.01^2) capsule transforms digit.W. (The paper gives no initialisation;
    the authors' released code draws truncated normals, std 0.05 for conv1 and 0.1
    for the primary and digit capsules, with biases at 0.1.)"""
    rng = np.random.default_rng(seed)
    params = {}
    for name, shape in config.param_shapes().items():
        if name.endswith(".b"):
            p = np.zeros(shape)
        elif name == "digit.W":
            p = rng.normal(0.0, 0.01, size=shape)
        else:
            p = glorot_uniform(shape, rng)
        params[name] = p.astype(dtype)
    return params


class CapsNetMemory:
    """What one step of a CapsNet over a batch takes (batch_bytes, for
    Network.check_batch_fits); a mixin of the CapsNet classes."""

    def batch_bytes(self, batch_size, training=True):
        """About the most memory one step over ``batch_size`` images takes beyond the
        parameters: the activations (4 conv1 maps and 2 predictions u_hat an image when
        training, 3/8 of that for inference), routing's arrays of each iteration
        (_routing_floats_per_image), 2 (training) or 1 copies of the parameters
        (gradients, the weights' spectrum) and what the convolutions keep for the whole
        batch (_convolution_floats), with a 25% margin. Calibrated on the paper's
        network in float32 with the fast model (the process's peak memory at batches
        16-1024: 2.97 MB an image when training, 1.16 MB for inference; this says 4.6 and
        1.6). The reference model also holds the whole batch's im2col windows of both
        convolutions, counted here on top."""
        cfg = self.config
        h, w = cfg.conv1_out
        per_image = (4 * h * w * cfg.conv1_channels
                     + 2 * cfg.num_primary_caps * cfg.num_classes * cfg.digit_dims)
        if not training:
            per_image = per_image * 3 // 8
        per_image += self._routing_floats_per_image(training) + self._window_floats_per_image()
        copies = 2 if training else 1
        return int(1.25 * self.dtype.itemsize * (per_image * batch_size
                                                 + copies * self.num_params()
                                                 + self._convolution_floats()))

    def _routing_floats_per_image(self, training):
        """Routing's (I, J) arrays of one image: the coupling coefficients c of every
        iteration, kept for the backward pass; training adds the logits' gradient of each
        iteration, and the fast backward stacks both for its products (4 an iteration;
        measured with many primary capsules: 4 when training, 1 for inference)."""
        cfg = self.config
        arrays = (4 if training else 1) * cfg.routing_iters
        return arrays * cfg.num_primary_caps * cfg.num_classes

    def _convolution_floats(self):
        """What the convolutions hold once for a whole batch: nothing in the reference."""
        return 0

    def _window_floats_per_image(self):
        """The im2col windows of one image, both convolutions (held whole by the reference)."""
        cfg = self.config
        (h, w), (hp, wp) = cfg.conv1_out, cfg.primary_grid
        return (h * w * cfg.conv1_kernel ** 2 * cfg.input_shape[2]
                + hp * wp * cfg.primary_kernel ** 2 * cfg.conv1_channels)
