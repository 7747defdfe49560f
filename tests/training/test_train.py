"""The training loop: schedule, augmentation, evaluation, metrics, checkpoints, exact resume.

Everything runs on gradcheck's tiny 10x10 network with a synthetic 3-class task (a
horizontal bar, a vertical bar or a diagonal on faint noise), which it learns in a second.
"""
import json
import math

import numpy as np
import pytest

import minicaps as mc
from minicaps.io.checkpoint import load_checkpoint, read_epoch
from minicaps.data.dataset import to_model_input
from minicaps.gradcheck import randomize_params, tiny_config
from minicaps.training.epoch import learning_rate
from minicaps.training.evaluation import evaluate
from minicaps.training.run import train

from synthetic import bars, bars_data

CONFIG = tiny_config(recon_weight=0.0005)
QUIET = dict(progress=False, log=lambda line: None)


def run(tmp_path, name="run", **kw):
    kw = {"epochs": 1, "batch_size": 20, "lr": 0.01, "shift": 1,   # 1 pixel of 10 ~ 2 of 28
          "data": bars_data(), **QUIET, **kw}
    return train(CONFIG, out_dir=tmp_path / name, **kw)


# --- learning-rate schedule ------------------------------------------------------------------

def test_learning_rate_closed_form():
    for step in (0, 1, 999, 2000, 4000, 12345):
        assert learning_rate(step, 1e-3, 0.96, 2000) == pytest.approx(
            1e-3 * math.exp(step / 2000 * math.log(0.96)), rel=1e-12)
    assert learning_rate(2000) == pytest.approx(0.96e-3, rel=1e-12)


def test_every_step_uses_the_decayed_rate(tmp_path, monkeypatch):
    used = []
    real_step = mc.Adam.step

    def recording_step(self, params, grads):
        used.append(self.lr)
        real_step(self, params, grads)

    monkeypatch.setattr(mc.Adam, "step", recording_step)
    run(tmp_path, epochs=2, lr=0.02, lr_decay=0.5, decay_steps=3)   # 6 steps an epoch
    assert len(used) == 12
    np.testing.assert_allclose(used, [0.02 * 0.5 ** (t / 3) for t in range(12)], rtol=1e-12)


# --- the batches the model sees ----------------------------------------------------------------

def shifted(image, dy, dx):
    """image moved down dy and right dx, zero-filled: an independent np.roll-based shift."""
    out = np.roll(image, (dy, dx), axis=(0, 1))
    if dy > 0:
        out[:dy] = 0
    elif dy < 0:
        out[dy:] = 0
    if dx > 0:
        out[:, :dx] = 0
    elif dx < 0:
        out[:, dx:] = 0
    return out


def recorded_batches(tmp_path, monkeypatch, **kw):
    from minicaps.fast.model import FastCapsNet          # what train builds
    seen = []
    real = FastCapsNet.loss_and_grads

    def recording(self, x, y, coupling=None, **kw):
        seen.append((mc.to_numpy(x).copy(), mc.to_numpy(y).copy()))
        return real(self, x, y, coupling, **kw)

    monkeypatch.setattr(FastCapsNet, "loss_and_grads", recording)
    run(tmp_path, **kw)
    return seen


def test_without_shift_each_epoch_shows_every_image_once_shuffled(tmp_path, monkeypatch):
    images, labels, _, _ = bars_data()
    seen = recorded_batches(tmp_path, monkeypatch, shift=0, epochs=2)
    x = to_model_input(images, np.float32)
    per_epoch = len(seen) // 2
    for epoch in (seen[:per_epoch], seen[per_epoch:]):
        xs = np.concatenate([b[0] for b in epoch])
        ys = np.concatenate([b[1] for b in epoch])
        order = [int(np.flatnonzero((x == row).all(axis=(1, 2, 3)))[0]) for row in xs]
        assert sorted(order) == list(range(len(images)))     # a permutation
        assert order != sorted(order)                         # shuffled
        np.testing.assert_array_equal(ys, labels[order])
    first = np.concatenate([b[0] for b in seen[:per_epoch]])
    second = np.concatenate([b[0] for b in seen[per_epoch:]])
    assert not np.array_equal(first, second)                  # a new order every epoch


