"""Adam (Kingma & Ba), in the form TensorFlow implements it, as the paper used.

    t += 1
    m = beta1 m + (1 - beta1) g
    v = beta2 v + (1 - beta2) g^2
    lr_t = lr sqrt(1 - beta2^t) / (1 - beta1^t)
    p -= lr_t m / (sqrt(v) + eps)

State is keyed by parameter name like the parameters and the gradients. Where the
parameters are views into one flat buffer (backend.FlatArrays, as a model's are), the
moments are too, laid out alike, and on the GPU the whole update is one kernel over the
buffers (ADAM_KERNEL, the formula of Adam._update in CUDA C), the gradients first gathered
into one buffer: two launches a step whatever the number of parameter arrays, where the
update array by array took 12 each. On the CPU the update goes block by block over the
threads (Blockwise), array by array as the gradients come.
"""
import math
import sys

from minicaps import backend
from minicaps.backend import get_xp
from minicaps.values import is_finite_real, is_int, is_real


class Blockwise:
    """Elementwise updates of many arrays, on the CPU a block of BLOCK elements at a time.

    The block of every array of a group, and the scratch (each 256 KB in float32), stays
    in the core's cache through all the passes of the update, so each array crosses the
    memory bus once instead of once per pass. The blocks are shared out over the cores
    (backend.parallel_map), each core with its own scratch; every element is computed
    the same way whichever core takes it, so the result equals the whole-array update
    bit for bit. GPU arrays (and non-contiguous ones) are updated whole.
    """
    BLOCK = 2 ** 16

    def __init__(self):
        self._work = {}       # scratch per thread, reused from one call to the next

    def __call__(self, update, groups):
        """update(*arrays, w) for every group of same-shaped arrays in ``groups``, ``w``
        scratch shaped like them."""
        blocks = []
        for arrays in groups:
            if backend.is_gpu_array(arrays[0]) or not all(a.flags.c_contiguous for a in arrays):
                update(*arrays, self._scratch(0, arrays[0]))      # whole arrays
                continue
            flat = [a.reshape(-1) for a in arrays]                 # views: contiguous
            blocks += [[a[k:k + self.BLOCK] for a in flat]
                       for k in range(0, flat[0].size, self.BLOCK)]
        if blocks:
            parts = min(len(blocks), backend.cpu_threads())

            def update_part(i):
                for block in blocks[i::parts]:
                    update(*block, self._scratch(i, block[0]))

            backend.parallel_map(update_part, range(parts))

    def _scratch(self, i, p):
        """Work array number ``i`` shaped like p."""
        xp = get_xp(p)
        w = self._work.get(i)
        if w is None or w.size < p.size or w.dtype != p.dtype or get_xp(w) is not xp:
            w = self._work[i] = xp.empty(p.size, dtype=p.dtype)
        return w[:p.size].reshape(p.shape)


def _laid_out(params, arrays):
    """A FlatArrays laid out as the flat ``params``, holding ``arrays`` (same names) where
    it has them and zeros elsewhere."""
    flat = backend.FlatArrays(params, zeros=True)          # one fill
    for name, a in arrays.items():
        if name in flat:
            flat[name][...] = a
    return flat


def _gathered(grads, params):
    """The gradients in one flat buffer laid out as the flat ``params``: the buffer of
    ``grads`` itself when it is one, else one concatenation (a kernel on the GPU)."""
    if backend.same_layout(grads, params):
        return grads.flat
    flat = backend.flat_buffer(params)
    xp = get_xp(flat)
    return xp.concatenate([grads[name].reshape(-1) for name in params]).astype(flat.dtype,
                                                                               copy=False)


# The GPU's update of a whole flat buffer in one kernel: the formulas of Adam._update and
# ParameterAverage.update operation for operation (so rounding for rounding: the kernel
# does not contract to multiply-adds, see backend.ElementwiseKernel).
ADAM_KERNEL = backend.ElementwiseKernel(
    "T g, T b1, T one_minus_b1, T b2, T one_minus_b2, T lr_t, T eps", "T p, T m, T v",
    "m = m * b1 + g * one_minus_b1;"
    "v = v * b2 + g * g * one_minus_b2;"
    "p = p - m / (sqrt(v) + eps) * lr_t;",
    "minicaps_adam")
AVERAGE_KERNEL = backend.ElementwiseKernel(
    "T p, T d, T one_minus_d", "T avg",
    "avg = avg * d + p * one_minus_d;",
    "minicaps_average")


MAX_STEPS = 2 ** 53          # counts of steps stay exact as floats below this


