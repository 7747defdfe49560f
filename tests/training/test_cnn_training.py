"""The CNN baseline in CapsNet's machinery: train(model="cnn"), evaluate by its
cross-entropy, exact resume (dropout masks included), checkpoints and weights files tagged
with the kind of network, the command line (train --model cnn, evaluate, predict, plot),
and the gradient checker's CNN rows.

Runs on a tiny CNN (one 3x3 convolution of 4 channels, a max-pool, fc 16) and the
synthetic bars of tests/synthetic.py; the CLI on 28x28 synthetic MNIST with that network
as a preset. The paper's CNN itself trains once, on a few 10x10 images (about 3 s).
"""
import json

import numpy as np
import pytest

import minicaps as mc
import minicaps.nn.cnn
import minicaps.training.run
from minicaps import cli
from minicaps.cli import train as train_command
from minicaps.cli.options import CNN_PRESETS, PRESETS
from minicaps.io.checkpoint import load_checkpoint, save_checkpoint
from minicaps.nn.cnn import BaselineCNN, CNNConfig
from minicaps.data.dataset import Dataset, to_model_input
from minicaps.gradcheck import (check_model, check_op, cnn_op_cases, randomize_params,
                                tiny_cnn_config, tiny_config)
from minicaps.io.weights import export_weights, load_weights
from minicaps.training.evaluation import evaluate
from minicaps.training.run import train
from minicaps.training.splits import config_for_data

from synthetic import bars_data, synthetic_mnist
from hostile_cases import rewrite_meta

TINY = dict(conv_channels=(4,), conv_kernel=3, pool_after=(1,), fc_sizes=(16,), dropout=0.25)
CONFIG = CNNConfig(input_shape=(10, 10, 1), num_classes=3, **TINY)
QUIET = dict(progress=False, log=lambda line: None)


def run(tmp_path, name="run", config=CONFIG, **kw):
    kw = {"epochs": 1, "batch_size": 20, "lr": 0.01, "shift": 1, "data": bars_data(),
          **QUIET, **kw}
    return train(config, out_dir=tmp_path / name, **kw)


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# --- train(model=...) builds the network fitted to the data -----------------------------------

def conv_dense_count(k, channels, c_in, flat, sizes):
    """Parameters of SAME k x k convolutions then dense layers, from the layer sizes."""
    total = 0
    for c_out in channels:
        total, c_in = total + k * k * c_in * c_out + c_out, c_out
    sizes = (flat,) + tuple(sizes)
    return total + sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))


def test_config_for_data_fits_each_network_to_the_data():
    data = synthetic_mnist()                                          # 28x28, labels 0..9
    paper = config_for_data(data, model="cnn")
    pooled = config_for_data(data, model="cnn-pooled")
    assert paper == CNNConfig.paper() and paper.num_params() == 35_445_522
    assert pooled.input_shape == (28, 28, 1) and pooled.pool_after == (1, 2)
    # 28 -> 14 -> 7 after the two pools: fc1 sees 7 x 7 x 128
    assert pooled.num_params() == conv_dense_count(5, (256, 256, 128), 1, 7 * 7 * 128,
                                                   (847, 192, 10))
    bars = config_for_data(bars_data(), crop=8, model="cnn", fc_sizes=(5,))
    assert bars.input_shape == (8, 8, 1) and bars.num_classes == 3 and bars.fc_sizes == (5,)
    assert isinstance(config_for_data(data), mc.CapsNetConfig)             # the default
    with pytest.raises(ValueError, match="model must be one of capsnet, cnn, cnn-pooled"):
        config_for_data(bars_data(), model="resnet")


def test_train_model_cnn_builds_the_papers_baseline_for_the_data(tmp_path):
    result = run(tmp_path, config=None, model="cnn", batch_size=5, lr=1e-3, limit_train=5,
                 limit_test=5, average=None)
    assert isinstance(result.model, BaselineCNN)
    assert result.model.config == CNNConfig.paper(input_shape=(10, 10, 1), num_classes=3)
    ckpt = load_checkpoint(result.last_checkpoint)
    assert isinstance(ckpt.model, BaselineCNN) and ckpt.extra["settings"]["model"] == "cnn"


