"""Adam against a few steps computed by hand from the update rule."""
import math

import numpy as np
import pytest

import minicaps as mc


def adam_by_hand(p, grads, lr=1e-3, b1=0.9, b2=0.999, eps=1e-8):
    """The TensorFlow form of Adam, one scalar at a time, in plain Python floats."""
    m = v = 0.0
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        lr_t = lr * math.sqrt(1 - b2**t) / (1 - b1**t)
        p = p - lr_t * m / (math.sqrt(v) + eps)
    return p


def test_adam_matches_the_update_rule_by_hand():
    rng = np.random.default_rng(0)
    p0 = {"a.W": rng.standard_normal((3, 2)), "a.b": rng.standard_normal(2)}
    steps = [{k: rng.standard_normal(v.shape) for k, v in p0.items()} for _ in range(4)]
    params = {k: v.copy() for k, v in p0.items()}
    opt = mc.Adam(lr=0.01)
    for g in steps:
        opt.step(params, g)
    for name in p0:
        for idx in np.ndindex(p0[name].shape):
            expected = adam_by_hand(p0[name][idx], [g[name][idx] for g in steps], lr=0.01)
            assert params[name][idx] == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert opt.t == 4


def test_first_adam_step_moves_each_parameter_by_about_lr():
    # with bias correction, step 1 is lr * g / (|g| + eps) = lr * sign(g)
    params = {"w": np.array([1.0, -2.0, 3.0])}
    mc.Adam(lr=0.1).step(params, {"w": np.array([5.0, -0.01, 2.0])})
    np.testing.assert_allclose(params["w"], [0.9, -1.9, 2.9], rtol=1e-5)


def test_adam_updates_in_place_and_keeps_float32():
    w = np.ones(4, dtype=np.float32)
    params = {"w": w}
    opt = mc.Adam()
    opt.step(params, {"w": np.full(4, 0.5, dtype=np.float32)})
    assert params["w"] is w and w.dtype == np.float32 and np.all(w < 1)
    assert opt.m["w"].dtype == np.float32


def test_adam_state_round_trip_continues_identically():
    rng = np.random.default_rng(1)
    grads = [{"w": rng.standard_normal(5)} for _ in range(4)]
    a, pa = mc.Adam(lr=0.05), {"w": np.zeros(5)}
    for g in grads:
        a.step(pa, g)
    b, pb = mc.Adam(lr=0.05), {"w": np.zeros(5)}
    for g in grads[:2]:
        b.step(pb, g)
    hyper, arrays = b.state_dict()
    c = mc.Adam()
    c.load_state_dict(hyper, {k: v.copy() for k, v in arrays.items()})
    for g in grads[2:]:
        c.step(pb, g)
    np.testing.assert_array_equal(pa["w"], pb["w"])


def test_adam_rejects_missing_gradients_and_bad_hyperparameters():
    with pytest.raises(ValueError, match="no gradient"):
        mc.Adam().step({"w": np.zeros(2)}, {})
    with pytest.raises(ValueError, match="learning rate"):
        mc.Adam(lr=0)
    with pytest.raises(ValueError, match="betas"):
        mc.Adam(beta1=1.0)


@pytest.mark.parametrize("threads", ["1", "2", "3"])
def test_adam_on_arrays_of_many_blocks_matches_the_rule_on_every_core_count(monkeypatch,
                                                                            threads):
    """Arrays longer than Adam.BLOCK are updated block by block, the blocks shared out
    over the threads: every element must still get exactly the rule's update."""
    monkeypatch.setenv("MINICAPS_THREADS", threads)
    rng = np.random.default_rng(1)
    n = 2 * mc.Adam.BLOCK + 123
    p0 = {"big": rng.standard_normal(n), "small": rng.standard_normal((4, 5)),
          "mid": rng.standard_normal((3, mc.Adam.BLOCK // 2 + 7))}
    steps = [{k: rng.standard_normal(v.shape) for k, v in p0.items()} for _ in range(3)]
    params = {k: v.copy() for k, v in p0.items()}
    opt = mc.Adam(lr=0.01)
    for g in steps:
        opt.step(params, g)
    for name in p0:
        # The rule vectorised over the elements, independently of Adam.step.
        m = v = 0.0
        expected = p0[name].copy()
        for t, g in enumerate(steps, start=1):
            m = 0.9 * m + 0.1 * g[name]
            v = 0.999 * v + 0.001 * g[name] ** 2
            expected -= 0.01 * math.sqrt(1 - 0.999**t) / (1 - 0.9**t) * m / (np.sqrt(v) + 1e-8)
        np.testing.assert_allclose(params[name], expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("shape, threads", [((3, 4), "1"), ((2 * mc.Adam.BLOCK + 123,), "3")])
def test_parameter_average_is_the_weighted_sum_of_the_iterates(monkeypatch, shape, threads):
    """avg_T = prod_t d_t p_0 + sum_t (1 - d_t) prod_{s > t} d_s p_t, with the warm-up
    rates d_t = min(decay, (1 + t) / (10 + t)): the recursion unrolled (also over arrays
    of many blocks, shared out over the threads)."""
    from minicaps.optim import ParameterAverage
    monkeypatch.setenv("MINICAPS_THREADS", threads)
    rng = np.random.default_rng(0)
    iterates = [rng.standard_normal(shape) for _ in range(40)]
    average = ParameterAverage({"w": iterates[0]}, decay=0.6)
    for t, p in enumerate(iterates[1:], start=1):
        average.update({"w": p}, t)
    d = [min(0.6, (1 + t) / (10 + t)) for t in range(1, 40)]
    assert d[0] < 0.6 and d[-1] == 0.6             # the warm-up, then the decay from t = 13 on
    expected = np.prod(d) * iterates[0]
    for t in range(1, 40):
        expected = expected + (1 - d[t - 1]) * np.prod(d[t:]) * iterates[t]
    np.testing.assert_allclose(average.params["w"], expected, rtol=1e-12, atol=1e-14)
    assert average.params["w"] is not iterates[0]          # a copy: the start is untouched
    with pytest.raises(ValueError, match="decay"):
        ParameterAverage({"w": iterates[0]}, decay=1.0)
