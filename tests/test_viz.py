"""minicaps.viz: the data behind each plot against independent computations, every plot
as a PNG of the size its docstring gives, and `minicaps plot`.

The models are random (a trained one is not needed to check arrays and files): the
gradient checker's tiny 10x10, 3-class network, and a small 28x28, 10-class one for the
command line, which reads the test set through load_mnist (replaced by synthetic images).
"""
import json
import sys

import numpy as np
import pytest

import minicaps as mc
import minicaps.train
from minicaps import cli, viz
from minicaps.checkpoint import save_checkpoint
from minicaps.gradcheck import randomize_params, tiny_config

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
    path.write_text('{"epoch": 1}\n{"epoch": 2, tor\n')
    with pytest.raises(ValueError, match="line 2"):
        viz.read_metrics(path)


def test_mosaic_places_each_cell():
    cells = np.arange(2 * 3 * 4 * 5, dtype=float).reshape(2, 3, 4, 5)
    m = viz.mosaic(cells, pad=1, value=-1)
    assert m.shape == (2 * 5 - 1, 3 * 6 - 1)
    np.testing.assert_array_equal(m[5:9, 12:17], cells[1, 2])
    assert (m[4] == -1).all() and (m[:, 5] == -1).all()


# --- the PNGs ------------------------------------------------------------------------------

def test_every_plot_is_a_png_of_its_size(tiny, images, tmp_path):
    T, D = tiny.config.routing_iters, tiny.config.digit_dims
    labels = np.array([0, 1, 2, 0, 1])
    metrics = [{"epoch": e, "train_loss": 1 / e, "test_loss": 1.2 / e, "train_accuracy": 1 - 0.5 / e,
                "test_accuracy": 1 - 0.6 / e, "val_accuracy": None} for e in (1, 2, 3)]
    written = {
        viz.plot_reconstructions(tiny, images, labels, tmp_path / "r.png", DPI): (1.5 * 5, 3.0),
        viz.plot_perturbation(tiny, images[0], tmp_path / "p.png", dpi=DPI): (0.5 * 11 + 1.5, 0.5 * D + 1),
        viz.plot_routing(tiny, images[0], tmp_path / "rt.png", dpi=DPI): (12.0, 2.0 * T + 0.5),
        viz.plot_lengths(tiny, images[:3], labels[:3], tmp_path / "l.png", DPI): (8.0, 1.75 * 3 + 0.25),
        viz.plot_curves(metrics, tmp_path / "c.png", DPI): (10.0, 4.0),
        viz.plot_confusion(viz.confusion_matrix(labels, labels, 3), tmp_path / "m.png", DPI): (7.0, 6.0),
    }
    for path, (width, height) in written.items():
        assert png_size(path) == (int(width * DPI), int(height * DPI)), path.name


def test_reconstructions_wrap_after_eight(tiny, tmp_path):
    x = np.random.default_rng(1).uniform(0, 1, (10, 10, 10))     # (N, H, W): C = 1 implied
    path = viz.plot_reconstructions(tiny, x, None, tmp_path / "sub" / "r.png", DPI)
    assert png_size(path) == (int(1.5 * 8 * DPI), int(3.0 * 2 * DPI))


def test_without_matplotlib_the_message_names_the_extra(tiny, images, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r'pip install "minicaps\[viz\]"'):
        viz.plot_lengths(tiny, images[:1], None, tmp_path / "l.png")
    grid, _ = viz.perturbation_grid(tiny, images[0])             # the data needs no matplotlib
    assert grid.shape[1] == 11


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
    monkeypatch.setattr(minicaps.train, "load_mnist", lambda root=None, dataset="mnist", **kw: data)
    return data


def test_plot_every_kind(checkpoint, fake_test_set, tmp_path, capsys):
    out = tmp_path / "plots"
    assert cli.main(["plot", str(checkpoint), "--out", str(out), "--dpi", str(DPI)]) == 0
    printed = capsys.readouterr().out.split()
    names = ["reconstructions.png", "perturbation-0.png", "perturbation-1.png", "routing-0.png",
             "lengths.png", "curves.png", "confusion.png"]
    assert sorted(printed) == sorted(str(out / n) for n in names)
    assert png_size(out / "perturbation-0.png") == (int(7.0 * DPI), int(3.0 * DPI))   # D = 4
    assert png_size(out / "reconstructions.png") == (int(12.0 * DPI), int(3.0 * DPI))
    assert png_size(out / "confusion.png") == (int(7.0 * DPI), int(6.0 * DPI))


def test_plot_chosen_kinds_and_images(checkpoint, fake_test_set, tmp_path, capsys):
    args = ["plot", str(checkpoint), "--kind", "routing", "--kind", "lengths", "--index", "3", "7",
            "--limit-test", "8", "--out", str(tmp_path), "--dpi", str(DPI)]
    assert cli.main(args) == 0
    assert capsys.readouterr().out.split() == [str(tmp_path / n) for n in
                                               ("routing-3.png", "routing-7.png", "lengths.png")]
    assert png_size(tmp_path / "lengths.png") == (int(8.0 * DPI), int((1.75 * 2 + 0.25) * DPI))


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


def test_plot_help_and_kinds(capsys):
    assert cli.PLOT_KINDS == viz.KINDS
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
