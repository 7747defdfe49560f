"""The whole CapsNet: every parameter's gradient against finite differences,
the documented API (names, shapes, count), dtypes, input checks and learning. mc.CapsNet
is the reference network; the fast one (build_model) where its own options are tested,
and beside the reference where a check is cheap."""
import numpy as np
import pytest

import minicaps as mc
from minicaps.gradcheck import check_model, randomize_params, relative_error, tiny_config
from minicaps.nn.registry import build_model

PAPER_SHAPES = {
    "conv1.W": (9, 9, 1, 256), "conv1.b": (256,), "primary.W": (9, 9, 256, 256), "primary.b": (256,),
    "digit.W": (1152, 10, 16, 8), "dec1.W": (160, 512), "dec1.b": (512,), "dec2.W": (512, 1024),
    "dec2.b": (1024,), "dec3.W": (1024, 784), "dec3.b": (784,),
}


def tiny_model(seed=0, dtype="float64", impl="reference", **overrides):
    network = mc.CapsNet if impl == "reference" else build_model
    return network(tiny_config(**overrides), seed=seed, dtype=dtype)


def tiny_batch(model, n=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (n,) + model.config.input_shape)
    return x.astype(model.dtype), rng.integers(0, model.config.num_classes, n)


# ------------------------------------------------------------------ gradients of the whole model
@pytest.mark.parametrize("impl", ["reference", "fast"])
@pytest.mark.parametrize("routing_grad,iters", [("full", 1), ("full", 3), ("stop", 1), ("stop", 3)])
def test_every_parameter_gradient_matches_finite_differences(routing_grad, iters, impl):
    model = tiny_model(routing_grad=routing_grad, routing_iters=iters, impl=impl)
    randomize_params(model, np.random.default_rng(iters))
    x, y = tiny_batch(model)
    errors = check_model(model, x, y)
    assert set(errors) == set(model.params)
    assert max(errors.values()) <= 1e-5, errors


def test_gradients_with_primary_relu_three_channels_and_no_decoder():
    for overrides in (dict(primary_relu=True), dict(input_shape=(9, 11, 3)),
                      dict(use_decoder=False), dict(decoder_sizes=(5, 4))):
        model = tiny_model(**overrides)
        randomize_params(model, np.random.default_rng(7))
        x, y = tiny_batch(model, n=2)
        errors = check_model(model, x, y)
        assert max(errors.values()) <= 1e-5, (overrides, errors)


def test_full_gradient_is_not_the_stop_gradient():
    # a model check is able to fail: the "stop" gradient is wrong for the "full" function
    model = tiny_model(routing_iters=3)
    randomize_params(model, np.random.default_rng(3))
    x, y = tiny_batch(model)
    full = model.loss_and_grads(x, y)[1]["digit.W"]
    model.config.routing_grad = "stop"
    stop = model.loss_and_grads(x, y)[1]["digit.W"]
    assert relative_error(full, stop) > 1e-3


# ------------------------------------------------------------------ the forward pass
@pytest.mark.parametrize("impl", ["reference", "fast"])
@pytest.mark.parametrize("overrides", [{}, dict(primary_relu=True, routing_iters=2),
                                       dict(input_shape=(9, 11, 2), decoder_sizes=(7, 5))])
def test_forward_equals_the_paper_written_as_loops(overrides, impl):
    """The whole network (capsule ordering, routing, losses, decoder) against a NumPy
    transcription of the paper that shares no code with minicaps (paper_reference.py)."""
    import dataclasses
    import paper_reference
    model = tiny_model(impl=impl, **overrides)
    randomize_params(model, np.random.default_rng(11))
    x, y = tiny_batch(model, n=3, seed=4)
    out, _ = model.forward(x, y)
    want = paper_reference.capsnet_loss(model.params, x, y, dataclasses.asdict(model.config))
    for name, w in zip(("loss", "margin_loss", "reconstruction_loss", "lengths", "v",
                        "reconstruction", "coupling"), want):
        np.testing.assert_allclose(out[name], w, rtol=1e-10, atol=1e-13, err_msg=name)


