"""minicaps.viz: the data behind each plot against independent computations, every plot
as a PNG of the size its docstring gives, what the pictures say (colour scales, bars,
titles, warnings), and `minicaps plot`.

The models: the gradient checker's tiny 10x10, 3-class network, random or trained for a
fraction of a second on synthetic bars, and a small 28x28, 10-class random one for the
command line, which reads the test set through load_mnist (replaced by synthetic images).
"""
import json
import sys

import numpy as np
import pytest

import minicaps as mc
import minicaps.training.run
from minicaps import cli
from minicaps.cli.plot import PLOT_KINDS
from minicaps import viz
from minicaps.viz import arrays, canvas
from minicaps.io.checkpoint import load_checkpoint, save_checkpoint
from minicaps.gradcheck import randomize_params, tiny_config
from minicaps.training.optim import ParameterAverage
from synthetic import bars

pytest.importorskip("matplotlib", reason='plots need matplotlib: pip install "minicaps[viz]"')
Image = pytest.importorskip("PIL.Image")

DPI = 40   # small, fast PNGs; every size in inches below is a multiple of 0.25, so exact


@pytest.fixture(scope="module")
def tiny():
    model = mc.CapsNet(tiny_config(), seed=0, dtype="float64", device="cpu")
    return randomize_params(model, np.random.default_rng(5))


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(7).uniform(0, 1, (5, 10, 10, 1))


@pytest.fixture(scope="module")
def bar_images():
    x, y = bars(40, 1)
    return x[..., None] / 255.0, y


@pytest.fixture(scope="module")
def untrained():
    """Fresh from init: its capsules are so short that routing leaves every c_ij at 1/J."""
    return mc.CapsNet(tiny_config(), seed=0, dtype="float64", device="cpu")


@pytest.fixture(scope="module")
def trained(bar_images):
    """60 Adam steps on the bars (0.1 s): routing has learned (max |c - 1/3| about 0.4).
    The bars always sit in one place, so the task needs no pose and the decoder learns one
    template per class: its perturbation grid is rightly flat (0.06 at most). A decoder
    written to read the pose stands in for a trained full-size one (whose nudges move
    pixels by 0.5 - 0.8): hidden unit d is relu(1 + v_kd) of the unmasked capsule k,
    the pixels sigmoid of random weights (std 3) centred on pose 0."""
    x, y = bar_images
    model = mc.CapsNet(tiny_config(), seed=0, dtype="float64", device="cpu")
    adam = mc.Adam(lr=0.01)
    for step in range(60):
        batch = np.arange(20 * step, 20 * step + 20) % len(y)
        adam.step(model.params, model.loss_and_grads(x[batch], y[batch])[1])
    J, D = model.config.num_classes, model.config.digit_dims
    params = dict(model.params)
    params["dec1.W"] = np.zeros_like(params["dec1.W"])
    for j in range(J):
        params["dec1.W"][j * D:(j + 1) * D, :D] = np.eye(D)
    params["dec1.b"] = np.ones_like(params["dec1.b"])
    params["dec2.W"] = np.random.default_rng(0).normal(0, 3, params["dec2.W"].shape)
    params["dec2.b"] = -params["dec2.W"].sum(axis=0)
    return mc.CapsNet(model.config, dtype="float64", device="cpu", params=params)


def texts(fig):
    """Every text of a figure (titles, labels, ticks, legends, notes) in one string."""
    from matplotlib.text import Text
    return " ".join(t.get_text() for t in fig.findobj(Text))


def png_size(path):
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.load()   # decodes every row: a truncated file fails here
        return image.size


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


# --- data functions ------------------------------------------------------------------------

def test_perturbation_zero_nudge_is_the_reconstruction(tiny, images):
    grid, label = viz.perturbation_grid(tiny, images[0])
    cfg = tiny.config
    out, _ = tiny.forward(images[:1])
    assert grid.shape == (cfg.digit_dims, 11, 10, 10)
    assert label == int(out["lengths"][0].argmax())
    assert viz.NUDGES[5] == 0 and np.allclose(np.diff(viz.NUDGES), 0.05)
    plain = out["reconstruction"][0].reshape(10, 10)
    for d in range(cfg.digit_dims):
        np.testing.assert_allclose(grid[d, 5], plain, rtol=1e-12, atol=1e-12)
    assert not np.allclose(grid[0, 0], grid[0, 10])   # a nudge changes the picture


