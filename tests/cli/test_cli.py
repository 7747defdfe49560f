"""The `minicaps` command: help texts, argument errors, train / evaluate / gradcheck.

Training through the CLI uses the paper's full-size network on 28x28 images. Without the
real MNIST files the data loader is replaced by a few synthetic images; with $MINICAPS_DATA
set, `python -m minicaps train` and examples/train_mnist.py also run on a little real MNIST.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import minicaps as mc
import minicaps.training.run
from minicaps import cli
from minicaps.io.checkpoint import load_checkpoint
from minicaps.data.dataset import to_model_input
from minicaps.data.mnist import load_mnist

from synthetic import synthetic_mnist

ROOT = Path(__file__).resolve().parents[2]
HAVE_MNIST = bool(os.environ.get("MINICAPS_DATA"))
needs_mnist = pytest.mark.skipif(not HAVE_MNIST, reason="set MINICAPS_DATA to the MNIST files")


def minicaps_command(*args, timeout=120):
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "minicaps", *map(str, args)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def fake_mnist(monkeypatch):
    data = synthetic_mnist()
    calls = []

    def fake_load(root=None, download=True, dataset="mnist", **kw):
        calls.append((root, dataset))
        return data

    monkeypatch.setattr("minicaps.data.mnist.load_mnist", fake_load)
    return data, calls


# --- help and argument errors ------------------------------------------------------------------

@pytest.mark.parametrize("command, words", [
    ([], ["train", "evaluate", "gradcheck", "plot", "predict", "bench"]),
    (["train"], ["--epochs", "--batch-size", "(default: 100)", "--preset",
                 "(default: 0.001; 0.002 with --preset quick)",
                 "--routing-iters", "--routing-grad", "--resume", "--limit-train",
                 "--val-size", "fashion-mnist", "--data-root", "--no-progress", "--out"]),
    (["evaluate"], ["CHECKPOINT", "--limit-test", "--dataset", "--device", "(default: 256)"]),
    (["gradcheck"], ["finite differences", "--seed", "--model", "{capsnet,cnn,all}",
                     "(default: capsnet)"]),
    (["plot"], ["--no-progress"]),
])
def test_help_texts(capsys, command, words):
    with pytest.raises(SystemExit) as exit:
        cli.main(command + ["--help"])
    assert exit.value.code == 0
    text = " ".join(capsys.readouterr().out.split())   # undo argparse's line wrapping
    for word in words:
        assert word in text


@pytest.mark.parametrize("command", ["train", "evaluate", "plot", "predict"])
def test_help_says_each_default_once(capsys, command):
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    for option in capsys.readouterr().out.split("\n  -")[1:]:   # one chunk per option
        option = " ".join(option.split())
        assert option.count("(default:") <= 1, option
        assert "(default: None)" not in option, option


@pytest.mark.parametrize("argv, message", [
    (["train", "--batch-size", "0"], "--batch-size: must be a positive integer"),
    (["train", "--epochs", "two"], "--epochs: invalid"),
    (["train", "--lr", "-1"], "--lr: must be a finite positive number"),
    (["train", "--device", "tpu"], "--device: invalid choice"),
    (["train", "--dataset", "cifar"], "--dataset: invalid choice"),
    (["train", "--routing-grad", "half"], "--routing-grad: invalid choice"),
    (["train", "--average", "1.5"], "--average: must lie between 0 and 1"),
    (["predict", "--pretrained"], "the following arguments are required: IMAGE"),
    (["fly"], "invalid choice"),
])
def test_bad_arguments_exit_2_with_a_message(capsys, argv, message):
    with pytest.raises(SystemExit) as exit:
        cli.main(argv)
    assert exit.value.code == 2
    assert message in capsys.readouterr().err


def test_no_command_prints_help_and_exits_2(capsys):
    assert cli.main([]) == 2
    assert "train" in capsys.readouterr().out


def test_bad_checkpoint_path_is_one_line_without_traceback(tmp_path):
    result = minicaps_command("evaluate", tmp_path / "missing.npz")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "missing.npz" in result.stderr and "Traceback" not in result.stderr


def test_damaged_checkpoint_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    assert cli.main(["evaluate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("minicaps evaluate: error:") and "bad.npz" in err


def test_bad_data_files_exit_2(tmp_path, capsys):
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (tmp_path / name).write_bytes(b"\x00\x00\x08\x01 garbage")
    code = cli.main(["train", "--data-root", str(tmp_path), "--out", str(tmp_path / "run"),
                     "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("minicaps train: error:") and str(tmp_path) in err


def test_tf32_on_the_cpu_is_refused(tmp_path, capsys, fake_mnist):
    code = cli.main(["train", "--tf32", "--device", "cpu", "--out", str(tmp_path / "run"),
                     "--no-progress"])
    assert code == 2
    assert "--tf32 is a math mode of the GPU: give --device gpu" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.gpu
def test_a_gpu_run_says_in_its_metrics_whether_tf32_was_on(tmp_path, capsys, fake_mnist):
    common = ["--device", "gpu", "--batch-size", "8", "--no-progress", "--no-average"]
    try:
        assert cli.main(["train", *common, "--out", str(tmp_path / "strict")]) == 0
        assert not mc.backend.tf32_enabled()
        assert cli.main(["train", *common, "--tf32", "--out", str(tmp_path / "tf32")]) == 0
        assert mc.backend.tf32_enabled()
    finally:
        mc.backend.set_tf32(False)
    for name, on in (("strict", False), ("tf32", True)):
        metrics = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").open()]
        assert metrics[0]["tf32"] is on


# --- train and evaluate (full-size network, synthetic 28x28 data) ---------------------------

def test_train_evaluate_resume(tmp_path, capsys, fake_mnist):
    data, calls = fake_mnist
    out = tmp_path / "run"
    common = ["--batch-size", "8", "--out", str(out), "--no-progress", "--dataset",
              "fashion-mnist", "--data-root", str(tmp_path), "--routing-iters", "2"]
    assert cli.main(["train", "--epochs", "1", *common]) == 0
    printed = capsys.readouterr().out
    assert "epoch 1/1" in printed and "test acc" in printed
    assert calls == [(str(tmp_path), "fashion-mnist")]
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").open()]
    assert [m["epoch"] for m in metrics] == [1] and metrics[0]["step"] == 2
    ckpt = load_checkpoint(out / "last.npz")
    assert ckpt.model.config.routing_iters == 2 and ckpt.model.config.input_shape == (28, 28, 1)

    # evaluate: the dataset defaults to the checkpoint's; accuracy is an independent count
    assert cli.main(["evaluate", str(out / "best.npz"), "--batch-size", "3"]) == 0
    printed = capsys.readouterr().out
    x_test, y_test = data[2], data[3]
    correct = np.count_nonzero(ckpt.model.predict(to_model_input(x_test)) == y_test)
    assert f"({correct}/8, " in printed and "fashion-mnist" in printed
    assert "margin loss" in printed and "reconstruction loss" in printed

    # resume to two epochs in all: only epoch 2 runs
    assert cli.main(["train", "--epochs", "2", "--resume", str(out / "last.npz"), *common]) == 0
    assert "epoch 2/2" in capsys.readouterr().out
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").open()] == [1, 2]
    # a resume with another batch size is refused with one clear line
    assert cli.main(["train", "--epochs", "3", "--resume", str(out / "last.npz"),
                     *common, "--batch-size", "4"]) == 2
    err = capsys.readouterr().err
    assert "batch_size=4 (checkpoint 8)" in err and err.count("\n") == 1
    # nothing left to do says how to train further; 0 epochs of a new run is refused
    assert cli.main(["train", "--epochs", "2", "--resume", str(out / "last.npz"), *common]) == 0
    assert "already done 2 epochs; give --epochs 3 or more" in capsys.readouterr().out
    assert cli.main(["train", "--epochs", "0", *common[:-4]]) == 2
    assert "epochs=0 trains nothing" in capsys.readouterr().err


def test_an_interrupted_run_says_what_was_saved(tmp_path, capsys, fake_mnist, monkeypatch):
    real_epoch, calls = minicaps.training.run.train_epoch, []

    def epoch_then_interrupt(*args, **kw):      # Ctrl-C in every epoch after the first
        calls.append(1)
        if len(calls) >= 2:
            raise KeyboardInterrupt
        return real_epoch(*args, **kw)

    monkeypatch.setattr(minicaps.training.run, "train_epoch", epoch_then_interrupt)
    out = tmp_path / "run"
    argv = ["train", "--epochs", "2", "--batch-size", "8", "--out", str(out), "--no-progress"]
    assert cli.main(argv) == 130
    last = out / "last.npz"
    assert f"{last} holds epoch 1: continue with --resume {last}" in capsys.readouterr().err
    assert load_checkpoint(last).epoch == 1
    # a new run interrupted in its first epoch
    assert cli.main([*argv[:-2], str(tmp_path / "new"), "--no-progress"]) == 130
    assert "no epoch was finished, so nothing was saved" in capsys.readouterr().err


def test_gradcheck_command_prints_a_table():
    result = minicaps_command("gradcheck")
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| CapsNet")]
    assert len(rows) > 10 and all("| yes" in row for row in rows)
    assert any("digit.W" in row for row in rows)
    assert "checks within tolerance" in result.stdout


# --- real MNIST ------------------------------------------------------------------------------

@needs_mnist
def test_train_command_on_real_mnist(tmp_path):
    out = tmp_path / "run"
    result = minicaps_command("train", "--epochs", 1, "--limit-train", 64, "--limit-test", 64,
                              "--batch-size", 32, "--out", out)
    assert result.returncode == 0, result.stderr
    assert "test acc" in result.stdout
    metrics = json.loads((out / "metrics.jsonl").read_text())
    assert metrics["step"] == 2 and metrics["test_n"] == 64
    result = minicaps_command("evaluate", out / "last.npz", "--limit-test", 64)
    assert result.returncode == 0, result.stderr
    x_test, y_test = load_mnist(download=False)[2:]
    model = load_checkpoint(out / "last.npz").model
    correct = np.count_nonzero(model.predict(to_model_input(x_test[:64])) == y_test[:64])
    assert f"({correct}/64, " in result.stdout


@needs_mnist
def test_example_script_runs(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "train_mnist.py"),
                             "--limit-train", "32", "--limit-test", "32", "--batch-size", "16"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "epoch 1: test accuracy" in result.stdout


def test_train_keeps_an_average_that_evaluate_uses_by_default(tmp_path, capsys, fake_mnist):
    data, _ = fake_mnist
    out = tmp_path / "run"
    common = ["--batch-size", "8", "--no-progress", "--dataset", "fashion-mnist",
              "--data-root", str(tmp_path), "--routing-iters", "1"]
    assert cli.main(["train", "--epochs", "1", "--average", "0.9", "--out", str(out),
                     *common]) == 0
    assert "average: test acc" in capsys.readouterr().out
    ckpt = load_checkpoint(out / "last.npz")
    assert ckpt.average.decay == 0.9

    def correct(params):      # counted independently of evaluate
        model = mc.CapsNet(ckpt.model.config, params=params)
        return np.count_nonzero(model.predict(to_model_input(data[2])) == data[3])

    for flags, params, words in (([], ckpt.average.params, "moving average"),
                                 (["--weights", "average"], ckpt.average.params, "moving average"),
                                 (["--weights", "trained"], ckpt.model.params, "trained")):
        assert cli.main(["evaluate", str(out / "last.npz"), *flags]) == 0
        printed = capsys.readouterr().out
        assert words in printed and f"({correct(params)}/8, " in printed

    plain = tmp_path / "plain"
    assert cli.main(["train", "--epochs", "1", "--no-average", "--out", str(plain), *common]) == 0
    assert "average:" not in capsys.readouterr().out
    assert load_checkpoint(plain / "last.npz").average is None
    assert cli.main(["evaluate", str(plain / "last.npz")]) == 0
    assert "trained parameters" in capsys.readouterr().out
    assert cli.main(["evaluate", str(plain / "last.npz"), "--weights", "average"]) == 2
    assert "keeps no moving average" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["train", "--average", "0.9", "--no-average"])


def test_the_quick_preset_trains_the_smaller_network_at_its_rate(tmp_path, capsys, fake_mnist):
    assert cli.main(["train", "--preset", "quick", "--out", str(tmp_path / "run"),
                     "--no-progress"]) == 0
    ckpt = load_checkpoint(tmp_path / "run" / "last.npz")
    config = ckpt.model.config
    assert (config.conv1_channels, config.primary_maps) == (64, 16)
    assert config.num_primary_caps == 6 * 6 * 16
    assert ckpt.epoch == 2 and ckpt.extra["settings"]["lr"] == 0.002


@pytest.mark.parametrize("limit", [None, 5])
def test_the_first_line_counts_the_images_left_after_the_validation_share(tmp_path, capsys,
                                                                         fake_mnist, limit):
    data, _ = fake_mnist
    out = tmp_path / "run"
    cut = [] if limit is None else ["--limit-train", str(limit)]
    assert cli.main(["train", "--preset", "quick", "--epochs", "1", "--val-size", "4", *cut,
                     "--out", str(out), "--no-progress"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    trained_on = load_checkpoint(out / "last.npz").extra["settings"]["n_train"]
    expected = min(len(data[1]) - 4, limit or len(data[1]))
    assert trained_on == expected
    assert f"({expected} training images, 4 held out for validation, 10 classes" in first

