"""Finite-difference gradient checks: the proof that every backward pass is right.

For a scalar L = <out, dout> with a random upstream gradient dout, the
analytic gradient of an input x is compared with central differences

    dL/dx_k ~ (L(x + h e_k) - L(x - h e_k)) / (2h)

element by element for small tensors, and along random directions d for big
ones: <dL/dx, d> ~ (L(x + h d) - L(x - h d)) / (2h). The error reported is

    ||analytic - numeric|| / max(||analytic||, ||numeric||, tiny)

Everything runs in float64, where h = 1e-6 leaves errors near 1e-10.
"""
import numpy as np

from minicaps import backend

TINY = 1e-300


def relative_error(analytic, numeric):
    a, n = np.asarray(analytic, dtype=np.float64), np.asarray(numeric, dtype=np.float64)
    scale = max(np.linalg.norm(a), np.linalg.norm(n), TINY)
    return float(np.linalg.norm(a - n) / scale)


def numerical_gradient(f, x, h=1e-6):
    """Central differences of the scalar f() in every element of x (changed in place, restored)."""
    grad = np.zeros(x.shape)
    flat = x.reshape(-1)                       # a view: writing it moves x
    for k in range(flat.size):
        old = flat[k].item()
        flat[k] = old + h
        up = f()
        flat[k] = old - h
        down = f()
        flat[k] = old
        grad.reshape(-1)[k] = (up - down) / (2 * h)
    return grad


def directional_derivatives(f, x, directions, h=1e-6):
    """(f(x + h d) - f(x - h d)) / 2h for each direction d (x changed in place, restored)."""
    xp = backend.get_xp(x)
    old = x.copy()
    out = []
    for d in directions:
        x[...] = old + h * xp.asarray(d)
        up = f()
        x[...] = old - h * xp.asarray(d)
        down = f()
        out.append((up - down) / (2 * h))
    x[...] = old
    return np.array(out)


def check_array(f, x, analytic, h=1e-6, max_elements=256, n_directions=12, rng=None):
    """Relative error between ``analytic`` (dL/dx) and finite differences of f() in x.

    Element by element when x has at most max_elements entries, otherwise along
    n_directions random unit directions.
    """
    analytic = backend.to_numpy(analytic).astype(np.float64)
    if x.size <= max_elements:
        return relative_error(analytic, numerical_gradient(f, x, h))
    rng = rng if rng is not None else np.random.default_rng(0)
    directions = [d / np.linalg.norm(d) for d in rng.standard_normal((n_directions,) + x.shape)]
    numeric = directional_derivatives(f, x, directions, h)
    projected = np.array([(analytic * d).sum() for d in directions])
    return relative_error(projected, numeric)


def check_op(forward, backward, inputs, names=None, rng=None, h=1e-6, **kw):
    """Check an op pair on float64 inputs: {name: relative error} for each input.

    ``forward(*inputs) -> (out, cache)`` and ``backward(dout, cache) -> grads``
    (one per input, in order; a single array when there is one input).
    """
    rng = rng if rng is not None else np.random.default_rng(0)
    xp = backend.get_xp(*inputs)
    inputs = [xp.asarray(a, dtype=xp.float64) for a in inputs]
    names = names or [f"x{k}" for k in range(len(inputs))]
    out, cache = forward(*inputs)
    dout = xp.asarray(rng.standard_normal(np.shape(out)))
    grads = backward(dout, cache)
    if not isinstance(grads, (tuple, list)):
        grads = (grads,)

    def loss():
        return float((forward(*inputs)[0] * dout).sum())

    return {name: check_array(loss, x, g, h, rng=rng, **kw)
            for name, x, g in zip(names, inputs, grads)}


