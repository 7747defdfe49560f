"""Routes chosen by measurement (fast/plans.py): every route computes the same network, the
fastest candidate is the one kept, plans are kept in the plan file by machine and shape,
and a damaged or unwritable plan file costs a measurement, never a run."""
import json

import numpy as np
import pytest

import minicaps as mc
from minicaps import build_model
from minicaps.fast import plans
from minicaps.gradcheck import relative_error

SMALL = dict(conv1_channels=16, primary_maps=4, primary_dims=8, digit_dims=4,
             decoder_sizes=(16, 32))


@pytest.fixture
def plan_file(tmp_path, monkeypatch):
    path = tmp_path / "plans.json"
    monkeypatch.setenv("MINICAPS_PLAN_FILE", str(path))
    return path


def small(conv_method="measure", dtype="float64", params=None, seed=0):
    return build_model(mc.CapsNetConfig(**SMALL), seed=seed, dtype=dtype, params=params,
                       conv_method=conv_method)


def test_every_route_computes_the_same_loss_and_gradients(rng, monkeypatch, plan_file):
    """The primary capsules through im2col + GEMM or the DFT, the digit capsules in each
    candidate chunk size: the same loss and gradients to float64 rounding."""
    x, y = rng.random((20, 28, 28, 1)), rng.integers(0, 10, 20)
    base = small("gemm")
    loss0, grads0, _ = base.loss_and_grads(x, y)
    for primary in ("gemm", "fft"):
        for chunk in plans.CAPSULE_CHUNKS:
            forced = {"primary": primary, "capsule_chunk": chunk, "how": "measured"}
            monkeypatch.setattr(plans, "measure_plan", lambda *a, forced=forced: forced)
            model = small(params=base.params)
            loss, grads, _ = model.loss_and_grads(x, y)
            assert model.plan_for(20, True) == forced
            assert abs(loss - loss0) <= 1e-12 * abs(loss0)
            for name in grads0:
                assert relative_error(grads[name], grads0[name]) <= 1e-10, (primary, chunk, name)
            plan_file.unlink()                       # measure again for the next route


def test_the_fastest_candidate_is_kept(monkeypatch, plan_file):
    """measure_plan keeps the route and chunk of the least time, whatever their order."""
    model = small(dtype="float32")
    fake = {frozenset({"gemm", "fft"}): {"gemm": 0.004, "fft": 0.002}}

    def timed(candidates, rounds=plans.ROUNDS):
        names = frozenset(candidates)
        if names in fake:
            return fake[names]
        return {c: 0.001 * abs(c - 32) + 0.0001 for c in candidates}   # 32 the least
    monkeypatch.setattr(plans, "best_times", timed)
    plan = plans.measure_plan(model, 64, training=True)
    assert plan["primary"] == "fft" and plan["capsule_chunk"] == 32
    assert plan["ms"]["primary"] == {"gemm": 4.0, "fft": 2.0}
    fake[frozenset({"gemm", "fft"})] = {"gemm": 0.001, "fft": 0.002}
    assert plans.measure_plan(model, 64, training=False)["primary"] == "gemm"


def test_of_level_candidates_the_one_of_less_memory_is_kept():
    """Within 3% of the fastest counts as level: then im2col + GEMM (no weights' spectrum)
    and the smaller chunk."""
    order = ("gemm", "fft")
    assert plans.least_memory_of_the_fastest({"gemm": 1.02, "fft": 1.0}, order) == "gemm"
    assert plans.least_memory_of_the_fastest({"gemm": 1.04, "fft": 1.0}, order) == "fft"
    assert plans.least_memory_of_the_fastest({8: 1.1, 16: 1.0, 32: 1.02}, [8, 16, 32]) == 16
    assert plans.least_memory_of_the_fastest({8: 1.01, 16: 1.0, 32: 1.02}, [8, 16, 32]) == 8


def test_best_times_times_each_candidate_in_turns_after_an_untimed_call(monkeypatch):
    """Each round: every candidate called twice in a row, the second call timed; the least
    time of the rounds kept (here a clock that advances by a known step per reading)."""
    calls, clock = [], iter(range(100))
    monkeypatch.setattr(plans.time, "perf_counter", lambda: next(clock))
    cost = {"a": 0, "b": 0}

    def candidate(name):
        def call():
            calls.append(name)
            for _ in range(cost[name]):
                next(clock)                     # the call "takes" this many ticks
        return call
    cost.update(a=3, b=1)
    times = plans.best_times({"a": candidate("a"), "b": candidate("b")}, rounds=3)
    assert calls == ["a", "a", "b", "b"] * 3
    assert times == {"a": 4, "b": 2}            # ticks between the two readings


