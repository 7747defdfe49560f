"""Flat buffers: a dict of named arrays that are views into one buffer, so that an update
of every parameter at once (Adam, the parameters' average) is a few operations on the
buffer instead of a few per array, each a kernel launch on the GPU."""
import numpy as np

from minicaps.backend.device import get_xp, is_gpu_array


class FlatArrays(dict):
    """A dict of arrays (name -> array, as the model's params) that are views into one flat
    buffer, ``flat``, laid out in the dict's order: readers see a dict of named arrays, and
    an update of every array at once (Adam, the parameters' average) is a few operations on
    ``flat`` instead of a few per array, each a kernel launch on the GPU.

    The dict may be changed like any dict; ``flat_buffer()`` gives the buffer only while
    every entry is still its view (else None, and callers update array by array). A copy
    or pickle is a FlatArrays again, with its own buffer."""

    def __init__(self, arrays=(), zeros=False):
        """A copy of ``arrays`` (all of one dtype and device) in one new buffer; with
        ``zeros`` only their shapes are taken and the buffer is zero (one fill)."""
        arrays = dict(arrays)
        values = list(arrays.values())
        xp = get_xp(*values)
        dtype = values[0].dtype if values else np.dtype("float32")
        if any(a.dtype != dtype or get_xp(a) is not xp for a in values):
            raise ValueError("a FlatArrays holds arrays of one dtype on one device")
        total = sum(int(a.size) for a in values)
        self.flat = xp.zeros(total, dtype) if zeros else xp.empty(total, dtype)
        views, k = {}, 0
        for name, a in arrays.items():
            views[name] = self.flat[k:k + a.size].reshape(a.shape)
            if not zeros:
                views[name][...] = a
            k += int(a.size)
        super().__init__(views)
        self._views = tuple(views.items())

    @classmethod
    def of(cls, arrays, zeros=False):
        """A FlatArrays of ``arrays`` where they share a dtype and a device, else a dict of
        copies (zeros)."""
        try:
            return cls(arrays, zeros=zeros)
        except ValueError:
            xp_of = lambda a: get_xp(a)   # noqa: E731
            return {k: xp_of(a).zeros_like(a) if zeros else a.copy() for k, a in arrays.items()}

    def flat_buffer(self):
        """The buffer, while the dict still holds exactly its views in order; else None."""
        if len(self) != len(self._views):
            return None
        for (name, view), (key, value) in zip(self._views, self.items()):
            if key != name or value is not view:
                return None
        return self.flat

    def __reduce__(self):
        return (type(self), (dict(self),))


def flat_buffer(arrays):
    """The flat buffer of a FlatArrays (see FlatArrays.flat_buffer); None for other dicts."""
    return arrays.flat_buffer() if isinstance(arrays, FlatArrays) else None


def same_layout(a, b):
    """Whether two dicts of arrays are FlatArrays with intact buffers of one dtype and
    device, the same names in the same order and the same shapes: their buffers then
    line up element for element."""
    fa, fb = flat_buffer(a), flat_buffer(b)
    return (fa is not None and fb is not None and fa.dtype == fb.dtype
            and is_gpu_array(fa) == is_gpu_array(fb) and list(a) == list(b)
            and all(a[k].shape == b[k].shape for k in a))