# ------------------------------------------------------------------ the documented API
def test_paper_config_names_shapes_and_parameter_count():
    cfg = mc.CapsNetConfig()
    assert cfg.param_shapes() == PAPER_SHAPES
    assert cfg.num_primary_caps == 1152
    assert sum(int(np.prod(s)) for s in PAPER_SHAPES.values()) == 8_215_568
    model = mc.CapsNet(cfg, seed=0)
    assert model.num_params() == 8_215_568
    assert {k: v.shape for k, v in model.params.items()} == PAPER_SHAPES
    assert mc.CapsNet(mc.CapsNetConfig(use_decoder=False)).num_params() == 6_804_224


def test_paper_model_forward_shapes_and_outputs(rng):
    model = mc.CapsNet(seed=0)
    x = rng.uniform(0, 1, (2, 28, 28, 1)).astype(np.float32)
    y = np.array([3, 7])
    loss, grads, out = model.loss_and_grads(x, y)
    assert out["lengths"].shape == (2, 10) and out["v"].shape == (2, 10, 16)
    assert out["reconstruction"].shape == (2, 784) and out["coupling"].shape == (2, 1152, 10)
    assert abs(loss - (out["margin_loss"] + 0.0005 * out["reconstruction_loss"])) <= 1e-6 * loss
    assert all(grads[k].shape == PAPER_SHAPES[k] for k in PAPER_SHAPES)
    assert all(a.dtype == np.float32 for a in list(grads.values()) + [out["v"], out["reconstruction"]])
    np.testing.assert_allclose(out["coupling"].sum(axis=2), 1.0, rtol=1e-5)


def test_same_seed_same_parameters_other_seed_other_parameters():
    a, b, c = (mc.CapsNet(tiny_config(), seed=s) for s in (0, 0, 1))
    assert all(np.array_equal(a.params[k], b.params[k]) for k in a.params)
    assert not np.array_equal(a.params["digit.W"], c.params["digit.W"])


def test_config_round_trips_through_a_dict():
    cfg = tiny_config(routing_iters=2, routing_grad="stop")
    assert mc.CapsNetConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown"):
        mc.CapsNetConfig.from_dict({**cfg.to_dict(), "colour": 3})


@pytest.mark.parametrize("bad", [dict(routing_iters=0), dict(routing_grad="half"),
                                 dict(input_shape=(4, 4, 1)), dict(num_classes=1)])
def test_bad_config_is_a_clear_error(bad):
    with pytest.raises(ValueError):
        tiny_config(**bad)


# ------------------------------------------------------------------ dtypes
def test_float32_matches_float64():
    m64 = tiny_model(dtype="float64")
    m32 = mc.CapsNet(m64.config, dtype="float32", params=m64.params)
    x, y = tiny_batch(m64, n=4)
    l64, g64, o64 = m64.loss_and_grads(x, y)
    l32, g32, o32 = m32.loss_and_grads(x.astype(np.float32), y)
    assert abs(l32 - l64) <= 1e-5 * abs(l64)
    np.testing.assert_allclose(o32["lengths"], o64["lengths"], rtol=1e-5, atol=1e-7)
    for k in g64:
        assert g32[k].dtype == np.float32
        assert relative_error(g32[k], g64[k]) <= 1e-4, k


def test_dft_convolution_route_gives_the_model_the_same_loss_and_gradients(rng, monkeypatch):
    # "auto" takes the DFT route only for wide layers and big batches (tested in
    # test_ops); here it is told that the route always pays, so both convolutions of a
    # small model take it in training, and neither does in inference.
    monkeypatch.setattr("minicaps.fast.conv.fft_pays", lambda *shapes: True)
    cfg = mc.CapsNetConfig(conv1_channels=16, primary_maps=2, primary_dims=8, digit_dims=4,
                           decoder_sizes=(16, 32))
    auto = build_model(cfg, seed=1, dtype="float64", conv_method="auto")
    gemm = build_model(cfg, dtype="float64", params=auto.params, conv_method="gemm")
    x, y = rng.random((5, 28, 28, 1)), rng.integers(0, 10, 5)
    out, caches = auto.forward(x, y)
    assert caches["primary"][0] == "fft" and caches["conv1"][0] == "fft"
    assert auto.forward(x)[1]["primary"][0] == "gemm"      # inference: no backward to share
    assert auto.forward(x, y, training=False)[1]["primary"][0] == "gemm"
    loss_a, grads_a, _ = auto.loss_and_grads(x, y)
    loss_g, grads_g, _ = gemm.loss_and_grads(x, y)
    assert abs(loss_a - loss_g) <= 1e-12 * abs(loss_g)
    for k in grads_g:
        assert relative_error(grads_a[k], grads_g[k]) <= 1e-10, k
    with pytest.raises(ValueError, match="conv_method"):
        build_model(cfg, conv_method="dft")


