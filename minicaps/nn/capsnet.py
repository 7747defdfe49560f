"""The CapsNet of Sabour, Frosst & Hinton (2017): parameters, forward, backward.

    x (N, 28, 28, 1)
    -> conv1 9x9, 256, ReLU                      (N, 20, 20, 256)
    -> primary conv 9x9 stride 2, 32 x 8D        (N, 6, 6, 256)
    -> primary capsules, squash                  u (N, 1152, 8)
    -> predictions u_hat = W u                   (N, 1152, 10, 16)
    -> dynamic routing, 3 iterations             v (N, 10, 16)
    -> lengths |v| -> margin loss
    -> mask by label -> decoder 160-512-1024-784 -> reconstruction loss

Parameters live in one dict keyed by name ("conv1.W", "digit.W", ...); the
gradients come back in a dict with the same keys, and so does Adam's state.

CapsNet.forward and CapsNet.backward below chain the reference ops of minicaps.ops, as
the paper writes them. CapsNet(config) builds the fast model (minicaps/fast/model.py: the
same functions made fast, the same parameters and results); CapsNet(config,
impl="reference") builds this one.
"""
import contextlib
import math
from dataclasses import MISSING, dataclass, asdict, fields, replace

import numpy as np

from minicaps import backend
from minicaps.ops import (conv2d_forward, conv2d_backward, conv_output_size, relu_forward,
                          relu_backward, dense_forward, dense_backward, sigmoid_forward,
                          sigmoid_backward, primary_capsules_forward,
                          primary_capsules_backward, predictions_forward,
                          predictions_backward, routing_forward, routing_backward,
                          length_forward, length_backward, margin_loss_forward,
                          margin_loss_backward, mask_forward, mask_backward, one_hot,
                          reconstruction_loss_forward, reconstruction_loss_backward)
from minicaps.values import is_int, is_real

DTYPES = ("float32", "float64")
# Routing keeps (I, J) arrays of every iteration for each image (_routing_floats_per_image);
# the paper routes 3 times.
MAX_ROUTING_ITERS = 100
IMPLS = ("fast", "reference")


def implementation(cls, base, impl, module, fast_name):
    """The class that ``cls(..., impl=impl)`` builds, for a reference class ``base`` whose
    fast twin is minicaps.fast.<module>.<fast_name>: the twin for base itself with
    impl="fast" (the default), else cls, whose impl must then be the one asked for."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be 'fast' or 'reference', got {impl!r}")
    if cls is base and impl == "fast":
        import importlib
        return getattr(importlib.import_module(f"minicaps.fast.{module}"), fast_name)
    if impl != cls.impl:
        raise ValueError(f"{cls.__name__} is impl={cls.impl!r}, not {impl!r}")
    return cls


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


def decoded_backward(dv, per_image):
    """The K decoder passes of each image (rows n K .. n K + K - 1) add up on its capsules:
    (N K, J, D) -> (N, J, D)."""
    if per_image == 1:
        return dv
    return dv.reshape((-1, per_image) + dv.shape[1:]).sum(axis=1)


def _int_tuple(values, name):
    """A tuple of Python ints from a list or tuple of integers; ValueError otherwise (2.5 is
    not silently cut to 2)."""
    if not isinstance(values, (list, tuple)) or not all(is_int(v) for v in values):
        raise ValueError(f"CapsNetConfig.{name} must be a list of integers, got {values!r}")
    return tuple(int(v) for v in values)


# Arrays the size of the parameters that training holds: the parameters, their gradients,
# Adam's two moments, their moving average, and one more for init_params' float64 draws
# (measured: 5.2 in the peak resident memory of building the paper's network at 70x70,
# its moving average and one Adam step).
TRAINING_COPIES = 6


def param_count(config):
    """The parameters of the network ``config`` describes (a CapsNetConfig or a
    CNNConfig), counted from its param_shapes(): nothing is built."""
    return sum(math.prod(shape) for shape in config.param_shapes().values())


def network_bytes(config, dtype="float32", copies=TRAINING_COPIES):
    """Bytes of ``copies`` arrays the size of the network's parameters."""
    if str(dtype) not in DTYPES:
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    return copies * np.dtype(str(dtype)).itemsize * param_count(config)


