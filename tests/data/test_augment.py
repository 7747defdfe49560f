"""Random crops and flips (minicaps.data.augment) and the trainer's use of them: against naive
loops, the draws' ranges, centre-cropped test sets, and exact resume with both on."""
import numpy as np
import pytest

from minicaps.data.augment import (center_crop, crop_images, draw_crops, draw_flips,
                                   flip_images)
from minicaps.io.checkpoint import load_checkpoint
from minicaps.data.dataset import Dataset
from minicaps.gradcheck import tiny_config
from minicaps.training.epoch import epoch_draws, epoch_plan
from minicaps.training.run import train
from minicaps.training.splits import prepare_data

from synthetic import bars

QUIET = dict(progress=False, log=lambda line: None)


def test_crop_against_a_loop(rng):
    images = rng.integers(0, 256, (5, 9, 7, 2)).astype(np.uint8)
    cy, cx = draw_crops(5, 4, rng, (9, 7))
    out = crop_images(images, cy, cx, 4)
    for n in range(5):
        for i in range(4):
            for j in range(4):
                assert (out[n, i, j] == images[n, cy[n] + i, cx[n] + j]).all()


def test_crop_corners_cover_every_position_and_no_other():
    rng = np.random.default_rng(0)
    cy, cx = draw_crops(4000, 3, rng, (6, 8))
    assert set(cy.tolist()) == set(range(4)) and set(cx.tolist()) == set(range(6))


@pytest.mark.parametrize("size, crop, top, left", [((9, 9), 4, 2, 2), ((8, 10), 5, 1, 2),
                                                   ((5, 5), 5, 0, 0)])
def test_center_crop(size, crop, top, left):
    images = np.arange(2 * size[0] * size[1]).reshape(2, *size)
    np.testing.assert_array_equal(center_crop(images, crop),
                                  images[:, top:top + crop, left:left + crop])
    assert center_crop(images, None) is images


def test_crop_bigger_than_the_images_is_refused():
    with pytest.raises(ValueError, match="crop 12 is bigger than the 10x10 images"):
        center_crop(np.zeros((1, 10, 10)), 12)
    with pytest.raises(ValueError, match="integer >= 1"):
        draw_crops(3, 0, np.random.default_rng(0), (10, 10))


def test_flip_against_a_loop(rng):
    images = rng.integers(0, 256, (6, 4, 5, 3))
    flip = draw_flips(6, np.random.default_rng(3))
    out = flip_images(images, flip)
    for n in range(6):
        for j in range(5):
            expected = images[n, :, 4 - j] if flip[n] else images[n, :, j]
            np.testing.assert_array_equal(out[n, :, j], expected)
    coins = draw_flips(100_000, np.random.default_rng(4))
    assert abs(coins.mean() - 0.5) < 5 * 0.5 / np.sqrt(100_000)


def test_shifts_alone_draw_what_they_always_drew():
    """Turning crops and flips off leaves the random stream of earlier runs unchanged: a
    permutation, then each batch's dy and dx."""
    a, b = np.random.default_rng(7), np.random.default_rng(7)
    order, dy, dx = epoch_draws(23, 10, a, 2, (10, 10))
    expected_order = b.permutation(23)
    draws = [b.integers(-2, 3, size=(2, m)) for m in (10, 10, 3)]
    np.testing.assert_array_equal(order, expected_order)
    np.testing.assert_array_equal(dy, np.concatenate([d[0] for d in draws]))
    np.testing.assert_array_equal(dx, np.concatenate([d[1] for d in draws]))
    assert a.random() == b.random()


def test_epoch_plan_with_crops_and_flips():
    order, draws = epoch_plan(25, 10, np.random.default_rng(1), 1, (12, 12), crop=8, flip=True)
    assert sorted(order) == list(range(25))
    assert set(draws) == {"cy", "cx", "dy", "dx", "flip"}
    assert all(len(v) == 25 for v in draws.values())
    assert draws["cy"].min() >= 0 and draws["cy"].max() <= 4
    assert np.abs(draws["dy"]).max() <= 1


def big_bars(n, seed):
    """bars on a 14x14 canvas: the 10x10 bars in the middle, for 10x10 crops."""
    images, labels = bars(n, seed)
    canvas = np.zeros((n, 14, 14), np.uint8)
    canvas[:, 2:12, 2:12] = images
    return canvas, labels


def cropped_data():
    return Dataset(*big_bars(60, 0), *big_bars(30, 1), classes=("h", "v", "d"),
                   name="big-bars", info={"crop": 10})


def test_test_images_are_centre_cropped():
    data = cropped_data()
    train_set, _, test_set = prepare_data(data, crop=10)
    assert train_set.images.shape[1:] == (14, 14)
    np.testing.assert_array_equal(test_set.images, data.x_test[:, 2:12, 2:12])


def test_crop_and_flip_runs_resume_bit_for_bit(tmp_path):
    """The crop comes from the data's info; 2 epochs in one go equal 1 + resume + 1."""
    kw = dict(batch_size=20, lr=0.01, shift=1, flip=True, data=cropped_data(), **QUIET)
    whole = train(tiny_config(), epochs=2, out_dir=tmp_path / "whole", **kw)
    train(tiny_config(), epochs=1, out_dir=tmp_path / "part", **kw)
    resumed = train(None, epochs=2, out_dir=tmp_path / "part",
                    resume=tmp_path / "part" / "last.npz", **kw)
    for name, value in whole.model.params.items():
        np.testing.assert_array_equal(value, resumed.model.params[name])
    ckpt = load_checkpoint(tmp_path / "whole" / "last.npz")
    settings = ckpt.extra["settings"]
    assert settings["crop"] == 10 and settings["flip"] is True
    assert settings["classes"] == ["h", "v", "d"] and settings["dataset"] == "big-bars"


def test_resume_without_the_flip_is_refused(tmp_path):
    kw = dict(batch_size=20, lr=0.01, data=cropped_data(), **QUIET)
    train(tiny_config(), epochs=1, out_dir=tmp_path / "run", flip=True, **kw)
    with pytest.raises(ValueError, match="flip=False"):
        train(None, epochs=2, out_dir=tmp_path / "run", resume=tmp_path / "run" / "last.npz",
              **kw)


def test_the_network_is_fitted_to_the_data(tmp_path):
    """With no config, the paper's network with the data's input (the crop's size) and
    its number of classes."""
    from minicaps.training.splits import config_for_data
    config = config_for_data(cropped_data(), crop=10, conv1_channels=8, primary_maps=2,
                             conv1_kernel=3, primary_kernel=3, decoder_sizes=(8,))
    assert config.input_shape == (10, 10, 1) and config.num_classes == 3
    rgb = Dataset(np.zeros((4, 28, 24, 3), np.uint8), np.arange(4) % 2,
                  np.zeros((2, 28, 24, 3), np.uint8), np.arange(2))
    config = config_for_data(rgb)
    assert config.input_shape == (28, 24, 3) and config.num_classes == 2