def test_a_measured_plan_goes_to_the_plan_file_and_is_read_back(rng, monkeypatch, plan_file):
    x, y = rng.random((6, 28, 28, 1)).astype("float32"), rng.integers(0, 10, 6)
    first = small(dtype="float32")
    first.loss_and_grads(x, y)
    plan = first.plan_for(6, True)
    assert plan["how"] == "measured"
    assert set(plan["ms"]["primary"]) == {"gemm", "fft"}
    ms = plan["ms"]["primary"]
    assert ms[plan["primary"]] <= (1 + plans.LEVEL) * min(ms.values())
    if plan["primary"] == "fft":                    # only when clearly faster
        assert ms["gemm"] > (1 + plans.LEVEL) * ms["fft"]
    saved = json.loads(plan_file.read_text())
    (key, kept), = saved.items()
    assert json.loads(key)["cpu"] == plans.cpu_model() and json.loads(key)["batch"] == 6
    assert kept["primary"] == plan["primary"] and kept["capsule_chunk"] == plan["capsule_chunk"]

    def no_measuring(*args):
        raise AssertionError("measured again although the plan file holds the plan")
    monkeypatch.setattr(plans, "measure_plan", no_measuring)
    second = small(dtype="float32", params=first.params)
    second.loss_and_grads(x, y)
    assert second.plan_for(6, True)["how"] == "plan file"
    assert second.plan_for(6, True)["primary"] == plan["primary"]
    # another machine (another CPU model), another plan
    monkeypatch.setattr(plans, "cpu_model", lambda: "another CPU")
    with pytest.raises(AssertionError, match="measured again"):
        small(dtype="float32", params=first.params).loss_and_grads(x, y)


@pytest.mark.parametrize("content", [b"\x00\xff not json", b"[1, 2, 3]", b'{"k": "gemm"}',
                                     b'{"k": {"primary": "dft", "capsule_chunk": 16}}',
                                     b"[" * 100000, b" " * (1 << 23)])
def test_a_damaged_plan_file_costs_a_measurement_and_is_written_anew(rng, plan_file, content):
    plan_file.write_bytes(content)
    model = small(dtype="float32")
    model.forward(rng.random((4, 28, 28, 1)).astype("float32"))
    assert model.plan_for(4, False)["how"] == "measured"
    assert len(plans.read_plans(plan_file)) == 1


def test_an_unwritable_plan_file_leaves_the_plan_in_memory(rng, tmp_path, monkeypatch):
    blocker = tmp_path / "a file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("MINICAPS_PLAN_FILE", str(blocker / "plans.json"))
    model = small(dtype="float32")
    model.forward(rng.random((3, 28, 28, 1)).astype("float32"))
    assert model.plans_used()["inference, batch 3"]["how"] == "measured"
    assert blocker.read_text() == "not a folder"


def test_a_forced_route_measures_nothing(rng, monkeypatch, plan_file):
    def no_measuring(*args):
        raise AssertionError("measured")
    monkeypatch.setattr(plans, "measure_plan", no_measuring)
    from minicaps.fast.conv_fft import fft_pays
    x = rng.random((20, 28, 28, 1))
    for policy in ("gemm", "fft", "auto", "rules"):
        model = small(policy)
        _, caches = model.forward(x, rng.integers(0, 10, 20))
        h_shape, w_shape = (20, 20, 20, 16), model.params["primary.W"].shape
        rules = "fft" if fft_pays(h_shape, w_shape, 2) else "gemm"      # the rules' count
        assert caches["primary"][0] == {"gemm": "gemm", "fft": "fft"}.get(policy, rules), policy
    monkeypatch.setenv("MINICAPS_ROUTES", "gemm")
    assert small(None).conv_method == "gemm"
    monkeypatch.setenv("MINICAPS_ROUTES", "fastest")
    with pytest.raises(ValueError, match="MINICAPS_ROUTES='fastest': give one of"):
        small(None)
    assert not plan_file.exists()


@pytest.mark.parametrize("route", ["gemm", "fft"])
def test_inference_makes_the_weights_spectrum_only_where_its_plan_takes_the_dft(
        rng, monkeypatch, plan_file, route):
    monkeypatch.setattr(plans, "measure_plan", lambda model, batch, training: {
        "primary": route, "capsule_chunk": 8, "how": "measured"})
    model = small(dtype="float64")
    reference = mc.CapsNet(model.config, dtype="float64", params=model.params)
    x = rng.random((30, 28, 28, 1))
    with model.fixed_weights(30, batch_size=10):
        assert ("primary" in model._fixed) == (route == "fft")
        _, caches = model.forward(x[:10])
    assert caches["primary"][0] == route
    assert model.plans_used() == {"inference, batch 10": {
        "primary": route, "capsule_chunk": 8, "how": "measured"}}
    np.testing.assert_allclose(model.predict_lengths(x, batch_size=10),
                               reference.predict_lengths(x, batch_size=10), rtol=1e-10)


def test_describe_says_each_route_and_how_it_was_chosen():
    line = plans.describe({"primary": "fft", "capsule_chunk": 16, "how": "plan file"})
    assert "the DFT route" in line and "chunks of at most 16" in line and "plan file" in line


def test_a_training_run_says_and_keeps_the_routes_it_ran_with(tmp_path, plan_file):
    from synthetic import synthetic_mnist
    from minicaps.io.checkpoint import load_checkpoint
    from minicaps.training.run import train
    lines = []
    train(mc.CapsNetConfig(**SMALL), epochs=2, out_dir=tmp_path / "run",
          data=synthetic_mnist(30, 12),
          batch_size=10, progress=False, log=lines.append)
    told = [line for line in lines if line.startswith("routes for ")]
    assert [line.split(":")[0] for line in told] == ["routes for training, batch 10",
                                                     "routes for inference, batch 12"]
    assert "(measured here)" in told[0]
    kept = load_checkpoint(tmp_path / "run" / "last.npz").extra["routes"]
    assert set(kept) == {"training, batch 10", "inference, batch 12"}
    assert kept["training, batch 10"]["primary"] in ("gemm", "fft")
