"""The fast CapsNet: the model of minicaps/nn/capsnet.py with its pieces swapped for the fast
ops (``CapsNet(config)``, impl="fast", the default).

What changes against the reference composition, and only the speed and the rounding
change with it (tests/test_reference_fast.py):
- the convolutions take im2col + GEMM in chunks of images or the DFT route
  (``conv_method``), and inside ``fixed_weights`` inference reuses one weights' spectrum;
- predictions and routing run a chunk of the batch at a time on every core
  (fast.digit_capsules_forward), recomputing u_hat in the backward pass;
- ReLUs overwrite their input, the first convolution's dx is never made, and the backward
  pass of loss_and_grads drops each cache once used, so its memory comes back early;
- on the CPU, malloc keeps freed memory for the next step (backend.keep_freed_memory).
"""
import contextlib

import numpy as np

from minicaps import backend
from minicaps.nn.capsnet import CapsNet, decoded_backward
from minicaps.fast import conv_fft
from minicaps.fast import (conv2d_forward, conv2d_backward, relu_forward, relu_backward,
                           dense_forward, dense_backward, mask_forward, mask_backward,
                           digit_capsules_forward, digit_capsules_backward)
from minicaps.fast.fused import (primary_capsules_forward, primary_capsules_backward,
                                 sigmoid_forward, margin_length_backward,
                                 recon_sigmoid_backward)

CONV_METHODS = ("auto", "gemm")


