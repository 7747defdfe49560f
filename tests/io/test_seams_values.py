"""Values inside a checkpoint, inside metrics.jsonl and in library calls: a number too big
for the arithmetic it feeds, an RNG state minicaps never writes, a metrics line of the wrong
shape, an optimizer given eps <= 0 or NaN gradients, a network too big to build. Each is
refused up front, naming the file and the field (or the argument), never a traceback deep
in NumPy, never after an epoch was trained and lost.

Every file case runs under ``bounded`` (tests/limits.py) and checks that the files it was
given are unchanged (their SHA-256).
"""
import json
import math

import numpy as np
import pytest

from minicaps import viz
from minicaps.io.checkpoint import load_checkpoint, save_checkpoint
from minicaps.io.metadata import generator_from_state
from minicaps.nn.cnn import BaselineCNN, CNNConfig
from minicaps.nn.capsnet import CapsNet, CapsNetConfig
from minicaps.training.optim import Adam

from hostile_cases import one_line_error, rewrite_meta
from limits import file_hashes
from tiny_runs import run_tiny

MB = 1 << 20
HUGE = 10 ** 400


def set_field(path, value):
    """change(meta) setting the field at ``path`` ("optimizer.t") to ``value``."""
    *outer, last = path.split(".")

    def change(meta):
        for key in outer:
            meta = meta[key]
        meta[last] = value
    return change


# --- F8: integers too big for the arithmetic they feed ---------------------------------------

@pytest.mark.parametrize("field", ["step", "optimizer.t", "epoch"])
def test_a_huge_counter_is_refused_at_load_naming_file_and_field(run_dir, bounded, field):
    path = run_dir / "last.npz"
    rewrite_meta(path, set_field(path=field, value=HUGE))
    before = file_hashes(run_dir)
    with bounded(memory=256 * MB, seconds=20):
        with pytest.raises(ValueError) as info:
            load_checkpoint(path)
    assert f"{path}: damaged checkpoint metadata: {field} is" in str(info.value)
    assert file_hashes(run_dir) == before


@pytest.mark.parametrize("field", ["step", "optimizer.t", "epoch"])
def test_resuming_from_a_huge_counter_is_refused_before_training(run_dir, bounded, field):
    path = run_dir / "last.npz"
    rewrite_meta(path, set_field(path=field, value=HUGE))
    before = file_hashes(run_dir)
    with bounded(memory=512 * MB, seconds=20):
        with pytest.raises(ValueError, match=f"damaged checkpoint metadata: {field} is"):
            run_tiny(run_dir, epochs=2, resume=path)
    assert file_hashes(run_dir) == before


@pytest.mark.parametrize("field", ["step", "optimizer.t", "epoch"])
def test_evaluate_on_a_huge_counter_is_one_line(run_dir, capsys, bounded, field):
    path = run_dir / "last.npz"
    rewrite_meta(path, set_field(path=field, value=HUGE))
    before = file_hashes(run_dir)
    err = one_line_error(capsys, ["evaluate", str(path), "--no-progress"], bounded)
    assert f"{path}: damaged checkpoint metadata: {field} is" in err
    assert file_hashes(run_dir) == before


def test_the_largest_counter_allowed_still_loads(run_dir):
    path = run_dir / "last.npz"
    rewrite_meta(path, set_field(path="step", value=2 ** 53 - 1))
    assert load_checkpoint(path).step == 2 ** 53 - 1


# --- F9, F10, W1: RNG states minicaps never writes ----------------------------------------------

PHILOX_SHORT = {"bit_generator": "Philox", "state": {"counter": [0, 0, 0, 0], "key": [1, 2]},
                "buffer": [0, 0], "buffer_pos": 0, "has_uint32": 0, "uinteger": 0}
SFC64 = {"bit_generator": "SFC64", "state": {"state": [1, 2, 3, 4]}, "has_uint32": 0,
         "uinteger": 0}


def pcg64(**fields):
    state = np.random.default_rng(0).bit_generator.state
    state["state"].update({k: v for k, v in fields.items() if k in ("state", "inc")})
    state.update({k: v for k, v in fields.items() if k not in ("state", "inc")})
    return state


BAD_STATES = {
    "philox with a short buffer": PHILOX_SHORT,
    "sfc64": SFC64,
    "state 1.5": pcg64(state=1.5),
    "state true": pcg64(state=True),
    "state negative": pcg64(state=-1),
    "inc 2**128": pcg64(inc=2 ** 128),
    "has_uint32 -1": pcg64(has_uint32=-1),
    "has_uint32 5": pcg64(has_uint32=5),
    "uinteger 2**32": pcg64(uinteger=2 ** 32),
    "uinteger text": pcg64(uinteger="0"),
    "no inc": {"bit_generator": "PCG64", "state": {"state": 1}, "has_uint32": 0, "uinteger": 0},
}