def check_model(model, x, y, h=1e-6, rng=None, **kw):
    """{parameter name: relative error} of model.loss_and_grads (as training calls it)
    against finite differences of model.loss. With routing_grad="stop" the finite
    differences hold the coupling coefficients at their routed values, which is the
    function that mode differentiates. A BaselineCNN's hold its dropout mask: the one of
    the training step checked (its dropout_step), as loss_and_grads drew it."""
    from minicaps.nn.cnn import BaselineCNN
    if model.dtype != np.float64:
        raise ValueError("gradient checks need a float64 model (dtype='float64')")
    if isinstance(model, BaselineCNN):
        step = model.dropout_step
        _, grads, _ = model.loss_and_grads(x, y, step=step)
        loss = lambda: model.loss(x, y, step=step)
    else:
        coupling = None
        if model.config.routing_grad == "stop":
            coupling = model.forward(x, y)[0]["coupling"]
        _, grads, _ = model.loss_and_grads(x, y)
        loss = lambda: model.loss(x, y, coupling)
    rng = rng if rng is not None else np.random.default_rng(0)
    return {name: check_array(loss, p, grads[name], h, rng=rng, **kw)
            for name, p in model.params.items()}


def format_table(rows, tol=None):
    """Markdown table of (what, input, relative error[, tolerance]) rows."""
    lines = ["| op / model | input | relative error | ok |", "| --- | --- | --- | --- |"]
    for what, name, err, limit in rows:
        lines.append(f"| {what} | {name} | {err:.2e} | {'yes' if err <= limit else 'NO'} (<= {limit:g}) |")
    return "\n".join(lines)


def _away_from_zero(rng, shape, margin=0.05):
    """Normal values pushed at least ``margin`` away from 0 (the ReLU kink)."""
    a = rng.standard_normal(shape)
    return np.where(a >= 0, a + margin, a - margin)


def routing_v(u_hat, *args, **kw):
    """routing_forward with v alone as its output (the coupling carries no gradient)."""
    from minicaps.ops import routing_forward
    (v, _), cache = routing_forward(u_hat, *args, **kw)
    return v, cache


def _distinct(rng, shape, gap=0.01):
    """Values at least ``gap`` apart (a shuffled ramp): no tie in a max-pooling window
    within a finite difference's step."""
    n = int(np.prod(shape))
    return rng.permutation((np.arange(n) - n / 2 + 0.5) * gap).reshape(shape)