def _small_auto_and_gemm(**cfg):
    cfg = mc.CapsNetConfig(conv1_channels=16, primary_maps=2, primary_dims=8, digit_dims=4,
                           decoder_sizes=(16, 32), **cfg)
    auto = build_model(cfg, seed=1, dtype="float64", conv_method="auto")
    randomize_params(auto, np.random.default_rng(1))          # capsules of order one
    return auto, build_model(cfg, dtype="float64", params=auto.params, conv_method="gemm")


def test_fixed_weights_make_each_spectrum_once_and_change_only_the_rounding(rng, monkeypatch):
    # Inside fixed_weights() the inference passes take the DFT route with the weights'
    # spectra made once at the start of the block (told here that the route pays for
    # both convolutions); their outputs equal the GEMM route's.
    from minicaps.fast import conv_fft
    monkeypatch.setattr(conv_fft, "fft_pays", lambda *shapes, training=True: True)
    made, real = [], conv_fft.weight_spectrum
    monkeypatch.setattr(conv_fft, "weight_spectrum",
                        lambda W, plan: made.append(W.shape) or real(W, plan))
    auto, gemm = _small_auto_and_gemm()
    x = rng.random((7, 28, 28, 1))
    with auto.fixed_weights(len(x)):
        assert len(made) == 2                                  # conv1 and primary, once
        for k in range(0, 7, 3):
            out, caches = auto.forward(x[k:k + 3])
            assert caches["conv1"][0] == "fft" and caches["primary"][0] == "fft"
            ref, _ = gemm.forward(x[k:k + 3])
            assert ref["lengths"].std() > 0.05                # not all at the squash's floor
            for key in ("lengths", "v", "reconstruction"):
                np.testing.assert_allclose(out[key], ref[key], rtol=1e-10, atol=1e-12)
        assert len(made) == 2
    assert len(made) == 2 and auto._fixed == {}
    assert auto.forward(x)[1]["primary"][0] == "gemm"          # outside the block: GEMM again
    np.testing.assert_allclose(auto.predict_lengths(x, batch_size=2),
                               gemm.predict_lengths(x, batch_size=2), rtol=0, atol=1e-12)
    assert len(made) == 4                                      # predict makes them once


def test_fixed_weights_refuse_weights_changed_inside_the_block(rng, monkeypatch):
    # An optimizer step inside the block would leave a stale spectrum: a clear error,
    # never silently wrong lengths. The block ends cleanly after an error.
    from minicaps.fast import conv_fft
    monkeypatch.setattr(conv_fft, "fft_pays", lambda *shapes, training=True: True)
    auto, gemm = _small_auto_and_gemm()
    x = rng.random((3, 28, 28, 1))
    with pytest.raises(RuntimeError, match="conv1.W changed inside"):
        with auto.fixed_weights(3):
            auto.forward(x)
            auto.params["conv1.W"] *= 1.01                     # in place, as Adam does
            auto.forward(x)
    assert auto._fixed == {}
    W, kept = auto.params["primary.W"], auto.params["primary.W"][0, 0, 0, 0]
    W[0, 0, 0, 0] = np.nan                                     # diverged weights are not "changed"
    with auto.fixed_weights(3):
        assert np.isnan(auto.forward(x)[0]["lengths"]).all()
    W[0, 0, 0, 0] = kept
    gemm = build_model(gemm.config, dtype="float64", params={k: v.copy() for k, v in
                                                           auto.params.items()}, conv_method="gemm")
    lengths = gemm.forward(x)[0]["lengths"]
    assert np.isfinite(lengths).all()
    np.testing.assert_allclose(auto.forward(x)[0]["lengths"], lengths, rtol=1e-10, atol=1e-12)


