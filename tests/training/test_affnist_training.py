"""Section 5.2 in the training loop: trained on expanded MNIST (digits placed at random on
40x40), validated on expanded MNIST's test digits (best.npz goes by them, as the paper
stopped at about 99.2% there), tested on the affine set. Synthetic digits; the gradient
checker's tiny network on 40x40."""
import json

import numpy as np
import pytest

from minicaps import cli
from minicaps.cli.options import CNN_PRESETS, PRESETS
from minicaps.data.affnist import expanded_mnist
from minicaps.io.checkpoint import load_checkpoint, read_meta
from minicaps.gradcheck import tiny_config
from minicaps.training.run import train
from minicaps.training.splits import load_data, prepare_data

from synthetic import synthetic_mnist

QUIET = dict(progress=False, log=lambda line: None)


@pytest.fixture
def fake_mnist(monkeypatch, tmp_path):
    data = synthetic_mnist(40, 20)
    monkeypatch.setattr("minicaps.data.mnist.load_mnist", lambda *a, **k: data)
    monkeypatch.setenv("MINICAPS_DATA", str(tmp_path))     # no real affNIST files there
    return data


def test_the_three_sets(fake_mnist):
    data = load_data("affnist")
    assert data.name == "affnist-like"                       # never mistaken for the real set
    assert load_data("affnist-wide").name == "affnist-wide"  # the harder variant, by name
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
    monkeypatch.setitem(PRESETS, "tiny", {"config": {
        "conv1_channels": 8, "primary_maps": 4, "decoder_sizes": (16,)}, "epochs": 1,
        "lr": 1e-3})
    out = tmp_path / "run"
    assert cli.main(["train", "--dataset", "affnist", "--preset", "tiny", "--batch-size", "20",
                     "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "affnist-like" in printed and "input 40x40x1" in printed and "val acc" in printed
    assert cli.main(["evaluate", str(out / "best.npz"), "--no-progress"]) == 0
    assert "20 affnist-like test images" in capsys.readouterr().out
    assert cli.main(["evaluate", str(out / "best.npz"), "--dataset", "affnist-wide",
                     "--no-progress"]) == 0
    assert "20 affnist-wide test images" in capsys.readouterr().out
    settings = read_meta(out / "best.npz")["extra"]["settings"]
    assert settings["shift"] == 6          # expanded MNIST: the centred digits move by 6


def test_keep_epochs_keeps_each_epochs_checkpoint(fake_mnist, tmp_path):
    cfg = tiny_config(input_shape=(40, 40, 1), num_classes=10, conv1_kernel=5,
                      primary_kernel=5)
    run = tmp_path / "run"
    train(cfg, epochs=2, out_dir=run, batch_size=20, lr=0.01, dataset="affnist",
          keep_epochs=True, **QUIET)
    assert sorted(p.name for p in run.glob("epoch-*.npz")) == ["epoch-001.npz", "epoch-002.npz"]
    first, last = load_checkpoint(run / "epoch-001.npz"), load_checkpoint(run / "last.npz")
    assert first.epoch == 1 and last.epoch == 2
    assert first.metrics["val_accuracy"] == json.loads(
        (run / "metrics.jsonl").read_text().splitlines()[0])["val_accuracy"]
    same = load_checkpoint(run / "epoch-002.npz")
    for name, value in last.model.params.items():
        np.testing.assert_array_equal(same.model.params[name], value)
    # a run over it with overwrite takes the old epochs' checkpoints away too
    train(cfg, epochs=1, out_dir=run, batch_size=20, lr=0.01, dataset="affnist",
          overwrite=True, **QUIET)
    assert not list(run.glob("epoch-*.npz"))


def test_the_matched_cnn_is_the_quick_capsnets_size_at_40x40():
    """--preset pooled-quick against --preset quick on expanded MNIST: parameters within
    5% (the issue's bar; here 0.03%), each counted by hand from the layout."""
    from minicaps.nn.cnn import BaselineCNN, CNNConfig
    from minicaps.nn.capsnet import CapsNet, CapsNetConfig
    conv = 25 * 1 * 64 + 64 + 25 * 64 * 128 + 128 + 25 * 128 * 128 + 128
    fc = 10 * 10 * 128 * 404 + 404 + 404 * 192 + 192 + 192 * 10 + 10   # 40 -> 20 -> 10
    cnn = BaselineCNN(CNNConfig.pooled_quick())
    assert cnn.num_params() == conv + fc == 5_867_614
    capsules = 12 * 12 * 16                           # 40 -9+1 = 32, (32 - 9) // 2 + 1 = 12
    caps = (81 * 64 + 64 + 81 * 64 * 128 + 128 + capsules * 10 * 8 * 16
            + 160 * 512 + 512 + 512 * 1024 + 1024 + 1024 * 1600 + 1600)
    capsnet = CapsNet(CapsNetConfig(input_shape=(40, 40, 1), conv1_channels=64,
                                    primary_maps=16))
    assert capsnet.num_params() == caps
    assert abs(cnn.num_params() / capsnet.num_params() - 1) < 0.05
    assert CNN_PRESETS["pooled-quick"]["model"] == "cnn-pooled-quick"


def test_keep_every_keeps_the_parameters_every_n_steps(fake_mnist, tmp_path):
    """step-NNNNNNN.npz every N updates: the one at an epoch's end holds what that epoch's
    own checkpoint does, the ones inside an epoch lie between, none can be resumed from,
    and --overwrite takes them away."""
    cfg = tiny_config(input_shape=(40, 40, 1), num_classes=10, conv1_kernel=5,
                      primary_kernel=5)
    run = tmp_path / "run"
    result = train(cfg, epochs=2, out_dir=run, batch_size=10, lr=0.01, dataset="affnist",
                   keep_epochs=True, keep_every=2, average=0.9, **QUIET)
    per_epoch = result.step // 2
    kept = sorted(p.name for p in run.glob("step-*.npz"))
    assert kept == [f"step-{s:07d}.npz" for s in range(2, result.step + 1, 2)]
    assert per_epoch == 4      # 40 digits in batches of 10: snapshots at 2 (inside) and 4
    at_end = load_checkpoint(run / f"step-{per_epoch:07d}.npz")
    epoch_one = load_checkpoint(run / "epoch-001.npz")
    for name, value in epoch_one.model.params.items():
        np.testing.assert_array_equal(at_end.model.params[name], value)
        np.testing.assert_array_equal(at_end.average.params[name], epoch_one.average.params[name])
    inside = load_checkpoint(run / "step-0000002.npz")
    assert inside.step == 2 and inside.epoch == 0 and inside.metrics["mid_epoch"]
    assert any(not np.array_equal(inside.model.params[k], v)
               for k, v in epoch_one.model.params.items())
    with pytest.raises(ValueError, match="after step 2, in epoch 1"):
        train(cfg, epochs=2, out_dir=tmp_path / "again", batch_size=10, lr=0.01,
              dataset="affnist", resume=run / "step-0000002.npz", average=0.9, **QUIET)
    train(cfg, epochs=1, out_dir=run, batch_size=20, lr=0.01, dataset="affnist",
          overwrite=True, **QUIET)
    assert not list(run.glob("step-*.npz"))


@pytest.mark.parametrize("bad", [-1, 1.5, True, "3"])
def test_keep_every_wants_a_whole_number_of_steps(fake_mnist, tmp_path, bad):
    cfg = tiny_config(input_shape=(40, 40, 1), num_classes=10, conv1_kernel=5,
                      primary_kernel=5)
    with pytest.raises(ValueError, match="keep_every must be a whole number"):
        train(cfg, epochs=1, out_dir=tmp_path / "run", batch_size=20, dataset="affnist",
              keep_every=bad, **QUIET)
    assert not (tmp_path / "run").exists()


def test_evaluate_split_validation_scores_the_runs_expanded_mnist_digits(fake_mnist, tmp_path,
                                                                           capsys, monkeypatch):
    """`minicaps evaluate --split validation` on a step snapshot: the accuracy of its averaged
    parameters on expanded MNIST's test digits, computed here straight from the network."""
    from minicaps.training.evaluation import evaluate
    monkeypatch.setitem(PRESETS, "tiny", {"config": {
        "conv1_channels": 8, "primary_maps": 4, "decoder_sizes": (16,)}, "epochs": 1,
        "lr": 1e-3})
    out = tmp_path / "run"
    assert cli.main(["train", "--dataset", "affnist", "--preset", "tiny", "--batch-size", "10",
                     "--keep-every", "3", "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    snapshot = out / "step-0000003.npz"
    assert cli.main(["evaluate", str(snapshot), "--split", "validation", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "step 3, in epoch 1" in printed
    assert "20 affnist-like validation images" in printed
    model, _ = load_checkpoint(snapshot).model_with("average")
    digits = expanded_mnist(fake_mnist)
    right = round(evaluate(model, digits.x_test, digits.y_test, 7, progress=False)["accuracy"]
                  * 20)
    assert f"({right}/20," in printed


def test_evaluate_split_validation_takes_the_held_out_images_or_says_there_are_none(
        fake_mnist, tmp_path, capsys, monkeypatch):
    from minicaps.training.evaluation import evaluate
    from minicaps.training.splits import train_val_split
    monkeypatch.setitem(PRESETS, "tiny", {"config": {
        "conv1_channels": 8, "primary_maps": 4, "decoder_sizes": (16,)}, "epochs": 1,
        "lr": 1e-3})
    plain, held = tmp_path / "plain", tmp_path / "held"
    assert cli.main(["train", "--dataset", "mnist", "--preset", "tiny", "--batch-size", "20",
                     "--out", str(plain), "--no-progress"]) == 0
    capsys.readouterr()
    assert cli.main(["evaluate", str(plain / "best.npz"), "--split", "validation",
                     "--no-progress"]) != 0
    assert "was trained with no validation images" in capsys.readouterr().err
    assert cli.main(["train", "--dataset", "mnist", "--preset", "tiny", "--batch-size", "10",
                     "--val-size", "15", "--seed", "4", "--out", str(held),
                     "--no-progress"]) == 0
    capsys.readouterr()
    assert cli.main(["evaluate", str(held / "best.npz"), "--split", "validation",
                     "--weights", "trained", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "15 mnist validation images" in printed
    _, _, x_val, y_val = train_val_split(fake_mnist[0], fake_mnist[1], 15, 4)
    model = load_checkpoint(held / "best.npz").model
    right = round(evaluate(model, x_val, y_val, 4, progress=False)["accuracy"] * 15)
    assert f"({right}/15," in printed


def test_kept_steps_alone_make_a_run_a_new_one_must_overwrite(tmp_path):
    """A run stopped in its first epoch leaves step-*.npz and nothing else: a new run there
    is refused (its snapshots would mix with them) and --overwrite deletes them."""
    from minicaps.training import runfolder
    for step in (50, 100):
        (tmp_path / runfolder.step_file(step)).write_bytes(b"kept")
    with pytest.raises(runfolder.RunFolderError, match=r"already holds a run \(2 step-NNNNNNN.npz\)"):
        runfolder.check_room(tmp_path)
    lines = []
    runfolder.claim(tmp_path, fresh=True, overwrite=True, log=lines.append).release()
    assert not list(tmp_path.glob("step-*.npz"))
    assert "--overwrite: deleted 2 step-NNNNNNN.npz" in lines[0]
