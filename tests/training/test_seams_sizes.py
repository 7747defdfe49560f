"""Sizes nobody bounded: each is refused by one clear error before the memory is taken.

Files whose compressed content promises gigabytes (affNIST's test.mat, an MNIST .gz), a
network too big for memory (--image-size), routing iterations without end, a picture of
a million pixels a side (--dpi), a whole test set in one batch (evaluate --batch-size),
and non-finite numbers handed to the library. Every case runs under ``bounded`` (an
address-space cap and a time limit, tests/limits.py); where a file is involved, its
SHA-256 is checked unchanged.
"""
import gzip
import struct
import tracemalloc
import zlib

import numpy as np
import pytest

import minicaps as mc
import minicaps.training.run
from minicaps import cli
from minicaps.data.affnist import load_affnist_test
from minicaps.data.dataset import DataError
from minicaps.data.mnist import load_mnist
from minicaps.gradcheck import tiny_config
from minicaps.training.optim import Adam, ParameterAverage
from minicaps.training.evaluation import evaluate
from minicaps.training.run import train

from limits import file_hashes
from synthetic import bars_data, synthetic_mnist
from bombs import PIECE, deflated_zeros, mat_bomb
from hostile_cases import one_line_error
from tiny_runs import quiet

MB = 1 << 20


def peak_bytes(run):
    """The peak of what NumPy allocates while ``run()`` runs (tracemalloc)."""
    tracemalloc.start()
    try:
        run()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# --- compressed zeros: a small file that inflates to gigabytes -----------------------------------

def test_deflated_zeros_inflate_to_what_they_promise():
    stream = deflated_zeros(b"head", 3 * PIECE + 5, 31)
    assert gzip.decompress(stream) == b"head" + bytes(3 * PIECE + 5)
    stream = deflated_zeros(b"head", PIECE + 7, 15)
    assert zlib.decompress(stream) == b"head" + bytes(PIECE + 7)


