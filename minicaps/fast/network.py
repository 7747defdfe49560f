"""What the fast networks (fast/model.py, fast/cnn.py) add to nn/base.py's Network, beside
their fast ops: a weights' spectrum made once for a block of inference passes
(fixed_weights), and on the CPU malloc asked to keep freed memory for the next step
(backend.keep_freed_memory)."""
import contextlib

import numpy as np

from minicaps import backend
from minicaps.fast import conv_fft


class FastNetwork:
    """A mixin before the reference class: class FastX(FastNetwork, X). The class lists its
    convolutions' inputs in _spectrum_inputs and sets ``self._fixed = {}`` once built."""
    impl = "fast"

    def _place_on(self, device):
        """Set the device and its array module; on the CPU, ask malloc to keep freed
        memory for the next step (backend.keep_freed_memory)."""
        super()._place_on(device)
        if self.device == "cpu":
            backend.keep_freed_memory()

    def _spectrum_inputs(self, n_images):
        """[(name, padded input shape, stride)] of each convolution that may take the DFT
        route in a block of passes over ``n_images`` images."""
        raise NotImplementedError

    @contextlib.contextmanager
    def fixed_weights(self, n_images, batch_size=None):
        """A block of forward passes over about ``n_images`` images in all, with the
        parameters held fixed (prediction, evaluation). A convolution for which the DFT
        route then pays (conv_fft.fft_pays with training=False: a CapsNet's primary
        capsules from about 22 images on, a CNN's 5x5 convolutions on 256 or 512 channels)
        makes its weights' spectrum once here, and the inference passes in the block use it
        instead of the im2col GEMM in every batch; training passes make their own as
        before. Only the speed and the rounding change. The parameters must not change
        inside the block: each pass checks that the weights still equal the copy the
        spectrum was made from and raises if not.

            with model.fixed_weights(len(x)):
                for batch in batches: model.forward(batch)
        """
        fixed = {}
        for name, x_shape, stride in self._spectrum_inputs(int(n_images)):
            W = self.params[f"{name}.W"]
            if self._wants_spectrum(name, x_shape, W, stride, batch_size):
                plan = conv_fft.dft_plan(x_shape, W.shape, stride, W)
                fixed[name] = (W.copy(), conv_fft.weight_spectrum(W, plan))
        outer, self._fixed = self._fixed, fixed
        try:
            yield self
        finally:
            self._fixed = outer

    def _wants_spectrum(self, name, x_shape, W, stride, batch_size):
        """Whether fixed_weights makes convolution ``name``'s weights' spectrum for a block
        over x_shape[0] images in batches of ``batch_size``: where conv_fft.fft_pays
        counts the DFT faster over them all."""
        return conv_fft.fft_pays(x_shape, W.shape, stride, training=False)

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
            raise RuntimeError(f"{name}.W changed inside {type(self).__name__}.fixed_weights(): "
                               "the weights' spectrum made at the start of the block no longer "
                               "matches them; change parameters (or the device) only outside "
                               "the block")
        return spectrum
