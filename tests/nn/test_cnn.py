"""The paper's CNN baselines (minicaps/nn/cnn.py) and their layers (minicaps/ops/cnn_layers.py):
every backward pass against central finite differences in float64, every forward pass
against plain loops, the parameter counts from the layer sizes, dropout's statistics and
its replay, and short training runs on the synthetic bars."""
import math

import numpy as np
import pytest
from hypothesis import given, strategies as st

import minicaps as mc
from minicaps import ops
from minicaps.nn.cnn import DROPOUT_STREAM, BaselineCNN, CNNConfig
from minicaps.gradcheck import check_array, check_op, randomize_params
from minicaps.nn.capsnet import CapsNetConfig
from minicaps.nn.registry import build_model
from paper_reference import conv_valid     # the valid convolution as loops over positions
from synthetic import bars, bars_data

TOL = 1e-7
seeds = st.integers(0, 2**32 - 1)


def assert_grads(errors, tol=TOL):
    assert errors and all(e <= tol for e in errors.values()), errors


def distinct_values(rng, shape, gap=0.01):
    """Values with every two at least ``gap`` apart (a shuffled ramp): max-pooling has no
    tie within a finite difference's step, the ReLU no input at 0."""
    n = math.prod(shape)
    ramp = (np.arange(n) - n / 2 + 0.5) * gap
    return rng.permutation(ramp).reshape(shape)


def tiny(**overrides):
    """A CNN small enough to check element by element: two convolutions, one pool."""
    cfg = dict(input_shape=(6, 6, 2), conv_channels=(3, 4), conv_kernel=3, pool_after=(1,),
               fc_sizes=(5, 4), dropout=0.3, num_classes=3)
    cfg.update(overrides)
    return CNNConfig(**cfg)