def test_perturbation_matches_a_decoder_written_out(tiny, images):
    grid, label = viz.perturbation_grid(tiny, images[1], label=2)
    p = tiny.params
    v = tiny.forward(images[1:2])[0]["v"][0]          # (J, D)
    for d, s in [(0, 0), (3, 10), (1, 7)]:
        pose = np.zeros_like(v)
        pose[2] = v[2]
        pose[2, d] += viz.NUDGES[s]
        hidden = np.maximum(pose.reshape(-1) @ p["dec1.W"] + p["dec1.b"], 0)
        expected = sigmoid(hidden @ p["dec2.W"] + p["dec2.b"]).reshape(10, 10)
        np.testing.assert_allclose(grid[d, s], expected, rtol=1e-10)
    # the zero nudge with a label given is the reconstruction masked by that label
    masked = tiny.forward(images[1:2], y=np.array([2]))[0]["reconstruction"][0]
    np.testing.assert_allclose(grid[1, 5], masked.reshape(10, 10), rtol=1e-12)


def test_routing_couplings(tiny, images):
    cfg = tiny.config
    r = viz.routing_couplings(tiny, images[2])
    rows, cols = cfg.primary_grid
    maps, J, T = cfg.primary_maps, cfg.num_classes, cfg.routing_iters
    I = rows * cols * maps
    assert r["coupling"].shape == (T, I, J)
    assert r["grid"].shape == (T, rows, cols, maps)
    assert r["per_map"].shape == (T, maps) and r["per_class"].shape == (T, J)
    np.testing.assert_allclose(r["coupling"].sum(axis=2), 1, rtol=1e-12)      # over classes j
    np.testing.assert_allclose(r["coupling"][0], 1 / J)                        # softmax(0)
    out = tiny.forward(images[2:3])[0]
    np.testing.assert_allclose(r["coupling"][-1], out["coupling"][0], rtol=1e-12)
    assert r["label"] == int(out["lengths"][0].argmax())
    np.testing.assert_allclose(r["lengths"], out["lengths"][0], rtol=1e-12)
    assert not np.allclose(r["coupling"][1], r["coupling"][0])                  # routing moved
    for t in range(T):                                     # capsule i = (row*cols + col)*maps + map
        for m in range(maps):
            naive = sum(r["coupling"][t, (row * cols + col) * maps + m, r["label"]]
                        for row in range(rows) for col in range(cols))
            assert r["per_map"][t, m] == pytest.approx(naive, rel=1e-12)
    np.testing.assert_allclose(r["per_class"].sum(axis=1), I)


def test_routing_couplings_with_more_iterations_and_a_label(tiny, images):
    r = viz.routing_couplings(tiny, images[3], iters=5, label=1)
    assert r["coupling"].shape[0] == 5 and r["label"] == 1
    np.testing.assert_allclose(r["grid"][4].reshape(-1), r["coupling"][4][:, 1])


def test_confusion_matrix_counts_like_a_loop():
    rng = np.random.default_rng(0)
    y_true, y_pred = rng.integers(0, 4, 200), rng.integers(0, 4, 200)
    naive = np.zeros((6, 6), dtype=int)
    for t, p in zip(y_true, y_pred):
        naive[t, p] += 1
    np.testing.assert_array_equal(viz.confusion_matrix(y_true, y_pred, 6), naive)
    np.testing.assert_array_equal(viz.confusion_matrix(y_true, y_pred), naive[:4, :4])
    with pytest.raises(ValueError):
        viz.confusion_matrix(y_true, y_pred, 3)


def test_read_metrics(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"epoch": 2, "train_loss": 0.1}) + "\n\n"
                    + json.dumps({"epoch": 1, "train_loss": 0.2}) + "\n")
    assert [m["epoch"] for m in viz.read_metrics(path)] == [1, 2]
    with pytest.raises(FileNotFoundError, match="metrics"):
        viz.read_metrics(tmp_path / "none.jsonl")
    path.write_text('{"epoch": 1}\n{"epoch": 2, tor\n')     # torn by a crash: skipped
    warnings = []
    assert viz.read_metrics(path, warn=warnings.append) == [{"epoch": 1}]
    assert len(warnings) == 1 and "line 2: not JSON" in warnings[0]
    path.write_text('{"epoch": 2, tor\n')
    with pytest.raises(ValueError, match="line 1"):
        viz.read_metrics(path)


def test_mosaic_places_each_cell():
    cells = np.arange(2 * 3 * 4 * 5, dtype=float).reshape(2, 3, 4, 5)
    m = viz.mosaic(cells, pad=1, value=-1)
    assert m.shape == (2 * 5 - 1, 3 * 6 - 1)
    np.testing.assert_array_equal(m[5:9, 12:17], cells[1, 2])
    assert (m[4] == -1).all() and (m[:, 5] == -1).all()