def test_shift_moves_images_by_at_most_two_pixels(tmp_path, monkeypatch):
    images, labels, _, _ = bars_data()
    plain = recorded_batches(tmp_path, monkeypatch, shift=0, name="plain")
    monkeypatch.undo()
    moved = recorded_batches(tmp_path, monkeypatch, shift=2, name="moved")
    assert len(plain) == len(moved)
    same_order_labels = [np.array_equal(a[1], b[1]) for a, b in zip(plain, moved)]
    assert all(same_order_labels)       # the shuffle is drawn first, from the same seed
    offsets = set()
    for (x0, _), (x2, _) in zip(plain, moved):
        for original, augmented in zip(x0[..., 0], x2[..., 0]):
            candidates = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                          if np.array_equal(shifted(original, dy, dx), augmented)]
            assert candidates, "an augmented image is no shift of its original"
            offsets.add(candidates[0])
    assert len(offsets) > 10            # many different shifts were drawn, not just (0, 0)


def test_an_epoch_equals_the_host_loop_of_the_example_bit_for_bit():
    """train_epoch gathers, shifts and scales the batches on the model's device from draws
    made up front; the loop of examples/train_mnist.py draws and shifts batch by batch on
    the host. Same generator, same draws: the same parameters, to the last bit (CPU)."""
    from minicaps.data.augment import random_shift
    from minicaps.data.dataset import iterate_minibatches
    from minicaps.training.epoch import train_epoch
    from minicaps.training.splits import Split
    images, labels = bars(90, 0)                      # 90 = 4 batches of 25 less 10
    models = [mc.build_model(CONFIG, seed=1, dtype="float32") for _ in range(2)]
    optimizers = [mc.Adam(lr=0.01), mc.Adam(lr=0.01)]
    step, stats = train_epoch(models[0], optimizers[0], Split(images, labels),
                              np.random.default_rng(7), 0, batch_size=25, lr=0.01,
                              lr_decay=0.5, decay_steps=2, shift=2, progress=False)
    rng, losses, correct = np.random.default_rng(7), [], 0
    for k, (x, y) in enumerate(iterate_minibatches(images, labels, 25, rng=rng)):
        x = to_model_input(random_shift(x, 2, rng), np.float32)
        loss, grads, out = models[1].loss_and_grads(x, y)
        optimizers[1].lr = 0.01 * 0.5 ** (k / 2)
        optimizers[1].step(models[1].params, grads)
        losses.append(loss * len(y))
        correct += np.count_nonzero(out["lengths"].argmax(axis=1) == y)
    assert step == 4
    for name in models[0].params:
        np.testing.assert_array_equal(models[0].params[name], models[1].params[name])
    assert stats["loss"] == pytest.approx(sum(losses) / 90, rel=1e-12)
    assert stats["accuracy"] == correct / 90


# --- evaluation ----------------------------------------------------------------------------

def test_evaluate_matches_independent_computation():
    model = mc.build_model(CONFIG, seed=3, dtype="float64")
    images, labels = bars(23, 5)
    scores = evaluate(model, images, labels, batch_size=7)    # uneven batches: 7, 7, 7, 2
    x = to_model_input(images, np.float64)
    lengths = model.predict_lengths(x)
    assert scores["n"] == 23
    assert scores["accuracy"] == np.count_nonzero(model.predict(x) == labels) / 23
    T = np.eye(3)[labels]
    margin = (T * np.maximum(0, 0.9 - lengths) ** 2
              + 0.5 * (1 - T) * np.maximum(0, lengths - 0.1) ** 2).sum(axis=1).mean()
    assert scores["margin_loss"] == pytest.approx(margin, rel=1e-10)
    # reconstruction from the capsule of the predicted class, all images in one pass
    out, _ = model.forward(x)
    recon = ((out["reconstruction"] - x.reshape(23, -1)) ** 2).sum(axis=1).mean()
    assert scores["reconstruction_loss"] == pytest.approx(recon, rel=1e-10)
    assert scores["loss"] == pytest.approx(margin + CONFIG.recon_weight * recon, rel=1e-10)