# --- affNIST's test.mat --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def affnist_bomb(tmp_path_factory):
    """<root>/affnist/test.mat: 1.5 MB whose variable declares (and holds) 1.5 GB."""
    root = tmp_path_factory.mktemp("bomb")
    mat_bomb(root / "affnist" / "test.mat", 1_500_000_000 // 1600)
    return root


def test_an_affnist_mat_declaring_1_5_gb_is_refused_before_decompressing(affnist_bomb,
                                                                         bounded):
    path = affnist_bomb / "affnist" / "test.mat"
    assert path.stat().st_size < 2 * MB
    before = file_hashes(affnist_bomb)
    with bounded(memory=256 * MB, seconds=10):
        with pytest.raises(DataError, match=r"test\.mat: a compressed variable declares "
                                            r"1500000\d\d\d bytes once decompressed, more "
                                            r"than the \d+ bytes") as info:
            load_affnist_test(affnist_bomb)
    assert str(path) in str(info.value)
    assert file_hashes(affnist_bomb) == before


def test_an_affnist_mat_inflating_past_what_it_declares_is_refused(tmp_path, bounded):
    """It declares 1 MB and holds 1.5 GB: refused as soon as it passes its word."""
    mat_bomb(tmp_path / "affnist" / "test.mat", 1_500_000_000 // 1600, declared=MB)
    before = file_hashes(tmp_path)
    with bounded(memory=256 * MB, seconds=20):
        with pytest.raises(DataError, match=r"test\.mat: a compressed variable holds more "
                                            r"than the 1048576 bytes it declares"):
            load_affnist_test(tmp_path)
    assert file_hashes(tmp_path) == before


def test_an_honest_small_affnist_mat_still_reads_past_the_size_check(tmp_path, bounded):
    """The size check lets a true file through: this one reaches the layout check."""
    mat_bomb(tmp_path / "affnist" / "test.mat", 10)
    with bounded(memory=256 * MB, seconds=10):
        with pytest.raises(DataError, match="expected a struct affNISTdata"):
            load_affnist_test(tmp_path)


@pytest.fixture
def fake_mnist(monkeypatch):
    data = synthetic_mnist(8, 4)
    monkeypatch.setattr("minicaps.data.mnist.load_mnist", lambda *a, **k: data)
    return data


def test_cli_train_on_affnist_with_a_test_mat_bomb(affnist_bomb, tmp_path, capsys, bounded,
                                                     fake_mnist):
    """The audit's case: under a 1 GiB cap it ended in "out of memory; give a smaller
    --batch-size"."""
    before = file_hashes(affnist_bomb)
    err = one_line_error(capsys, ["train", "--dataset", "affnist", "--data-root",
                                  str(affnist_bomb), "--out", str(tmp_path / "run"),
                                  "--no-progress"], bounded, memory=1 << 30)
    assert "test.mat: a compressed variable declares" in err and "--batch-size" not in err
    assert file_hashes(affnist_bomb) == before
    assert not (tmp_path / "run").exists()


# --- MNIST's .gz files ---------------------------------------------------------------------------

def test_an_mnist_gz_promising_1_gib_is_refused_from_its_header(tmp_path, bounded):
    """1 MB of gzip whose IDX header promises (and which holds) 1 GiB of pixels: MNIST's
    training images are 47,040,000 bytes, so the header alone is refused."""
    folder = tmp_path / "mnist"
    folder.mkdir()
    idx = b"\x00\x00\x08\x03" + struct.pack(">III", 1 << 20, 32, 32)
    (folder / "train-images-idx3-ubyte.gz").write_bytes(deflated_zeros(idx, 1 << 30, 31))
    for name in ("train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (folder / (name + ".gz")).write_bytes(gzip.compress(b""))
    assert (folder / "train-images-idx3-ubyte.gz").stat().st_size < 2 * MB
    before = file_hashes(tmp_path)
    with bounded(memory=256 * MB, seconds=10):
        with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz: IDX header promises "
                                            r"shape \(1048576, 32, 32\) .* more than the "
                                            r"47040000 bytes of mnist's train-images"):
            load_mnist(tmp_path, download=False)
    assert file_hashes(tmp_path) == before


# --- the network's own size: --image-size --------------------------------------------------------

def write_pictures(folder, per_class=3, side=12):
    from PIL import Image
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (folder / name).mkdir(parents=True)
        for k in range(per_class):
            Image.fromarray(rng.integers(0, 256, (side, side), dtype=np.uint8)).save(
                folder / name / f"{k}.png")
    return folder


def suggested(err, option):
    """The number that follows ``option`` in a message."""
    return int(err.split(option + " ", 1)[1].split(")")[0].split()[0])


def test_cli_image_size_600_is_refused_naming_a_size_that_fits(tmp_path, capsys, bounded):
    """The network for 600x600 pictures of 2 classes has over a billion parameters (4 GB
    in float32): refused before any is allocated, naming --image-size and a
    size whose network, gradients, Adam's moments and moving average take less than the
    cap (tracemalloc's peak over NumPy's allocations while they are made)."""
    folder = write_pictures(tmp_path / "pictures")
    err = one_line_error(capsys, ["train", "--data-dir", str(folder), "--image-size", "600",
                                  "--out", str(tmp_path / "run"), "--no-progress"], bounded)
    assert "the network for 600x600x1 inputs" in err and "--batch-size" not in err, err
    side = suggested(err, "--image-size")
    assert 29 <= side < 600                        # 29: the paper's network's smallest input
    assert not (tmp_path / "run").exists()

    def network_and_state():
        model = mc.CapsNet(mc.CapsNetConfig(input_shape=(side, side, 1), num_classes=2))
        average = ParameterAverage(model.params)
        Adam().step(model.params, {k: np.zeros_like(p) for k, p in model.params.items()})
        average.update(model.params, 1)

    with bounded(memory=2 << 30, seconds=30):
        assert peak_bytes(network_and_state) <= 512 * MB


@pytest.mark.parametrize("model", ["capsnet", "cnn"])
def test_image_size_4096_is_refused_before_allocating(tmp_path, bounded, model):
    """127 GiB for the CapsNet, more for the CNN's first dense layer: a ValueError under a
    512 MB cap, not an attempt."""
    pictures = np.zeros((2, 4096, 4096), np.uint8)
    data = (pictures, np.array([0, 1]), pictures, np.array([0, 1]))
    with bounded(memory=512 * MB, seconds=30):
        with pytest.raises(ValueError, match=r"the network for 4096x4096x1 inputs has "
                                             r"[\d,]+ parameters: .* give smaller pictures, "
                                             r"at most \d+x\d+ \(--image-size \d+"):
            train(model=model, epochs=1, out_dir=tmp_path / "run", data=data,
                  progress=False, log=quiet)
    assert not (tmp_path / "run").exists()


# --- routing iterations --------------------------------------------------------------------------

def test_routing_iters_beyond_the_bound_are_refused_by_name(bounded):
    with bounded(memory=64 * MB, seconds=10):
        with pytest.raises(ValueError, match=r"routing_iters is 1000000, more than the 100 "
                                             r"iterations allowed .*--routing-iters"):
            mc.CapsNetConfig(routing_iters=1_000_000)
        mc.CapsNetConfig(routing_iters=100)


def test_cli_routing_iters_1000000_is_one_line_naming_the_option(tmp_path, capsys, bounded,
                                                                  fake_mnist):
    err = one_line_error(capsys, ["train", "--routing-iters", "1000000", "--out",
                                  str(tmp_path / "run"), "--no-progress"], bounded)
    assert "--routing-iters" in err and "--batch-size" not in err
    assert not (tmp_path / "run").exists()


def routing_heavy(iters):
    """Many primary capsules on little convolution: routing's coupling coefficients, one
    (I, J) array an image per iteration, are most of a step's memory. The fast model, on
    which the estimate is calibrated."""
    return mc.build_model(tiny_config(
        input_shape=(20, 20, 1), conv1_channels=4, conv1_kernel=5, primary_maps=8,
        primary_kernel=3, primary_stride=1, num_classes=10, use_decoder=False,
        routing_iters=iters))


@pytest.mark.parametrize("training", [True, False])
def test_the_memory_estimate_counts_the_routing_iterations(training):
    """What 97 more iterations really allocate (tracemalloc's peak over NumPy's
    allocations, in a training step or a forward pass) is in the estimate's growth, and at
    100 iterations the estimate covers the peak without exceeding it 4 times."""
    x = np.random.default_rng(0).random((16, 20, 20, 1)).astype(np.float32)
    y = np.arange(16) % 10
    peaks, estimates = [], []
    for iters in (3, 100):
        model = routing_heavy(iters)
        run = ((lambda: model.loss_and_grads(x, y)) if training
               else (lambda: model.predict(x, batch_size=16)))
        peaks.append(peak_bytes(run))
        estimates.append(model.batch_bytes(16, training=training))
    assert estimates[1] - estimates[0] >= peaks[1] - peaks[0] > 0, (peaks, estimates)
    assert peaks[1] <= estimates[1] <= 4 * peaks[1], (peaks, estimates)


# --- pictures: --dpi -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run"
    train(tiny_config(recon_weight=0.0005), epochs=1, out_dir=out, batch_size=20, lr=0.01,
          shift=1, data=bars_data(60, 20), progress=False, log=quiet)
    return out


def test_cli_plot_dpi_100000_names_dpi(tiny_run, tmp_path, capsys, bounded):
    before = file_hashes(tiny_run)
    err = one_line_error(capsys, ["plot", str(tiny_run / "last.npz"), "--kind", "curves",
                                  "--dpi", "100000", "--out", str(tmp_path / "plots")], bounded)
    assert "dpi 100000" in err and "--batch-size" not in err, err
    fits = suggested(err, "--dpi")
    assert 1 <= fits < 100000
    assert not (tmp_path / "plots" / "curves.png").exists()
    assert file_hashes(tiny_run) == before
    with bounded(memory=512 * MB, seconds=60):      # the advice holds
        assert cli.main(["plot", str(tiny_run / "last.npz"), "--kind", "curves", "--dpi",
                         str(fits), "--out", str(tmp_path / "plots")]) == 0
    assert (tmp_path / "plots" / "curves.png").is_file()


def test_out_of_memory_in_plot_names_no_option_plot_lacks(tiny_run, tmp_path, capsys,
                                                          bounded, monkeypatch):
    """Whatever runs out of memory in a command without --batch-size, the advice is not
    to give one."""
    from minicaps import viz

    def exhausted(*args, **kwargs):
        raise MemoryError("Unable to allocate 1.00 TiB")

    monkeypatch.setattr(viz, "render", exhausted)
    err = one_line_error(capsys, ["plot", str(tiny_run / "last.npz"), "--kind", "curves",
                                  "--out", str(tmp_path / "plots")], bounded)
    assert "out of memory (Unable to allocate 1.00 TiB)" in err and "--batch-size" not in err


def test_compare_at_dpi_100000_is_refused_before_drawing(tmp_path, bounded):
    from minicaps import viz
    x = np.zeros((4, 10, 10, 1))
    labels = np.arange(4) % 3
    with bounded(memory=512 * MB, seconds=30):
        with pytest.raises(ValueError, match=r"at dpi 100000 .* pixels, more than .* give "
                                             r"a dpi of at most \d+ \(--dpi \d+\)"):
            viz.plot_compare(x, labels, [labels, labels], ["a", "b"], tmp_path / "c.png",
                             dpi=100000)
    assert not (tmp_path / "c.png").exists()


# --- evaluate's batch ----------------------------------------------------------------------------

def test_cli_evaluate_batch_size_100000_is_refused_naming_one_that_fits(tmp_path, capsys,
                                                                        bounded, monkeypatch):
    """The shipped paper's network on 2,000 test images in one batch (about 3 GB): refused
    under a 512 MB cap before it runs, naming a batch size; evaluating that many images
    at once then takes less than the cap (tracemalloc's peak over NumPy's allocations)."""
    data = synthetic_mnist(8, 2000)
    monkeypatch.setattr("minicaps.data.mnist.load_mnist", lambda *a, **k: data)
    err = one_line_error(capsys, ["evaluate", "--pretrained", "--batch-size", "100000",
                                  "--no-progress"], bounded)
    assert "an inference batch of 2000 images needs about" in err, err
    fits = suggested(err, "--batch-size")
    assert 1 <= fits < 2000

    def evaluate_one_batch():
        assert cli.main(["evaluate", "--pretrained", "--batch-size", str(fits),
                         "--limit-test", str(fits), "--no-progress"]) == 0

    with bounded(memory=2 << 30, seconds=60):
        assert peak_bytes(evaluate_one_batch) <= 512 * MB


def test_evaluate_with_batch_size_0_is_said(bounded):
    model = mc.CapsNet(tiny_config())
    images, labels = bars_data(4, 4)[:2]
    with bounded(memory=256 * MB, seconds=10):
        with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
            evaluate(model, images, labels, batch_size=0)


# --- non-finite numbers into the library ---------------------------------------------------------

@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_set_params_refuses_non_finite_parameters_by_name(bad, bounded):
    model = mc.CapsNet(tiny_config())
    params = {k: np.array(p) for k, p in model.params.items()}
    params["digit.W"][0, 0, 0, 0] = bad
    kept = {k: np.array(p) for k, p in model.params.items()}
    with bounded(memory=256 * MB, seconds=10):
        with pytest.raises(ValueError, match=r"parameter digit\.W holds NaN or infinite "
                                             r"values"):
            model.set_params(params)
        with pytest.raises(ValueError, match=r"digit\.W holds NaN or infinite"):
            mc.CapsNet(tiny_config(), params=params)
    assert all(np.array_equal(kept[k], p) for k, p in model.params.items())


@pytest.mark.parametrize("lr", [float("inf"), float("nan"), 0.0, -1e-3, "0.001", None])
def test_adam_refuses_a_learning_rate_that_is_not_a_finite_positive_number(lr, bounded):
    with bounded(memory=64 * MB, seconds=10):
        with pytest.raises(ValueError, match=r"Adam needs a finite positive learning rate, "
                                             r"got"):
            Adam(lr=lr)


def test_a_good_model_still_predicts_after_the_checks():
    model = mc.CapsNet(tiny_config(), seed=3)
    model.set_params({k: np.array(p) for k, p in model.params.items()})
    images = bars_data(8, 4)[0][..., None] / 255.0
    assert model.predict(images.astype(np.float32)).shape == (8,)
