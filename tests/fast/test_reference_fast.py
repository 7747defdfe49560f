"""The fast path against the reference path, in float64: every fast op (minicaps.fast)
against its twin in minicaps.ops, and the whole fast model against the reference model,
outputs and every parameter's gradient, relative error <= 1e-10. The reference ops are
checked against finite differences (test_ops.py); these tests carry that to the fast ones."""
import copy
import inspect
import itertools

import numpy as np
import pytest
from hypothesis import given, strategies as st

import minicaps as mc
from minicaps import backend, fast, ops
from minicaps.fast.model import FastCapsNet
from minicaps.gradcheck import randomize_params, relative_error, tiny_config
from minicaps.nn.cnn import CNNConfig
from minicaps.nn.multi_label import MultiLabelCapsNet
from minicaps.nn.registry import build_model

TOL = 1e-10
seeds = st.integers(0, 2**32 - 1)


def assert_close(got, want, what=""):
    got, want = backend.to_numpy(got), backend.to_numpy(want)
    assert got.shape == want.shape, (what, got.shape, want.shape)
    assert relative_error(got, want) <= TOL, (what, relative_error(got, want))


def assert_all_close(got, want, names):
    for name, g, w in zip(names, got, want):
        assert_close(g, w, name)


# ------------------------------------------------------------------ the ops that are the same
def test_ops_without_a_fast_twin_are_the_reference_ops_themselves():
    for name in ("squash_forward", "squash_backward", "length_forward", "length_backward",
                 "primary_capsules_forward", "primary_capsules_backward", "dense_forward",
                 "dense_backward", "sigmoid_forward", "sigmoid_backward", "one_hot",
                 "margin_loss_forward", "margin_loss_backward", "mask_forward", "mask_backward",
                 "reconstruction_loss_forward", "reconstruction_loss_backward",
                 "conv_output_size"):
        assert getattr(fast, name) is getattr(ops, name), name


def test_every_fast_op_takes_its_reference_twins_arguments():
    """A fast twin is called as its reference op is (same parameters, in the same order, with
    the same defaults); what it adds (chunks, routes, out=) comes after, with a default."""
    import inspect
    from minicaps.fast import cnn as fast_cnn, fused
    twins = 0
    for name in dir(ops):
        reference = getattr(ops, name)
        for module in (fast, fused, fast_cnn):
            twin = getattr(module, name, None)
            if not callable(reference) or not callable(twin) or twin is reference:
                continue
            ref = list(inspect.signature(reference).parameters.values())
            got = list(inspect.signature(twin).parameters.values())
            assert [(p.name, p.default) for p in got[:len(ref)]] == [
                (p.name, p.default) for p in ref], (module.__name__, name)
            assert all(p.default is not p.empty for p in got[len(ref):]), (module.__name__, name)
            twins += 1
    assert twins >= 20


# ------------------------------------------------------------------ convolution
@pytest.mark.parametrize("route, chunk", [("gemm", None), ("gemm", 1), ("fft", None)])
@given(seed=seeds, n=st.integers(1, 3), h=st.integers(1, 10), w=st.integers(1, 10),
       c_in=st.integers(1, 3), c_out=st.integers(1, 3), kh=st.integers(1, 4),
       kw=st.integers(1, 4), stride=st.integers(1, 3))
def test_fast_conv2d_is_the_reference_conv2d(route, chunk, seed, n, h, w, c_in, c_out, kh, kw,
                                             stride):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, h, w, c_in))
    W = rng.standard_normal((min(kh, h), min(kw, w), c_in, c_out))
    b = rng.standard_normal(c_out)
    out, cache = fast.conv2d_forward(x, W, b, stride, chunk=chunk, method=route)
    ref, ref_cache = ops.conv2d_forward(x, W, b, stride)
    assert_close(out, ref, "out")
    dout = rng.standard_normal(out.shape)
    want = ops.conv2d_backward(dout, ref_cache)
    assert_all_close(fast.conv2d_backward(dout, cache), want, ["dx", "dW", "db"])
    dx, dW, db = fast.conv2d_backward(dout, cache, need_dx=False)
    assert dx is None
    assert_all_close((dW, db), want[1:], ["dW", "db"])