def test_a_model_name_that_contradicts_the_config_is_refused(tmp_path):
    with pytest.raises(ValueError, match="model='cnn' builds a cnn network, but the config "
                                         "describes a capsnet"):
        run(tmp_path, config=tiny_config(), model="cnn")
    with pytest.raises(ValueError, match="model must be one of"):
        run(tmp_path, config=None, model="CNN")
    assert not (tmp_path / "run").exists()


# --- evaluation and training -------------------------------------------------------------------

def test_evaluate_reports_the_cross_entropy_without_dropout():
    model = randomize_params(BaselineCNN(CONFIG, seed=3, dtype="float64"),
                             np.random.default_rng(0))
    images, labels = bars_data(23, 10)[:2]
    scores = evaluate(model, images, labels, batch_size=7)      # batches of 7, 7, 7, 2
    # an independent computation: the logits by the forward pass, softmax and log by hand
    logits = model.forward(to_model_input(images, np.float64))[0]["logits"]
    p = softmax(logits)
    cross_entropy = -np.log(p[np.arange(23), labels]).mean()
    assert set(scores) == {"accuracy", "cross_entropy", "loss", "n"}      # no capsule terms
    assert scores["cross_entropy"] == pytest.approx(cross_entropy, rel=1e-10)
    assert scores["loss"] == scores["cross_entropy"]
    assert scores["accuracy"] == np.count_nonzero(p.argmax(axis=1) == labels) / 23
    assert model.dropout_step == 0                             # evaluation draws no mask


def test_a_cnn_run_learns_and_logs_its_loss_by_name(tmp_path):
    lines = []
    result = run(tmp_path, epochs=4, val_size=20, log=lines.append)
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert [m["step"] for m in metrics] == [5, 10, 15, 20]             # 100 images / 20
    first, last = metrics[0], metrics[-1]
    assert {"train_loss", "train_cross_entropy", "train_accuracy", "test_cross_entropy",
            "test_loss", "test_accuracy", "val_cross_entropy",
            "avg_test_cross_entropy"} <= set(last)
    assert not any("margin" in key or "reconstruction" in key for key in last)
    assert last["train_loss"] == last["train_cross_entropy"] < first["train_loss"]
    assert last["test_accuracy"] >= 0.9
    # the epoch line names the loss as a loss, not a margin
    epoch_lines = [line for line in lines if line.startswith("epoch ")]
    assert len(epoch_lines) == 4 and all(" loss " in line and "margin" not in line
                                         for line in epoch_lines)
    # the last accuracy by an independent count on the saved model
    ckpt = load_checkpoint(tmp_path / "run" / "last.npz")
    x_test, y_test = bars_data()[2:]
    predicted = ckpt.model.predict(to_model_input(x_test, np.float32))
    assert last["test_accuracy"] == np.count_nonzero(predicted == y_test) / 60
    assert result.model.dropout_step == ckpt.step == 20


def test_resume_continues_bit_for_bit_dropout_masks_included(tmp_path):
    kw = dict(val_size=20, shift=2, seed=5)
    straight = run(tmp_path, name="straight", epochs=2, **kw)
    first = run(tmp_path, name="split", epochs=1, **kw)
    after_one = {k: p.copy() for k, p in first.model.params.items()}
    resumed = run(tmp_path, name="split", epochs=2, resume=tmp_path / "split" / "last.npz", **kw)
    assert resumed.step == straight.step == 10 and resumed.model.dropout_step == 10
    for name, p in straight.model.params.items():
        np.testing.assert_array_equal(resumed.model.params[name], p)
        assert not np.array_equal(p, after_one[name])
    moments_a, moments_b = straight.optimizer.state_dict()[1], resumed.optimizer.state_dict()[1]
    for key, a in moments_a.items():
        np.testing.assert_array_equal(moments_b[key], a)
    for name, p in straight.average.params.items():
        np.testing.assert_array_equal(resumed.average.params[name], p)

    def lines(name):
        return [{k: v for k, v in json.loads(line).items()
                 if "seconds" not in k and k != "images_per_second"}
                for line in (tmp_path / name / "metrics.jsonl").open()]
    assert lines("straight") == lines("split")

    # the masks matter: resumed with the dropout state lost (step 0 again), it differs
    checkpoint = tmp_path / "lost" / "last.npz"
    run(tmp_path, name="lost", epochs=1, **kw)
    rewrite_meta(checkpoint, lambda meta: meta.update(dropout={"seed": 5, "step": 0}))
    lost = run(tmp_path, name="lost", epochs=2, resume=checkpoint, **kw)
    assert not np.array_equal(lost.model.params["fc1.W"], straight.model.params["fc1.W"])