def test_evaluate_masks_the_decoder_by_the_prediction_not_the_label():
    model = randomize_params(mc.build_model(CONFIG, seed=3, dtype="float64"),
                             np.random.default_rng(0))    # capsules long enough to matter
    images, labels = bars(12, 5)
    x = to_model_input(images, np.float64)
    wrong = (model.predict(x) + 1) % 3                  # every label disagrees with the prediction
    with_label, _ = model.forward(x, wrong)
    by_prediction, _ = model.forward(x)
    recon = ((by_prediction["reconstruction"] - x.reshape(12, -1)) ** 2).sum(axis=1).mean()
    scores = evaluate(model, images, wrong)
    assert scores["accuracy"] == 0
    assert scores["reconstruction_loss"] == pytest.approx(recon, rel=1e-10)
    assert abs(recon - with_label["reconstruction_loss"]) > 1e-3 * recon


# --- a whole run ---------------------------------------------------------------------------

def test_training_learns_and_logs_metrics(tmp_path):
    result = run(tmp_path, epochs=8, val_size=20)
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    metrics = [json.loads(line) for line in lines]
    assert [m["epoch"] for m in metrics] == list(range(1, 9))
    assert [m["step"] for m in metrics] == [5 * e for e in range(1, 9)]   # 100 images / 20
    expected = {"epoch", "step", "lr", "train_loss", "train_accuracy", "train_margin_loss",
                "train_reconstruction_loss", "test_accuracy", "test_margin_loss",
                "test_reconstruction_loss", "test_loss", "val_accuracy", "val_margin_loss",
                "val_reconstruction_loss", "val_loss", "epoch_seconds", "images_per_second",
                "avg_val_accuracy", "avg_test_accuracy"}
    assert expected <= set(metrics[0])
    assert metrics[-1]["lr"] == pytest.approx(learning_rate(39, 0.01))
    assert metrics[-1]["test_accuracy"] >= 0.9 > metrics[0]["test_accuracy"]
    assert metrics[-1]["train_loss"] < metrics[0]["train_loss"]
    # the last metrics agree with an independent count on the last checkpoint's model
    _, _, test_images, test_labels = bars_data()
    ckpt = load_checkpoint(tmp_path / "run" / "last.npz")
    predictions = ckpt.model.predict(to_model_input(test_images, np.float32))
    assert metrics[-1]["test_accuracy"] == np.count_nonzero(predictions == test_labels) / 60
    assert ckpt.epoch == 8 and ckpt.step == 40 and result.history == metrics
    # best.npz is the epoch whose average scores best on validation (the first, on ties)
    val = [m["avg_val_accuracy"] for m in metrics]
    assert load_checkpoint(tmp_path / "run" / "best.npz").epoch == 1 + int(np.argmax(val))


def test_best_follows_test_accuracy_without_validation(tmp_path):
    run(tmp_path, epochs=4, average=None)
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    test = [m["test_accuracy"] for m in metrics]
    assert "val_accuracy" not in metrics[0]
    assert load_checkpoint(tmp_path / "run" / "best.npz").epoch == 1 + int(np.argmax(test))


def test_same_seed_same_run_other_seed_other_run(tmp_path):
    a = run(tmp_path, name="a", epochs=2)
    b = run(tmp_path, name="b", epochs=2)
    c = run(tmp_path, name="c", epochs=2, seed=1)
    np.testing.assert_array_equal(a.model.params["digit.W"], b.model.params["digit.W"])
    assert not np.array_equal(a.model.params["digit.W"], c.model.params["digit.W"])


def test_resume_continues_bit_for_bit(tmp_path):
    kw = dict(val_size=20, shift=2, seed=5)
    straight = run(tmp_path, name="straight", epochs=2, **kw)
    first = run(tmp_path, name="split", epochs=1, **kw)
    after_one = {k: p.copy() for k, p in first.model.params.items()}
    resumed = run(tmp_path, name="split", epochs=2, resume=tmp_path / "split" / "last.npz", **kw)

    assert resumed.epoch == straight.epoch == 2 and resumed.step == straight.step == 10
    for name, p in straight.model.params.items():
        np.testing.assert_array_equal(resumed.model.params[name], p)
        assert not np.array_equal(p, after_one[name])          # epoch 2 did change it
    hyper_a, moments_a = straight.optimizer.state_dict()
    hyper_b, moments_b = resumed.optimizer.state_dict()
    assert hyper_a == hyper_b
    for key, a in moments_a.items():
        np.testing.assert_array_equal(moments_b[key], a)
    last_a = load_checkpoint(tmp_path / "straight" / "last.npz")
    last_b = load_checkpoint(tmp_path / "split" / "last.npz")
    assert last_a.rng_state == last_b.rng_state
    # the metrics files agree line for line, apart from the timings
    def losses(name):
        return [{k: v for k, v in json.loads(line).items() if "seconds" not in k
                 and k != "images_per_second"}
                for line in (tmp_path / name / "metrics.jsonl").open()]
    assert losses("straight") == losses("split")