def test_fast_conv2d_with_a_kept_spectrum_is_the_reference_conv2d(rng):
    x, W, b = rng.standard_normal((3, 11, 10, 4)), rng.standard_normal((5, 4, 4, 3)), rng.standard_normal(3)
    plan = fast.conv_fft.dft_plan(x.shape, W.shape, 2, W)
    out, _ = fast.conv2d_forward(x, W, b, 2, training=False,
                                 spectrum=fast.conv_fft.weight_spectrum(W, plan))
    assert_close(out, ops.conv2d_forward(x, W, b, 2)[0])


@given(seed=seeds, h=st.integers(1, 9), w=st.integers(1, 9), k=st.integers(1, 3),
       stride=st.integers(1, 3))
def test_fast_im2col_and_col2im_are_the_reference_ones(seed, h, w, k, stride):
    rng = np.random.default_rng(seed)
    k = min(k, h, w)
    x = rng.standard_normal((2, h, w, 3))
    cols = ops.im2col(x, k, k, stride)
    np.testing.assert_array_equal(fast.im2col(x, k, k, stride), cols)
    np.testing.assert_array_equal(fast.im2col(x, k, k, stride, out=np.empty_like(cols)), cols)
    y = rng.standard_normal(cols.shape)
    assert_close(fast.col2im(y, x.shape, stride), ops.col2im(y, x.shape, stride))
    assert_close(fast.col2im(y, x.shape, stride, out=np.zeros(x.shape)),
                 ops.col2im(y, x.shape, stride))


# ------------------------------------------------------------------ ReLU, products in place
def test_in_place_relu_and_matmul_into_are_the_reference_ones(rng):
    x = rng.standard_normal((4, 5, 6))
    y, cache = ops.relu_forward(x)
    dout = rng.standard_normal(x.shape)
    dx = ops.relu_backward(dout, cache)
    y_fast, cache_fast = fast.relu_forward(x.copy(), out=None)
    np.testing.assert_array_equal(y_fast, y)
    overwritten = x.copy()
    y_in_place, cache_in_place = fast.relu_forward(overwritten, out=overwritten)
    assert y_in_place is overwritten
    np.testing.assert_array_equal(y_in_place, y)
    np.testing.assert_array_equal(fast.relu_backward(dout, cache_fast), dx)
    d = dout.copy()
    assert fast.relu_backward(d, cache_in_place, out=d) is d
    np.testing.assert_array_equal(d, dx)
    a, b = rng.standard_normal((3, 4, 5)), rng.standard_normal((3, 5, 2))
    out = np.empty((3, 2, 4)).transpose(0, 2, 1)                 # a strided target
    fast.matmul_into(a, b, out=out)
    assert_close(out, a @ b)


# ------------------------------------------------------------------ predictions and routing
@given(seed=seeds, n=st.integers(1, 4), i=st.integers(1, 7), j=st.integers(1, 4),
       d_in=st.integers(1, 4), d_out=st.integers(1, 4))
def test_fast_predictions_are_the_reference_predictions(seed, n, i, j, d_in, d_out):
    rng = np.random.default_rng(seed)
    u, W = rng.standard_normal((n, i, d_in)), rng.standard_normal((i, j, d_out, d_in))
    u_hat, cache = fast.predictions_forward(u, W)
    ref, ref_cache = ops.predictions_forward(u, W)
    assert_close(u_hat, ref)
    du_hat = rng.standard_normal(ref.shape)
    assert_all_close(fast.predictions_backward(du_hat, cache),
                     ops.predictions_backward(du_hat, ref_cache), ["du", "dW"])


