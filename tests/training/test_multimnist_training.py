"""Training and evaluating on MultiMNIST pairs (section 6 of the paper) with the same loop,
checkpoints and commands as MNIST: the scores against an independent count, exact resume,
what is refused, and the CLI. Digits: synthetic 28x28 squares; the network: the gradient
checker's tiny one on 36x36."""
import json

import numpy as np
import pytest

from minicaps import cli
from minicaps.cli.options import PRESETS
from minicaps.data import multimnist
from minicaps.io.checkpoint import load_checkpoint
from minicaps.data.dataset import Dataset, to_model_input
from minicaps.gradcheck import tiny_config
from minicaps.training.evaluation import evaluate
from minicaps.training.run import train
from minicaps.training.splits import prepare_data

from synthetic import synthetic_mnist

QUIET = dict(progress=False, log=lambda line: None)
CFG = tiny_config(input_shape=(36, 36, 1), num_classes=10, conv1_kernel=5, primary_kernel=5)


def pairs_data(n_train=60, n_test=40):
    x, y, xt, yt = synthetic_mnist(n_train, n_test)
    return Dataset(x, y, xt, yt, classes=tuple("0123456789"), name="multimnist",
                   info={"pairs_per_digit": 1})


def run(tmp_path, name, epochs=1, **kw):
    kw = {"batch_size": 16, "lr": 0.01, "shift": 0, "data": pairs_data(), **QUIET, **kw}
    return train(CFG, epochs=epochs, out_dir=tmp_path / name, **kw)


def test_the_test_set_is_the_seeded_pairs_of_the_test_digits():
    data = pairs_data()
    _, val, test = prepare_data(data)
    expected = multimnist.make_test_set(data.x_test, data.y_test)
    assert val is None and test.images.shape == (40, 36, 36) and test.labels.shape == (40, 2)
    np.testing.assert_array_equal(test.images, expected.images)
    np.testing.assert_array_equal(test.targets, expected.digits)


def test_evaluation_counts_pairs_as_the_paper_does(tmp_path):
    result = run(tmp_path, "run")
    _, _, test = prepare_data(pairs_data())
    scores = evaluate(result.model, test.images, test.labels, batch_size=7, targets=test.targets)
    lengths = result.model.predict_lengths(to_model_input(test.images))
    both = one = 0
    for row, pair in zip(lengths, test.labels):
        longest = np.argsort(-row)[:2]
        right = len(set(longest.tolist()) & set(pair.tolist()))
        both, one = both + (right == 2), one + (right >= 1)
    assert scores["accuracy"] == pytest.approx(both / 40)
    assert scores["one_or_more"] == pytest.approx(one / 40)
    # the losses: both classes present, each digit reconstructed from its own capsule
    x = to_model_input(test.images)
    t = to_model_input(test.targets.reshape(80, 36, 36)).reshape(40, 2, 36, 36, 1)
    out = result.model.forward(x, test.labels, targets=t)[0]
    assert scores["margin_loss"] == pytest.approx(out["margin_loss"], rel=1e-5)
    assert scores["reconstruction_loss"] == pytest.approx(out["reconstruction_loss"], rel=1e-5)
    metrics = json.loads((tmp_path / "run" / "metrics.jsonl").read_text())
    assert {"train_accuracy", "test_accuracy", "test_one_or_more"} <= set(metrics)
    assert metrics["step"] == 4                       # 60 pairs in batches of 16


def test_resume_continues_bit_for_bit(tmp_path):
    whole = run(tmp_path, "whole", epochs=2)
    run(tmp_path, "part", epochs=1)
    resumed = run(tmp_path, "part", epochs=2, resume=tmp_path / "part" / "last.npz")
    for name, value in whole.model.params.items():
        np.testing.assert_array_equal(value, resumed.model.params[name])
    settings = load_checkpoint(tmp_path / "part" / "last.npz").extra["settings"]
    assert settings["pairs_per_digit"] == 1 and settings["dataset"] == "multimnist"