class NonFiniteGradientError(ValueError):
    """A gradient held NaN or infinite values: Adam.step left the parameters as they were."""


def _is_float(value):
    """A real number a float can hold (10**400 is a real number, but no float): NaN and
    inf included, bool excluded."""
    return is_real(value) and not (is_int(value) and abs(value) > sys.float_info.max)


def check_hyper_parameters(lr, beta1, beta2, eps):
    """ValueError naming the first of Adam's hyper-parameters out of its range: the one
    check of Adam() and Adam.load_state_dict."""
    if not (_is_float(lr) and is_finite_real(lr) and lr > 0):
        raise ValueError(f"Adam needs a finite positive learning rate, got lr={lr!r}")
    for name, beta in (("beta1", beta1), ("beta2", beta2)):
        if not (_is_float(beta) and is_finite_real(beta) and 0 <= beta < 1):
            raise ValueError(f"Adam betas must lie in [0, 1), got {name}={beta!r}")
    if not (_is_float(eps) and is_finite_real(eps) and eps > 0):   # sqrt(v) + eps divides
        raise ValueError(f"Adam needs a finite positive eps, got eps={eps!r}")


def _plain_array_type(p):
    """The array type gradients and moments of the parameter p must have exactly:
    numpy.ndarray on the CPU, cupy.ndarray on the GPU. Subclasses are refused: a matrix
    stays 2-D through every operation (and fails the in-place update half-way), a masked
    array hides NaN from the finiteness check and hands it to the update."""
    return get_xp(p).ndarray


def check_gradient_shapes(params, grads, what="gradient"):
    """ValueError unless every parameter has a gradient of its own array type (exactly),
    shape and dtype, no gradient names another parameter, and every parameter can be
    written: the update writes each gradient into its parameter in place, so one that does
    not fit would fail after the others were changed. Only the arrays' headers are read.
    (``what``: "parameter" when the average checks the parameters against itself.)"""
    given = "grads" if what == "gradient" else "params"
    if not isinstance(grads, dict):
        raise ValueError(f"{given} must be a dict of arrays keyed like the parameters, got "
                         f"{type(grads).__name__}")
    missing, unknown = set(params) - set(grads), set(grads) - set(params)
    if missing:
        raise ValueError(f"no {what} for parameters {sorted(missing)}: nothing was updated")
    if unknown:
        raise ValueError(f"{given} names parameters the model lacks: {sorted(unknown)}: "
                         f"nothing was updated")
    for name, p in params.items():
        g, label = grads[name], (f"the gradient of {name}" if what == "gradient"
                                 else f"the parameter {name}")
        if type(g) is not _plain_array_type(p):
            raise ValueError(f"{label} is a {type(g).__module__}."
                             f"{type(g).__name__}, expected a plain "
                             f"{_plain_array_type(p).__module__}.ndarray like the "
                             f"parameter: nothing was updated")
        if g.shape != p.shape or g.dtype != p.dtype:
            raise ValueError(f"{label} is {g.shape} {g.dtype}, expected {p.shape} "
                             f"{p.dtype} like the parameter: nothing was updated")
        if not getattr(getattr(p, "flags", None), "writeable", True):
            raise ValueError(f"the parameter {name} is read-only (flags.writeable is False): "
                             f"nothing was updated; give arrays that can be written")


def check_gradients(params, grads):
    """NonFiniteGradientError naming the first parameter whose gradient holds NaN or inf.
    One sum over the flat gradient buffer (or one per array) screens them all, as a NaN or
    inf anywhere makes it non-finite; only then is each array looked at, so a sum that
    merely overflowed lets finite gradients through."""
    flat = grads.flat if backend.same_layout(grads, params) else None
    screened = [flat] if flat is not None else [grads[name] for name in params]
    if all(math.isfinite(float(get_xp(g).sum(g))) for g in screened):
        return
    for name in params:
        g = grads[name]
        if not bool(get_xp(g).isfinite(g).all()):
            raise NonFiniteGradientError(
                f"the gradient of {name} holds NaN or infinite values: the parameters were "
                f"not updated (the loss diverged, or the gradients given are wrong)")