def op_cases(rng, device="cpu"):
    """(op name, forward, backward, inputs, input names) for every reference op of the
    capsule network (minicaps.ops), small shapes; the inputs and the constants the
    forwards hold (labels, coupling, mask, target) on ``device``, so the same seed gives
    the same cases on the CPU and on the GPU."""
    from minicaps import ops
    from minicaps.backend import to_device
    x = rng.standard_normal((2, 7, 6, 3))
    u_hat = 0.5 * rng.standard_normal((2, 6, 3, 4))
    y = np.array([0, 2])
    lengths = np.array([[0.95, 0.3, 0.05], [0.5, 0.02, 0.7]])   # every branch, no kink
    coupling = ops.routing_forward(u_hat, 3)[0][1]
    target = rng.uniform(0, 1, (3, 5))
    mask = ops.one_hot(y, 3, np.float64)
    y, coupling, target, mask = (to_device(a, device) for a in (y, coupling, target, mask))
    cases = [
        ("conv2d (stride 1)", ops.conv2d_forward, ops.conv2d_backward,
         [x, rng.standard_normal((3, 2, 3, 4)), rng.standard_normal(4)], ["x", "W", "b"]),
        ("conv2d (stride 2)", lambda x, W, b: ops.conv2d_forward(x, W, b, 2), ops.conv2d_backward,
         [x, rng.standard_normal((3, 3, 3, 2)), rng.standard_normal(2)], ["x", "W", "b"]),
        ("relu", ops.relu_forward, ops.relu_backward, [_away_from_zero(rng, (4, 5))], ["x"]),
        ("dense", ops.dense_forward, ops.dense_backward,
         [rng.standard_normal((4, 5)), rng.standard_normal((5, 3)), rng.standard_normal(3)],
         ["x", "W", "b"]),
        ("sigmoid", ops.sigmoid_forward, ops.sigmoid_backward, [3 * rng.standard_normal((4, 5))], ["x"]),
        ("squash (eq. 1)", ops.squash_forward, ops.squash_backward,
         [rng.standard_normal((4, 3, 5))], ["s"]),
        ("squash with a zero s", ops.squash_forward, ops.squash_backward,
         [np.vstack([np.zeros((1, 4)), rng.standard_normal((2, 4))])], ["s"]),
        ("length", ops.length_forward, ops.length_backward, [rng.standard_normal((4, 3, 5))], ["v"]),
        ("primary capsules", lambda h: ops.primary_capsules_forward(h, 4),
         ops.primary_capsules_backward, [rng.standard_normal((2, 3, 3, 8))], ["conv_out"]),
        ("predictions u_hat (eq. 2)", ops.predictions_forward, ops.predictions_backward,
         [rng.standard_normal((3, 6, 5)), rng.standard_normal((6, 3, 4, 5))], ["u", "W"]),
        ("routing, 1 iteration", lambda u: routing_v(u, 1),
         ops.routing_backward, [u_hat], ["u_hat"]),
        ("routing, 3 iterations (full)", lambda u: routing_v(u, 3), ops.routing_backward,
         [u_hat], ["u_hat"]),
        ("routing, 3 iterations (stop)", lambda u: routing_v(u, 3, "stop", coupling=coupling),
         ops.routing_backward, [u_hat], ["u_hat"]),
        ("margin loss (eq. 4)", lambda l: ops.margin_loss_forward(l, y), ops.margin_loss_backward,
         [lengths], ["lengths"]),
        ("mask", lambda v: ops.mask_forward(v, mask), ops.mask_backward,
         [rng.standard_normal((2, 3, 4))], ["v"]),
        ("reconstruction loss", lambda r: ops.reconstruction_loss_forward(r, target),
         ops.reconstruction_loss_backward, [rng.uniform(0, 1, (3, 5))], ["reconstruction"]),
    ]
    return [(what, fwd, bwd, [to_device(a, device) for a in inputs], names)
            for what, fwd, bwd, inputs, names in cases]


def cnn_op_cases(rng, device="cpu"):
    """Cases like op_cases for the layers of the CNN baseline (minicaps/ops/cnn_layers.py):
    zero padding, SAME convolution (an odd and an even kernel, which pads one more zero
    after), 2x2 max-pooling (odd sizes leave a row and a column out; no ties), dropout
    with its mask held (a Generator seeded the same at each call), softmax cross-entropy
    with one label and with two (MultiMNIST's pairs)."""
    from minicaps import ops
    from minicaps.backend import to_device
    y = to_device(np.array([2, 0, 1, 2]), device)
    pairs = to_device(np.array([[2, 0], [0, 1], [1, 2], [2, 1]]), device)
    cases = [
        ("pad (zeros framing x)", lambda x: ops.pad_forward(x, (1, 2), (0, 3)),
         ops.pad_backward, [rng.standard_normal((2, 3, 4, 2))], ["x"]),
        ("conv2d SAME (3x3)", ops.conv2d_same_forward, ops.conv2d_same_backward,
         [rng.standard_normal((2, 5, 4, 3)), rng.standard_normal((3, 3, 3, 2)),
          rng.standard_normal(2)], ["x", "W", "b"]),
        ("conv2d SAME (2x4, even: a zero more after)", ops.conv2d_same_forward,
         ops.conv2d_same_backward, [rng.standard_normal((2, 4, 5, 2)),
                                    rng.standard_normal((2, 4, 2, 3)), rng.standard_normal(3)],
         ["x", "W", "b"]),
        ("max-pool 2x2 (5x7: last row, column out)", ops.max_pool_forward,
         ops.max_pool_backward, [_distinct(rng, (2, 5, 7, 3))], ["x"]),
        ("dropout 0.4 (mask held)",
         lambda x: ops.dropout_forward(x, 0.4, np.random.default_rng(7)),
         ops.dropout_backward, [rng.standard_normal((4, 6))], ["x"]),
        ("softmax cross-entropy", lambda z: ops.softmax_cross_entropy_forward(z, y),
         ops.softmax_cross_entropy_backward, [3 * rng.standard_normal((4, 3))], ["logits"]),
        ("softmax cross-entropy, two labels each", lambda z: ops.softmax_cross_entropy_forward(
            z, pairs), ops.softmax_cross_entropy_backward, [3 * rng.standard_normal((4, 3))],
         ["logits"]),
    ]
    return [(what, fwd, bwd, [to_device(a, device) for a in inputs], names)
            for what, fwd, bwd, inputs, names in cases]