def check_network_fits(config, dtype="float32", device="cpu", copies=TRAINING_COPIES):
    """A ValueError, before anything is allocated, when the network and what training
    keeps beside it (network_bytes) would not fit in the memory available now; it names
    the largest square input whose network would (--image-size)."""
    need = network_bytes(config, dtype, copies)
    available = backend.available_memory(device)
    if available is None or need <= available:
        return
    H, W, C = config.input_shape
    side = _largest_side(config, dtype, copies, available)
    advice = (f"give smaller pictures, at most {side}x{side} (--image-size {side} with "
              f"--data-dir, or --crop {side})" if side else
              "not even the smallest input fits: free memory or use a smaller network")
    raise ValueError(f"the network for {H}x{W}x{C} inputs has {param_count(config):,} "
                     f"parameters: training it needs about {need / 2**30:.1f} GiB for them, "
                     f"their gradients, Adam's moments and their moving average, and "
                     f"{available / 2**30:.1f} GiB is available on the {device}: {advice}")


def check_buildable(config, dtype="float32", device="cpu"):
    """A ValueError, before anything is allocated, when the parameters of the network
    ``config`` describes (a CapsNetConfig or a CNNConfig), and init_params' float64 draw
    of its largest array, would not fit in the memory available now; it names the count
    and the field of the config that makes it so big (_biggest_field)."""
    largest = max(math.prod(shape) for shape in config.param_shapes().values())
    need = network_bytes(config, dtype, copies=1) + 8 * largest
    available = backend.available_memory(device)
    if available is None or need <= available:
        return
    name = type(config).__name__
    field = _biggest_field(config)
    culprit = (f": {name}.{field} = {getattr(config, field)!r} makes it so big, give a "
               f"smaller {field}" if field else "")
    raise ValueError(f"{name} describes a network of {param_count(config):,} parameters, "
                     f"about {need / 2**30:,.1f} GiB to build in {dtype}, and "
                     f"{available / 2**30:.1f} GiB is available on the {device}{culprit}")


def _biggest_field(config):
    """The field of ``config`` whose default value shrinks the network the most (None when
    no field set away from its default makes it smaller)."""
    best, fewest = None, param_count(config)
    for f in fields(config):
        if f.default is MISSING or getattr(config, f.name) == f.default:
            continue
        try:
            count = param_count(replace(config, **{f.name: f.default}))
        except ValueError:          # the default does not go with the other fields
            continue
        if count < fewest:
            best, fewest = f.name, count
    return best


def _largest_side(config, dtype, copies, available):
    """The largest side s below the config's whose network on s x s inputs needs at most
    ``available`` bytes (network_bytes grows with s), or None when no input fits."""
    def too_big(side):
        try:
            shrunk = replace(config, input_shape=(side, side, config.input_shape[2]))
        except ValueError:           # too small for the network's kernels: not too big
            return False
        return network_bytes(shrunk, dtype, copies) > available

    low, high = 0, max(config.input_shape[:2])     # too_big(high): as (H, W) is, or more
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if too_big(middle) else (middle, high)
    try:
        replace(config, input_shape=(low, low, config.input_shape[2]))
    except ValueError:
        return None
    return low


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


def glorot_uniform(shape, rng):
    """Weights uniform in +-sqrt(6 / (fan_in + fan_out)) (Glorot & Bengio), as TensorFlow
    initialises dense (D_in, D_out) and convolution (kh, kw, C_in, C_out) kernels."""
    fan_in = math.prod(shape[:-1])
    fan_out = shape[-1] * (math.prod(shape[:-2]) if len(shape) == 4 else 1)
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=shape)