def test_the_measures_behind_the_warnings(untrained, trained, bar_images):
    x, _ = bar_images
    J = untrained.config.num_classes
    for model in (untrained, trained):
        r = viz.routing_couplings(model, x[0])
        naive = max(abs(c - 1 / J) for c in r["coupling"][-1].reshape(-1))
        assert viz.coupling_spread(r) == pytest.approx(naive, rel=1e-12)
        grid, _ = viz.perturbation_grid(model, x[0])
        for d in range(grid.shape[0]):
            naive = max(abs(grid[d, s] - grid[d, 5]).max() for s in range(11))   # 5: nudge 0
            assert viz.pixel_changes(grid)[d] == pytest.approx(naive, rel=1e-12)
    # where each model stands against the thresholds (measured in viz's comment)
    assert viz.coupling_spread(viz.routing_couplings(untrained, x[0])) < 1e-5
    assert viz.coupling_spread(viz.routing_couplings(trained, x[0])) > viz.COUPLING_MIN / J
    assert viz.pixel_changes(viz.perturbation_grid(untrained, x[0])[0]).max() < viz.PIXEL_CHANGE_MIN
    assert viz.pixel_changes(viz.perturbation_grid(trained, x[0])[0]).max() > viz.PIXEL_CHANGE_MIN


def test_warnings_for_an_untrained_model_and_not_for_a_trained_one(untrained, trained, bar_images):
    x, _ = bar_images
    r = viz.routing_couplings(untrained, x[0])
    assert "barely left uniform" in viz.routing_warning(r)
    assert "1/3" in viz.routing_warning(r) and "0.167" in viz.routing_warning(r)
    assert "no pixel" in viz.perturbation_warning(viz.perturbation_grid(untrained, x[0])[0])
    assert viz.routing_warning(viz.routing_couplings(trained, x[0])) is None
    assert viz.perturbation_warning(viz.perturbation_grid(trained, x[0])[0]) is None
    assert "0.92" in viz.accuracy_warning(0.5) and "0.5000" in viz.accuracy_warning(0.5)
    assert viz.accuracy_warning(0.93) is None and viz.accuracy_warning(None) is None
    assert "0.84" in viz.accuracy_warning(0.8, "fashion-mnist")
    assert viz.accuracy_warning(0.86, "fashion-mnist") is None


# --- the PNGs ------------------------------------------------------------------------------

def test_every_plot_is_a_png_of_its_size(tiny, images, tmp_path):
    T, D = tiny.config.routing_iters, tiny.config.digit_dims
    labels = np.array([0, 1, 2, 0, 1])
    metrics = [{"epoch": e, "train_loss": 1 / e, "test_loss": 1.2 / e, "train_accuracy": 1 - 0.5 / e,
                "test_accuracy": 1 - 0.6 / e, "val_accuracy": None} for e in (1, 2, 3)]
    written = {
        viz.plot_reconstructions(tiny, images, labels, tmp_path / "r.png", DPI): (1.5 * 5, 3.5),
        viz.plot_perturbation(tiny, images[0], tmp_path / "p.png", dpi=DPI):
            (0.5 * 11 + 3, max(0.5 * D, 3.5) + 1.5),
        viz.plot_routing(tiny, images[0], tmp_path / "rt.png", dpi=DPI): (14.0, 2.0 * T + 1.5),
        viz.plot_lengths(tiny, images[:3], labels[:3], tmp_path / "l.png", DPI): (8.0, 1.75 * 3 + 0.75),
        viz.plot_curves(metrics, tmp_path / "c.png", DPI): (10.0, 4.5),
        viz.plot_confusion(viz.confusion_matrix(labels, labels, 3), tmp_path / "m.png", DPI): (7.0, 6.5),
    }
    for path, (width, height) in written.items():
        assert png_size(path) == (int(width * DPI), int(height * DPI)), path.name


def test_reconstructions_wrap_after_eight(tiny, tmp_path):
    x = np.random.default_rng(1).uniform(0, 1, (10, 10, 10))     # (N, H, W): C = 1 implied
    path = viz.plot_reconstructions(tiny, x, None, tmp_path / "sub" / "r.png", DPI)
    assert png_size(path) == (int(1.5 * 8 * DPI), int((3.0 * 2 + 0.5) * DPI))


def test_without_matplotlib_the_message_names_the_extra(tiny, images, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r'pip install "minicaps\[viz\]"'):
        viz.plot_lengths(tiny, images[:1], None, tmp_path / "l.png")
    grid, _ = viz.perturbation_grid(tiny, images[0])             # the data needs no matplotlib
    assert grid.shape[1] == 11


# --- what the pictures say -------------------------------------------------------------------

def heat_maps(fig):
    return [im for ax in fig.axes for im in ax.images if im.cmap.name.startswith("RdBu_r")]