def fast_op_cases(rng, device="cpu"):
    """Cases like op_cases for the fast ops that do more than their reference twin
    (minicaps.fast): the convolution in chunks of images and through the DFT, and
    predictions + routing a chunk of images at a time."""
    from minicaps import fast, ops
    from minicaps.backend import to_device
    x = rng.standard_normal((2, 7, 6, 3))

    coupling = to_device(ops.softmax_forward(rng.standard_normal((3, 6, 3)), axis=2), device)

    def digit_v(u, W, iters, grad, coupling=None):
        (v, _), cache = fast.digit_capsules_forward(u, W, iters, grad, coupling=coupling, chunk=1)
        return v, cache

    cases = [
        ("fast conv2d, GEMM a chunk of 1 image at a time (stride 2)",
         lambda x, W, b: fast.conv2d_forward(x, W, b, 2, chunk=1, method="gemm"),
         fast.conv2d_backward, [x, rng.standard_normal((3, 3, 3, 2)), rng.standard_normal(2)],
         ["x", "W", "b"]),
        ("fast conv2d by DFT (stride 1)",
         lambda x, W, b: fast.conv2d_forward(x, W, b, method="fft"), fast.conv2d_backward,
         [x, rng.standard_normal((3, 2, 3, 4)), rng.standard_normal(4)], ["x", "W", "b"]),
        ("fast conv2d by DFT (stride 2)",
         lambda x, W, b: fast.conv2d_forward(x, W, b, 2, method="fft"), fast.conv2d_backward,
         [x, rng.standard_normal((3, 3, 3, 2)), rng.standard_normal(2)], ["x", "W", "b"]),
        ("fast predictions + routing in chunks (full, 3 it.)",
         lambda u, W: digit_v(u, W, 3, "full"), fast.digit_capsules_backward,
         [0.5 * rng.standard_normal((3, 6, 5)), rng.standard_normal((6, 3, 4, 5))], ["u", "W"]),
        ("fast predictions + routing in chunks (stop, coupling held)",
         lambda u, W: digit_v(u, W, 3, "stop", coupling), fast.digit_capsules_backward,
         [0.5 * rng.standard_normal((3, 6, 5)), rng.standard_normal((6, 3, 4, 5))], ["u", "W"]),
    ]
    return [(what, fwd, bwd, [to_device(a, device) for a in inputs], names)
            for what, fwd, bwd, inputs, names in cases]


def tiny_config(**overrides):
    """A CapsNet small enough to check element by element in seconds."""
    from minicaps.nn.capsnet import CapsNetConfig
    cfg = dict(input_shape=(10, 10, 1), conv1_channels=4, conv1_kernel=3, primary_maps=2,
               primary_dims=4, primary_kernel=3, primary_stride=2, num_classes=3, digit_dims=4,
               decoder_sizes=(6,), recon_weight=0.05)
    cfg.update(overrides)
    return CapsNetConfig(**cfg)


def tiny_cnn_config(**overrides):
    """A CNN baseline small enough to check element by element: two 3x3 SAME convolutions,
    a max-pool after the first, two dense layers, dropout 0.3, 3 classes."""
    from minicaps.nn.cnn import CNNConfig
    cfg = dict(input_shape=(6, 6, 2), conv_channels=(3, 4), conv_kernel=3, pool_after=(1,),
               fc_sizes=(5, 4), dropout=0.3, num_classes=3)
    cfg.update(overrides)
    return CNNConfig(**cfg)


