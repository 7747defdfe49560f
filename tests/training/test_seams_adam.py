"""Adam and ParameterAverage refuse what they cannot use before changing anything: a
refused step leaves the parameters, the moments and t as they were."""
import numpy as np
import pytest

from minicaps.training.optim import Adam, ParameterAverage

GOOD = {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "t": 0}


def params():
    return {"a": np.ones(4, np.float32), "b": np.ones((2, 2), np.float32)}


def grads():
    return {"a": np.full(4, 0.1, np.float32), "b": np.full((2, 2), 0.1, np.float32)}


def assert_refused_untouched(opt, ps, gs, match):
    """opt.step(ps, gs) raises ValueError matching ``match``; nothing changed."""
    before = {k: v.copy() for k, v in ps.items()}
    moments = {k: v.copy() for k, v in {**opt.m, **{"v/" + k: v for k, v in opt.v.items()}}.items()}
    t = opt.t
    with pytest.raises(ValueError, match=match):
        opt.step(ps, gs)
    for k in ps:
        np.testing.assert_array_equal(ps[k], before[k])
    after = {**opt.m, **{"v/" + k: v for k, v in opt.v.items()}}
    assert after.keys() == moments.keys()
    for k in moments:
        np.testing.assert_array_equal(after[k], moments[k])
    assert opt.t == t


class Subclass(np.ndarray):
    pass


@pytest.mark.parametrize("wrap", [
    np.matrix,
    lambda g: np.ma.masked_array(g),
    lambda g: g.view(Subclass),
], ids=["matrix", "masked", "subclass"])
@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")     # np.matrix, on purpose
def test_gradient_not_a_plain_ndarray_is_refused_before_any_write(wrap):
    gs = grads()
    gs["b"] = wrap(gs["b"])
    assert_refused_untouched(Adam(), params(), gs, "gradient of b.*ndarray")


def test_masked_gradient_cannot_let_nan_into_the_parameters():
    gs = grads()
    gs["a"] = np.ma.masked_invalid(np.array([np.nan, 1, 1, 1], np.float32))
    ps = params()
    assert_refused_untouched(Adam(), ps, gs, "gradient of a")
    assert np.isfinite(ps["a"]).all()


def test_grads_not_a_dict_is_refused():
    assert_refused_untouched(Adam(), params(), None, "grads")


@pytest.mark.parametrize("moments, match", [
    ({"m/a": np.zeros(4, np.float32)}, "v/a"),
    ({"m/a": np.zeros(4, np.float32), "v/a": np.zeros(5, np.float32)}, "v/a"),
    ({"m/a": [0.0] * 4, "v/a": np.zeros(4, np.float32)}, "m/a"),
    ({"m/a": np.zeros(4, np.int32), "v/a": np.zeros(4, np.int32)}, "m/a"),
    ({"x/a": np.zeros(4, np.float32)}, "x/a"),
], ids=["v-missing", "v-other-shape", "list", "int", "unknown-key"])
def test_load_state_dict_refuses_bad_moments_and_keeps_the_old_state(moments, match):
    opt = Adam()
    ps = params()
    opt.step(ps, grads())
    m, t = opt.m, opt.t
    with pytest.raises(ValueError, match=match):
        opt.load_state_dict(GOOD, moments)
    assert opt.m is m and opt.t == t and opt.lr == 1e-3


def test_moments_that_do_not_fit_the_parameters_are_refused_before_any_write():
    # load_state_dict cannot know the parameters' shapes: the step checks them first
    opt = Adam()
    opt.load_state_dict(GOOD, {"m/a": np.zeros(3, np.float32), "v/a": np.zeros(3, np.float32)})
    assert_refused_untouched(opt, params(), grads(), "moment.*of a")
    opt.load_state_dict(GOOD, {"m/a": np.zeros(4, np.float64), "v/a": np.zeros(4, np.float64)})
    assert_refused_untouched(opt, params(), grads(), "moment.*of a")


@pytest.mark.parametrize("field, value", [
    ("lr", float("nan")), ("lr", 0), ("lr", 10**400), ("lr", "0.001"),
    ("beta1", 1.0), ("beta2", -0.1), ("beta1", True), ("eps", 0), ("eps", float("inf")),
    ("t", -1), ("t", 1.5), ("t", None),
])
def test_load_state_dict_validates_hyper_parameters_like_init(field, value):
    opt = Adam(lr=0.01)
    with pytest.raises(ValueError, match=field):
        opt.load_state_dict({**GOOD, field: value}, {})
    assert (opt.lr, opt.beta1, opt.beta2, opt.eps, opt.t) == (0.01, 0.9, 0.999, 1e-8, 0)