def test_fast_softmax_and_the_routing_sums_are_the_reference_einsums(rng):
    N, I, J, D = 2, 5, 3, 4
    u_hat = rng.standard_normal((N, I, J, D))
    b = rng.standard_normal((N, J, I)).transpose(0, 2, 1)       # the fast layout
    c = fast.softmax_forward(b, axis=2)
    assert_close(c, ops.softmax_forward(np.ascontiguousarray(b), axis=2))
    dc = rng.standard_normal(c.shape)
    assert_close(fast.softmax_backward(dc, c, axis=2), ops.softmax_backward(dc, c, axis=2))
    v = rng.standard_normal((N, J, D))
    assert_close(fast.weighted_sum(c, u_hat), np.einsum("nij,nijd->njd", c, u_hat))
    assert_close(fast.agreement(u_hat, v), np.einsum("nijd,njd->nij", u_hat, v))
    alphas = [rng.standard_normal((N, J, I)).transpose(0, 2, 1) for _ in range(3)]
    betas = [rng.standard_normal((N, J, D)) for _ in range(3)]
    assert_close(fast.outer_sums(alphas, betas, like=u_hat),
                 sum(np.einsum("nij,njd->nijd", a, b) for a, b in zip(alphas, betas)))


@given(seed=seeds, iters=st.integers(1, 4), n=st.integers(1, 3), i=st.integers(1, 6),
       j=st.integers(1, 4), d=st.integers(1, 4), scale=st.floats(0.1, 3.0),
       routing_grad=st.sampled_from(["full", "stop"]), frozen=st.booleans())
def test_fast_routing_is_the_reference_routing(seed, iters, n, i, j, d, scale, routing_grad,
                                              frozen):
    rng = np.random.default_rng(seed)
    u_hat = scale * rng.standard_normal((n, i, j, d))
    coupling = ops.softmax_forward(rng.standard_normal((n, i, j)), axis=2) if frozen else None
    (v, c), cache = fast.routing_forward(u_hat, iters, routing_grad, coupling=coupling)
    (v_ref, c_ref), ref_cache = ops.routing_forward(u_hat, iters, routing_grad, coupling=coupling)
    assert_close(v, v_ref, "v")
    assert_close(c, c_ref, "coupling")
    dv = rng.standard_normal(v.shape)
    assert_close(fast.routing_backward(dv, cache), ops.routing_backward(dv, ref_cache), "du_hat")


@pytest.mark.parametrize("threads", ["1", "3"])
@pytest.mark.parametrize("routing_grad, frozen", [("full", False), ("stop", False), ("stop", True)])
def test_fast_digit_capsules_are_reference_predictions_then_routing(rng, monkeypatch, threads,
                                                                    routing_grad, frozen):
    monkeypatch.setenv("MINICAPS_THREADS", threads)
    u, W = rng.standard_normal((5, 6, 3)), rng.standard_normal((6, 4, 2, 3))
    coupling = ops.softmax_forward(rng.standard_normal((5, 6, 4)), axis=2) if frozen else None
    (v, c), cache = fast.digit_capsules_forward(u, W, 3, routing_grad, coupling=coupling, chunk=2)
    u_hat, pred_cache = ops.predictions_forward(u, W)
    (v_ref, c_ref), route_cache = ops.routing_forward(u_hat, 3, routing_grad, coupling=coupling)
    assert_close(v, v_ref, "v")
    assert_close(c, c_ref, "coupling")
    dv = rng.standard_normal(v.shape)
    assert_all_close(fast.digit_capsules_backward(dv, cache),
                     ops.predictions_backward(ops.routing_backward(dv, route_cache), pred_cache),
                     ["du", "dW"])


# ------------------------------------------------------------------ the whole model
OUTPUTS = ("lengths", "v", "coupling", "reconstruction", "margin_loss", "reconstruction_loss",
           "loss")