class FastCapsNet(CapsNet):
    """CapsNet(config, seed=0, dtype="float32", device=None, params=None, conv_method="auto").

    ``conv_method``: "auto" lets each convolution pick im2col + GEMM or the DFT route
    (fast.conv2d_forward; the primary capsules take the DFT from about 15 images
    per batch on), "gemm" keeps im2col + GEMM everywhere. It changes the speed and
    the rounding, never the function, so it is not part of the config or of
    checkpoints.

    A model on the CPU asks malloc to keep freed memory for reuse
    (backend.keep_freed_memory: a batch-128 training step in 0.74-0.85x the time, the
    process's memory stays at its high-water mark; $MINICAPS_KEEP_FREED_MEMORY=0 turns it off).
    """
    impl = "fast"

    def __init__(self, config=None, seed=0, dtype="float32", device=None, params=None,
                 conv_method="auto", *, impl="fast"):
        if conv_method not in CONV_METHODS:
            raise ValueError(f"conv_method must be 'auto' or 'gemm', got {conv_method!r}")
        self.conv_method = conv_method
        super().__init__(config, seed, dtype, device, params)
        self._fixed = {}      # conv name -> (weights copy, spectrum), inside fixed_weights()

    def with_params(self, params):
        return type(self)(self.config, dtype=self.dtype, device=self.device, params=params,
                          conv_method=self.conv_method)

    def _place_on(self, device):
        """Set the device and its array module; on the CPU, ask malloc to keep freed
        memory for the next step (backend.keep_freed_memory)."""
        super()._place_on(device)
        if self.device == "cpu":
            backend.keep_freed_memory()

    def _window_floats_per_image(self):
        return 0              # the windows go through the GEMMs a chunk of images at a time

    def _convolution_floats(self):
        """The weights' spectrum of each convolution that may take the DFT route
        (conv_fft.fft_pays: 16 input channels or more), 2 U Vf C O floats (100 MB for
        the paper's primary capsules), and the intermediate that makes it. Measured on
        the paper's network (tracemalloc, float32): what a step holds beyond its images
        is 178 MB when training, 134 MB for inference; batch_bytes, with the copies of
        the parameters and its margin, says 251 and 217."""
        if self.conv_method == "gemm":
            return 0
        cfg, total = self.config, 0
        for x_shape, name, stride in (((1,) + cfg.input_shape, "conv1", cfg.conv1_stride),
                                      ((1, *cfg.conv1_out, cfg.conv1_channels), "primary",
                                       cfg.primary_stride)):
            kh, kw, C, O = self.params[f"{name}.W"].shape
            if C >= 16:
                U, V, _, _ = conv_fft.fft_grid(x_shape, (kh, kw, C, O), stride)
                total += (2 * U + 2 * kh) * (V // 2 + 1) * C * O
        return total

    # ------------------------------------------------------------ fixed weights
    @contextlib.contextmanager
    def fixed_weights(self, n_images):
        """A block of forward passes over about ``n_images`` images in all, with the
        parameters held fixed (prediction, evaluation). A convolution for which the
        DFT route then pays (conv_fft.fft_pays with training=False: the primary
        capsules from about 22 images on) makes its weights' spectrum once here, and
        the inference passes in the block use it instead of the im2col GEMM in every
        batch; training passes make their own as before. Only the speed and the
        rounding change. The parameters must not change inside the block: each pass
        checks that the weights still equal the copy the spectrum was made from and
        raises if not.

            with model.fixed_weights(len(x)):
                for batch in batches: model.forward(batch)
        """
        cfg, p, fixed = self.config, self.params, {}
        if self.conv_method == "auto":
            inputs = {"conv1": (cfg.input_shape, cfg.conv1_stride),
                      "primary": ((*cfg.conv1_out, cfg.conv1_channels), cfg.primary_stride)}
            for name, (shape, stride) in inputs.items():
                W = p[f"{name}.W"]
                x_shape = (int(n_images),) + tuple(shape)
                if conv_fft.fft_pays(x_shape, W.shape, stride, training=False):
                    plan = conv_fft.dft_plan(x_shape, W.shape, stride, W)
                    fixed[name] = (W.copy(), conv_fft.weight_spectrum(W, plan))
        outer, self._fixed = self._fixed, fixed
        try:
            yield self
        finally:
            self._fixed = outer

    def _fixed_spectrum(self, name):
        """The spectrum fixed_weights() made for convolution ``name``, after checking
        that its weights have not changed since; None outside the block."""
        if name not in self._fixed:
            return None
        copy, spectrum = self._fixed[name]
        W = self.params[f"{name}.W"]
        # Compared bit for bit (the spectrum was made from these bits; NaN equals NaN): one
        # pass over 21 MB, 1.3-1.6 ms, where array_equal(equal_nan=True) took 16 ms a batch.
        same = (backend.is_gpu_array(W) == backend.is_gpu_array(copy) and W.shape == copy.shape
                and W.dtype == copy.dtype)
        if same:
            bits = np.dtype(f"u{W.dtype.itemsize}")
            same = bool(self.xp.array_equal(W.view(bits), copy.view(bits)))
        if not same:
            raise RuntimeError(f"{name}.W changed inside CapsNet.fixed_weights(): the weights' "
                               "spectrum made at the start of the block no longer matches them; "
                               "change parameters (or the device) only outside the block")
        return spectrum

    # ------------------------------------------------------------ forward / backward
    def primary_capsules(self, x, training=False):
        """conv1 -> ReLU -> primary conv -> squash: u (N, I, D_in) and the caches
        (x already checked, on the model's device). ``training``: a backward pass
        follows (the convolutions may then take the DFT route; without it they take
        it where fixed_weights() made the weights' spectrum)."""
        cfg, p, caches = self.config, self.params, {}
        spectrum = (lambda name: None) if training else self._fixed_spectrum
        h, caches["conv1"] = conv2d_forward(x, p["conv1.W"], p["conv1.b"], cfg.conv1_stride,
                                            method=self.conv_method, training=training,
                                            spectrum=spectrum("conv1"))
        h, caches["relu1"] = relu_forward(h, out=h)
        h, caches["primary"] = conv2d_forward(h, p["primary.W"], p["primary.b"], cfg.primary_stride,
                                              method=self.conv_method, training=training,
                                              spectrum=spectrum("primary"))
        if cfg.primary_relu:
            h, caches["relu2"] = relu_forward(h, out=h)
        u, caches["caps"] = primary_capsules_forward(h, cfg.primary_dims, cfg.squash_eps)
        return u, caches

    def digit_capsules(self, u, coupling=None):
        """Predictions (eq. 2) and routing (Procedure 1), in chunks of the batch."""
        cfg = self.config
        return digit_capsules_forward(u, self.params["digit.W"], cfg.routing_iters,
                                      cfg.routing_grad, cfg.squash_eps, coupling)

    def decode(self, v, mask):
        """The decoder of CapsNet.decode, its ReLUs in place and its sigmoid one kernel on
        the GPU (fused.sigmoid_forward)."""
        cfg, p, caches = self.config, self.params, {}
        if not cfg.use_decoder:
            raise ValueError("this network has no decoder (use_decoder=False)")
        r, caches["mask"] = mask_forward(v, mask)
        n_dec = len(cfg.decoder_sizes) + 1
        for k in range(1, n_dec + 1):
            r, caches[f"dec{k}"] = dense_forward(r, p[f"dec{k}.W"], p[f"dec{k}.b"])
            if k < n_dec:
                r, caches[f"dec{k}.relu"] = relu_forward(r, out=r)
        r, caches["sigmoid"] = sigmoid_forward(r)
        return r, caches

    def backward(self, caches, free=False):
        """Gradients of the total loss for every parameter, from forward's caches.
        free=True drops each cache from the dict once it is used, so its memory comes
        back during the backward pass (loss_and_grads does this). On the GPU the margin
        loss's, the lengths' and the mask's gradients are one kernel, the reconstruction
        loss's and the sigmoid's another (fused.py)."""
        cfg, grads = self.config, {}
        take = caches.pop if free else caches.__getitem__
        margin, lengths = take("margin"), take("lengths")
        dv = None
        if cfg.use_decoder:
            sigmoid = take("sigmoid")
            dr = recon_sigmoid_backward(cfg.recon_weight, take("recon"), sigmoid)
            n_dec = len(cfg.decoder_sizes) + 1
            for k in range(n_dec, 0, -1):
                if k < n_dec:
                    dr = relu_backward(dr, take(f"dec{k}.relu"), out=dr)
                dr, grads[f"dec{k}.W"], grads[f"dec{k}.b"] = dense_backward(dr, take(f"dec{k}"))
            mask, per_image = take("mask"), take("decoded_per_image")
            if per_image == 1:                  # dv of the margin, the lengths and the mask
                dv = margin_length_backward(margin, lengths, dr, mask)
            else:
                dv = margin_length_backward(margin, lengths) + decoded_backward(
                    mask_backward(dr, mask), per_image)
        if dv is None:
            dv = margin_length_backward(margin, lengths)
        du, grads["digit.W"] = digit_capsules_backward(dv, take("digit"))
        dh = primary_capsules_backward(du, take("caps"))
        del du
        if cfg.primary_relu:
            dh = relu_backward(dh, take("relu2"), out=dh)
        dh, grads["primary.W"], grads["primary.b"] = conv2d_backward(dh, take("primary"))
        dh = relu_backward(dh, take("relu1"), out=dh)
        _, grads["conv1.W"], grads["conv1.b"] = conv2d_backward(dh, take("conv1"), need_dx=False)
        return {name: grads[name] for name in self.params}