def test_resume_drops_metrics_written_after_the_checkpoint(tmp_path):
    run(tmp_path, epochs=1)
    metrics = tmp_path / "run" / "metrics.jsonl"
    with metrics.open("a") as f:   # as if epoch 2 was logged and the run died before saving
        f.write(json.dumps({"epoch": 2, "test_accuracy": 0.0}) + "\n" + '{"epoch": 3, "te')
    run(tmp_path, epochs=2, resume=tmp_path / "run" / "last.npz")
    epochs = [json.loads(line)["epoch"] for line in metrics.open()]
    assert epochs == [1, 2]
    assert json.loads(metrics.read_text().splitlines()[1])["test_accuracy"] > 0


def test_resume_with_other_settings_is_refused(tmp_path):
    run(tmp_path, epochs=1)
    ckpt = tmp_path / "run" / "last.npz"
    with pytest.raises(ValueError, match="batch_size=10"):
        run(tmp_path, epochs=2, resume=ckpt, batch_size=10)
    with pytest.raises(ValueError, match="routing_iters"):
        train(tiny_config(recon_weight=0.0005, routing_iters=1), epochs=2,
              out_dir=tmp_path / "run", data=bars_data(), batch_size=20, lr=0.01,
              resume=ckpt, **QUIET)


def test_resume_of_a_finished_run_does_nothing(tmp_path):
    first = run(tmp_path, epochs=1)
    again = run(tmp_path, epochs=1, resume=tmp_path / "run" / "last.npz")
    assert again.history == [] and again.epoch == 1
    np.testing.assert_array_equal(again.model.params["digit.W"], first.model.params["digit.W"])


def two_epochs_and_a_copy_of_the_first(tmp_path):
    """A run folder trained to epoch 2, and a copy of its epoch-1 last.npz beside it."""
    run(tmp_path, epochs=1)
    folder = tmp_path / "run"
    (tmp_path / "epoch1.npz").write_bytes((folder / "last.npz").read_bytes())
    run(tmp_path, epochs=2, resume=folder / "last.npz")
    return folder, {f: (folder / f).read_bytes() for f in ("metrics.jsonl", "last.npz", "best.npz")}


def test_resume_with_nothing_left_to_do_changes_no_file(tmp_path):
    folder, before = two_epochs_and_a_copy_of_the_first(tmp_path)
    again = train(CONFIG, out_dir=folder, epochs=1, resume=tmp_path / "epoch1.npz",
                  data=bars_data(), batch_size=20, lr=0.01, shift=1, **QUIET)
    assert again.history == [] and again.epoch == 1
    assert {f: (folder / f).read_bytes() for f in before} == before
    run(tmp_path, name="elsewhere", epochs=1, resume=tmp_path / "epoch1.npz")
    assert not (tmp_path / "elsewhere").exists()     # nothing trained, no folder made


def test_going_on_from_an_earlier_checkpoint_in_the_runs_folder_is_refused(tmp_path):
    """From epoch 1 in a folder whose last.npz is at epoch 2, the next epoch would overwrite
    epoch 2; in another folder it branches off."""
    folder, before = two_epochs_and_a_copy_of_the_first(tmp_path)
    with pytest.raises(ValueError, match=r"trained to epoch 2 .*epochs 2-2.*--out NEWDIR"):
        run(tmp_path, epochs=3, resume=tmp_path / "epoch1.npz")
    assert {f: (folder / f).read_bytes() for f in before} == before
    branch = run(tmp_path, name="branch", epochs=2, resume=tmp_path / "epoch1.npz")
    assert [m["epoch"] for m in branch.history] == [2]
    np.testing.assert_array_equal(branch.model.params["digit.W"],
                                  load_checkpoint(folder / "last.npz").model.params["digit.W"])


def test_read_epoch_reads_the_checkpoints_epoch(tmp_path):
    run(tmp_path, epochs=2)
    assert read_epoch(tmp_path / "run" / "last.npz") == 2
    (tmp_path / "text.npz").write_text("hi")
    with pytest.raises(ValueError, match="ZIP"):
        read_epoch(tmp_path / "text.npz")