@pytest.mark.gpu
def test_a_cnn_run_on_the_gpu_matches_the_cpus(tmp_path):
    cpu = run(tmp_path, name="cpu", epochs=2, dtype="float64", device="cpu")
    gpu = run(tmp_path, name="gpu", epochs=2, dtype="float64", device="gpu")
    assert mc.backend.device_of(gpu.model.params["fc1.W"]) == "gpu"
    for name, p in cpu.model.params.items():    # the same masks: drawn on the host
        np.testing.assert_allclose(mc.to_numpy(gpu.model.params[name]), p, rtol=1e-6,
                                   atol=1e-9)
    for a, b in zip(cpu.history, gpu.history):
        assert b["test_cross_entropy"] == pytest.approx(a["test_cross_entropy"], rel=1e-9)
    assert load_checkpoint(tmp_path / "gpu" / "last.npz", device="cpu").model.dropout_step == 12


def test_resuming_a_cnn_as_a_capsnet_or_back_is_refused(tmp_path):
    run(tmp_path, name="cnn")
    with pytest.raises(ValueError, match=r"holds a cnn network, not a capsnet; to resume it, "
                                         r"train a cnn \(minicaps train --model cnn"):
        run(tmp_path, name="cnn", config=tiny_config(), epochs=2,
            resume=tmp_path / "cnn" / "last.npz")
    with pytest.raises(ValueError, match="holds a cnn network, not a capsnet"):
        run(tmp_path, name="cnn", config=None, model="capsnet", epochs=2,
            resume=tmp_path / "cnn" / "last.npz")
    run(tmp_path, name="caps", config=tiny_config())
    with pytest.raises(ValueError, match="holds a capsnet network, not a cnn"):
        run(tmp_path, name="caps", epochs=2, resume=tmp_path / "caps" / "last.npz")


# --- checkpoints and weights files --------------------------------------------------------------

def trained_cnn(steps=3):
    model, opt = BaselineCNN(CONFIG, seed=9), mc.Adam(lr=0.01)
    x_train, y_train = bars_data(40, 10)[:2]
    for k in range(steps):
        batch = slice(10 * k, 10 * k + 10)
        _, grads, _ = model.loss_and_grads(to_model_input(x_train[batch]), y_train[batch])
        opt.step(model.params, grads)
    return model, opt


def save(path, model, opt):
    return save_checkpoint(path, model, opt, epoch=1, step=model.dropout_step,
                           rng_state=np.random.default_rng(0))


def test_a_cnn_checkpoint_round_trips_with_its_kind_and_dropout_state(tmp_path):
    model, opt = trained_cnn()
    path = save(tmp_path / "c.npz", model, opt)
    with np.load(path) as npz:
        meta = json.loads(npz["meta"].tobytes())
    assert meta["model"] == "cnn" and meta["dropout"] == {"seed": 9, "step": 3}
    ckpt = load_checkpoint(path)
    assert isinstance(ckpt.model, BaselineCNN) and ckpt.model.config == CONFIG
    assert (ckpt.model.seed, ckpt.model.dropout_step) == (9, 3)
    for name, p in model.params.items():
        np.testing.assert_array_equal(ckpt.model.params[name], p)
    # the next step is the same in both: same mask, same Adam update
    x, y = to_model_input(bars_data(10, 10)[0]), bars_data(10, 10)[1]
    opt.step(model.params, model.loss_and_grads(x, y)[1])
    ckpt.optimizer.step(ckpt.model.params, ckpt.model.loss_and_grads(x, y)[1])
    for name in model.params:
        np.testing.assert_array_equal(ckpt.model.params[name], model.params[name])
    # into a given model of the same kind; not into a CapsNet
    into = BaselineCNN(CONFIG, seed=0)
    assert load_checkpoint(path, model=into).model is into and into.dropout_step == 3
    with pytest.raises(ValueError, match="holds a cnn network, the model is a capsnet"):
        load_checkpoint(path, model=mc.CapsNet(tiny_config()))