def test_routing_colours_centre_on_uniform_and_maps_are_apart_in_grey(trained, bar_images,
                                                                         tmp_path, drawn):
    x, _ = bar_images
    viz.plot_routing(trained, x[0], tmp_path / "rt.png", dpi=DPI)
    r = viz.routing_couplings(trained, x[0])
    T, rows, cols, maps = r["grid"].shape
    J = r["per_class"].shape[1]
    ims = heat_maps(drawn["rt.png"])
    assert len(ims) == T
    white = np.array([1.0, 1.0, 1.0])
    for t, im in enumerate(ims):
        assert (im.norm.vmin + im.norm.vmax) / 2 == pytest.approx(1 / J)
        assert im.norm(1 / J) == pytest.approx(0.5)
        uniform = im.to_rgba(np.array([[1 / J]]))[0, 0, :3]
        assert np.abs(uniform - white).max() < 0.1                      # uniform: near white
        assert (im.to_rgba(np.array([[0.0]]))[0, 0, 2] > im.to_rgba(np.array([[0.0]]))[0, 0, 0])
        image = np.ma.filled(im.get_array().astype(float), np.nan)
        # map m's tile (2 maps, one row of tiles), then the column between the maps
        for m in range(maps):
            np.testing.assert_allclose(image[:rows, m * (cols + 1):m * (cols + 1) + cols],
                                       r["grid"][t, :, :, m], rtol=1e-12)
        separator = image[:, cols]
        assert np.isnan(separator).all()
        between = im.to_rgba(separator[None])[0, :, :3]
        assert np.abs(between - uniform).max(axis=1).min() > 0.3         # not the centre colour
        assert np.ptp(between[0]) < 1e-6 and between[0, 0] < 0.8        # a grey


def test_routing_bars_show_the_deviation_from_uniform_on_labelled_axes(trained, bar_images,
                                                                        tmp_path, drawn):
    x, _ = bar_images
    viz.plot_routing(trained, x[0], tmp_path / "rt.png", dpi=DPI)
    r = viz.routing_couplings(trained, x[0])
    T, rows, cols, maps = r["grid"].shape
    J, I, k = r["per_class"].shape[1], rows * cols * maps, r["label"]
    fig = drawn["rt.png"]
    per_map = [ax for ax in fig.axes if ax.get_xlabel() == "capsule map"]
    per_class = [ax for ax in fig.axes if ax.get_xlabel().startswith("class")]
    assert len(per_map) == len(per_class) == T
    for t in range(T):
        naive_map = [sum(r["coupling"][t, (p * maps) + m, k] for p in range(rows * cols)) - rows * cols / J
                     for m in range(maps)]
        naive_class = [r["coupling"][t, :, j].sum() - I / J for j in range(J)]
        for ax, naive in ((per_map[t], naive_map), (per_class[t], naive_class)):
            heights = [bar.get_height() for bar in ax.patches]
            np.testing.assert_allclose(heights, naive, rtol=1e-9, atol=1e-12)
            assert "uniform" in ax.get_ylabel() and "minus" in ax.get_ylabel()
            if t == T - 1:       # the differences fill most of the axis: none hidden by a 0 base
                low, high = ax.get_ylim()
                assert np.ptp(naive + [0.0]) > 0.6 * (high - low)
    inputs = [ax for ax in fig.axes if ax.get_title().startswith("input")]     # beside the maps
    assert len(inputs) == 1
    np.testing.assert_array_equal(inputs[0].images[0].get_array(), x[0, ..., 0])


def test_perturbation_shows_the_input_its_reconstruction_and_each_dimension(trained, bar_images,
                                                                            tmp_path, drawn):
    x, _ = bar_images
    viz.plot_perturbation(trained, x[1], tmp_path / "p.png", dpi=DPI)
    grid, label = viz.perturbation_grid(trained, x[1])
    fig = drawn["p.png"]
    shown = {ax.get_title().split("\n")[0]: ax.images[0].get_array() for ax in fig.axes
             if ax.get_title()}
    np.testing.assert_array_equal(shown["input"], x[1, ..., 0])
    plain = trained.forward(x[1:2])[0]["reconstruction"][0].reshape(10, 10)
    np.testing.assert_allclose(shown["its reconstruction"], plain, rtol=1e-12)
    ax = next(ax for ax in fig.axes if ax.get_ylabel().startswith("dimension"))
    rows = [t.get_text() for t in ax.get_yticklabels()]
    changes = viz.pixel_changes(grid)
    assert rows == [f"dim {d} (Δ {changes[d]:.2f})" for d in range(grid.shape[0])]