# ------------------------------------------------------------------ SAME convolution
def conv_same_loop(x, W, b):
    """SAME as the definition says: zeros (k-1)//2 before and the rest after, by np.pad,
    then the valid convolution as loops."""
    kh, kw = W.shape[:2]
    padded = np.pad(x, ((0, 0), ((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2), (0, 0)))
    return conv_valid(padded, W, b, 1)


@given(seed=seeds, h=st.integers(1, 7), w=st.integers(1, 7), kh=st.integers(1, 6),
       kw=st.integers(1, 6))
def test_conv2d_same_equals_the_padded_loop_and_keeps_the_size(seed, h, w, kh, kw):
    # odd and even kernels (an even one pads one more zero after), kernels wider than x
    rng = np.random.default_rng(seed)
    x, W = rng.standard_normal((2, h, w, 3)), rng.standard_normal((kh, kw, 3, 2))
    b = rng.standard_normal(2)
    out, _ = ops.conv2d_same_forward(x, W, b)
    assert out.shape == (2, h, w, 2)
    np.testing.assert_allclose(out, conv_same_loop(x, W, b), rtol=1e-11, atol=1e-11)


@given(seed=seeds, h=st.integers(1, 6), w=st.integers(1, 6), kh=st.integers(1, 5),
       kw=st.integers(1, 5))
def test_conv2d_same_gradients(seed, h, w, kh, kw):
    rng = np.random.default_rng(seed)
    inputs = [rng.standard_normal((2, h, w, 2)), rng.standard_normal((kh, kw, 2, 3)),
              rng.standard_normal(3)]
    assert_grads(check_op(ops.conv2d_same_forward, ops.conv2d_same_backward, inputs,
                          ["x", "W", "b"], rng=rng))


def test_padding_gradient_and_frame(rng):
    x = rng.standard_normal((2, 3, 4, 2))
    out, _ = ops.pad_forward(x, (1, 2), (0, 3))
    assert out.shape == (2, 6, 7, 2)
    assert np.array_equal(out, np.pad(x, ((0, 0), (1, 2), (0, 3), (0, 0))))
    assert_grads(check_op(lambda x: ops.pad_forward(x, (1, 2), (0, 3)), ops.pad_backward, [x],
                          rng=rng))
    assert ops.same_padding(5) == (2, 2) and ops.same_padding(4) == (1, 2)
    assert ops.same_padding(1) == (0, 0)


# ------------------------------------------------------------------ max-pooling
def max_pool_loop(x):
    n, H, W, C = x.shape
    out = np.empty((n, H // 2, W // 2, C))
    for i in range(n):
        for r in range(H // 2):
            for q in range(W // 2):
                for c in range(C):
                    out[i, r, q, c] = max(x[i, 2 * r + a, 2 * q + b, c]
                                          for a in (0, 1) for b in (0, 1))
    return out


@given(seed=seeds, h=st.integers(2, 7), w=st.integers(2, 7))
def test_max_pool_equals_the_loop_and_its_gradient(seed, h, w):
    # odd sizes: the last row or column is in no window and gets no gradient
    rng = np.random.default_rng(seed)
    x = distinct_values(rng, (2, h, w, 3))
    out, cache = ops.max_pool_forward(x)
    np.testing.assert_array_equal(out, max_pool_loop(x))
    assert_grads(check_op(ops.max_pool_forward, ops.max_pool_backward, [x], rng=rng))
    dx = ops.max_pool_backward(np.ones_like(out), cache)
    assert dx.sum() == out.size and set(np.unique(dx)) <= {0.0, 1.0}
    assert not dx[:, 2 * (h // 2):].any() and not dx[:, :, 2 * (w // 2):].any()


def test_max_pool_ties_send_the_gradient_to_one_element():
    x = np.zeros((1, 4, 4, 1))                   # every window a four-way tie
    x[0, 2:, 2:, 0] = [[5.0, 7.0], [7.0, 7.0]]   # a three-way tie of the max
    out, cache = ops.max_pool_forward(x)
    dout = np.arange(1.0, 5.0).reshape(1, 2, 2, 1)
    dx = ops.max_pool_backward(dout, cache)
    # the first maximum in reading order of each window takes all of it
    expected = np.zeros((1, 4, 4, 1))
    expected[0, 0, 0, 0], expected[0, 0, 2, 0], expected[0, 2, 0, 0] = 1, 2, 3
    expected[0, 2, 3, 0] = 4
    np.testing.assert_array_equal(dx, expected)
    assert out[0, 1, 1, 0] == 7.0


# ------------------------------------------------------------------ dropout
def test_dropout_mask_statistics_and_scaling(rng):
    rate, x = 0.3, rng.uniform(1, 2, (400, 500))
    out, scale = ops.dropout_forward(x, rate, np.random.default_rng(0))
    kept = out != 0
    # the kept fraction: 200,000 Bernoulli(0.7) draws, sd 0.001; 5 sd
    assert abs(kept.mean() - (1 - rate)) < 5 * math.sqrt(rate * (1 - rate) / x.size)
    np.testing.assert_allclose(out[kept], x[kept] / (1 - rate), rtol=1e-15)
    assert abs(out.mean() / x.mean() - 1) < 0.01      # inverted dropout keeps the mean
    # rows and columns equally: no structure in the mask
    assert np.abs(kept.mean(axis=0) - 0.7).max() < 6 * math.sqrt(0.21 / 400)
    dx = ops.dropout_backward(np.ones_like(x), scale)
    np.testing.assert_array_equal(dx, kept / (1 - rate))


def test_dropout_is_the_identity_at_test_time_and_at_rate_0(rng):
    x = rng.standard_normal((4, 5))
    for out, cache in (ops.dropout_forward(x, 0.5, training=False),
                       ops.dropout_forward(x, 0.0, np.random.default_rng(0))):
        assert out is x
        dout = rng.standard_normal(x.shape)
        assert ops.dropout_backward(dout, cache) is dout


def test_dropout_mask_comes_from_the_generator_alone(rng):
    x = rng.standard_normal((6, 7))
    a = ops.dropout_forward(x, 0.5, np.random.default_rng(3))[0]
    b = ops.dropout_forward(x, 0.5, np.random.default_rng(3))[0]
    c = ops.dropout_forward(x, 0.5, np.random.default_rng(4))[0]
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert_grads(check_op(lambda x: ops.dropout_forward(x, 0.4, np.random.default_rng(7)),
                          ops.dropout_backward, [x], rng=rng))
    with pytest.raises(ValueError, match="Generator"):
        ops.dropout_forward(x, 0.5)
    for rate in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match=r"\[0, 1\)"):
            ops.dropout_forward(x, rate, np.random.default_rng(0))


# ------------------------------------------------------------------ softmax + cross-entropy
def cross_entropy_loop(z, y):
    """-mean_n log(exp(z_n,y_n) / sum_k exp(z_nk)), one image and one class at a time."""
    total = 0.0
    for row, label in zip(z, y):
        total -= math.log(math.exp(row[label]) / sum(math.exp(v) for v in row))
    return total / len(y)


def test_softmax_cross_entropy_equals_the_loop_and_is_stable(rng):
    z, y = 3 * rng.standard_normal((6, 4)), np.array([0, 3, 1, 1, 2, 0])
    loss, cache = ops.softmax_cross_entropy_forward(z, y)
    assert loss == pytest.approx(cross_entropy_loop(z, y), rel=1e-13)
    np.testing.assert_allclose(cache[0], np.exp(z) / np.exp(z).sum(1, keepdims=True), rtol=1e-13)
    # the loss does not change when a row is shifted, even past exp's range (e^800 = inf)
    shift = np.array([[800.0], [-800.0], [0], [1e4], [0], [0]])
    big = ops.softmax_cross_entropy_forward(z + shift, y)[0]
    assert big == pytest.approx(loss, rel=1e-12)
    # a confident right answer costs nearly 0, a confident wrong one its margin
    sure = np.array([[0.0, 1000.0]])
    assert ops.softmax_cross_entropy_forward(sure, np.array([1]))[0] == 0.0
    assert ops.softmax_cross_entropy_forward(sure, np.array([0]))[0] == pytest.approx(1000.0)


def test_softmax_cross_entropy_gradient(rng):
    y = np.array([2, 0, 1, 2])
    assert_grads(check_op(lambda z: ops.softmax_cross_entropy_forward(z, y),
                          ops.softmax_cross_entropy_backward,
                          [3 * rng.standard_normal((4, 3))], ["logits"], rng=rng))


def test_two_labels_cross_entropy_is_the_mean_of_the_two(rng):
    """With labels (N, 2) the target puts 1/2 on each: the mean of the two single-label
    cross-entropies, and its gradient p - T with T the labels' distribution."""
    z, pairs = 3 * rng.standard_normal((5, 4)), np.array([[0, 3], [1, 2], [3, 1], [2, 0], [1, 3]])
    loss, _ = ops.softmax_cross_entropy_forward(z, pairs)
    first = cross_entropy_loop(z, pairs[:, 0])
    second = cross_entropy_loop(z, pairs[:, 1])
    assert loss == pytest.approx((first + second) / 2, rel=1e-13)
    assert_grads(check_op(lambda z: ops.softmax_cross_entropy_forward(z, pairs),
                          ops.softmax_cross_entropy_backward, [z], ["logits"], rng=rng))
    # one label given as (N, 1) is the single-label loss
    assert ops.softmax_cross_entropy_forward(z, pairs[:, :1])[0] == pytest.approx(
        first, rel=1e-13)


# ------------------------------------------------------------------ the network's gradients
@pytest.mark.parametrize("overrides", [
    {},                                                      # pool after conv1, dropout
    {"pool_after": (1, 2), "conv_kernel": 2, "dropout": 0.0, "input_shape": (7, 5, 1)},
    {"pool_after": (), "fc_sizes": (), "conv_channels": (2,)},   # conv -> dropout -> softmax
])
@pytest.mark.parametrize("impl", ["reference", "fast"])
def test_whole_network_gradients_against_finite_differences(overrides, impl):
    rng = np.random.default_rng(5)
    model = build_model(tiny(**overrides), impl=impl, seed=3, dtype="float64")
    randomize_params(model, rng)            # biases too: ReLU inputs away from 0
    x = rng.uniform(0, 1, (3,) + model.config.input_shape)
    y = np.array([0, 2, 1])
    _, grads, _ = model.loss_and_grads(x, y, step=11)
    assert set(grads) == set(model.params)
    for name, p in model.params.items():
        # the training loss with step 11's dropout mask held, as loss_and_grads had it
        err = check_array(lambda: model.loss(x, y, step=11), p, grads[name], rng=rng,
                          max_elements=128)
        assert err < 1e-6, (name, err)


def test_the_gradient_check_sees_dropout():
    """Without its mask the gradient would be another one: the checked loss holds it."""
    model = BaselineCNN(tiny(dropout=0.5), seed=0, dtype="float64")
    randomize_params(model, np.random.default_rng(1))
    x, y = np.random.default_rng(2).uniform(0, 1, (3, 6, 6, 2)), np.array([0, 1, 2])
    _, grads, _ = model.loss_and_grads(x, y, step=0)
    p = model.params["softmax.W"]
    assert check_array(lambda: model.loss(x, y, step=1), p, grads["softmax.W"]) > 1e-3
    assert check_array(lambda: model.loss(x, y, training=False), p, grads["softmax.W"]) > 1e-3


# ------------------------------------------------------------------ parameter counts
def conv_params(k, channels, c_in=1):
    total = 0
    for c_out in channels:
        total += k * k * c_in * c_out + c_out
        c_in = c_out
    return total


def dense_params(sizes):
    return sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))


def test_the_paper_baseline_has_35_4_million_parameters():
    # SAME 5x5 convolutions keep 28 x 28, no pooling: fc1 sees 28 * 28 * 128 values
    expected = conv_params(5, (256, 256, 128)) + dense_params((28 * 28 * 128, 328, 192, 10))
    assert expected == 35_445_522
    assert CNNConfig.paper().num_params() == expected
    assert abs(expected - 35.4e6) <= 0.1e6
    # the layouts it is not: VALID convolutions (28 -> 16) or a pool after the last one
    valid = conv_params(5, (256, 256, 128)) + dense_params((16 * 16 * 128, 328, 192, 10))
    assert abs(valid - 35.4e6) > 10e6
    pooled = CNNConfig.paper(pool_after=(3,)).num_params()
    assert pooled == conv_params(5, (256, 256, 128)) + dense_params((14 * 14 * 128, 328, 192, 10))
    assert abs(pooled - 35.4e6) > 10e6


def test_the_pooled_baseline_has_about_capsnets_parameter_count_at_40x40():
    # 40 -> 20 (pool after conv1) -> 20 -> 10 (pool after conv2) -> 10: fc1 sees 10 * 10 * 128
    expected = conv_params(5, (256, 256, 128)) + dense_params((10 * 10 * 128, 847, 192, 10))
    assert expected == 13_471_833
    assert CNNConfig.pooled().num_params() == expected
    capsnet = sum(math.prod(s) for s in CapsNetConfig(input_shape=(40, 40, 1)).param_shapes().values())
    assert capsnet == 13_475_648
    assert abs(expected / capsnet - 1) < 0.001
    # fc1's width 847 is the one nearest CapsNet's count
    width = lambda f: conv_params(5, (256, 256, 128)) + dense_params((12800, f, 192, 10))
    assert min(range(300, 2000), key=lambda f: abs(width(f) - capsnet)) == 847
    # and at 28 x 28 the same layout stays near CapsNet's 8.2M
    at_28 = CNNConfig.pooled(input_shape=(28, 28, 1)).num_params()
    assert at_28 == conv_params(5, (256, 256, 128)) + dense_params((7 * 7 * 128, 847, 192, 10))
    assert at_28 == 7_942_617


def test_the_released_baseline_has_table_1s_24_56_million_parameters():
    # 36 -> 18 (pool after conv1) -> 9 (pool after conv2): fc1 sees 9 * 9 * 256 values
    expected = conv_params(5, (512, 256)) + dense_params((9 * 9 * 256, 1024, 10))
    assert expected == 24_535_306
    assert CNNConfig.released().num_params() == expected
    assert abs(expected - 24.56e6) <= 0.03e6          # the paper: "24.56M parameters"
    assert CNNConfig.released().dropout == 0.0        # the released network has none


def test_model_parameters_follow_the_config():
    model = BaselineCNN(tiny(), seed=0)
    assert list(model.params) == ["conv1.W", "conv1.b", "conv2.W", "conv2.b", "fc1.W", "fc1.b",
                                  "fc2.W", "fc2.b", "softmax.W", "softmax.b"]
    assert model.params["fc1.W"].shape == (3 * 3 * 4, 5)       # 6 -> pool -> 3, 4 channels
    assert model.num_params() == model.config.num_params()
    assert all(p.dtype == np.float32 for p in model.params.values())
    assert not any(model.params[k].any() for k in model.params if k.endswith(".b"))
    limit = math.sqrt(6 / (3 * 3 * 2 + 3 * 3 * 3))             # Glorot, fan-out k*k*C_out
    assert np.abs(model.params["conv1.W"]).max() <= limit
    again = BaselineCNN(tiny(), seed=0)
    assert all(np.array_equal(model.params[k], again.params[k]) for k in model.params)


# ------------------------------------------------------------------ the model's surface
def test_config_validation_and_round_trip():
    cfg = CNNConfig.pooled(dropout=0.25)
    assert CNNConfig.from_dict(cfg.to_dict()) == cfg
    assert "use_decoder" not in cfg.to_dict() and cfg.use_decoder is False and cfg.recon_weight == 0.0
    for bad, field in [({"conv_channels": ()}, "conv_channels"), ({"conv_kernel": 0}, "conv_kernel"),
                       ({"pool_after": (2, 1)}, "pool_after"), ({"pool_after": (4,)}, "pool_after"),
                       ({"dropout": 1.0}, "dropout"), ({"dropout": True}, "dropout"),
                       ({"num_classes": 1}, "num_classes"), ({"fc_sizes": (3, 0)}, "fc_sizes"),
                       ({"input_shape": (3, 3)}, "input_shape"),
                       ({"conv_channels": (2.5,)}, "conv_channels")]:
        with pytest.raises(ValueError, match=field):
            CNNConfig(**bad)
    with pytest.raises(ValueError, match="too small"):
        CNNConfig(input_shape=(3, 8, 1), conv_channels=(2, 2), pool_after=(1, 2))
    with pytest.raises(ValueError, match="unknown"):
        CNNConfig.from_dict({"routing_iters": 3})


def test_prediction_is_the_argmax_of_probabilities_without_dropout(rng):
    model = BaselineCNN(tiny(dropout=0.5), seed=1, dtype="float64")
    randomize_params(model, rng)
    x = rng.uniform(0, 1, (7, 6, 6, 2))
    p = model.predict_probabilities(x, batch_size=3)          # in three batches
    np.testing.assert_allclose(p.sum(axis=1), 1, rtol=1e-12)
    np.testing.assert_allclose(p, model.predict_lengths(x), rtol=0, atol=0)
    out = model.forward(x)[0]
    np.testing.assert_allclose(p, out["lengths"], rtol=1e-12)
    assert np.array_equal(model.predict(x), p.argmax(axis=1))
    assert model.dropout_step == 0                          # inference draws no mask
    y = np.array([0, 1, 2, 0, 1, 2, 0])
    out = model.forward(x, y)[0]
    assert "margin_loss" not in out                 # the cross-entropy goes by its own name
    assert out["loss"] == out["cross_entropy"] == pytest.approx(
        -np.log(p[np.arange(7), y]).mean(), rel=1e-12)
    with pytest.raises(ValueError, match="shape"):
        model.predict(rng.uniform(0, 1, (2, 5, 6, 2)))
    with pytest.raises(ValueError, match="labels"):
        model.loss_and_grads(x, y + 1)


def test_dropout_masks_replay_from_seed_and_step(rng):
    x, y = rng.uniform(0, 1, (4, 6, 6, 2)), np.array([0, 1, 2, 0])
    a, b = BaselineCNN(tiny(), seed=7), BaselineCNN(tiny(), seed=7)
    losses_a = [a.loss_and_grads(x, y)[0] for _ in range(3)]      # steps 0, 1, 2
    assert a.dropout_step == 3 and len(set(losses_a)) == 3          # a new mask each step
    assert b.loss_and_grads(x, y, step=2)[0] == losses_a[2] and b.dropout_step == 3
    other = BaselineCNN(tiny(), seed=8, params=a.params)
    assert other.loss(x, y, step=2) != a.loss(x, y, step=2)
    # the mask is default_rng((DROPOUT_STREAM, seed, step))'s, not the run's default_rng(seed)
    assert np.array_equal(a.dropout_generator(5).random(3),
                          np.random.default_rng((DROPOUT_STREAM, 7, 5)).random(3))
    assert not np.array_equal(a.dropout_generator(0).random(3), np.random.default_rng(7).random(3))


def test_a_resumed_run_draws_the_same_masks_bit_for_bit():
    images, labels = bars(60, 0)
    x, y = images[..., None].astype(np.float32) / 255, labels
    config = CNNConfig(input_shape=(10, 10, 1), conv_channels=(3,), conv_kernel=3,
                       pool_after=(1,), fc_sizes=(8,), dropout=0.5, num_classes=3)

    def steps(model, opt, n):
        for k in range(n):
            batch = slice(20 * (k % 3), 20 * (k % 3) + 20)
            _, grads, _ = model.loss_and_grads(x[batch], y[batch])
            opt.step(model.params, grads)

    whole, opt = BaselineCNN(config, seed=4), mc.Adam(lr=0.01)
    steps(whole, opt, 6)
    first, opt1 = BaselineCNN(config, seed=4), mc.Adam(lr=0.01)
    steps(first, opt1, 3)
    # what a checkpoint keeps: the parameters, Adam's state, the step; the seed is the run's
    resumed = BaselineCNN(config, seed=4, params={k: p.copy() for k, p in first.params.items()})
    resumed.dropout_step = 3
    opt2 = mc.Adam(lr=0.01)
    hyper, moments = opt1.state_dict()
    opt2.load_state_dict(hyper, {k: a.copy() for k, a in moments.items()})
    for k in range(3, 6):
        batch = slice(20 * (k % 3), 20 * (k % 3) + 20)
        _, grads, _ = resumed.loss_and_grads(x[batch], y[batch])
        opt2.step(resumed.params, grads)
    assert all(np.array_equal(whole.params[k], resumed.params[k]) for k in whole.params)


def test_batch_bytes_covers_a_training_steps_memory():
    import tracemalloc
    model = BaselineCNN(CNNConfig(input_shape=(12, 12, 1), conv_channels=(8, 16), conv_kernel=5,
                                  pool_after=(2,), fc_sizes=(32,), num_classes=4), seed=0)
    x = np.random.default_rng(0).uniform(0, 1, (32, 12, 12, 1)).astype(np.float32)
    y = np.arange(32) % 4
    model.loss_and_grads(x, y)                      # warm: first-call allocations
    tracemalloc.start()
    model.loss_and_grads(x, y)
    peak = tracemalloc.get_traced_memory()[1]     # beyond the parameters, made before
    tracemalloc.stop()
    assert peak <= model.batch_bytes(32) <= 3 * peak
    assert model.batch_bytes(32, training=False) < model.batch_bytes(32)


def test_check_batch_fits_names_a_batch_that_fits(monkeypatch):
    from minicaps import backend
    model = BaselineCNN(tiny(), seed=0)
    monkeypatch.setattr(backend, "available_memory",
                        lambda device="cpu": model.batch_bytes(10) + 1)
    model.check_batch_fits(10)
    with pytest.raises(ValueError, match=r"at most 10 \(--batch-size 10\)"):
        model.check_batch_fits(11)


@pytest.mark.gpu
def test_on_the_gpu_the_loss_and_gradients_are_the_cpus(rng):
    cpu = BaselineCNN(tiny(), seed=2, dtype="float64")
    randomize_params(cpu, rng)
    gpu = BaselineCNN(tiny(), seed=2, dtype="float64", device="gpu", params=cpu.params)
    x, y = rng.uniform(0, 1, (3, 6, 6, 2)), np.array([2, 0, 1])
    loss, grads, _ = cpu.loss_and_grads(x, y, step=4)
    gpu_loss, gpu_grads, out = gpu.loss_and_grads(x, y, step=4)
    assert gpu_loss == pytest.approx(loss, rel=1e-12)
    for k in grads:
        np.testing.assert_allclose(mc.to_numpy(gpu_grads[k]), grads[k], rtol=1e-10, atol=1e-12)
    assert gpu.device == "gpu" and not isinstance(out["lengths"], np.ndarray)
    np.testing.assert_array_equal(gpu.predict(x), cpu.predict(x))


# ------------------------------------------------------------------ training
def test_a_few_dozen_adam_steps_lower_the_loss_on_bars():
    x_train, y_train, x_test, y_test = bars_data(120, 60)
    to_x = lambda images: images[..., None].astype(np.float32) / 255
    model = BaselineCNN(CNNConfig(input_shape=(10, 10, 1), conv_channels=(4, 4), conv_kernel=3,
                                  pool_after=(1,), fc_sizes=(16,), dropout=0.25, num_classes=3),
                        seed=0)
    opt, losses = mc.Adam(lr=0.01), []
    for step in range(36):                               # 6 epochs of 6 batches of 20
        batch = slice(20 * (step % 6), 20 * (step % 6) + 20)
        loss, grads, _ = model.loss_and_grads(to_x(x_train[batch]), y_train[batch])
        opt.step(model.params, grads)
        losses.append(loss)
    assert np.mean(losses[-6:]) < 0.5 * np.mean(losses[:6]), losses
    assert (model.predict(to_x(x_test)) == y_test).mean() >= 0.9


def test_train_epoch_trains_it_unchanged():
    """minicaps.training.run's epoch loop reads what a BaselineCNN gives, its loss by its name."""
    from minicaps.training.epoch import train_epoch
    from minicaps.training.splits import Split
    x_train, y_train, _, _ = bars_data(120, 60)
    model = BaselineCNN(CNNConfig(input_shape=(10, 10, 1), conv_channels=(4,), conv_kernel=3,
                                  pool_after=(1,), fc_sizes=(16,), dropout=0.25, num_classes=3),
                        seed=0)
    rng, step, history, opt = np.random.default_rng(0), 0, [], mc.Adam(lr=0.01)
    for _ in range(4):
        step, stats = train_epoch(model, opt, Split(x_train, y_train), rng, step,
                                  batch_size=20, lr=0.01, lr_decay=0.96, decay_steps=2000,
                                  shift=1, progress=False, log=lambda line: None)
        history.append(stats)
    assert step == 24 and model.dropout_step == 24
    assert history[-1]["loss"] < 0.6 * history[0]["loss"]
    assert history[-1]["cross_entropy"] == history[-1]["loss"]   # the cross-entropy, alone
    assert "margin_loss" not in history[-1] and "reconstruction_loss" not in history[-1]
    assert history[-1]["accuracy"] > history[0]["accuracy"]


# ------------------------------------------------------------------ the fast twin
@pytest.mark.parametrize("overrides, batch", [
    ({}, 3),                                                   # small: im2col + GEMM
    ({"input_shape": (12, 12, 1), "conv_channels": (16, 16), "conv_kernel": 5,
      "pool_after": (1,), "fc_sizes": (8,), "dropout": 0.4}, 24),   # conv2 by the DFT
])
def test_the_fast_cnn_computes_the_reference_function(overrides, batch):
    from minicaps.fast import conv_fft
    from minicaps.fast.cnn import FastBaselineCNN
    cfg = tiny(**overrides)
    rng = np.random.default_rng(8)
    fast = build_model(cfg, seed=2, dtype="float64")
    assert type(fast) is FastBaselineCNN and fast.impl == "fast"
    randomize_params(fast, rng)
    reference = BaselineCNN(cfg, seed=2, dtype="float64", params=fast.params)
    assert type(reference) is BaselineCNN and reference.impl == "reference"
    assert type(build_model(cfg, impl="reference")) is BaselineCNN
    assert type(reference.with_params(fast.params)) is BaselineCNN
    assert type(fast.with_params(fast.params)) is FastBaselineCNN
    if overrides:       # the second convolution takes the DFT route in training
        h, w, c_in, c_out, _ = cfg.conv_layers()[1]
        assert conv_fft.fft_pays((batch, h + 4, w + 4, c_in), (5, 5, c_in, c_out), 1)
    x = rng.uniform(0, 1, (batch,) + cfg.input_shape)
    y = rng.integers(0, cfg.num_classes, batch)
    loss_f, grads_f, out_f = fast.loss_and_grads(x, y, step=4)
    loss_r, grads_r, out_r = reference.loss_and_grads(x, y, step=4)
    assert loss_f == pytest.approx(loss_r, rel=1e-10)
    for name in reference.params:
        np.testing.assert_allclose(grads_f[name], grads_r[name], rtol=1e-10,
                                   atol=1e-10 * float(np.abs(grads_r[name]).max()), err_msg=name)
    np.testing.assert_allclose(fast.predict_probabilities(x), reference.predict_probabilities(x),
                               rtol=1e-10, atol=1e-12)


@given(seed=seeds, h=st.integers(2, 7), w=st.integers(2, 7), ties=st.booleans())
def test_the_fast_max_pool_is_the_reference_pool_ties_included(seed, h, w, ties):
    """Three maxima and winners found by comparing again: the reference's values and its
    gradient, the first maximum in reading order taking a tied window's gradient."""
    from minicaps.fast.cnn import max_pool_forward, max_pool_backward
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 3, (2, h, w, 3)).astype(float) if ties else rng.standard_normal((2, h, w, 3))
    out, cache = ops.max_pool_forward(x)
    dout = rng.standard_normal(out.shape)
    got, got_cache = max_pool_forward(x)
    np.testing.assert_array_equal(got, out)
    np.testing.assert_array_equal(max_pool_backward(dout, got_cache),
                                  ops.max_pool_backward(dout, cache))


def test_the_fast_cnn_makes_the_weights_spectrum_once_for_evaluation(monkeypatch):
    """Inside fixed_weights a convolution for which the DFT pays at inference takes it with
    the spectrum made at the start; the probabilities are the reference's, and weights
    changed inside the block are refused."""
    from minicaps.fast import conv_fft
    cfg = tiny(input_shape=(12, 12, 1), conv_channels=(32, 32), conv_kernel=5, pool_after=(1,),
               fc_sizes=(8,), dropout=0.0)
    fast = build_model(cfg, seed=1, dtype="float64")
    reference = BaselineCNN(cfg, seed=1, dtype="float64", params=fast.params)
    x = np.random.default_rng(2).uniform(0, 1, (64,) + cfg.input_shape)
    assert conv_fft.fft_pays((64, 10, 10, 32), (5, 5, 32, 32), 1, training=False)   # conv2
    assert not conv_fft.fft_pays((64, 16, 16, 1), (5, 5, 1, 32), 1, training=False)  # conv1
    made = []
    real = conv_fft.weight_spectrum
    monkeypatch.setattr(conv_fft, "weight_spectrum", lambda *a: made.append(1) or real(*a))
    probabilities = fast.predict_probabilities(x, batch_size=16)         # 4 batches
    assert made == [1]                                 # conv2's spectrum, once for the block
    np.testing.assert_allclose(probabilities, reference.predict_probabilities(x), rtol=1e-10,
                               atol=1e-13)
    with pytest.raises(RuntimeError, match="changed inside"):
        with fast.fixed_weights(64):
            fast.params["conv2.W"][0, 0, 0, 0] += 1.0
            fast.forward(x[:16])