@pytest.mark.parametrize("state", BAD_STATES.values(), ids=BAD_STATES)
def test_an_rng_state_minicaps_does_not_write_is_refused_at_load(run_dir, bounded, state):
    path = run_dir / "best.npz"
    rewrite_meta(path, lambda meta: meta.update(rng_state=state))
    before = file_hashes(run_dir)
    with bounded(memory=256 * MB, seconds=20):
        with pytest.raises(ValueError, match="bad RNG state") as info:
            load_checkpoint(path)
    assert str(path) in str(info.value) and "rng_state" in str(info.value)
    assert file_hashes(run_dir) == before


@pytest.mark.parametrize("state", [PHILOX_SHORT, SFC64], ids=["philox", "sfc64"])
def test_resuming_from_another_generator_is_refused_before_an_epoch_is_lost(run_dir, bounded,
                                                                            state):
    """F10: before, the epoch was trained and its metrics line appended, then the save
    failed (the state is not JSON): the epoch was lost."""
    path = run_dir / "last.npz"
    rewrite_meta(path, lambda meta: meta.update(rng_state=state))
    before = file_hashes(run_dir)
    with bounded(memory=512 * MB, seconds=20):
        with pytest.raises(ValueError, match=f"{path}: bad RNG state"):
            run_tiny(run_dir, epochs=2, resume=path)
    assert file_hashes(run_dir) == before


@pytest.mark.parametrize("state", [PHILOX_SHORT, SFC64], ids=["philox", "sfc64"])
def test_evaluate_on_another_generator_is_one_line(run_dir, capsys, bounded, state):
    path = run_dir / "last.npz"
    rewrite_meta(path, lambda meta: meta.update(rng_state=state))
    before = file_hashes(run_dir)
    err = one_line_error(capsys, ["evaluate", str(path), "--no-progress"], bounded)
    assert f"{path}: bad RNG state" in err
    assert file_hashes(run_dir) == before


def test_generator_from_state_takes_what_minicaps_writes():
    rng = np.random.default_rng(5)
    rng.random(3)
    again = generator_from_state(json.loads(json.dumps(rng.bit_generator.state)))
    assert again.random() == rng.random()


def test_saving_a_generator_minicaps_cannot_read_back_is_refused(tmp_path):
    model = CapsNet(CapsNetConfig(input_shape=(12, 12, 1), conv1_channels=4, conv1_kernel=3,
                                  primary_maps=2, primary_dims=4, primary_kernel=3,
                                  digit_dims=4, decoder_sizes=(8,)))
    path = tmp_path / "c.npz"
    with pytest.raises(ValueError, match="rng_state.*PCG64"):
        save_checkpoint(path, model, Adam(), epoch=1, step=1,
                        rng_state=np.random.Generator(np.random.Philox(0)))
    assert not path.exists()


# --- F11: metrics.jsonl lines as plot reads them ------------------------------------------------

BAD_LINES = {
    "list": [1, 2], "text": "str", "null": None, "empty": {},
    "epoch text": {"epoch": "2", "train_loss": 0.5},
    "epoch list": {"epoch": [1], "train_loss": 0.5},
    "epoch 0": {"epoch": 0, "train_loss": 0.5},
    "epoch true": {"epoch": True, "train_loss": 0.5},
    "loss text": {"epoch": 2, "train_loss": "x"},
    "loss list": {"epoch": 2, "test_accuracy": [0.5]},
}


@pytest.mark.parametrize("line", BAD_LINES.values(), ids=BAD_LINES)
def test_a_bad_metrics_line_is_skipped_with_a_warning_naming_it(run_dir, capsys, bounded,
                                                                drawn, line):
    """As resume drops the lines it cannot read (_truncate_metrics), plot skips them and
    says which: the good epochs are drawn."""
    metrics = run_dir / "metrics.jsonl"
    with open(metrics, "a") as f:
        f.write(json.dumps(line) + "\n")
    before = file_hashes(run_dir)
    with bounded(memory=512 * MB, seconds=30):
        from minicaps import cli
        code = cli.main(["plot", str(run_dir / "best.npz"), "--kind", "curves",
                         "--out", str(run_dir.parent / "plots")])
    err = capsys.readouterr().err
    assert code == 0, err
    assert f"{metrics}, line 2" in err and "Traceback" not in err, err
    axes = drawn["curves.png"].axes[0]
    assert all(list(l.get_xdata()) == [1] for l in axes.get_lines())
    assert file_hashes(run_dir) == before