def test_a_capsnet_checkpoint_is_tagged_and_one_without_a_tag_is_a_capsnet(tmp_path):
    model = mc.CapsNet(tiny_config(), seed=0)
    path = save_checkpoint(tmp_path / "c.npz", model, mc.Adam(), epoch=0, step=0,
                           rng_state=np.random.default_rng(0))
    with np.load(path) as npz:
        meta = json.loads(npz["meta"].tobytes())
    assert meta["model"] == "capsnet" and "dropout" not in meta
    rewrite_meta(path, lambda meta: meta.pop("model"))            # as written before the tag
    ckpt = load_checkpoint(path)
    assert isinstance(ckpt.model, mc.CapsNet) and ckpt.model.config == tiny_config()
    for name, p in model.params.items():
        np.testing.assert_array_equal(ckpt.model.params[name], p)


@pytest.mark.parametrize("change, said", [
    (lambda m: m.update(model="resnet"),
     r"holds a network of kind 'resnet', which this minicaps does not know \(it reads "
     r"'capsnet', 'cnn'\)"),
    (lambda m: m.update(model=["cnn"]), "holds a network of kind"),
    (lambda m: m.update(model="capsnet"), r"bad network config .*unknown CapsNetConfig fields"),
    (lambda m: m.update(dropout={"seed": -1, "step": 0}), "dropout is"),
    (lambda m: m.update(dropout={"seed": 1}), "dropout is"),
    (lambda m: m.update(dropout=[1, 2]), "dropout is"),
    (lambda m: m["config"].update(pool_after=[3]), "pool_after must name conv layers 1..1"),
])
def test_a_damaged_or_unknown_kind_is_refused_naming_the_file(tmp_path, change, said):
    model, opt = trained_cnn(1)
    path = save(tmp_path / "c.npz", model, opt)
    rewrite_meta(path, change)
    with pytest.raises(ValueError, match=f"c.npz.*{said}"):
        load_checkpoint(path)


def test_a_cnn_weights_file_round_trips_with_its_kind(tmp_path):
    run(tmp_path, epochs=1)
    path = export_weights(tmp_path / "run" / "last.npz", tmp_path / "w.npz", dtype="float32")
    weights = load_weights(path)
    ckpt = load_checkpoint(tmp_path / "run" / "last.npz")
    assert isinstance(weights.model, BaselineCNN) and weights.weights == "average"
    for name, p in ckpt.average.params.items():
        np.testing.assert_array_equal(weights.model.params[name], p)
    rewrite_meta(path, lambda meta: meta.update(model="transformer"))
    with pytest.raises(ValueError, match="w.npz: holds a network of kind 'transformer'"):
        load_weights(path)


# --- the command line ----------------------------------------------------------------------------

@pytest.fixture
def cnn_cli(monkeypatch):
    """Synthetic 28x28 MNIST for train, and a tiny CNN as --preset tiny of --model cnn."""
    data = synthetic_mnist(n_train=24, n_test=8)
    monkeypatch.setattr("minicaps.data.mnist.load_mnist", lambda *args, **kw: data)
    monkeypatch.setitem(CNN_PRESETS, "tiny", {"model": "cnn", "config": dict(TINY),
                                                  "epochs": 1, "lr": 0.01})
    return data


def test_train_evaluate_resume_a_cnn_from_the_command_line(tmp_path, capsys, cnn_cli):
    x_test, y_test = cnn_cli[2:]
    out = tmp_path / "run"
    common = ["--model", "cnn", "--preset", "tiny", "--batch-size", "8", "--out", str(out),
              "--no-progress"]
    assert cli.main(["train", *common]) == 0
    printed = capsys.readouterr().out
    count = conv_dense_count(3, (4,), 1, 14 * 14 * 4, (16, 10))    # 28 -> 14 by the pool
    assert f"training the CNN baseline (--preset tiny, {count:,} parameters)" in printed
    assert "epoch 1/1" in printed and "margin" not in printed
    ckpt = load_checkpoint(out / "last.npz")
    assert isinstance(ckpt.model, BaselineCNN) and ckpt.model.config.input_shape == (28, 28, 1)

    assert cli.main(["evaluate", str(out / "last.npz"), "--weights", "trained"]) == 0
    printed = capsys.readouterr().out
    p = softmax(ckpt.model.forward(to_model_input(x_test))[0]["logits"].astype(np.float64))
    correct = np.count_nonzero(p.argmax(axis=1) == y_test)
    cross_entropy = -np.log(p[np.arange(8), y_test]).mean()
    assert f"({correct}/8, " in printed and f"cross-entropy       {cross_entropy:.5f}" in printed
    assert "margin" not in printed and "reconstruction" not in printed

    # resuming needs --model cnn; with it, epoch 2 runs
    assert cli.main(["train", "--epochs", "2", "--resume", str(out / "last.npz"),
                     *common[4:]]) == 2
    err = capsys.readouterr().err
    assert "holds a cnn network, not a capsnet" in err and err.count("\n") == 1
    assert cli.main(["train", "--epochs", "2", "--resume", str(out / "last.npz"), *common]) == 0
    assert "epoch 2/2" in capsys.readouterr().out
    assert load_checkpoint(out / "last.npz").model.dropout_step == 6      # 24 images / 8