class CapsNet:
    """The capsule network with hand-written forward and backward passes.

    model = CapsNet(CapsNetConfig(), seed=0, dtype="float32", device="cpu")
    loss, grads, out = model.loss_and_grads(x, y)   # x (N, H, W, C) in [0, 1], y (N,)

    ``impl``: "fast" (the default) builds the fast model (fast/model.py, a subclass that
    swaps in the fast ops; it also takes ``conv_method``); "reference" builds this class,
    which chains the reference ops of minicaps.ops. Both hold the same parameters and give
    the same results (tests/test_reference_fast.py: 1e-10 apart in float64), so ``impl``
    is not part of the config or of checkpoints.
    """
    impl = "reference"

    def __new__(cls, *args, impl="fast", **kwargs):
        return super().__new__(implementation(cls, CapsNet, impl, "model", "FastCapsNet"))

    def __init__(self, config=None, seed=0, dtype="float32", device=None, params=None,
                 conv_method="auto", *, impl="reference"):
        if conv_method != "auto":
            raise ValueError(f"conv_method chooses among the fast path's convolutions "
                             f"(impl='fast'); impl='reference' has one, im2col + one matrix "
                             f"product, so it takes no conv_method (got {conv_method!r})")
        self.config = config if config is not None else CapsNetConfig()
        if str(dtype) not in DTYPES:
            raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
        self.dtype = np.dtype(str(dtype))
        self._place_on(device)
        if params is None:
            check_buildable(self.config, self.dtype.name, self.device)
            params = init_params(self.config, seed, self.dtype)
        self.params = {}
        self.set_params(params)

    # ------------------------------------------------------------ forward / backward: the paper
    def primary_capsules(self, x, training=False):
        """conv1 -> ReLU -> primary conv (-> ReLU) -> squash: u (N, I, D_in) and the
        caches (x already checked, on the model's device). ``training`` (a backward pass
        follows) matters to the fast model only."""
        cfg, p, caches = self.config, self.params, {}
        h, caches["conv1"] = conv2d_forward(x, p["conv1.W"], p["conv1.b"], cfg.conv1_stride)
        h, caches["relu1"] = relu_forward(h)
        h, caches["primary"] = conv2d_forward(h, p["primary.W"], p["primary.b"],
                                              cfg.primary_stride)
        if cfg.primary_relu:
            h, caches["relu2"] = relu_forward(h)
        u, caches["caps"] = primary_capsules_forward(h, cfg.primary_dims, cfg.squash_eps)
        return u, caches

    def digit_capsules(self, u, coupling=None):
        """Predictions u_hat = W u (eq. 2), then routing (Procedure 1): (v, c) and the cache.
        ``coupling`` fixes c (see routing_forward)."""
        cfg = self.config
        u_hat, predictions = predictions_forward(u, self.params["digit.W"])
        (v, c), routing = routing_forward(u_hat, cfg.routing_iters, cfg.routing_grad,
                                          cfg.squash_eps, coupling)
        return (v, c), (predictions, routing)

    def decode(self, v, mask):
        """The decoder on digit capsules v (N, J, D) masked by mask (N, J): the
        reconstruction (N, H*W*C) and the caches. Any pose v can be decoded."""
        cfg, p, caches = self.config, self.params, {}
        if not cfg.use_decoder:
            raise ValueError("this network has no decoder (use_decoder=False)")
        r, caches["mask"] = mask_forward(v, mask)
        n_dec = len(cfg.decoder_sizes) + 1
        for k in range(1, n_dec + 1):
            r, caches[f"dec{k}"] = dense_forward(r, p[f"dec{k}.W"], p[f"dec{k}.b"])
            if k < n_dec:
                r, caches[f"dec{k}.relu"] = relu_forward(r)
        r, caches["sigmoid"] = sigmoid_forward(r)
        return r, caches

    def forward(self, x, y=None, coupling=None, decode=True, training=None, check_values=True,
                host_losses=True, targets=None):
        """Run the network. With labels y the decoder sees the label's capsule
        (training); without, the longest capsule (inference).

        y (N, K) gives K different classes present in each image (MultiMNIST: the two
        digits): all K count as present in the margin loss, and the decoder runs once per
        label, on that capsule alone, reconstructing ``targets`` (N, K, H, W, C) in [0, 1]
        (each digit alone); the reconstruction loss sums the K squared errors, and
        out["reconstruction"] is (N, K, H*W*C).

        Returns (out, caches); out holds "lengths", "v", "coupling" and, with a
        decoder, "reconstruction"; with y also "margin_loss",
        "reconstruction_loss" and "loss". ``coupling`` fixes the routing
        coefficients (see routing_forward), for gradient checks of "stop";
        decode=False skips the decoder (inference of the class only).
        ``training``: whether backward() will follow (default: when y is given);
        only the fast model's speed depends on it (its convolutions' route).

        Two things make the host wait for a GPU: reading x's and y's values to check
        them (x finite, labels in range) and bringing the losses back as floats.
        check_values=False skips the first, for callers that checked the values already
        (train_epoch: images made from uint8 pixels, labels checked once an epoch);
        host_losses=False leaves the losses on the model's device, as 0-d arrays (NumPy
        scalars on the CPU) of the model's dtype, "loss" summed there. The shapes and
        dtypes are checked either way.
        """
        cfg = self.config
        x = self._check_x(x, check_values)
        N = x.shape[0]
        out = {}
        u, caches = self.primary_capsules(x, training=y is not None if training is None
                                          else training)
        (v, c), caches["digit"] = self.digit_capsules(u, coupling)
        lengths, caches["lengths"] = length_forward(v, cfg.squash_eps)
        out.update(v=v, coupling=c, lengths=lengths)

        losses = {}                       # on the device until the end: one wait for the host
        if y is not None:
            y = self._check_y(y, N, check_values)
            losses["margin_loss"], caches["margin"] = margin_loss_forward(     # eq. 4
                lengths, y, cfg.m_plus, cfg.m_minus, cfg.lam)
            decoded = y if y.ndim == 2 else y[:, None]        # (N, K): the capsules to decode
        else:
            decoded = lengths.argmax(axis=1)[:, None]
        if cfg.use_decoder and decode:
            K = decoded.shape[1]                  # one decoder pass per label, as one batch
            mask = one_hot(decoded.reshape(-1), cfg.num_classes, self.dtype)    # (N K, J)
            r, decoder_caches = self.decode(v if K == 1 else self.xp.repeat(v, K, axis=0), mask)
            caches.update(decoder_caches)
            caches["decoded_per_image"] = K
            out["reconstruction"] = r if K == 1 else r.reshape(N, K, -1)
            if y is not None:
                target = x if targets is None else self._check_targets(targets, N, K)
                losses["reconstruction_loss"], caches["recon"] = reconstruction_loss_forward(
                    r.reshape(N, -1), target.reshape(N, -1))
        if losses and not host_losses:
            out.update(losses)
            out["loss"] = losses["margin_loss"] + cfg.recon_weight * losses.get("reconstruction_loss", 0.0)
        elif losses:
            values = backend.to_numpy(self.xp.stack(list(losses.values())))
            out.update({name: float(value) for name, value in zip(losses, values)})
            out["loss"] = out["margin_loss"] + cfg.recon_weight * out.get("reconstruction_loss", 0.0)
        return out, caches

    def backward(self, caches, free=False):
        """Gradients of the total loss for every parameter, from forward's caches: the
        forward's ops walked back in reverse order. ``free=True`` says that the caller is
        done with the caches (loss_and_grads): the fast model then drops each one once
        used, so its memory comes back early; here they are only read."""
        cfg, grads = self.config, {}
        dlengths = margin_loss_backward(1.0, caches["margin"])
        dv = length_backward(dlengths, caches["lengths"])
        if cfg.use_decoder:
            dr = reconstruction_loss_backward(cfg.recon_weight, caches["recon"])
            dr = sigmoid_backward(dr.reshape(caches["sigmoid"].shape), caches["sigmoid"])
            n_dec = len(cfg.decoder_sizes) + 1
            for k in range(n_dec, 0, -1):
                if k < n_dec:
                    dr = relu_backward(dr, caches[f"dec{k}.relu"])
                dr, grads[f"dec{k}.W"], grads[f"dec{k}.b"] = dense_backward(dr, caches[f"dec{k}"])
            dv = dv + decoded_backward(mask_backward(dr, caches["mask"]),   # v feeds the margin
                                       caches["decoded_per_image"])         # and the decoder
        predictions, routing = caches["digit"]
        du_hat = routing_backward(dv, routing)
        du, grads["digit.W"] = predictions_backward(du_hat, predictions)
        dh = primary_capsules_backward(du, caches["caps"])
        if cfg.primary_relu:
            dh = relu_backward(dh, caches["relu2"])
        dh, grads["primary.W"], grads["primary.b"] = conv2d_backward(dh, caches["primary"])
        dh = relu_backward(dh, caches["relu1"])
        _, grads["conv1.W"], grads["conv1.b"] = conv2d_backward(dh, caches["conv1"])
        return {name: grads[name] for name in self.params}

    def loss_and_grads(self, x, y, coupling=None, check_values=True, host_losses=True,
                       targets=None):
        """(loss, grads, out): total loss as a float, a gradient per parameter, and
        forward's outputs. Masks the decoder input by the label. check_values,
        host_losses and targets as in forward (with host_losses=False the loss is a 0-d
        array on the model's device)."""
        if y is None:
            raise ValueError("loss_and_grads needs labels y")
        out, caches = self.forward(x, y, coupling, check_values=check_values,
                                   host_losses=host_losses, targets=targets)
        return out["loss"], self.backward(caches, free=True), out

    def loss(self, x, y, coupling=None, targets=None):
        """The total loss alone (what the gradient checker differentiates)."""
        return self.forward(x, y, coupling, targets=targets)[0]["loss"]

    def predict(self, x, batch_size=256):
        """Predicted classes (N,) as a NumPy int array: the longest digit capsule."""
        self.check_batch_fits(batch_size, training=False, option="batch_size=")
        return self.predict_lengths(x, batch_size).argmax(axis=1)

    def predict_lengths(self, x, batch_size=256):
        """Capsule lengths (N, num_classes) as NumPy, computed in batches, no decoder
        (with the weights fixed over all batches: see fixed_weights)."""
        self.check_batch_fits(batch_size, training=False, option="batch_size=")
        x = self._check_x(x)           # the values once here, not again per batch
        with self.fixed_weights(x.shape[0]):
            parts = [self.forward(x[k:k + batch_size], decode=False, check_values=False)[0]["lengths"]
                     for k in range(0, x.shape[0], batch_size)]
        return backend.to_numpy(self.xp.concatenate(parts))     # one transfer, at the end

    @contextlib.contextmanager
    def fixed_weights(self, n_images):
        """A block of forward passes over about ``n_images`` images with the parameters
        held fixed (predict, evaluate). Nothing to prepare here; the fast model makes its
        weights' spectrum once for the block.

            with model.fixed_weights(len(x)):
                for batch in batches: model.forward(batch)
        """
        yield self

    # ------------------------------------------------------------ parameters, devices, input checks
    def with_params(self, params):
        """A model like this one (impl, device, dtype, options) holding ``params``."""
        return type(self)(self.config, dtype=self.dtype, device=self.device, params=params,
                          impl=self.impl)

    def set_params(self, params):
        """Replace the parameters (any backend) after checking names, shapes and that
        every value is finite."""
        expected = self.config.param_shapes()
        if set(params) != set(expected):
            missing, extra = set(expected) - set(params), set(params) - set(expected)
            raise ValueError(f"parameters do not match the config: missing {sorted(missing)}, "
                             f"unexpected {sorted(extra)}")
        for name, shape in expected.items():
            if tuple(params[name].shape) != tuple(shape):
                raise ValueError(f"parameter {name} has shape {tuple(params[name].shape)}, "
                                 f"the config needs {shape}")
        params = {name: backend.to_device(params[name], self.device).astype(self.dtype,
                                                                            copy=False)
                  for name in expected}
        for name, p in params.items():        # NaN would make every prediction class 0
            if not bool(self.xp.isfinite(p).all()):
                raise ValueError(f"parameter {name} holds NaN or infinite values (as a "
                                 f"diverged run leaves them): give finite parameters")
        # One flat buffer holds them all, the dict's arrays its views (backend.FlatArrays):
        # Adam and the parameters' average update the buffer whole (on the GPU one kernel).
        self.params = backend.FlatArrays(params)

    def num_params(self):
        return int(sum(p.size for p in self.params.values()))

    def to(self, device):
        """Move the model to 'cpu' or 'gpu' (in place); returns self."""
        self._place_on(device)
        self.params = backend.FlatArrays(backend.params_to_device(self.params, self.device))
        return self

    def _place_on(self, device):
        """Set the device and its array module."""
        self.device = backend.resolve_device(device)
        self.xp = backend.xp_for(self.device)

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
        """What the convolutions hold once for a whole batch: nothing here."""
        return 0

    def _window_floats_per_image(self):
        """The im2col windows of one image, both convolutions (held whole by the reference)."""
        cfg = self.config
        (h, w), (hp, wp) = cfg.conv1_out, cfg.primary_grid
        return (h * w * cfg.conv1_kernel ** 2 * cfg.input_shape[2]
                + hp * wp * cfg.primary_kernel ** 2 * cfg.conv1_channels)

    def check_batch_fits(self, batch_size, training=True, option="--batch-size"):
        """A ValueError naming a batch size that fits when ``batch_size`` images a step
        would not fit in the memory available now (batch_bytes); nothing is allocated.
        ``option``: the option that sets the batch size, or None where none does (then
        the advice is to free memory or use a smaller network)."""
        if not is_int(batch_size) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        need = self.batch_bytes(batch_size, training)
        available = backend.available_memory(self.device)
        if available is None or need <= available:
            return
        per_image = self.batch_bytes(2, training) - self.batch_bytes(1, training)
        fits = (available - self.batch_bytes(0, training)) // max(per_image, 1)
        what = "a training" if training else "an inference"
        if option is None:
            advice = (f"free memory, or use a smaller network (at most {max(fits, 0)} such "
                      f"images fit now)")
        elif fits >= 1:
            advice = f"give a batch size of at most {fits} ({option} {fits})"
        else:
            advice = "not even one image fits: free memory or use a smaller network"
        raise ValueError(f"{what} batch of {batch_size} images needs about "
                         f"{need / 2**30:.1f} GiB and {available / 2**30:.1f} GiB is "
                         f"available on the {self.device}: {advice}")

    def _check_x(self, x, check_values=True):
        H, W, C = self.config.input_shape
        if not hasattr(x, "shape") or not hasattr(x, "dtype"):
            raise ValueError(f"x must be an array of shape (N, {H}, {W}, {C}), got {type(x).__name__}")
        if x.ndim == 3 and C == 1:
            x = x[..., None]
        if x.ndim != 4 or tuple(x.shape[1:]) != (H, W, C) or x.shape[0] < 1:
            raise ValueError(f"x must have shape (N, {H}, {W}, {C}) with N >= 1, got {tuple(x.shape)}")
        if x.dtype.kind != "f":
            raise ValueError(f"x must hold floats in [0, 1], got dtype {x.dtype}; "
                             "convert images with x.astype('float32') / 255")
        x = backend.to_device(x, self.device).astype(self.dtype, copy=False)
        if check_values:          # one read of three numbers from the device
            finite, low, high = backend.to_numpy(self.xp.stack(
                [self.xp.isfinite(x).all().astype(x.dtype), x.min(), x.max()]))
            if not finite:
                raise ValueError("x contains NaN or infinite values")
            if low < 0 or high > 1:
                hint = ("; pixels 0..255 go in divided by 255 (data.to_model_input)"
                        if high > 1 and low >= 0 else "")
                raise ValueError(f"x must hold pixel values in [0, 1], got values in "
                                 f"{low:g}..{high:g}{hint}")
        return x

    def _check_targets(self, targets, n, k):
        """What the K decoder passes reconstruct: (N, K, H, W, C) or (N, K, H*W*C) in [0, 1]."""
        size = math.prod(self.config.input_shape)
        if (not hasattr(targets, "shape") or targets.ndim < 2 or tuple(targets.shape[:2]) != (n, k)
                or math.prod(targets.shape[2:]) != size or targets.dtype.kind != "f"):
            raise ValueError(f"targets must be floats of shape ({n}, {k}, "
                             f"{', '.join(map(str, self.config.input_shape))}): the image each "
                             f"of the {k} labels' capsules reconstructs, got "
                             f"{getattr(targets, 'dtype', type(targets).__name__)} "
                             f"{tuple(getattr(targets, 'shape', ()))}")
        return backend.to_device(targets, self.device).astype(self.dtype, copy=False)

    def _check_y(self, y, n, check_values=True):
        if not hasattr(y, "shape"):
            y = np.asarray(y)
        if y.ndim not in (1, 2) or y.shape[0] != n or (y.ndim == 2 and y.shape[1] < 1):
            raise ValueError(f"y must have shape ({n},) to match x (or ({n}, K): K classes "
                             f"in each image), got {tuple(y.shape)}")
        if y.dtype.kind not in "iu":
            raise ValueError(f"y must hold integer class labels, got dtype {y.dtype}")
        y = backend.to_device(y, self.device)
        if not check_values:
            return y
        lo, hi = (int(bound) for bound in backend.to_numpy(self.xp.stack([y.min(), y.max()])))
        if lo < 0 or hi >= self.config.num_classes:
            raise ValueError(f"labels must be in 0..{self.config.num_classes - 1}, got values in {lo}..{hi}")
        if y.ndim == 2 and y.shape[1] > 1:
            same = self.xp.sort(y, axis=1)
            if bool((same[:, 1:] == same[:, :-1]).any()):
                raise ValueError("each image's labels must be different classes (a class is "
                                 "present or not)")
        return y

    def __getnewargs_ex__(self):          # a copy (or pickle) keeps its class
        return (), {"impl": self.impl}