@pytest.mark.parametrize("line", [[1, 2], {}, {"epoch": "2"}], ids=["list", "empty", "text"])
def test_metrics_without_one_good_line_is_one_line(run_dir, capsys, bounded, line):
    metrics = run_dir / "metrics.jsonl"
    metrics.write_text(json.dumps(line) + "\n")
    before = file_hashes(run_dir)
    err = one_line_error(capsys, ["plot", str(run_dir / "best.npz"), "--kind", "curves",
                                  "--out", str(run_dir.parent / "plots")], bounded)
    assert f"{metrics}" in err and "line 1" in err, err
    assert file_hashes(run_dir) == before


def test_read_metrics_names_every_skipped_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 1, "train_loss": 0.5}\n[1]\n{"epoch": 2, tor\n'
                    '{"epoch": 3, "train_loss": null, "tf32": true}\n')
    warnings = []
    rows = viz.read_metrics(path, warn=warnings.append)
    assert [m["epoch"] for m in rows] == [1, 3]
    assert len(warnings) == 1 and "line 2" in warnings[0] and "line 3" in warnings[0]


# --- W1: Adam's arguments and gradients ----------------------------------------------------------

@pytest.mark.parametrize("eps", [0, -1, 0.0, math.nan, math.inf, "1e-8", True])
def test_adam_refuses_an_eps_that_is_not_positive(eps):
    with pytest.raises(ValueError, match="eps"):
        Adam(eps=eps)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_adam_refuses_non_finite_gradients_naming_the_parameter(bad):
    params = {"a.W": np.ones((3, 4)), "b.b": np.ones(5)}
    grads = {"a.W": np.zeros((3, 4)), "b.b": np.zeros(5)}
    grads["b.b"][2] = bad
    kept = {k: v.copy() for k, v in params.items()}
    optimizer = Adam()
    with pytest.raises(ValueError, match="b.b"):
        optimizer.step(params, grads)
    for name in params:                        # nothing poisoned
        np.testing.assert_array_equal(params[name], kept[name])
    assert optimizer.t == 0


def test_adam_refuses_non_finite_gradients_of_a_model():
    model = CapsNet(CapsNetConfig(input_shape=(12, 12, 1), conv1_channels=4, conv1_kernel=3,
                                  primary_maps=2, primary_dims=4, primary_kernel=3,
                                  digit_dims=4, decoder_sizes=(8,)))
    grads = {k: np.zeros_like(v) for k, v in model.params.items()}
    grads["digit.W"].flat[7] = math.nan
    kept = {k: np.array(v) for k, v in model.params.items()}
    with pytest.raises(ValueError, match="digit.W"):
        Adam().step(model.params, grads)
    for name in kept:
        np.testing.assert_array_equal(model.params[name], kept[name])


# --- W2: networks too big to build ----------------------------------------------------------------

@pytest.mark.parametrize("fields, named", [
    (dict(input_shape=(10 ** 6, 10 ** 6, 1)), "input_shape"),
    (dict(digit_dims=10 ** 9), "digit_dims"),
    (dict(conv1_channels=10 ** 7), "conv1_channels"),
])
def test_a_capsnet_too_big_to_build_is_a_value_error_naming_the_field(bounded, fields, named):
    config = CapsNetConfig(**fields)
    with bounded(memory=256 * MB, seconds=20):
        with pytest.raises(ValueError, match="parameters") as info:
            CapsNet(config)
    assert named in str(info.value), info.value


@pytest.mark.parametrize("fields, named", [
    (dict(input_shape=(10 ** 5, 10 ** 5, 1)), "input_shape"),
    (dict(fc_sizes=(10 ** 9, 192)), "fc_sizes"),
])
def test_a_cnn_too_big_to_build_is_a_value_error_naming_the_field(bounded, fields, named):
    config = CNNConfig(**fields)
    with bounded(memory=256 * MB, seconds=20):
        with pytest.raises(ValueError, match="parameters") as info:
            BaselineCNN(config)
    assert named in str(info.value), info.value


def test_a_metrics_file_too_big_for_a_run_is_refused_unread(tmp_path, bounded):
    """A metrics.jsonl of 100 MiB (a sparse file: no run writes that much) is refused from
    its size, before a byte is read."""
    from minicaps.training.runfolder import MAX_METRICS_BYTES
    from minicaps.viz import read_metrics
    path = tmp_path / "metrics.jsonl"
    with open(path, "wb") as f:
        f.truncate(MAX_METRICS_BYTES + (36 << 20))
    with bounded(memory=64 << 20, seconds=10):
        with pytest.raises(ValueError, match=r"metrics\.jsonl holds 100 MiB, more than the 64 MiB"):
            read_metrics(path)