@pytest.mark.gpu
def test_fixed_weights_on_the_gpu_predict_what_the_cpu_predicts(rng, monkeypatch):
    from minicaps.fast import conv_fft
    monkeypatch.setattr(conv_fft, "fft_pays", lambda *shapes, training=True: True)
    auto, gemm = _small_auto_and_gemm()
    gpu = build_model(auto.config, dtype="float64", device="gpu", params=auto.params)
    x = rng.random((5, 28, 28, 1))
    lengths = gpu.predict_lengths(x, batch_size=2)
    assert isinstance(lengths, np.ndarray) and gpu._fixed == {}
    np.testing.assert_allclose(lengths, gemm.predict_lengths(x), rtol=0, atol=1e-12)
    with pytest.raises(RuntimeError, match="conv1.W changed inside"):
        with gpu.fixed_weights(3):
            gpu.forward(x[:3])
            gpu.params["conv1.W"] *= 1.01
            gpu.forward(x[:3])


def test_fixed_weights_leave_training_passes_alone(rng, monkeypatch):
    # A training pass inside the block makes its own spectrum (its backward pass takes
    # it), so its gradients are the GEMM route's.
    from minicaps.fast import conv_fft
    monkeypatch.setattr(conv_fft, "fft_pays", lambda *shapes, training=True: True)
    monkeypatch.setattr("minicaps.fast.conv.fft_pays", lambda *shapes, training=True: True)
    auto, gemm = _small_auto_and_gemm()
    x, y = rng.random((4, 28, 28, 1)), rng.integers(0, 10, 4)
    with auto.fixed_weights(4):
        loss_a, grads_a, _ = auto.loss_and_grads(x, y)
        assert auto._fixed["primary"][0] is not auto.params["primary.W"]   # a copy was kept
    loss_g, grads_g, _ = gemm.loss_and_grads(x, y)
    assert abs(loss_a - loss_g) <= 1e-12 * abs(loss_g)
    for k in grads_g:
        assert relative_error(grads_a[k], grads_g[k]) <= 1e-10, k


def test_losses_left_on_the_device_are_the_host_losses(rng):
    model = randomize_params(build_model(tiny_config(), seed=0, dtype="float64"), rng)
    x, y = rng.random((5, 10, 10, 1)), rng.integers(0, 3, 5)
    on_host, _ = model.forward(x, y)
    on_device, _ = model.forward(x, y, host_losses=False, check_values=False)
    for name in ("margin_loss", "reconstruction_loss", "loss"):
        assert isinstance(on_host[name], float)
        assert on_device[name].shape == () and on_device[name].dtype == np.float64
        assert float(on_device[name]) == pytest.approx(on_host[name], rel=1e-14)


def test_unchecked_values_still_get_their_shapes_checked(rng):
    model = build_model(tiny_config(), seed=0)
    with pytest.raises(ValueError, match="shape"):
        model.forward(rng.random((5, 9, 10, 1)), check_values=False)
    with pytest.raises(ValueError, match="y must have shape"):
        model.forward(rng.random((5, 10, 10, 1)), np.zeros(4, int), check_values=False)


def test_model_never_changes_dtype_after_a_step():
    for dtype in ("float32", "float64"):
        model = tiny_model(dtype=dtype)
        opt = mc.Adam()
        x, y = tiny_batch(model)
        _, grads, _ = model.loss_and_grads(x, y)
        opt.step(model.params, grads)
        assert all(p.dtype == np.dtype(dtype) for p in model.params.values())
        assert all(m.dtype == np.dtype(dtype) for m in opt.m.values())