@pytest.mark.parametrize("argv, said", [
    (["--model", "cnn", "--preset", "quick"],
     "--preset quick is not a preset of --model cnn; give paper or pooled"),
    (["--preset", "pooled"], "--preset pooled is not a preset of --model capsnet"),
    (["--model", "cnn", "--routing-iters", "2"],
     "--routing-iters: the CNN baseline has no routing"),
    (["--model", "cnn", "--routing-grad", "stop"], "--routing-grad: the CNN baseline"),
])
def test_capsnet_options_for_a_cnn_are_refused_in_one_line(tmp_path, capsys, cnn_cli, argv, said):
    assert cli.main(["train", *argv, "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert said in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_the_pooled_preset_trains_the_max_pooling_baseline(tmp_path, capsys, cnn_cli,
                                                             monkeypatch):
    built = []
    monkeypatch.setattr(train_command, "_training_data", lambda args: Dataset(*bars_data(10, 5)))
    monkeypatch.setattr(minicaps.training.run, "_train_epochs", lambda run, *a, **kw: built.append(run))
    assert cli.main(["train", "--model", "cnn", "--preset", "pooled", "--out",
                     str(tmp_path / "run"), "--no-progress"]) == 0
    assert built[0].model.config == CNNConfig.pooled(input_shape=(10, 10, 1), num_classes=3)


@pytest.fixture
def cnn_checkpoint(tmp_path, cnn_cli, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", "--model", "cnn", "--preset", "tiny", "--batch-size", "8",
                     "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    return out / "last.npz"


def test_predict_with_a_cnn_prints_probabilities_and_refuses_a_reconstruction(
        cnn_checkpoint, cnn_cli, tmp_path, capsys):
    Image = pytest.importorskip("PIL.Image")
    from minicaps.data.pictures import load_digit
    picture = tmp_path / "digit.png"
    Image.fromarray(cnn_cli[2][0]).save(picture)
    assert cli.main(["predict", str(cnn_checkpoint), str(picture)]) == 0
    printed = capsys.readouterr().out
    model, _ = load_checkpoint(cnn_checkpoint).model_with()
    logits = model.forward(load_digit(picture, (28, 28, 1))[None].astype(np.float32))[0]["logits"]
    p = softmax(logits.astype(np.float64))[0]
    assert f"predicted {int(p.argmax())}" in printed and "probability" in printed
    shown = [float(line.split()[1]) for line in printed.splitlines()[2:]]
    np.testing.assert_allclose(shown, p, atol=6e-5)                     # printed to 4 places
    assert cli.main(["predict", str(cnn_checkpoint), str(picture), "--save-reconstruction",
                     str(tmp_path / "r.png")]) == 2
    err = capsys.readouterr().err
    assert "holds the CNN baseline, which has no decoder" in err and err.count("\n") == 1
    assert not (tmp_path / "r.png").exists()


def test_plot_draws_curves_and_confusion_for_a_cnn_and_says_why_not_capsules(
        cnn_checkpoint, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "plots"
    assert cli.main(["plot", str(cnn_checkpoint), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert sorted(p.name for p in out.iterdir()) == ["confusion.png", "curves.png"]
    assert "holds the CNN baseline: drawing curves and confusion only" in captured.err
    assert "need a CapsNet" in captured.err
    assert cli.main(["plot", str(cnn_checkpoint), "--kind", "routing", "--kind", "confusion",
                     "--out", str(tmp_path / "more")]) == 2
    err = capsys.readouterr().err
    assert "no capsules: the capsule pictures (routing) need a CapsNet" in err
    assert err.count("\n") == 1


# --- the gradient checker's rows for the CNN ----------------------------------------------------

def test_the_cnn_layers_and_models_pass_the_gradient_checker_and_a_broken_one_fails(
        monkeypatch):
    rng = np.random.default_rng(0)
    for what, fwd, bwd, inputs, names in cnn_op_cases(rng):
        errors = check_op(fwd, bwd, inputs, names, rng=rng)
        assert all(e < 1e-7 for e in errors.values()), (what, errors)
    model = randomize_params(BaselineCNN(tiny_cnn_config(), seed=1, dtype="float64"), rng)
    model.dropout_step = 5
    x, y = rng.uniform(0, 1, (3, 6, 6, 2)), np.array([0, 2, 1])
    grads = model.backward(model.forward(x, y, training=True, step=5)[1])
    assert all(np.abs(g).max() > 0 for g in grads.values())           # no row checks 0 vs 0
    errors = check_model(model, x, y, rng=rng)
    assert set(errors) == set(model.params) and max(errors.values()) < 1e-6, errors
    assert model.dropout_step == 6                   # checked at the step it was at
    # a backward that forgets dropout's scale is caught
    monkeypatch.setattr(minicaps.nn.cnn, "dropout_backward", lambda dout, scale: dout)
    errors = check_model(model, x, y, rng=rng)
    assert errors["fc1.W"] > 1e-3


# --- compare: a CapsNet and the CNN on one test set -----------------------------------------------

def test_agreement_sorts_each_image_by_who_gets_it_right():
    from minicaps.viz import agreement
    labels = np.array([0, 1, 2, 3, 4, 5])
    first = np.array([0, 1, 9, 9, 4, 9])
    second = np.array([0, 9, 2, 9, 9, 5])
    groups = agreement(labels, first, second)
    expected = {"both": [], "only_first": [], "only_second": [], "neither": []}
    for k in range(6):                        # the same sorting, one image at a time
        a, b = first[k] == labels[k], second[k] == labels[k]
        key = "both" if a and b else "only_first" if a else "only_second" if b else "neither"
        expected[key].append(k)
    assert {k: v.tolist() for k, v in groups.items()} == expected
    with pytest.raises(ValueError, match="one length"):
        agreement(labels, first[:5], second)


def test_compare_tests_two_networks_on_one_test_set(tmp_path, capsys, cnn_cli, monkeypatch):
    x_test, y_test = cnn_cli[2:]
    monkeypatch.setitem(PRESETS, "tiny", {"config": {
        "conv1_channels": 8, "primary_maps": 4, "decoder_sizes": (16,)}, "epochs": 1, "lr": 1e-3})
    caps, cnn = tmp_path / "caps", tmp_path / "cnn"
    assert cli.main(["train", "--preset", "tiny", "--out", str(caps), "--no-progress"]) == 0
    assert cli.main(["train", "--model", "cnn", "--preset", "tiny", "--out", str(cnn),
                     "--no-progress"]) == 0
    capsys.readouterr()
    assert cli.main(["compare", str(caps / "last.npz"), str(cnn / "last.npz"), "--weights",
                     "trained", "--out", str(tmp_path / "pics")]) == 0
    printed = capsys.readouterr().out
    x = to_model_input(x_test)
    right = []
    for path in (caps, cnn):
        model = load_checkpoint(path / "last.npz").model
        right.append(model.predict(x) == y_test)
    a, b = right
    assert f"CapsNet    {a.mean():.4f}" in printed and f"CNN        {b.mean():.4f}" in printed
    assert (f"both right {np.sum(a & b)}, only CapsNet {np.sum(a & ~b)}, only CNN "
            f"{np.sum(~a & b)}, neither {np.sum(~a & ~b)}") in printed
    if (tmp_path / "pics" / "compare.png").exists():          # matplotlib present
        assert str(tmp_path / "pics" / "compare.png") in printed
    # networks that cannot read one test set are refused, naming why
    other = tmp_path / "other"
    assert cli.main(["train", "--model", "cnn", "--preset", "tiny", "--dataset", "multimnist",
                     "--out", str(other), "--no-progress", "--shift", "0"]) == 0
    capsys.readouterr()
    assert cli.main(["compare", str(caps / "last.npz"), str(other / "last.npz")]) == 2
    assert "trained on mnist" in capsys.readouterr().err
    assert cli.main(["compare", str(caps / "last.npz"), str(tmp_path / "nothing.npz")]) == 2
    assert "no such checkpoint file" in capsys.readouterr().err