@pytest.mark.parametrize("weights, said", [("average", "weights: moving average of the parameters"),
                                           ("trained", "weights: trained parameters"), (None, None)])
def test_every_title_says_which_weights(tiny, images, tmp_path, drawn, weights, said):
    labels = np.array([0, 1, 2])
    viz.plot_reconstructions(tiny, images[:3], labels, tmp_path / "r.png", DPI, weights=weights)
    viz.plot_perturbation(tiny, images[0], tmp_path / "p.png", dpi=DPI, weights=weights)
    viz.plot_routing(tiny, images[0], tmp_path / "rt.png", dpi=DPI, weights=weights)
    viz.plot_lengths(tiny, images[:2], labels[:2], tmp_path / "l.png", DPI, weights=weights)
    viz.plot_confusion(viz.confusion_matrix(labels, labels, 3), tmp_path / "m.png", DPI,
                       weights=weights)
    assert len(drawn) == 5
    for name, fig in drawn.items():
        if said is None:
            assert "weights:" not in texts(fig), name
        else:
            assert said in texts(fig), name
    with pytest.raises(ValueError, match="weights"):
        viz.plot_lengths(tiny, images[:1], None, tmp_path / "l.png", DPI, weights="best")


def test_class_names_stand_where_the_numbers_did(tiny, images, tmp_path, drawn):
    """Given names, each picture says the predicted and true class by name, as the model's
    own predictions (computed here) give them; without, the numbers."""
    names = ("cat", "dog", "a very long class name")
    labels = np.array([0, 1, 2])
    preds = tiny.predict(images[:3])
    viz.plot_reconstructions(tiny, images[:3], labels, tmp_path / "r.png", DPI, classes=names)
    viz.plot_lengths(tiny, images[:3], labels, tmp_path / "l.png", DPI, classes=names)
    viz.plot_routing(tiny, images[0], tmp_path / "rt.png", dpi=DPI, classes=names)
    viz.plot_perturbation(tiny, images[0], tmp_path / "p.png", dpi=DPI, classes=names)
    viz.plot_confusion(viz.confusion_matrix(labels, preds, 3), tmp_path / "m.png", DPI,
                       classes=names)
    short = [canvas.class_name(names, j) for j in range(3)]
    assert short[2] == "a very long c…" and short[:2] == ["cat", "dog"]
    recon = texts(drawn["r.png"])
    for k in range(3):
        assert f"true {short[labels[k]]}\npred {short[preds[k]]}" in recon
    assert f"predicted {short[preds[0]]} (red)" in texts(drawn["l.png"])
    assert f"predicted {preds[0]} ({short[preds[0]]})" in texts(drawn["rt.png"])
    assert f"capsule {preds[0]} ({short[preds[0]]})" in texts(drawn["p.png"])
    confusion = drawn["m.png"].axes[0]
    assert [t.get_text() for t in confusion.get_xticklabels()] == short
    assert [t.get_text() for t in confusion.get_yticklabels()] == short
    bars = [ax for ax in drawn["l.png"].axes if ax.get_xlabel() == "class j"][0]
    assert [t.get_text() for t in bars.get_xticklabels()] == short
    assert f"to class {preds[0]} ({short[preds[0]]})" in texts(drawn["rt.png"])
    viz.plot_reconstructions(tiny, images[:3], labels, tmp_path / "plain.png", DPI)
    assert f"true 0, pred {preds[0]}" in texts(drawn["plain.png"])


def test_curves_show_both_weights_and_the_running_training_accuracy(tmp_path, drawn):
    metrics = [{"epoch": e, "train_loss": 1 / e, "train_accuracy": 0.8 + 0.05 * e,
                "test_loss": 1.2 / e, "test_accuracy": 0.9 + 0.01 * e,
                "avg_test_loss": 1.1 / e, "avg_test_accuracy": 0.91 + 0.01 * e,
                "val_accuracy": 0.905 + 0.01 * e, "avg_val_accuracy": 0.915 + 0.01 * e}
               for e in (1, 2, 3)]
    viz.plot_curves(metrics, tmp_path / "c.png", DPI)
    fig = drawn["c.png"]
    accuracy = next(ax for ax in fig.axes if ax.get_ylabel() == "accuracy")
    lines = {line.get_label(): line for line in accuracy.get_lines()}
    expected = {"train: running mean over the epoch": "train_accuracy",
                "test: trained parameters": "test_accuracy",
                "test: moving average of the parameters": "avg_test_accuracy",
                "val: trained parameters": "val_accuracy",
                "val: moving average of the parameters": "avg_val_accuracy"}
    assert len(lines) == len(expected)
    for label, key in expected.items():
        line = next(line for name, line in lines.items() if name.startswith(label + " (last"))
        np.testing.assert_allclose(line.get_ydata(), [m[key] for m in metrics])
        assert f"{metrics[-1][key]:.4f}" in line.get_label()
    assert "while the weights change" in texts(fig)
    # without a moving average: the trained parameters only
    viz.plot_curves([{k: v for k, v in m.items() if not k.startswith("avg_")} for m in metrics],
                    tmp_path / "c.png", DPI)
    assert "moving average of the parameters (last" not in texts(drawn["c.png"])


