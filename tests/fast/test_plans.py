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
    monkeypatch.setattr(plans, "_known", {})        # this process's plans: none yet
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
            assert model.forward(x, y)[1]["primary"][0] == primary       # the route that ran
            assert abs(loss - loss0) <= 1e-12 * abs(loss0)
            for name in grads0:
                assert relative_error(grads[name], grads0[name]) <= 1e-10, (primary, chunk, name)
            plan_file.unlink()                       # measure again for the next route
            plans._known.clear()


def test_the_fastest_candidate_is_kept(monkeypatch, plan_file):
    """measure_plan keeps the route and chunk of the least time, whatever their order."""
    model = small(dtype="float32")
    fake = {frozenset({"gemm", "fft"}): {"gemm": 0.004, "fft": 0.002}}

    def timed(candidates, rounds=plans.ROUNDS):
        names = frozenset(candidates)
        if names in fake:
            return fake[names]
        if names == {"spectrum"}:                    # inference: the spectrum's own time
            return {"spectrum": 0.005}
        return {c: 0.001 * abs(c - 32) + 0.0001 for c in candidates}   # 32 the least
    monkeypatch.setattr(plans, "best_times", timed)
    plan = plans.measure_plan(model, 64, training=True)
    assert plan["primary"] == "fft" and plan["capsule_chunk"] == 32
    assert plan["ms"]["primary"] == {"gemm": 4.0, "fft": 2.0}
    fake[frozenset({"gemm", "fft"})] = {"gemm": 0.001, "fft": 0.002}
    plan = plans.measure_plan(model, 64, training=False)
    assert plan["primary"] == "gemm" and plan["ms"]["spectrum"] == 5.0


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
    plans._known.clear()                             # as a new process would start
    second = small(dtype="float32", params=first.params)
    second.loss_and_grads(x, y)
    assert second.plan_for(6, True)["how"] == "plan file"
    assert second.plan_for(6, True)["primary"] == plan["primary"]
    # another machine (another CPU model), another plan
    plans._known.clear()
    monkeypatch.setattr(plans, "cpu_model", lambda: "another CPU")
    with pytest.raises(AssertionError, match="measured again"):
        small(dtype="float32", params=first.params).loss_and_grads(x, y)