def the_two_models(config, seed=0, device="cpu", conv_method="auto"):
    """The reference network and the fast one with the same parameters; the fast one's
    routes by the fixed rules unless ``conv_method`` says otherwise (the measured routes:
    tests/fast/test_plans.py)."""
    reference = mc.CapsNet(config, seed=seed, dtype="float64", device=device)
    randomize_params(reference, np.random.default_rng(seed))    # capsules of order one
    return reference, build_model(config, dtype="float64", device=device,
                                  params=reference.params, conv_method=conv_method)


def assert_same_model(reference, fast_model, x, y):
    loss_r, grads_r, out_r = reference.loss_and_grads(x, y)
    loss_f, grads_f, out_f = fast_model.loss_and_grads(x, y)
    assert set(out_f) == set(out_r) and set(grads_f) == set(grads_r) == set(reference.params)
    for name in OUTPUTS:
        if name in out_r:
            assert_close(np.asarray(backend.to_numpy(out_f[name])),
                         np.asarray(backend.to_numpy(out_r[name])), name)
    for name in grads_r:
        assert_close(grads_f[name], grads_r[name], name)
    assert_close(np.float64(loss_f), np.float64(loss_r), "loss")


CASES = [dict(routing_grad=grad, routing_iters=iters, use_decoder=decoder, primary_relu=relu,
              input_shape=shape)
         for (grad, iters), decoder, relu, shape in itertools.product(
             [("full", 1), ("full", 3), ("stop", 1), ("stop", 3)], [True, False], [False, True],
             [(10, 10, 1), (9, 12, 3)])]


@pytest.mark.parametrize("overrides", CASES,
                         ids=lambda o: "-".join(f"{v}" for v in o.values()).replace(" ", ""))
def test_the_fast_model_is_the_reference_model(overrides):
    reference, fast_model = the_two_models(tiny_config(**overrides))
    assert type(fast_model) is FastCapsNet and type(reference) is mc.CapsNet
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, (3,) + reference.config.input_shape)
    y = rng.integers(0, reference.config.num_classes, 3)
    assert_same_model(reference, fast_model, x, y)
    # inference (decoder masked by the longest capsule) and the frozen coupling of "stop"
    out_r, out_f = reference.forward(x)[0], fast_model.forward(x)[0]
    for name in set(out_r) & {"lengths", "v", "reconstruction"}:
        assert_close(out_f[name], out_r[name], name)
    coupling = out_r["coupling"]
    assert_close(fast_model.loss(x, y, coupling), np.float64(reference.loss(x, y, coupling)))


def test_the_fast_model_is_the_reference_model_on_the_papers_network(monkeypatch):
    """The paper's 28 x 28 network, the primary capsules through the DFT as the fast model
    trains them from about 15 images a batch on (told here that it pays at 3, to keep the
    float64 reference quick), conv1 through the GEMM, the capsule part in chunks."""
    real_fft_pays = fast.conv_fft.fft_pays
    monkeypatch.setattr(fast.conv, "fft_pays", lambda x_shape, w_shape, stride, training=True:
                        real_fft_pays((16,) + tuple(x_shape[1:]), w_shape, stride, training))
    reference, fast_model = the_two_models(mc.CapsNetConfig())
    rng = np.random.default_rng(2)
    x, y = rng.uniform(0, 1, (3, 28, 28, 1)), rng.integers(0, 10, 3)
    caches = fast_model.forward(x, y)[1]
    assert caches["primary"][0] == "fft" and caches["conv1"][0] == "gemm"
    assert_same_model(reference, fast_model, x, y)


def test_predicting_with_the_weights_spectrum_is_the_reference_prediction(rng, monkeypatch):
    monkeypatch.setattr(fast.conv_fft, "fft_pays", lambda *shapes, training=True: True)
    reference, fast_model = the_two_models(mc.CapsNetConfig(
        conv1_channels=16, primary_maps=2, primary_dims=8, digit_dims=4, decoder_sizes=(8,)))
    x = rng.random((5, 28, 28, 1))
    with fast_model.fixed_weights(len(x)):
        assert set(fast_model._fixed) == {"conv1", "primary"}
        assert_close(fast_model.predict_lengths(x, batch_size=2),
                     reference.predict_lengths(x, batch_size=2))