def test_render_writes_and_passes_on_each_warning(untrained, trained, bar_images, tmp_path, drawn):
    x, y = bar_images
    warned = []
    viz.render(["routing", "perturbation", "curves"], tmp_path / "a", untrained, x, y,
               metrics=write_metrics(tmp_path), indices=[0], dpi=DPI, weights="trained",
               accuracy=0.4, warn=warned.append)
    assert [w.split(":")[0] for w in warned] == ["every picture", "routing-0.png", "perturbation-0.png"]
    for name in ("routing-0.png", "perturbation-0.png", "curves.png"):
        note = drawn[name]._supxlabel.get_text()
        assert note.startswith("Note: test accuracy 0.4000 is under 0.92"), name
    assert "barely left uniform" in drawn["routing-0.png"]._supxlabel.get_text()
    assert "no pixel" in drawn["perturbation-0.png"]._supxlabel.get_text()
    assert drawn["routing-0.png"]._supxlabel.get_color() == "darkred"
    drawn.clear()
    warned.clear()
    viz.render(["routing", "perturbation"], tmp_path / "b", trained, x, y, indices=[0], dpi=DPI,
               weights="average", accuracy=0.99, warn=warned.append)
    assert warned == []
    assert all(fig._supxlabel is None for fig in drawn.values())


def write_metrics(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"epoch": 1, "train_accuracy": 0.3, "test_accuracy": 0.4}) + "\n")
    return path


# --- `minicaps plot` -----------------------------------------------------------------------