def test_what_multimnist_refuses(tmp_path):
    with pytest.raises(ValueError, match="shifted by up to 4 pixels as they are made"):
        run(tmp_path, "a", shift=2)
    with pytest.raises(ValueError, match="no --val-size"):
        run(tmp_path, "b", val_size=5)


def test_the_cli_trains_evaluates_and_plots_pairs(tmp_path, capsys, monkeypatch):
    x, y, xt, yt = synthetic_mnist(40, 30)
    monkeypatch.setattr("minicaps.data.mnist.load_mnist", lambda *a, **k: (x, y, xt, yt))
    monkeypatch.setitem(PRESETS, "tiny", {"config": {
        "conv1_channels": 8, "primary_maps": 4, "decoder_sizes": (16,)},
        "epochs": 1, "lr": 1e-3})
    out = tmp_path / "run"
    assert cli.main(["train", "--dataset", "multimnist", "--preset", "tiny", "--batch-size",
                     "20", "--pairs-per-digit", "2", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "input 36x36x1" in printed and "epoch 1/1" in printed
    assert "40 training digits, 80 pairs an epoch" in printed
    metrics = json.loads((out / "metrics.jsonl").read_text())
    # the epoch line says what its accuracy counts: both digits right, and one or more
    epoch_line = next(line for line in printed.splitlines() if line.startswith("epoch 1/1"))
    assert f"test both right {metrics['test_accuracy']:.4f}" in epoch_line
    assert f"one or more {metrics['test_one_or_more']:.4f}" in epoch_line
    assert "test acc " not in epoch_line
    assert metrics["step"] == 4                              # 40 digits x 2 pairs / 20
    assert cli.main(["evaluate", str(out / "last.npz"), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "on 30 multimnist test pairs" in printed and "one or more right" in printed
    pytest.importorskip("matplotlib")
    assert cli.main(["plot", str(out / "last.npz"), "--out", str(tmp_path / "plots")]) == 0
    printed = capsys.readouterr().out
    assert "pairs.png" in printed and "curves.png" in printed
    assert cli.main(["plot", str(out / "last.npz"), "--kind", "confusion"]) == 2
    assert "need one digit a picture" in capsys.readouterr().err


def test_flips_are_refused_for_pairs(tmp_path):
    with pytest.raises(ValueError, match="not mirrored"):
        run(tmp_path, "c", flip=True)


def test_the_cnn_baseline_trains_on_pairs_with_both_labels(tmp_path):
    """Table 1's baseline: the two labels in its cross-entropy, read as CapsNet is (the two
    most probable classes), the pictures of each digit alone ignored."""
    from minicaps.gradcheck import tiny_cnn_config
    result = train(tiny_cnn_config(input_shape=(36, 36, 1), num_classes=10), epochs=2,
                   out_dir=tmp_path / "d", batch_size=16, lr=0.01, shift=0, data=pairs_data(),
                   **QUIET)
    model = result.model
    _, _, test = prepare_data(pairs_data())
    scores = evaluate(model, test.images, test.labels, batch_size=7, targets=test.targets)
    probabilities = model.predict_probabilities(to_model_input(test.images))
    top2 = np.argsort(-probabilities, axis=1)[:, :2]
    right = np.array([len(set(a.tolist()) & set(b.tolist())) for a, b in zip(top2, test.labels)])
    assert scores["accuracy"] == pytest.approx(np.mean(right == 2))
    assert scores["one_or_more"] == pytest.approx(np.mean(right >= 1))
    # its loss: the mean over pairs of the two labels' mean cross-entropy, dropout off
    logp = np.log(probabilities)
    expected = -np.mean([(row[a] + row[b]) / 2 for row, (a, b) in zip(logp, test.labels)])
    assert scores["cross_entropy"] == pytest.approx(expected, rel=1e-4)
    metrics = [json.loads(line) for line in (tmp_path / "d" / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2] and metrics[-1]["step"] == 8
