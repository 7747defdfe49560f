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
    from minicaps.training.optim import ParameterAverage
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


# ------------------------------------------------------------ flat buffers (backend.FlatArrays)
def _some_params(rng, dtype=np.float32):
    shapes = {"a.W": (3, 4), "a.b": (4,), "big": (2 * mc.Adam.BLOCK + 5,), "c.W": (2, 3, 5)}
    return {k: rng.standard_normal(s).astype(dtype) for k, s in shapes.items()}


def test_flat_arrays_are_views_of_one_buffer_in_order_and_copies_keep_that():
    import copy
    import pickle
    from minicaps.backend import FlatArrays, flat_buffer, same_layout
    rng = np.random.default_rng(0)
    arrays = _some_params(rng)
    flat = FlatArrays(arrays)
    assert list(flat) == list(arrays) and flat.flat.size == sum(a.size for a in arrays.values())
    k = 0
    for name, a in arrays.items():          # each array a view of its slice, the values copied
        np.testing.assert_array_equal(flat[name], a)
        assert flat[name].base is flat.flat and flat[name] is not a
        assert np.array_equal(flat.flat[k:k + a.size], a.reshape(-1))
        k += a.size
    flat.flat[:] = 7                        # writing the buffer writes every view
    assert all(np.all(v == 7) for v in flat.values())
    for other in (copy.deepcopy(flat), pickle.loads(pickle.dumps(flat))):
        assert isinstance(other, FlatArrays) and other.flat_buffer() is other.flat
        assert not np.shares_memory(other.flat, flat.flat) and same_layout(other, flat)
        other.flat[:] = 1
        assert all(np.all(v == 1) for v in other.values())
    flat["a.b"] = np.zeros(4, np.float32)   # an entry replaced: no longer the buffer's
    assert flat_buffer(flat) is None and flat_buffer(dict(arrays)) is None
    with pytest.raises(ValueError, match="one dtype"):
        FlatArrays({"a": np.zeros(2, np.float32), "b": np.zeros(2)})


def test_a_model_holds_its_parameters_in_one_buffer():
    model = mc.CapsNet(mc.CapsNetConfig(conv1_channels=8, primary_maps=2, digit_dims=4,
                                        decoder_sizes=(8, 16)), seed=0)
    assert model.params.flat_buffer() is model.params.flat
    assert model.params.flat.size == model.num_params()
    params = {k: v.copy() for k, v in model.params.items()}
    params["conv1.b"][:] = 3
    model.set_params(params)               # copied into a new buffer, the views still intact
    assert model.params.flat_buffer() is not None and np.all(model.params["conv1.b"] == 3)
    assert not np.shares_memory(model.params["conv1.b"], params["conv1.b"])


@pytest.mark.parametrize("threads", ["1", "2"])
def test_adam_and_average_on_flat_parameters_equal_them_array_by_array(monkeypatch, threads):
    """Flat parameters (and moments, and the average) change how the arrays are laid out
    and walked, never a bit of the result; moments loaded per name (a checkpoint) go on
    from where they were."""
    from minicaps.backend import FlatArrays
    from minicaps.training.optim import ParameterAverage
    monkeypatch.setenv("MINICAPS_THREADS", threads)
    rng = np.random.default_rng(2)
    p0 = _some_params(rng)
    steps = [{k: rng.standard_normal(v.shape).astype(np.float32) for k, v in p0.items()}
             for _ in range(4)]
    plain, flat = {k: v.copy() for k, v in p0.items()}, FlatArrays(p0)
    opts = mc.Adam(lr=0.01), mc.Adam(lr=0.01)
    averages = ParameterAverage(plain), ParameterAverage(flat)
    assert isinstance(averages[1].params, FlatArrays)
    for t, g in enumerate(steps, start=1):
        if t == 3:                          # the flat run's moments come back per name
            hyper, arrays = opts[1].state_dict()
            opts = opts[0], mc.Adam()
            opts[1].load_state_dict(hyper, {k: v.copy() for k, v in arrays.items()})
        for params, opt, average in zip((plain, flat), opts, averages):
            opt.step(params, g)
            average.update(params, opt.t)
    assert flat.flat_buffer() is not None and opts[1].m.flat_buffer() is not None
    for name in p0:
        np.testing.assert_array_equal(flat[name], plain[name])
        np.testing.assert_array_equal(opts[1].v[name], opts[0].v[name])
        np.testing.assert_array_equal(averages[1].params[name], averages[0].params[name])


@pytest.mark.parametrize("flat", [True, False])
def test_adam_and_average_on_the_gpu_are_one_kernel_each_and_the_cpus_numbers(stand_in, flat):
    """On the GPU (the stand-in) the update of flat parameters is two launches (the
    gradients gathered into one buffer, then the fused kernel) and the average's one,
    whatever the number of arrays; the kernels' CUDA C body, run by the stand-in as NumPy
    expressions, gives the CPU's numbers bit for bit."""
    from minicaps import backend
    from minicaps.backend import FlatArrays
    from minicaps.training.optim import ParameterAverage
    rng = np.random.default_rng(3)
    p0 = _some_params(rng)
    steps = [{k: rng.standard_normal(v.shape).astype(np.float32) for k, v in p0.items()}
             for _ in range(3)]
    cpu = FlatArrays(p0)
    gpu = backend.params_to_device(p0, "gpu")
    gpu = FlatArrays(gpu) if flat else gpu
    cpu_opt, gpu_opt = mc.Adam(lr=0.01), mc.Adam(lr=0.01)
    cpu_avg, gpu_avg = ParameterAverage(cpu), ParameterAverage(gpu)
    for g in steps:
        cpu_opt.step(cpu, g)
        cpu_avg.update(cpu, cpu_opt.t)
        g_gpu = backend.params_to_device(g, "gpu")
        stand_in.launches.clear()
        gpu_opt.step(gpu, g_gpu)
        adam = sum(stand_in.launches.values())
        gpu_avg.update(gpu, gpu_opt.t)
        average = sum(stand_in.launches.values()) - adam
    P = len(p0)
    assert (adam, average) == ((2, 1) if flat else (P, P))
    assert stand_in.launches["transfer"] == 0
    for name in p0:
        np.testing.assert_array_equal(backend.to_numpy(gpu[name]), cpu[name])
        np.testing.assert_array_equal(backend.to_numpy(gpu_opt.m[name]), cpu_opt.m[name])
        np.testing.assert_array_equal(backend.to_numpy(gpu_avg.params[name]), cpu_avg.params[name])