def check_moments(moments):
    """ValueError unless ``moments`` (name -> (m, v)) pairs two plain float arrays of one
    shape, dtype and array type per parameter."""
    for name, (m, v) in moments.items():
        for key, a in ((f"m/{name}", m), (f"v/{name}", v)):
            if not (type(a) is _plain_array_type(a)
                    and get_xp(a).issubdtype(a.dtype, get_xp(a).floating)):
                found = f"{a.dtype} array" if hasattr(a, "dtype") else type(a).__name__
                raise ValueError(f"the optimizer moment {key} is a {found}, expected a "
                                 f"plain float numpy or cupy array")
        if type(m) is not type(v) or m.shape != v.shape or m.dtype != v.dtype:
            raise ValueError(f"the optimizer moment v/{name} is {v.shape} {v.dtype}, "
                             f"expected {m.shape} {m.dtype} like m/{name}")


def check_moments_fit(params, m, v):
    """ValueError unless the moments held for each parameter have its array type, shape
    and dtype: checked before a step writes anything."""
    for name, p in params.items():
        if name in m and (type(m[name]) is not type(p) or m[name].shape != p.shape
                          or m[name].dtype != p.dtype):
            raise ValueError(f"the optimizer moments of {name} are {m[name].shape} "
                             f"{m[name].dtype}, expected {p.shape} {p.dtype} like the "
                             f"parameter (from another model?): nothing was updated")


class Adam:
    def __init__(self, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8):
        check_hyper_parameters(lr, beta1, beta2, eps)
        self.lr, self.beta1, self.beta2, self.eps = lr, beta1, beta2, eps
        self.t = 0
        self.m, self.v = {}, {}
        self._blockwise = Blockwise()     # scratch of the updates, never part of the state

    BLOCK = Blockwise.BLOCK

    def step(self, params, grads):
        """Update every array of ``params`` in place from ``grads`` (same keys), block
        by block on the CPU (Blockwise). Every operation writes into m, v, p or the
        scratch: no temporaries the size of the parameters. Flat parameters on the GPU
        (backend.FlatArrays) take one fused kernel over the whole buffers.
        Gradients on the CPU holding NaN or inf are refused before anything changes
        (check_gradients); on a GPU that check would wait for the device every step, so
        there training finds a divergence by its loss instead.
        """
        check_gradient_shapes(params, grads)
        check_moments_fit(params, self.m, self.v)
        if params and not backend.is_gpu_array(next(iter(params.values()))):
            check_gradients(params, grads)
        self.t += 1
        b1, b2 = self.beta1, self.beta2
        lr_t = self.lr * math.sqrt(1 - b2 ** self.t) / (1 - b1 ** self.t)
        self._make_moments(params)
        flat = backend.flat_buffer(params)
        if flat is not None and backend.is_gpu_array(flat):
            g = _gathered(grads, params)
            ADAM_KERNEL(g, b1, 1 - b1, b2, 1 - b2, lr_t, self.eps,
                        flat, self.m.flat, self.v.flat)
            return
        if flat is None and params and backend.is_gpu_array(next(iter(params.values()))):
            for name, p in params.items():            # GPU arrays one by one: a kernel each
                ADAM_KERNEL(grads[name], b1, 1 - b1, b2, 1 - b2, lr_t, self.eps,
                            p, self.m[name], self.v[name])
            return
        self._blockwise(lambda p, g, m, v, w: self._update(p, g, m, v, lr_t, w),
                        [(p, grads[name], self.m[name], self.v[name]) for name, p in params.items()])

    def _make_moments(self, params):
        """Zero moments for parameters that have none yet; for flat parameters, moments
        laid out as they are (those a checkpoint brought copied in, the first time)."""
        if backend.flat_buffer(params) is not None:
            if not (backend.same_layout(params, self.m) and backend.same_layout(params, self.v)):
                self.m, self.v = _laid_out(params, self.m), _laid_out(params, self.v)
            return
        for name, p in params.items():
            if name not in self.m:
                xp = get_xp(p)
                self.m[name] = xp.zeros_like(p)
                self.v[name] = xp.zeros_like(p)

    def _update(self, p, g, m, v, lr_t, w):
        """The Adam update of one block of (flat) p, with its gradient g and moments m, v;
        ``w`` is scratch shaped like p."""
        xp = get_xp(p)
        b1, b2 = self.beta1, self.beta2
        m *= b1                                   # m = beta1 m + (1 - beta1) g
        m += xp.multiply(g, 1 - b1, out=w)
        v *= b2                                   # v = beta2 v + (1 - beta2) g^2
        w = xp.multiply(g, g, out=w)
        w *= 1 - b2
        v += w
        w = xp.sqrt(v, out=w)                     # p -= lr_t m / (sqrt(v) + eps)
        w += self.eps
        w = xp.divide(m, w, out=w)
        w *= lr_t
        p -= w

    def state_dict(self):
        """Hyper-parameters, step count and moments (arrays keyed "m/<name>", "v/<name>")."""
        arrays = {f"m/{k}": a for k, a in self.m.items()}
        arrays.update({f"v/{k}": a for k, a in self.v.items()})
        return {"lr": self.lr, "beta1": self.beta1, "beta2": self.beta2, "eps": self.eps,
                "t": self.t}, arrays

    def load_state_dict(self, hyper, arrays):
        """The state of state_dict() back; ValueError, the state left as it was, when a
        field is missing or out of range (as Adam() checks), or the moments do not pair
        up (check_moments). Whether they fit the parameters, step checks."""
        fields = ("lr", "beta1", "beta2", "eps", "t")
        missing = [f for f in fields if f not in hyper]
        if missing:
            raise ValueError(f"the optimizer state lacks the fields {missing}")
        lr, beta1, beta2, eps, t = (hyper[f] for f in fields)
        check_hyper_parameters(lr, beta1, beta2, eps)
        if not (is_int(t) and 0 <= t < MAX_STEPS):
            raise ValueError(f"the optimizer state's t (steps taken) must be a whole "
                             f"number from 0 to below 2**53, got t={t!r}")
        unknown = [k for k in arrays if k[:2] not in ("m/", "v/")]
        if unknown:
            raise ValueError(f"unexpected optimizer entries {unknown}: expected m/<name> "
                             f"and v/<name>")
        m = {k[2:]: a for k, a in arrays.items() if k.startswith("m/")}
        v = {k[2:]: a for k, a in arrays.items() if k.startswith("v/")}
        unpaired = sorted(set(m) ^ set(v))
        if unpaired:
            name = unpaired[0]
            raise ValueError(f"the optimizer moment {'v' if name in m else 'm'}/{name} is "
                             f"missing: m/<name> and v/<name> come in pairs")
        check_moments({name: (m[name], v[name]) for name in m})
        for name in m:
            xp = get_xp(m[name])
            if not (bool(xp.isfinite(m[name]).all()) and bool(xp.isfinite(v[name]).all())
                    and bool((v[name] >= 0).all())):
                raise ValueError(f"the optimizer moments of {name} hold NaN, infinite or "
                                 f"(in v) negative values: not a state Adam could reach")
        self.lr, self.beta1, self.beta2, self.eps = lr, beta1, beta2, eps
        self.t, self.m, self.v = int(t), m, v