def test_unknown_dtype_is_rejected():
    with pytest.raises(ValueError, match="float32"):
        mc.CapsNet(tiny_config(), dtype="float16")


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("x,match", [
    (np.zeros((2, 10, 10, 2)), "shape"),
    (np.zeros((2, 10, 10, 1, 1)), "shape"),
    (np.zeros((0, 10, 10, 1)), "shape"),
    (np.zeros((2, 10, 10, 1), dtype=np.uint8), "float"),
    (np.full((2, 10, 10, 1), np.nan), "NaN"),
    ([[0.0]], "array"),
])
def test_bad_images_raise_value_errors_that_name_the_problem(x, match):
    model = tiny_model()
    with pytest.raises(ValueError, match=match):
        model.loss_and_grads(x, np.array([0, 1])[: max(1, len(x))])


@pytest.mark.parametrize("y,match", [
    (np.array([0, 3]), "labels must be in 0..2"),
    (np.array([-1, 0]), "labels must be in"),
    (np.array([0.0, 1.0]), "integer"),
    (np.array([0]), "shape"),
    (np.array([[0, 1]]), "shape"),
])
def test_bad_labels_raise_value_errors(y, match):
    model = tiny_model()
    with pytest.raises(ValueError, match=match):
        model.loss_and_grads(np.zeros((2, 10, 10, 1)), y)


def test_single_channel_images_may_omit_the_channel_axis():
    model = tiny_model()
    x, y = tiny_batch(model)
    np.testing.assert_array_equal(model.predict(x[..., 0]), model.predict(x))


# ------------------------------------------------------------------ inference and learning
def test_predict_is_the_longest_capsule_and_batches_agree():
    model = tiny_model()
    randomize_params(model, np.random.default_rng(0))
    x, _ = tiny_batch(model, n=7)
    out, _ = model.forward(x)
    expected = np.argmax(out["lengths"], axis=1)
    np.testing.assert_array_equal(model.predict(x, batch_size=3), expected)
    np.testing.assert_allclose(model.predict_lengths(x, batch_size=2), out["lengths"], rtol=1e-12)


def test_inference_masks_the_decoder_by_the_prediction():
    model = tiny_model()
    randomize_params(model, np.random.default_rng(0))
    x, _ = tiny_batch(model, n=4)
    predicted = model.predict(x)
    by_prediction = model.forward(x)[0]["reconstruction"]
    by_label = model.forward(x, predicted)[0]["reconstruction"]
    np.testing.assert_allclose(by_prediction, by_label, rtol=1e-12)


def learnable_set(n_per_class=4, seed=0):
    """10x10 images of 3 classes: a bright bar in a class-specific place, plus noise."""
    rng = np.random.default_rng(seed)
    x = 0.1 * rng.uniform(0, 1, (3 * n_per_class, 10, 10, 1))
    y = np.repeat(np.arange(3), n_per_class)
    for k, label in enumerate(y):
        if label == 0:
            x[k, 2:8, 4:6] = 1.0        # vertical bar
        elif label == 1:
            x[k, 4:6, 2:8] = 1.0        # horizontal bar
        else:
            x[k, 1:4, 1:4] = 1.0        # corner block
    return x, y


def test_tiny_model_overfits_a_small_set():
    model = mc.CapsNet(tiny_config(conv1_channels=8, primary_maps=4), seed=0, dtype="float32")
    opt = mc.Adam(lr=0.01)
    x, y = learnable_set()
    x = x.astype(np.float32)
    first_loss = None
    for step in range(300):
        loss, grads, out = model.loss_and_grads(x, y)
        first_loss = first_loss if first_loss is not None else loss
        opt.step(model.params, grads)
        if np.array_equal(model.predict(x), y) and loss < 0.2 * first_loss:
            break
    assert np.array_equal(model.predict(x), y), f"not fitted after {step + 1} steps"
    assert loss < 0.2 * first_loss


@pytest.mark.parametrize("conv1_stride", [1, 2])
def test_the_smallest_input_is_said_and_is_the_boundary(conv1_stride):
    """The message names the smallest side; that side builds, one pixel less does not."""
    side = (9 - 1) * conv1_stride + 9
    config = mc.CapsNetConfig(input_shape=(side, side, 1), conv1_stride=conv1_stride)
    assert config.primary_grid == (1, 1)
    with pytest.raises(ValueError, match=f"at least {side}x{side} pixels"):
        mc.CapsNetConfig(input_shape=(side - 1, side, 1), conv1_stride=conv1_stride)