def test_zero_epochs_without_a_checkpoint_is_refused(tmp_path):
    with pytest.raises(ValueError, match="epochs=0 trains nothing"):
        run(tmp_path, epochs=0)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("change, message", [
    (lambda d: (d[0][:, :9], d[1], d[2], d[3]), "expects"),               # 9x10 images
    (lambda d: (d[0].astype(np.float32), d[1], d[2], d[3]), "uint8"),
    (lambda d: (d[0], d[1][:5], d[2], d[3]), "labels"),
    (lambda d: (d[0], d[1]), "x_train, y_train"),
])
def test_bad_data_raises_value_error(tmp_path, change, message):
    with pytest.raises(ValueError, match=message):
        run(tmp_path, data=change(bars_data()))


def test_a_validation_set_as_big_as_the_training_set_is_refused(tmp_path):
    with pytest.raises(ValueError, match="val_size=120 .* leaves no training images: the "
                                         "training set has 120"):
        run(tmp_path, val_size=120)
    assert not (tmp_path / "run").exists()


@pytest.mark.gpu
def test_training_on_gpu_matches_cpu_closely(tmp_path):
    cpu = run(tmp_path, name="cpu", epochs=1, dtype="float64", device="cpu")
    gpu = run(tmp_path, name="gpu", epochs=1, dtype="float64", device="gpu")
    assert mc.backend.device_of(gpu.model.params["digit.W"]) == "gpu"
    for name, p in cpu.model.params.items():
        np.testing.assert_allclose(mc.to_numpy(gpu.model.params[name]), p, rtol=1e-6, atol=1e-9)
    assert load_checkpoint(tmp_path / "gpu" / "last.npz", device="cpu").epoch == 1


def test_the_parameters_average_leaves_training_alone_and_is_evaluated(tmp_path):
    plain = run(tmp_path, name="plain", epochs=2, average=None)
    averaged = run(tmp_path, name="averaged", epochs=2, average=0.9)
    for name, p in plain.model.params.items():
        np.testing.assert_array_equal(averaged.model.params[name], p)
        assert not np.array_equal(averaged.average.params[name], p)
    metrics = [json.loads(line) for line in (tmp_path / "averaged" / "metrics.jsonl").open()]
    assert "avg_test_accuracy" not in json.loads(
        (tmp_path / "plain" / "metrics.jsonl").read_text().splitlines()[-1])
    # the logged numbers are those of the average, counted independently
    ckpt = load_checkpoint(tmp_path / "averaged" / "last.npz")
    _, _, test_images, test_labels = bars_data()
    model = mc.build_model(CONFIG, dtype="float32", params=ckpt.average.params)
    predictions = model.predict(to_model_input(test_images, np.float32))
    assert metrics[-1]["avg_test_accuracy"] == np.count_nonzero(predictions == test_labels) / 60
    assert metrics[-1]["test_accuracy"] == json.loads(
        (tmp_path / "plain" / "metrics.jsonl").read_text().splitlines()[-1])["test_accuracy"]


def test_resume_continues_the_average_bit_for_bit(tmp_path):
    straight = run(tmp_path, name="straight", epochs=2, average=0.95)
    run(tmp_path, name="split", epochs=1, average=0.95)
    resumed = run(tmp_path, name="split", epochs=2, average=0.95,
                  resume=tmp_path / "split" / "last.npz")
    for name, a in straight.average.params.items():
        np.testing.assert_array_equal(resumed.average.params[name], a)


def test_best_checkpoint_goes_by_the_averages_accuracy(tmp_path):
    result = run(tmp_path, epochs=3, average=0.9)
    trained = [m["test_accuracy"] for m in result.history]
    averaged = [m["avg_test_accuracy"] for m in result.history]
    best = load_checkpoint(tmp_path / "run" / "best.npz")
    assert best.extra["best_accuracy"] == max(averaged)
    assert best.epoch == 1 + averaged.index(max(averaged))
    assert run(tmp_path, name="plain", epochs=3, average=None).history[-1].keys().isdisjoint(
        {"avg_test_accuracy"})
    assert load_checkpoint(tmp_path / "plain" / "best.npz").extra["best_accuracy"] == max(trained)