@pytest.mark.parametrize("content", [b"\x00\xff not json", b"[1, 2, 3]", b'{"k": "gemm"}',
                                     b'{"k": {"primary": "dft", "capsule_chunk": 16}}',
                                     b'{"k": {"primary": "fft", "capsule_chunk": true}}',
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
    monkeypatch.setattr(plans, "_known", {})
    model = small(dtype="float32")
    model.forward(rng.random((3, 28, 28, 1)).astype("float32"))
    assert model.plans_used()["inference, batch 3"]["how"].startswith("measured")
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


def test_a_fifo_in_place_of_the_plan_file_is_not_waited_on(rng, plan_file):
    import os
    os.mkfifo(plan_file)
    assert plans.read_plans(plan_file) == {}           # returns at once: nothing to read


def test_batches_over_the_timed_size_take_the_rules(monkeypatch, plan_file):
    def no_measuring(*args):
        raise AssertionError("measured")
    monkeypatch.setattr(plans, "measure_plan", no_measuring)
    plan = small(dtype="float32").plan_for(plans.MAX_TIMED_BATCH + 1, training=False)
    assert plan["capsule_chunk"] == 16 and "not timed" in plan["how"]


def test_a_process_measures_a_shape_once_even_when_the_plan_file_cannot_be_written(
        rng, tmp_path, monkeypatch):
    monkeypatch.setenv("MINICAPS_PLAN_FILE", str(tmp_path / "a file" / "plans.json"))
    (tmp_path / "a file").write_text("not a folder")
    monkeypatch.setattr(plans, "_known", {})
    count = []
    real = plans.measure_plan
    monkeypatch.setattr(plans, "measure_plan", lambda *a: count.append(1) or real(*a))
    x = rng.random((3, 28, 28, 1)).astype("float32")
    first = small(dtype="float32")
    first.forward(x)
    small(dtype="float32", params=first.params).forward(x)
    assert count == [1]


@pytest.mark.parametrize("batches, ms, want", [
    (1, {"primary": {"gemm": 10.0, "fft": 6.0}, "spectrum": 20.0}, False),   # 10 < 26
    (8, {"primary": {"gemm": 10.0, "fft": 6.0}, "spectrum": 20.0}, True),    # 80 > 68
    (8, {"primary": {"gemm": 10.0, "fft": 8.0}, "spectrum": 5.0}, True),     # 80 > 69
    (8, {"primary": {"gemm": 10.0, "fft": 9.6}, "spectrum": 1.0}, False)])   # level: less memory
def test_the_spectrum_is_made_only_where_the_block_pays_for_it(batches, ms, want):
    plan = {"primary": "fft", "capsule_chunk": 8, "how": "measured", "ms": ms}
    assert plans.spectrum_pays(plan, batches) is want


def test_inference_records_the_route_each_batch_ran(rng, monkeypatch, plan_file):
    """A block of 25 images in batches of 10: the spectrum made for the block's plan, so
    the last batch of 5 runs the DFT too, and plans_used says so."""
    def fake(model, batch, training):
        route = "fft" if batch == 10 else "gemm"
        return {"primary": route, "capsule_chunk": 8, "how": "measured"}
    monkeypatch.setattr(plans, "measure_plan", fake)
    model = small(dtype="float64")
    model.predict_lengths(rng.random((25, 28, 28, 1)), batch_size=10)
    used = model.plans_used()
    assert used["inference, batch 10"]["primary"] == "fft"
    assert used["inference, batch 5"]["primary"] == "fft"
    assert "as fixed_weights allowed" in used["inference, batch 5"]["how"]


def test_a_resumed_run_takes_the_checkpoints_routes_whatever_the_plan_file_says(
        tmp_path, monkeypatch, plan_file):
    from synthetic import synthetic_mnist
    from minicaps.training.run import train
    data = synthetic_mnist(30, 12)
    forced = {"primary": "gemm", "capsule_chunk": 32, "how": "measured"}
    monkeypatch.setattr(plans, "measure_plan", lambda *a: dict(forced))
    train(mc.CapsNetConfig(**SMALL), epochs=1, out_dir=tmp_path / "run", data=data,
          batch_size=10, progress=False, log=lambda line: None)
    plan_file.unlink()
    monkeypatch.setattr(plans, "_known", {})

    def no_measuring(*args):
        raise AssertionError("measured again instead of taking the checkpoint's routes")
    monkeypatch.setattr(plans, "measure_plan", no_measuring)
    result = train(mc.CapsNetConfig(**SMALL), epochs=2, out_dir=tmp_path / "run", data=data,
                   batch_size=10, resume=tmp_path / "run" / "last.npz", progress=False,
                   log=lambda line: None)
    used = result.model.plans_used()["training, batch 10"]
    assert (used["primary"], used["capsule_chunk"], used["how"]) == ("gemm", 32, "the checkpoint's")


def test_a_network_moved_to_another_device_forgets_its_plans(rng, monkeypatch, plan_file):
    model = small(dtype="float32")
    model.forward(rng.random((3, 28, 28, 1)).astype("float32"))
    assert model.plans_used()
    model._place_on("cpu")
    assert model.plans_used() == {} and model._plans == {}


def test_evaluating_pairs_runs_the_inference_routes(rng, plan_file):
    """MultiMNIST's evaluation passes labels (to decode each digit) but no backward pass
    follows: its plans are inference plans."""
    from minicaps.training.evaluation import evaluate
    model = small(dtype="float32")
    images = rng.integers(0, 256, (6, 28, 28), dtype=np.uint8)
    labels = np.array([[0, 1], [2, 3], [4, 5], [6, 7], [8, 9], [1, 2]])
    targets = rng.integers(0, 256, (6, 2, 28, 28), dtype=np.uint8)
    scores = evaluate(model, images, labels, 4, progress=False, targets=targets)
    assert scores["n"] == 6
    assert set(model.plans_used()) == {"inference, batch 4", "inference, batch 2"}