# The CNN baselines report() checks: (what the rows say, tiny_cnn_config's overrides)
CNN_MODELS = (("BaselineCNN (3x3, pool 1, dropout 0.3)", {}),
              ("BaselineCNN (2x2 even, 7x5 in, pools 1 and 2, dropout 0.5)",
               {"conv_kernel": 2, "input_shape": (7, 5, 1), "pool_after": (1, 2),
                "fc_sizes": (8, 6), "dropout": 0.5}))


def randomize_params(model, rng):
    """Parameters of order one, biases included, for gradient checks.

    A freshly initialised model has zero biases and tiny capsules, so many
    ReLU inputs sit within h of the kink at 0 where finite differences are
    meaningless; random biases move them away.
    """
    for name, p in model.params.items():
        fan_in = p.shape[-1] if name == "digit.W" else (int(np.prod(p.shape[:-1])) if p.ndim > 1 else 1)
        scale = 0.3 if name.endswith(".b") else 1.0 / np.sqrt(fan_in)
        p[...] = model.xp.asarray(rng.normal(0.0, scale, p.shape))
    return model


def report(seed=0, op_tol=1e-7, model_tol=1e-5, model_routing=(("full", 1), ("full", 3), ("stop", 3)),
           models=("capsnet", "cnn")):
    """Rows (what, input, error, tolerance) of the networks named in ``models``.
    "capsnet": every reference op of the capsule network, the fast ops that do more than
    their twin, and every parameter of tiny CapsNets, reference and fast. "cnn": the CNN
    baseline's layers and every parameter of tiny CNN baselines (CNN_MODELS), each at a
    training step with its dropout mask."""
    from minicaps.nn.cnn import BaselineCNN
    from minicaps.nn.capsnet import CapsNet
    from minicaps.nn.registry import build_model
    unknown = set(models) - {"capsnet", "cnn"}
    if unknown or not models:
        raise ValueError(f"models must name capsnet and/or cnn, got {models!r}")
    rng = np.random.default_rng(seed)
    rows = []
    cases = ((op_cases(rng) + fast_op_cases(rng) if "capsnet" in models else [])
             + (cnn_op_cases(rng) if "cnn" in models else []))
    for what, fwd, bwd, inputs, names in cases:
        for name, err in check_op(fwd, bwd, inputs, names, rng=rng).items():
            rows.append((what, name, err, op_tol))
    for mode, iters in (model_routing if "capsnet" in models else ()):
        config = tiny_config(routing_grad=mode, routing_iters=iters)
        reference = CapsNet(config, seed=seed, dtype="float64")
        randomize_params(reference, rng)
        x = rng.uniform(0, 1, (3,) + config.input_shape)
        y = rng.integers(0, config.num_classes, 3)
        for model in (reference, build_model(config, dtype="float64", params=reference.params)):
            for name, err in check_model(model, x, y, rng=rng).items():
                rows.append((f"CapsNet {model.impl} ({mode}, {iters} it.)", name, err, model_tol))
    for what, overrides in (CNN_MODELS if "cnn" in models else ()):
        reference = randomize_params(BaselineCNN(tiny_cnn_config(**overrides), seed=seed,
                                                 dtype="float64"), rng)
        x = rng.uniform(0, 1, (3,) + reference.config.input_shape)
        labels = (np.array([0, 2, 1]), np.array([[0, 2], [2, 1], [1, 0]]))   # one, two each
        for model in (reference, build_model(reference.config, seed=seed, dtype="float64",
                                             params=reference.params)):
            for y in labels:
                model.dropout_step = 3          # a mask of a later step than the first
                for name, err in check_model(model, x, y, rng=rng).items():
                    rows.append((f"{what}, {model.impl}, {y.ndim} label{'s' * (y.ndim > 1)}",
                                 name, err, model_tol))
    return rows