def test_load_state_dict_names_missing_fields():
    hyper = dict(GOOD)
    del hyper["eps"]
    with pytest.raises(ValueError, match="eps"):
        Adam().load_state_dict(hyper, {})


def test_huge_integer_learning_rate_is_a_value_error():
    with pytest.raises(ValueError, match="learning rate"):
        Adam(lr=10**400)


@pytest.mark.parametrize("decay", ["0.5", None, 1j, 10**400, float("nan"), 1.0, True])
def test_average_decay_must_be_a_number_in_the_open_unit_interval(decay):
    with pytest.raises(ValueError, match=r"decay.*\(0, 1\)"):
        ParameterAverage({"a": np.zeros(3, np.float32)}, decay)


def test_good_state_still_loads_and_steps():
    opt = Adam()
    opt.load_state_dict({**GOOD, "t": 3}, {"m/a": np.zeros(4, np.float32),
                                          "v/a": np.zeros(4, np.float32)})
    ps = params()
    opt.step(ps, grads())
    assert opt.t == 4 and np.all(ps["a"] < 1) and np.all(ps["b"] < 1)


# --- a fourth pass: read-only parameters, unknown gradients, loaded counts and moments --------

def test_a_read_only_parameter_is_refused_before_any_write():
    ps = params()
    ps["b"].flags.writeable = False
    assert_refused_untouched(Adam(), ps, grads(), r"parameter b is read-only")


def test_a_gradient_for_a_parameter_the_model_lacks_is_refused():
    assert_refused_untouched(Adam(), params(), {**grads(), "c": np.zeros(3, np.float32)},
                             r"grads names parameters the model lacks: \['c'\]")


@pytest.mark.parametrize("t", [2 ** 53, 10 ** 400, -1])
def test_load_state_dict_refuses_a_step_count_no_float_holds(t):
    opt = Adam()
    with pytest.raises(ValueError, match=r"t \(steps taken\) must be a whole number from 0"):
        opt.load_state_dict({**GOOD, "t": t}, {})
    assert opt.t == 0


@pytest.mark.parametrize("m, v", [(np.nan, 1.0), (0.0, np.inf), (0.0, -1.0)])
def test_load_state_dict_refuses_moments_adam_cannot_reach(m, v):
    opt = Adam()
    arrays = {"m/a": np.full(4, m, np.float32), "v/a": np.full(4, v, np.float32)}
    with pytest.raises(ValueError, match=r"moments of a hold NaN, infinite or"):
        opt.load_state_dict(GOOD, arrays)
    assert opt.m == {} and opt.v == {}


def average_refused_untouched(avg, ps, t, match):
    before = {k: np.array(a) for k, a in avg.params.items()}
    with pytest.raises(ValueError, match=match):
        avg.update(ps, t)
    for k, a in avg.params.items():
        np.testing.assert_array_equal(a, before[k])


@pytest.mark.parametrize("change, match", [
    (lambda ps: ps.update(b=np.full((3, 3), 5, np.float32)), r"parameter b is \(3, 3\)"),
    (lambda ps: ps.update(a=np.array(["1", "2", "3", "4"])), r"parameter a is \(4,\) <U1"),
    (lambda ps: ps.update(a=np.ones(1, np.float32)), r"parameter a is \(1,\)"),
    (lambda ps: ps.update(a=np.ma.masked_invalid(np.array([np.nan, 1, 1, 1], np.float32))),
     r"parameter a is a numpy\.ma"),
    (lambda ps: ps.update(c=np.ones(2, np.float32)), r"params names parameters the model lacks"),
], ids=["shape", "strings", "broadcasts", "masked", "unknown"])
def test_the_average_refuses_parameters_that_do_not_fit_changing_nothing(change, match):
    avg = ParameterAverage(params(), 0.9)
    ps = params()
    change(ps)
    average_refused_untouched(avg, ps, 1, match)


@pytest.mark.parametrize("t", [-5, -10, 2.5, True, float("nan"), 10 ** 400])
def test_the_average_refuses_an_update_count_that_is_no_count(t):
    avg = ParameterAverage(params(), 0.9)
    average_refused_untouched(avg, params(), t, r"update count t must be a whole number")