def test_resuming_a_run_without_an_average_starts_one_there(tmp_path):
    run(tmp_path, epochs=1, average=None)
    lines = []
    resumed = train(CONFIG, out_dir=tmp_path / "run", epochs=2, batch_size=20, lr=0.01, shift=1,
                    data=bars_data(), average=0.999, resume=tmp_path / "run" / "last.npz",
                    progress=False, log=lines.append)
    assert any("starting one here" in line for line in lines)
    assert "avg_test_accuracy" in resumed.history[-1]
    assert load_checkpoint(tmp_path / "run" / "last.npz").average.decay == 0.999
    # best.npz now goes by the new average alone: the trained weights' score does not count
    best = load_checkpoint(tmp_path / "run" / "best.npz")
    assert best.epoch == 2
    assert best.extra["best_accuracy"] == resumed.history[-1]["avg_test_accuracy"]
    with pytest.raises(ValueError, match="average"):
        run(tmp_path, name="bad", average=1.5)


def gpu_waits(stand_in, work, n_images):
    """How often ``work(model, images, labels)`` makes the host wait for a GPU model."""
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (n_images, 10, 10), np.uint8), rng.integers(0, 3, n_images)
    model = mc.build_model(tiny_config(), seed=0, dtype="float32", device="gpu")
    stand_in.waits.clear()
    work(model, images, labels)
    return sum(stand_in.waits.values())


def test_a_gpu_epoch_makes_the_host_wait_at_its_start_and_end_only(stand_in):
    # Each wait for the device stalls the queue of GPU work. None per batch: the labels'
    # range is checked once, the losses and the correct count come back at the end.
    from minicaps.training.epoch import train_epoch
    from minicaps.training.splits import Split

    def epoch(model, images, labels):
        train_epoch(model, mc.Adam(), Split(images, labels), np.random.default_rng(1), 0,
                    batch_size=20, lr=1e-3, lr_decay=0.96, decay_steps=2000, shift=1,
                    progress=False)

    assert gpu_waits(stand_in, epoch, 40) == gpu_waits(stand_in, epoch, 200) <= 3


def test_gpu_evaluation_and_prediction_wait_at_the_end_only(stand_in):
    evaluation = lambda model, images, labels: evaluate(model, images, labels, batch_size=20)
    assert gpu_waits(stand_in, evaluation, 40) == gpu_waits(stand_in, evaluation, 200) <= 3
    prediction = lambda model, images, labels: model.predict_lengths(
        to_model_input(images), batch_size=20)
    assert gpu_waits(stand_in, prediction, 40) == gpu_waits(stand_in, prediction, 200) <= 2


def test_the_fixed_weights_check_waits_once_a_batch_on_the_gpu(stand_in):
    """With the paper's network, predicting takes the DFT route with one weights' spectrum
    for all batches, and each batch first reads back one device bool: that the weights
    still equal the spectrum's copy (a stale spectrum is an error, not a wrong answer)."""
    model = mc.build_model(mc.CapsNetConfig(), seed=0, dtype="float32", device="gpu")
    x = np.random.default_rng(0).random((72, 28, 28, 1), dtype=np.float32)

    def reads(n_images):
        stand_in.waits.clear()
        model.predict_lengths(x[:n_images], batch_size=24)
        return stand_in.waits["bool"]

    assert reads(72) - reads(48) == 1 and reads(48) - reads(24) == 1


def test_evaluate_checks_the_labels():
    model = mc.build_model(CONFIG, seed=3)
    images, labels = bars(10, 5)
    with pytest.raises(ValueError, match="labels must be in 0..2"):
        evaluate(model, images, np.where(labels == 0, 3, labels))
    with pytest.raises(ValueError, match="10 images but 9 labels"):
        evaluate(model, images, labels[:9])


def test_a_missing_gpu_is_reported_before_the_data_loads(tmp_path, monkeypatch):
    # resolve_device looks both up in backend.device
    monkeypatch.setattr(mc.backend.device, "load_cupy", lambda: None)
    monkeypatch.setattr(mc.backend.device, "_cupy_error", "CuPy is not installed")

    def load_mnist(*args, **kwargs):
        raise AssertionError("the data was loaded before the device was checked")

    monkeypatch.setattr("minicaps.data.mnist.load_mnist", load_mnist)
    with pytest.raises(RuntimeError, match="CuPy is not installed"):
        train(CONFIG, epochs=1, out_dir=tmp_path / "run", device="gpu", **QUIET)
    assert not (tmp_path / "run").exists()
