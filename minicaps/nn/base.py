"""What every network of minicaps shares, whatever its layers: the parameters in one dict
keyed by name, the dtype and the device they live on, the checks of its inputs, predicting
in batches, and the memory a network and a batch of it need.

A network (nn/capsnet.py, nn/cnn.py, and their fast twins in fast/) is a Network with a
config dataclass (``config_class``, whose param_shapes() names every parameter), its
``init_params(config, seed, dtype)``, and its layers: forward, backward, loss_and_grads,
``class_scores`` (what predict reads) and ``batch_bytes`` (what a batch takes).
"""
import contextlib
import math
from dataclasses import MISSING, fields, replace

import numpy as np

from minicaps import backend
from minicaps.values import is_int

DTYPES = ("float32", "float64")

# Arrays the size of the parameters that training holds: the parameters, their gradients,
# Adam's two moments, their moving average, and one more for init_params' float64 draws
# (measured: 5.2 in the peak resident memory of building the paper's network at 70x70,
# its moving average and one Adam step).
TRAINING_COPIES = 6


class Network:
    """The parameters, device and input checks of a network; the layers are the subclass's.

    ``params``: name -> array ("conv1.W", "digit.W", "dec1.b", ...), every array a view of
    one flat buffer (backend.FlatArrays), so that Adam and the parameters' moving average
    update it whole (on the GPU one kernel). Gradients and Adam's state are dicts with the
    same keys. ``impl`` says which ops the class chains: "reference" (minicaps.ops, as the
    paper writes them) or "fast" (minicaps.fast); it is not part of the config or of
    checkpoints, which hold the same parameters either way.
    """
    config_class = None         # the network's config dataclass
    impl = "reference"

    def __init__(self, config=None, seed=0, dtype="float32", device=None, params=None,
                 **fast_only):
        if fast_only:      # CapsNet(config, impl="fast") built the fast network, before
            raise ValueError(
                f"{type(self).__name__} is the reference network and takes no "
                f"{', '.join(sorted(fast_only))}: for the fast one, "
                f"minicaps.build_model(config, {', '.join(f'{k}=...' for k in sorted(fast_only) if k != 'impl')})"
                .replace(", )", ")"))
        config = self.config_class() if config is None else config
        if not isinstance(config, self.config_class):
            raise ValueError(f"{type(self).__name__} needs a {self.config_class.__name__}, "
                             f"got {type(config).__name__}")
        if str(dtype) not in DTYPES:
            raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
        self.config, self.dtype = config, np.dtype(str(dtype))
        self._place_on(device)
        if params is None:
            check_buildable(self.config, self.dtype.name, self.device)
            params = self.init_params(self.config, seed, self.dtype)
        self.params = {}
        self.set_params(params)

    @staticmethod
    def init_params(config, seed, dtype):
        raise NotImplementedError

    # ------------------------------------------------------------ parameters and devices
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
        self.params = backend.FlatArrays(params)

    def with_params(self, params, config=None):
        """A network like this one (class, dtype, device, options) holding ``params``;
        ``config``: another config with the same parameter shapes (e.g. more routing
        iterations), else this one's."""
        return type(self)(self.config if config is None else config, dtype=self.dtype,
                          device=self.device, params=params, **self._build_options())

    def _build_options(self):
        """The keyword arguments beside config, dtype, device and params that build a
        network like this one (a fast model's conv_method, a CNN's seed)."""
        return {}

    def num_params(self):
        return int(sum(p.size for p in self.params.values()))

    def to(self, device):
        """Move the network to 'cpu' or 'gpu' (in place); returns self."""
        self._place_on(device)
        self.params = backend.FlatArrays(backend.params_to_device(self.params, self.device))
        return self

    def _place_on(self, device):
        """Set the device and its array module."""
        self.device = backend.resolve_device(device)
        self.xp = backend.xp_for(self.device)

    # ------------------------------------------------------------ checkpoints
    def checkpoint_state(self):
        """What a checkpoint keeps of the network beyond its kind, config, dtype and
        parameters: JSON values under keys of the checkpoint's metadata (none here)."""
        return {}

    def restore_checkpoint_state(self, meta):
        """Take back what checkpoint_state() put in a checkpoint's metadata ``meta``."""

    # ------------------------------------------------------------ prediction
    def predict(self, x, batch_size=256):
        """Predicted classes (N,) as a NumPy int array: the highest class score."""
        return self.predict_lengths(x, batch_size).argmax(axis=1)

    def predict_lengths(self, x, batch_size=256):
        """Class scores (N, num_classes) as NumPy, in batches (class_scores: a CapsNet's
        capsule lengths, a CNN's probabilities), with the weights fixed over all batches
        (fixed_weights)."""
        self.check_batch_fits(batch_size, training=False, option="batch_size=")
        x = self.check_x(x)            # the values once here, not again per batch
        with self.fixed_weights(x.shape[0], batch_size):
            parts = [self.class_scores(x[k:k + batch_size])
                     for k in range(0, x.shape[0], batch_size)]
        return backend.to_numpy(self.xp.concatenate(parts))     # one transfer, at the end

    def class_scores(self, x):
        """The class scores (N, num_classes) of checked images x, on the device."""
        raise NotImplementedError

    @contextlib.contextmanager
    def fixed_weights(self, n_images, batch_size=None):
        """A block of forward passes over about ``n_images`` images with the parameters
        held fixed (predict, evaluate). Nothing to prepare here; a fast network makes its
        weights' spectrum once for the block (fast/network.py).

            with model.fixed_weights(len(x)):
                for batch in batches: model.forward(batch)
        """
        yield self

    def host_floats(self, losses):
        """{name: Python float} of 0-d arrays on the device: one transfer, one wait."""
        values = backend.to_numpy(self.xp.stack(list(losses.values())))
        return {name: float(value) for name, value in zip(losses, values)}

    # ------------------------------------------------------------ memory
    def batch_bytes(self, batch_size, training=True):
        """About the most memory one step over ``batch_size`` images takes beyond the
        parameters (the network's own estimate)."""
        raise NotImplementedError

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

    # ------------------------------------------------------------ input checks
    def check_x(self, x, check_values=True):
        """Images x (N, H, W, C) (or (N, H, W) when C = 1) of floats in [0, 1], on the
        network's device in its dtype. check_values=False skips reading the values (a
        wait for the GPU) for callers that checked them already."""
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
                hint = ("; pixels 0..255 go in divided by 255 (minicaps.data.dataset.to_model_input)"
                        if high > 1 and low >= 0 else "")
                raise ValueError(f"x must hold pixel values in [0, 1], got values in "
                                 f"{low:g}..{high:g}{hint}")
        return x

    def check_y(self, y, n, check_values=True, one_label=False):
        """Integer class labels y (n,), or (n, K) for K different classes in each image
        (refused with one_label=True), on the network's device."""
        if not hasattr(y, "shape"):
            y = np.asarray(y)
        if one_label and y.ndim == 2:
            raise ValueError(f"y must have shape ({n},), one label an image, got "
                             f"{tuple(y.shape)}: {type(self).__name__} is the paper's one-label "
                             f"network; K labels an image (MultiMNIST) take the K-label path "
                             f"(nn/multi_label.py: build_model(config) or MultiLabelCapsNet)")
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

    def check_targets(self, targets, n, k):
        """What K decoder passes reconstruct: (N, K, H, W, C) or (N, K, H*W*C) in [0, 1]."""
        size = math.prod(self.config.input_shape)
        if (not hasattr(targets, "shape") or targets.ndim < 2 or tuple(targets.shape[:2]) != (n, k)
                or math.prod(targets.shape[2:]) != size or targets.dtype.kind != "f"):
            raise ValueError(f"targets must be floats of shape ({n}, {k}, "
                             f"{', '.join(map(str, self.config.input_shape))}): the image each "
                             f"of the {k} labels' capsules reconstructs, got "
                             f"{getattr(targets, 'dtype', type(targets).__name__)} "
                             f"{tuple(getattr(targets, 'shape', ()))}")
        return backend.to_device(targets, self.device).astype(self.dtype, copy=False)


# ------------------------------------------------------------ initialisation
def glorot_uniform(shape, rng):
    """Weights uniform in +-sqrt(6 / (fan_in + fan_out)) (Glorot & Bengio), as TensorFlow
    initialises dense (D_in, D_out) and convolution (kh, kw, C_in, C_out) kernels."""
    fan_in = math.prod(shape[:-1])
    fan_out = shape[-1] * (math.prod(shape[:-2]) if len(shape) == 4 else 1)
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=shape)


# ------------------------------------------------------------ the size of a network, before it is built
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
