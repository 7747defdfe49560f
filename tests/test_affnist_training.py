"""Section 5.2 in the training loop: trained on expanded MNIST (digits placed at random on
40x40), validated on expanded MNIST's test digits (best.npz goes by them, as the paper
stopped at about 99.2% there), tested on the affine set. Synthetic digits; the gradient
checker's tiny network on 40x40."""
import json

import numpy as np
import pytest

import minicaps.train
from minicaps import cli
from minicaps.affnist import expanded_mnist
from minicaps.gradcheck import tiny_config
from minicaps.train import load_data, prepare_data, train

from synthetic import synthetic_mnist

QUIET = dict(progress=False, log=lambda line: None)


@pytest.fixture
def fake_mnist(monkeypatch, tmp_path):
    data = synthetic_mnist(40, 20)
    monkeypatch.setattr(minicaps.train, "load_mnist", lambda *a, **k: data)
    monkeypatch.setenv("MINICAPS_DATA", str(tmp_path))     # no real affNIST files there
    return data


def test_the_three_sets(fake_mnist):
    data = load_data("affnist")
    assert data.name == "affnist-generated"                  # never mistaken for the real set
    train_set, val, test = prepare_data(data)
    expanded = expanded_mnist(fake_mnist)
    np.testing.assert_array_equal(train_set.images, expanded.x_train)
    np.testing.assert_array_equal(val.images, expanded.x_test)
    np.testing.assert_array_equal(val.labels, fake_mnist[3])
    assert train_set.images.shape[1:] == val.images.shape[1:] == test.images.shape[1:] == (40, 40)
    np.testing.assert_array_equal(test.labels, fake_mnist[3])   # one transformation each
    with pytest.raises(ValueError, match="validation set of its own"):
        prepare_data(data, val_size=5)


def test_a_run_scores_both(fake_mnist, tmp_path):
    cfg = tiny_config(input_shape=(40, 40, 1), num_classes=10, conv1_kernel=5,
                      primary_kernel=5)
    result = train(cfg, epochs=1, out_dir=tmp_path / "run", batch_size=20, lr=0.01,
                   dataset="affnist", **QUIET)
    metrics = result.history[0]
    assert 0 <= metrics["val_accuracy"] <= 1 and metrics["val_n"] == 20
    assert 0 <= metrics["test_accuracy"] <= 1 and metrics["test_n"] == 20
    logged = json.loads((tmp_path / "run" / "metrics.jsonl").read_text())
    assert logged["val_accuracy"] == metrics["val_accuracy"]


def test_the_cli_evaluates_on_the_affine_set(fake_mnist, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(cli.PRESETS, "tiny", {"config": {
        "conv1_channels": 8, "primary_maps": 4, "decoder_sizes": (16,)}, "epochs": 1,
        "lr": 1e-3})
    out = tmp_path / "run"
    assert cli.main(["train", "--dataset", "affnist", "--preset", "tiny", "--batch-size", "20",
                     "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "affnist-generated" in printed and "input 40x40x1" in printed and "val acc" in printed
    assert cli.main(["evaluate", str(out / "best.npz"), "--no-progress"]) == 0
    assert "20 affnist-generated test images" in capsys.readouterr().out
