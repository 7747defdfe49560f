"""Weights files (export_weights / load_weights) and the network that ships with minicaps."""
import json
import os
import zipfile

import numpy as np
import pytest

import minicaps as mc
from minicaps.io import weights as pretrained
from minicaps.io.checkpoint import load_checkpoint
from minicaps.gradcheck import tiny_config
from minicaps.io.weights import export_weights, load_pretrained, load_weights
from minicaps.training.evaluation import evaluate
from minicaps.training.run import train

from synthetic import bars_data

HAVE_MNIST = bool(os.environ.get("MINICAPS_DATA"))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("weights") / "run"
    train(tiny_config(recon_weight=0.0005), epochs=2, out_dir=out, batch_size=20, lr=0.01,
          data=bars_data(), progress=False, log=lambda line: None)
    return out


def test_the_exported_weights_are_the_average_rounded_to_float16(run, tmp_path):
    path = export_weights(run / "best.npz", tmp_path / "w.npz", provenance={"note": "test"})
    ckpt = load_checkpoint(run / "best.npz")
    loaded = load_weights(path)
    assert loaded.weights == "average"
    for name, p in loaded.model.params.items():
        expected = ckpt.average.params[name].astype(np.float16).astype(np.float32)
        np.testing.assert_array_equal(p, expected)
    assert loaded.provenance["epoch"] == ckpt.epoch and loaded.provenance["note"] == "test"
    # about a quarter of the checkpoint: one set of parameters in half the bytes
    assert path.stat().st_size < 0.2 * (run / "best.npz").stat().st_size


def test_float16_weights_predict_like_the_checkpoint(run, tmp_path):
    path = export_weights(run / "best.npz", tmp_path / "w.npz")
    model, _ = load_checkpoint(run / "best.npz").model_with("average")
    x_test, y_test = bars_data()[2:]
    ours = evaluate(load_weights(path).model, x_test, y_test)["accuracy"]
    theirs = evaluate(model, x_test, y_test)["accuracy"]
    assert abs(ours - theirs) <= 1 / len(y_test)


def test_trained_weights_can_be_exported_in_float32_exactly(run, tmp_path):
    path = export_weights(run / "last.npz", tmp_path / "w.npz", weights="trained",
                          dtype="float32")
    ckpt = load_checkpoint(run / "last.npz")
    loaded = load_weights(path)
    assert loaded.weights == "trained"
    for name, p in loaded.model.params.items():
        np.testing.assert_array_equal(p, ckpt.model.params[name])
    with pytest.raises(ValueError, match="holds only the trained weights"):
        loaded.model_with("average")


def test_values_beyond_float16_are_refused(run, tmp_path, monkeypatch):
    ckpt = load_checkpoint(run / "last.npz")
    ckpt.model.params["conv1.b"][0] = 1e6
    from minicaps.io.checkpoint import save_checkpoint
    save_checkpoint(tmp_path / "big.npz", ckpt.model, ckpt.optimizer, epoch=1, step=1,
                    rng_state=ckpt.rng())
    with pytest.raises(ValueError, match=r"conv1\.b holds values beyond float16's range"):
        export_weights(tmp_path / "big.npz", tmp_path / "w.npz", weights="trained")
    assert not (tmp_path / "w.npz").exists()


def test_a_checkpoint_is_not_a_weights_file(run):
    with pytest.raises(ValueError, match="not a minicaps weights file"):
        load_weights(run / "last.npz")


def test_a_weights_file_holds_parameters_only(run, tmp_path):
    path = export_weights(run / "best.npz", tmp_path / "w.npz")
    with zipfile.ZipFile(path, "a") as z:
        z.writestr("optim/m/conv1.b.npy", b"\x93NUMPY")
    with pytest.raises(ValueError, match=r"unexpected members \['optim/m/conv1.b'\]"):
        load_weights(path)


def test_a_weights_file_with_a_damaged_field_names_it(run, tmp_path):
    path = export_weights(run / "best.npz", tmp_path / "w.npz")
    with np.load(path) as npz:
        members = {k: npz[k] for k in npz.files}
    meta = json.loads(members["meta"].tobytes())
    meta["weights"] = "both"
    members["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    np.savez(path, **members)
    with pytest.raises(ValueError, match=f"{path}: damaged checkpoint metadata: weights is 'both'"):
        load_weights(path)


# --- the network that ships --------------------------------------------------------------------

needs_shipped = pytest.mark.skipif(not pretrained.SHIPPED.is_file(),
                                   reason="the shipped weights file is not in this checkout")


@needs_shipped
def test_the_shipped_network_is_the_papers_and_says_where_it_came_from():
    shipped = load_pretrained()
    assert shipped.model.config == mc.CapsNetConfig()
    assert shipped.weights == "average"
    made = shipped.provenance
    assert {"command", "seed", "epoch", "test_accuracy"} <= set(made)
    assert pretrained.SHIPPED.stat().st_size <= 20 * 2**20


@needs_shipped
@pytest.mark.skipif(not HAVE_MNIST, reason="set MINICAPS_DATA to the MNIST files")
def test_the_shipped_networks_accuracy_is_what_its_provenance_says():
    from minicaps.data.mnist import load_mnist
    _, _, x_test, y_test = load_mnist(download=False)
    shipped = load_pretrained()
    accuracy = evaluate(shipped.model, x_test, y_test)["accuracy"]
    assert accuracy == pytest.approx(shipped.provenance["test_accuracy"], abs=1e-4)


# --- the commands ------------------------------------------------------------------------------

def test_export_weights_and_evaluate_them_from_the_command_line(run, tmp_path, capsys, monkeypatch):
    from minicaps import cli
    monkeypatch.setattr("minicaps.data.mnist.load_mnist", lambda *a, **k: bars_data())
    out = tmp_path / "w.npz"
    assert cli.main(["export-weights", str(run / "best.npz"), str(out)]) == 0
    assert cli.main(["evaluate", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    accuracy = evaluate(load_weights(out).model, *bars_data()[2:])["accuracy"]
    assert f"accuracy            {accuracy:.4f}" in printed and "moving average" in printed


@pytest.mark.parametrize("argv", [["evaluate"], ["evaluate", "x.npz", "--pretrained"]])
def test_a_checkpoint_or_pretrained_one_of_them(argv, capsys):
    from minicaps import cli
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "give a CHECKPOINT" in err and "--pretrained" in err and err.count("\n") == 1


@needs_shipped
def test_predict_with_the_shipped_network_reads_a_drawn_digit(tmp_path, capsys):
    pytest.importorskip("PIL")
    from PIL import Image, ImageDraw
    from minicaps import cli
    image = Image.new("L", (120, 120), 255)
    ImageDraw.Draw(image).line([(60, 15), (60, 105)], fill=0, width=12)   # a 1
    image.save(tmp_path / "one.png")
    assert cli.main(["predict", "--pretrained", str(tmp_path / "one.png")]) == 0
    assert "predicted 1" in capsys.readouterr().out