# ------------------------------------------------------------------ choosing the implementation
def test_capsnet_is_the_reference_and_build_model_the_fast_one():
    config = tiny_config()
    # no impl: the last, **fast_only, only refuses the fast network's options by name
    assert list(inspect.signature(mc.CapsNet).parameters) == ["config", "seed", "dtype",
                                                              "device", "params", "fast_only"]
    reference, fast_model = mc.CapsNet(config), build_model(config)
    assert type(reference) is mc.CapsNet and reference.impl == "reference"
    assert type(fast_model) is FastCapsNet and fast_model.impl == "fast"
    assert isinstance(fast_model, mc.CapsNet)
    assert type(build_model(config, impl="reference")) is MultiLabelCapsNet
    assert build_model(config, conv_method="gemm").conv_method == "gemm"
    assert all(np.array_equal(fast_model.params[k], reference.params[k]) for k in reference.params)
    assert "impl" not in config.to_dict()
    for model in (fast_model, reference):                    # copies keep their kind
        assert type(copy.copy(model)) is type(model)
        assert type(model.with_params(model.params)) is type(model)
    assert fast_model.conv_method == "measure"               # the default: routes measured
    assert fast_model.with_params(fast_model.params).conv_method == "measure"
    assert build_model(config, conv_method="rules").conv_method == "auto"
    with pytest.raises(ValueError, match="impl must be"):
        build_model(config, impl="naive")
    with pytest.raises(ValueError, match=r"build_model\(config, conv_method=\.\.\.\)"):
        mc.CapsNet(config, conv_method="gemm")            # one convolution in the reference
    with pytest.raises(ValueError, match="conv_method must be"):
        build_model(config, conv_method="naive")
    with pytest.raises(ValueError, match="needs a CapsNetConfig"):
        mc.CapsNet(CNNConfig())


def test_the_reference_forward_pass_is_the_papers_one_label_pass(rng):
    """K labels an image are the K-label path's (nn/multi_label.py), refused here; the
    training loop's options are not this network's."""
    reference, fast_model = the_two_models(tiny_config())
    x = rng.random((3, 10, 10, 1))
    with pytest.raises(ValueError, match="one label an image"):
        reference.forward(x, np.array([[0, 1], [1, 2], [2, 0]]))
    with pytest.raises(TypeError):
        reference.forward(x, check_values=False)
    assert reference.forward(x, np.array([0, 1, 2]))[0]["loss"] == pytest.approx(
        fast_model.forward(x, np.array([0, 1, 2]), check_values=False)[0]["loss"], rel=1e-12)


@pytest.mark.parametrize("stop", [False, True])
def test_forward_hands_out_the_coupling_of_every_iteration(rng, stop):
    """out["couplings"]: the c each iteration used, against routing run by hand from the
    predictions with 1, 2, ..., T iterations (routing_forward(u_hat, t)'s last coupling is
    the one iteration t used), in both models; the fast one joins its chunks."""
    config = tiny_config(routing_iters=4, routing_grad="stop" if stop else "full")
    reference, fast_model = the_two_models(config)
    x = rng.random((35, 10, 10, 1))                          # several chunks in the fast one
    u_hat, _ = ops.predictions_forward(reference.primary_capsules(x)[0],
                                       reference.params["digit.W"])
    by_hand = [ops.routing_forward(u_hat, t)[0][1] for t in range(1, 5)]
    np.testing.assert_allclose(by_hand[0], 1 / config.num_classes)
    for model in (reference, fast_model):
        out = model.forward(x, keep_couplings=True)[0]
        assert len(out["couplings"]) == 4
        for got, want in zip(out["couplings"], by_hand):
            assert_close(got, want)
        assert_close(out["couplings"][-1], out["coupling"])
        assert "couplings" not in model.forward(x)[0]
    fixed = by_hand[1]
    assert_close(fast_model.forward(x, coupling=fixed, keep_couplings=True)[0]["couplings"][0],
                 fixed)