SMALL = dict(conv1_channels=4, primary_maps=2, primary_dims=4, digit_dims=4, decoder_sizes=(8,))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A small 28x28, 10-class CapsNet saved as run/last.npz with a metrics.jsonl beside."""
    run = tmp_path_factory.mktemp("run")
    model = randomize_params(mc.CapsNet(mc.CapsNetConfig(**SMALL), seed=0, device="cpu"),
                             np.random.default_rng(3))
    path = save_checkpoint(run / "last.npz", model, mc.Adam(), epoch=2, step=10,
                           rng_state=np.random.default_rng(0), extra={"settings": {"dataset": "mnist"}})
    lines = [{"epoch": e, "train_loss": 0.5 / e, "test_loss": 0.4 / e, "train_accuracy": 0.5 + 0.2 * e,
              "test_accuracy": 0.55 + 0.2 * e} for e in (1, 2)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in lines))
    return path


@pytest.fixture
def fake_test_set(monkeypatch):
    rng = np.random.default_rng(0)
    labels = np.arange(12) % 10
    x = rng.integers(0, 40, (12, 28, 28)).astype(np.uint8)
    for image, label in zip(x, labels):
        image[4 + label:14 + label, 8:20] = 255
    data = (x, labels, x, labels)
    monkeypatch.setattr("minicaps.data.mnist.load_mnist", lambda root=None, dataset="mnist", **kw: data)
    return data


def test_plot_every_kind(checkpoint, fake_test_set, tmp_path, capsys):
    out = tmp_path / "plots"
    assert cli.main(["plot", str(checkpoint), "--out", str(out), "--dpi", str(DPI)]) == 0
    printed = capsys.readouterr().out.split()
    names = ["reconstructions.png", "perturbation-0.png", "perturbation-1.png", "routing-0.png",
             "lengths.png", "curves.png", "confusion.png"]
    assert sorted(printed) == sorted(str(out / n) for n in names)
    assert png_size(out / "perturbation-0.png") == (int(8.5 * DPI), int(5.0 * DPI))   # D = 4
    assert png_size(out / "reconstructions.png") == (int(12.0 * DPI), int(3.5 * DPI))
    assert png_size(out / "confusion.png") == (int(7.0 * DPI), int(6.5 * DPI))


def test_plot_chosen_kinds_and_images(checkpoint, fake_test_set, tmp_path, capsys):
    args = ["plot", str(checkpoint), "--kind", "routing", "--kind", "lengths", "--index", "3", "7",
            "--limit-test", "8", "--out", str(tmp_path), "--dpi", str(DPI)]
    assert cli.main(args) == 0
    assert capsys.readouterr().out.split() == [str(tmp_path / n) for n in
                                               ("routing-3.png", "routing-7.png", "lengths.png")]
    assert png_size(tmp_path / "lengths.png") == (int(8.0 * DPI), int((1.75 * 2 + 0.75) * DPI))


def test_plot_errors_exit_2(checkpoint, fake_test_set, tmp_path, capsys):
    args = ["plot", str(checkpoint), "--kind", "lengths", "--index", "20", "--out", str(tmp_path)]
    assert cli.main(args) == 2
    assert "indices must be in 0..11" in capsys.readouterr().err
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "last.npz").write_bytes(checkpoint.read_bytes())
    assert cli.main(["plot", str(lone / "last.npz"), "--kind", "curves", "--out", str(tmp_path)]) == 2
    assert "metrics.jsonl" in capsys.readouterr().err
    assert cli.main(["plot", str(tmp_path / "none.npz"), "--kind", "curves"]) == 2
    assert "none.npz" in capsys.readouterr().err


def test_plot_says_the_weights_and_prints_the_warnings(checkpoint, fake_test_set, tmp_path,
                                                        capsys, drawn):
    """A checkpoint with a moving average, whose metrics give those weights test accuracy
    0.30 and the trained ones 0.95: the titles name the weights used, the warnings go to
    stderr (stdout keeps one path a line) and into the pictures."""
    model = load_checkpoint(checkpoint).model
    run = tmp_path / "run"
    path = save_checkpoint(run / "last.npz", model, mc.Adam(), epoch=1, step=1,
                           rng_state=np.random.default_rng(0),
                           metrics={"test_accuracy": 0.95, "avg_test_accuracy": 0.30},
                           average=ParameterAverage(model.params))
    args = ["plot", str(path), "--kind", "routing", "--kind", "confusion", "--limit-test", "4",
            "--out", str(tmp_path / "plots"), "--dpi", str(DPI)]
    assert cli.main(args) == 0
    out, err = capsys.readouterr()
    assert out.split() == [str(tmp_path / "plots" / n) for n in ("routing-0.png", "confusion.png")]
    assert "minicaps plot: warning: every picture: test accuracy 0.3000 is under 0.92" in err
    for name, fig in drawn.items():
        assert "weights: moving average of the parameters" in texts(fig), name
        assert "test accuracy 0.3000" in fig._supxlabel.get_text(), name
    drawn.clear()
    assert cli.main(args + ["--weights", "trained"]) == 0
    assert "test accuracy" not in capsys.readouterr().err
    for name, fig in drawn.items():
        assert "weights: trained parameters" in texts(fig), name


def test_lengths_of_all_shows_its_progress_and_equals_predict_lengths(tiny, images):
    lines = []
    lengths = viz.lengths_of_all(tiny, images, progress=True, desc="confusion matrix",
                                 log=lines.append, chunk=2)
    np.testing.assert_allclose(lengths, tiny.predict_lengths(images), rtol=1e-12)  # batches round
    assert lines and lines[0].startswith("confusion matrix: 2/5 imgs")   # stderr is no terminal
    assert viz.lengths_of_all(tiny, images, log=lines.append, chunk=2).shape == (5, 3)
    assert len(lines) == 1                                              # progress off: silent


def test_plot_shows_progress_over_the_test_set_unless_told_not(checkpoint, fake_test_set,
                                                               tmp_path, capsys, monkeypatch):
    bars = []

    def recorded(total, desc, enabled=True, log=print):
        bars.append((total, desc, enabled))
        return Progress(total, desc, enabled=enabled, log=log)

    from minicaps.training.progress import Progress
    monkeypatch.setattr(arrays, "Progress", recorded)
    args = ["plot", str(checkpoint), "--kind", "confusion", "--out", str(tmp_path), "--dpi", str(DPI)]
    assert cli.main(args) == 0
    assert capsys.readouterr().out.split() == [str(tmp_path / "confusion.png")]   # paths alone
    assert cli.main(args + ["--no-progress"]) == 0
    assert bars == [(12, "confusion matrix", True), (12, "confusion matrix", False)]


def test_plot_help_and_kinds(capsys):
    assert PLOT_KINDS == viz.KINDS
    with pytest.raises(SystemExit):
        cli.main(["plot", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for word in viz.KINDS + ("--out", "--limit-test", "--data-root", "--index", "minicaps[viz]"):
        assert word in text


@pytest.mark.gpu
def test_the_data_behind_the_plots_is_the_same_from_a_gpu_model(tiny):
    gpu = mc.CapsNet(tiny.config, dtype="float64", device="gpu", params=tiny.params)
    x = np.random.default_rng(6).uniform(0, 1, (3, 10, 10, 1))
    for a, b in zip(viz.reconstructions(tiny, x), viz.reconstructions(gpu, x)):
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-15)
    grid_cpu, label_cpu = viz.perturbation_grid(tiny, x[0])
    grid_gpu, label_gpu = viz.perturbation_grid(gpu, x[0])
    assert label_gpu == label_cpu
    np.testing.assert_allclose(grid_gpu, grid_cpu, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(mc.to_numpy(viz.primary_capsules(gpu, x)),
                               viz.primary_capsules(tiny, x), rtol=1e-12, atol=1e-15)
    on_cpu, on_gpu = viz.routing_couplings(tiny, x[:1]), viz.routing_couplings(gpu, x[:1])
    for key, value in on_cpu.items():
        np.testing.assert_allclose(on_gpu[key], value, rtol=1e-12, atol=1e-15)


# --- MultiMNIST pairs (fig. 5) -------------------------------------------------------------------

def test_pair_reconstructions_decode_the_two_longest_capsules(tiny, images):
    preds, recons = viz.pair_reconstructions(tiny, images)
    lengths = tiny.predict_lengths(images)
    for n in range(len(images)):
        longest = sorted(range(3), key=lambda j: -lengths[n, j])[:2]
        assert list(preds[n]) == longest
        v = tiny.forward(images[n:n + 1], decode=False)[0]["v"]
        for i, j in enumerate(longest):
            mask = np.zeros((1, 3))
            mask[0, j] = 1
            np.testing.assert_allclose(recons[n, i], tiny.decode(v, mask)[0].reshape(10, 10),
                                       rtol=1e-12)


def test_overlay_colours():
    image, red, green = np.zeros((2, 2)), np.zeros((2, 2)), np.zeros((2, 2))
    image[0, 0], red[0, 1], green[1, 0], red[1, 1], green[1, 1] = 1, 1, 1, 1, 1
    rgb = viz.overlay(image, red, green)
    np.testing.assert_allclose(rgb[0, 0], [0.35, 0.35, 0.35])     # the pair, dimmed gray
    np.testing.assert_allclose(rgb[0, 1], [1, 0, 0])              # one digit's: red
    np.testing.assert_allclose(rgb[1, 0], [0, 1, 0])              # the other's: green
    np.testing.assert_allclose(rgb[1, 1], [1, 1, 0])              # both: yellow


def test_plot_pairs_is_a_png_of_its_size(tiny, images, tmp_path):
    labels = np.array([[0, 1], [1, 2], [0, 2], [2, 1], [0, 1]])
    path = viz.plot_pairs(tiny, images, labels, tmp_path / "pairs.png", dpi=DPI)
    with Image.open(path) as image:
        assert image.size == (round(1.5 * 5 * DPI), round((3.0 + 0.6) * DPI))


def test_wrong_pairs_against_a_loop():
    rng = np.random.default_rng(2)
    lengths = rng.random((50, 10))
    labels = np.stack([rng.choice(10, 2, replace=False) for _ in range(50)])
    lengths[:20][np.arange(20)[:, None], labels[:20]] += 1          # these 20 are right
    expected = [n for n in range(50)
                if set(np.argsort(-lengths[n])[:2].tolist()) != set(labels[n].tolist())]
    assert viz.wrong_pairs(lengths, labels).tolist() == expected
    assert min(expected) >= 20


def test_curves_name_the_loss_of_the_network(tmp_path, drawn):
    capsnet = [{"epoch": 1, "train_loss": 0.5, "train_margin_loss": 0.4, "test_loss": 0.4}]
    cnn = [{"epoch": 1, "train_loss": 0.5, "train_cross_entropy": 0.5, "test_loss": 0.4}]
    viz.plot_curves(capsnet, tmp_path / "a.png", DPI)
    viz.plot_curves(cnn, tmp_path / "b.png", DPI)
    assert "margin + weighted reconstruction" in texts(drawn["a.png"])
    assert "cross-entropy" in texts(drawn["b.png"])
    assert "margin" not in texts(drawn["b.png"])


def test_images_seen_is_the_running_sum_of_the_epochs_sizes(tmp_path, drawn):
    metrics = [{"epoch": e, "images_per_second": 100.0 + e, "epoch_seconds": 600 / (100.0 + e),
                "train_loss": 1 / e, "test_accuracy": 0.9} for e in (1, 2, 3)]
    assert viz.images_seen(metrics) == [600, 1200, 1800]
    assert viz.images_seen([{"epoch": 1}]) is None
    viz.plot_curves(metrics, tmp_path / "c.png", DPI)
    assert "images seen in training" in texts(drawn["c.png"])
    assert "1.8k" in texts(drawn["c.png"])