class ParameterAverage:
    """An exponential moving average of the parameters (Polyak averaging), kept beside
    training and used only to evaluate; as tf.train.ExponentialMovingAverage with
    num_updates:

        d_t = min(decay, (1 + t) / (10 + t))        t: the updates made so far
        avg = d_t avg + (1 - d_t) p                 after every optimizer step

    The averages are keyed by parameter name like the parameters.
    """

    def __init__(self, params, decay=0.999):
        if not (_is_float(decay) and 0 < decay < 1):
            raise ValueError(f"the average's decay must be a number in (0, 1), "
                             f"got decay={decay!r}")
        self.decay = decay
        self.params = backend.FlatArrays.of(params)      # one buffer, when it can be
        self._blockwise = Blockwise()

    def rate(self, t):
        """d_t: the weight of the old average after update number t (counting from 1)."""
        return min(self.decay, (1 + t) / (10 + t))

    def update(self, params, t):
        """Move every average towards the current ``params`` with weight 1 - d_t: block by
        block over the threads on the CPU (Blockwise), over the whole buffer when the
        average and ``params`` are flat alike (backend.FlatArrays); one kernel on the GPU
        then."""
        if not (is_int(t) and 0 <= t < MAX_STEPS):
            raise ValueError(f"the update count t must be a whole number from 0 to below "
                             f"2**53, got t={t!r}")
        check_gradient_shapes(self.params, params, what="parameter")
        d = self.rate(t)     # (NaN parameters are training's to catch: its loss says so)
        if backend.flat_buffer(params) is not None and not backend.same_layout(params, self.params):
            self.params = _laid_out(params, self.params)     # as the parameters, once
        if backend.same_layout(params, self.params):
            pairs = [(self.params.flat, backend.flat_buffer(params))]
        else:
            pairs = [(avg, params[name]) for name, avg in self.params.items()]
        if backend.is_gpu_array(pairs[0][0]) if pairs else False:
            for avg, p in pairs:
                AVERAGE_KERNEL(p, d, 1 - d, avg)
            return

        def move(avg, p, w):
            avg *= d
            avg += get_xp(p).multiply(p, 1 - d, out=w)

        self._blockwise(move, pairs)