def test_a_checkpoint_does_not_know_which_implementation_wrote_it(tmp_path, rng):
    from minicaps.io.checkpoint import load_checkpoint, save_checkpoint
    reference = randomize_params(mc.CapsNet(tiny_config(), dtype="float64"), rng)
    path = tmp_path / "reference.npz"
    save_checkpoint(path, reference, mc.Adam(), epoch=1, step=1,
                    rng_state=rng.bit_generator.state)
    loaded = load_checkpoint(path).model                        # the default, fast
    assert loaded.impl == "fast"
    into = load_checkpoint(path, model=mc.CapsNet(tiny_config(), dtype="float64")).model
    assert type(into) is mc.CapsNet
    x, y = rng.random((2, 10, 10, 1)), np.array([0, 2])
    for model in (loaded, into):
        assert all(np.array_equal(model.params[k], reference.params[k]) for k in model.params)
    assert_same_model(into, loaded, x, y)


# ------------------------------------------------------------------ the reference on the GPU
@pytest.mark.gpu
def test_the_reference_model_runs_on_the_gpu_as_on_the_cpu():
    cpu, _ = the_two_models(tiny_config(routing_iters=3))
    gpu = mc.CapsNet(cpu.config, dtype="float64", device="gpu", params=cpu.params)
    rng = np.random.default_rng(3)
    x, y = rng.uniform(0, 1, (3, 10, 10, 1)), rng.integers(0, 3, 3)
    loss_c, grads_c, out_c = cpu.loss_and_grads(x, y)
    loss_g, grads_g, out_g = gpu.loss_and_grads(x, y)
    assert all(backend.is_gpu_array(g) for g in grads_g.values())
    assert abs(loss_g - loss_c) <= 1e-12 * abs(loss_c)
    for name in ("lengths", "v", "coupling", "reconstruction"):
        assert relative_error(out_c[name], backend.to_numpy(out_g[name])) <= 1e-12, name
    for name in grads_c:
        assert relative_error(grads_c[name], backend.to_numpy(grads_g[name])) <= 1e-12, name
    np.testing.assert_array_equal(gpu.predict(x), cpu.predict(x))
    # float32 stays float32 on the device
    gpu32 = mc.CapsNet(cpu.config, dtype="float32", device="gpu", params=cpu.params)
    made = getattr(backend.loaded_cupy(), "made", None)
    if made is not None:                                     # the stand-in counts arrays made
        made.clear()
    gpu32.loss_and_grads(x.astype(np.float32), y)
    if made is not None:
        assert made[np.dtype(np.float32)] > 50
        assert not {d: k for d, k in made.items() if d in (np.float64, np.complex128)}


@pytest.mark.gpu
@pytest.mark.parametrize("decoder", [True, False])
def test_the_fast_model_with_its_fused_kernels_runs_on_the_gpu_as_the_reference(decoder):
    """The fast model on the GPU (its fused kernels, fast/fused.py, the first coupling a
    fill, the whole batch one chunk) against the reference model on the CPU, float64."""
    reference, _ = the_two_models(tiny_config(routing_iters=3, use_decoder=decoder))
    fast_gpu = build_model(reference.config, dtype="float64", device="gpu",
                           params=reference.params)
    rng = np.random.default_rng(4)
    x, y = rng.uniform(0, 1, (3, 10, 10, 1)), rng.integers(0, 3, 3)
    loss_r, grads_r, out_r = reference.loss_and_grads(x, y)
    loss_f, grads_f, out_f = fast_gpu.loss_and_grads(x, y)
    assert abs(loss_f - loss_r) <= 1e-10 * abs(loss_r)
    for name in set(out_r) & {"lengths", "v", "coupling", "reconstruction"}:
        assert_close(backend.to_numpy(out_f[name]), out_r[name], name)
    for name in grads_r:
        assert_close(backend.to_numpy(grads_f[name]), grads_r[name], name)
