"""Robustness by transformation (minicaps/training/robustness.py, `minicaps robustness`): each
transformation alone, at growing strength, on the test digits centred on the networks'
canvas.

Checked against independent computations: the centred digit placed by
affnist.place_on_canvas, a move done pixel by pixel, the bounding box a scale or a
rotation gives a square, and the accuracy train.evaluate measures. Tiny networks on
40x40 and synthetic digits; the command on two checkpoints saved untrained.
"""
import json

import numpy as np
import pytest

import minicaps as mc
import minicaps.training.run
from minicaps import cli
from minicaps.data.affnist import place_on_canvas
from minicaps.io.checkpoint import save_checkpoint
from minicaps.nn.cnn import BaselineCNN, CNNConfig
from minicaps.data.dataset import to_model_input
from minicaps.gradcheck import tiny_config
from minicaps.training.robustness import (IDENTITY, TRANSFORMATIONS, affine_params,
                                          check_canvas, draw_directions, robustness,
                                          strengths, transformed)
from minicaps.training.evaluation import evaluate

from synthetic import synthetic_mnist

CLASSES = [str(d) for d in range(10)]


def digits(n=12, seed=0):
    """n 28x28 uint8 digits: noise inside the middle 20x20, black around it (as MNIST)."""
    out = np.zeros((n, 28, 28), np.uint8)
    out[:, 4:24, 4:24] = np.random.default_rng(seed).integers(0, 256, (n, 20, 20))
    return out


def centred_by_hand(images, size):
    offset = (size - images.shape[1]) // 2
    return place_on_canvas(images, np.full((len(images), 2), offset), size)


def ink_box(image):
    """(top, bottom, left, right) rows and columns holding ink, inclusive."""
    rows, cols = np.flatnonzero(image.any(1)), np.flatnonzero(image.any(0))
    return rows[0], rows[-1], cols[0], cols[-1]


# --- the transformations ----------------------------------------------------------------------

@pytest.mark.parametrize("size", [28, 40])
@pytest.mark.parametrize("name", TRANSFORMATIONS)
def test_strength_zero_is_the_centred_digit_bit_for_bit(name, size):
    x = digits()
    grid = strengths(name, 4)
    assert IDENTITY[name] in grid                       # the grid holds the identity exactly
    got = transformed(x, affine_params(name, IDENTITY[name], draw_directions(len(x), 3)), size)
    np.testing.assert_array_equal(got, centred_by_hand(x, size))


def test_the_strengths_run_from_none_to_the_strongest():
    np.testing.assert_allclose(strengths("rotation", 4), [0, 15, 30, 45, 60])
    np.testing.assert_allclose(strengths("shear", 4), [0, 0.15, 0.3, 0.45, 0.6])
    np.testing.assert_allclose(strengths("scale", 4), np.arange(6, 15) / 10)
    np.testing.assert_array_equal(strengths("translation", 4), [0, 3, 6, 9, 12])
    np.testing.assert_array_equal(strengths("translation", 24), np.arange(13))  # whole pixels
    for name in TRANSFORMATIONS:
        with pytest.raises(ValueError, match="an integer from 1 to 100"):
            strengths(name, 0)


@pytest.mark.parametrize("strength", [15.0, 60.0])
def test_a_rotation_turns_each_image_by_the_angle_either_way(strength):
    p = affine_params("rotation", strength, draw_directions(400, 0))
    np.testing.assert_array_equal(np.abs(p.rotation), strength)
    assert 150 < np.sum(p.rotation > 0) < 250                  # both ways, about half each
    assert (p.shear == 0).all() and (p.scale_x == 1).all() and (p.scale_y == 1).all()
    assert (p.ty == 0).all() and (p.tx == 0).all()


def test_a_shear_slants_each_image_by_the_strength_either_way():
    p = affine_params("shear", 0.45, draw_directions(400, 0))
    np.testing.assert_array_equal(np.abs(p.shear), 0.45)
    assert 150 < np.sum(p.shear > 0) < 250
    assert (p.rotation == 0).all() and (p.scale_x == 1).all() and (p.ty == 0).all()


@pytest.mark.parametrize("factor", [0.6, 1.4])
def test_a_scale_is_the_factor_along_both_axes(factor):
    p = affine_params("scale", factor, draw_directions(50, 0))
    np.testing.assert_array_equal(p.scale_x, factor)
    np.testing.assert_array_equal(p.scale_y, factor)
    assert (p.rotation == 0).all() and (p.shear == 0).all() and (p.tx == 0).all()


@pytest.mark.parametrize("strength", [3.0, 12.0])
def test_a_move_is_whole_pixels_about_the_strength_long_in_any_direction(strength):
    p = affine_params("translation", strength, draw_directions(400, 0))
    assert (p.ty == np.rint(p.ty)).all() and (p.tx == np.rint(p.tx)).all()
    # each axis rounded by at most half a pixel: the length is off by at most sqrt(2)/2
    assert np.abs(np.hypot(p.ty, p.tx) - strength).max() <= np.sqrt(0.5)
    quadrants = set(zip(np.sign(p.ty) >= 0, np.sign(p.tx) >= 0))
    assert len(quadrants) == 4
    assert (p.rotation == 0).all() and (p.scale_x == 1).all()


def test_the_signs_and_directions_repeat_with_the_seed():
    a, b, c = draw_directions(30, 5), draw_directions(30, 5), draw_directions(30, 6)
    assert all((x == y).all() for x, y in zip(a, b))
    assert not (a.angle == c.angle).all()


# --- what stays on the canvas -----------------------------------------------------------------

def test_a_move_shifts_the_pixels_and_loses_those_that_leave_the_canvas():
    x = digits(40, seed=1)
    p = affine_params("translation", 12.0, draw_directions(40, 2))
    got = transformed(x, p, 40)
    start = centred_by_hand(x, 40)
    for k in range(len(x)):                              # the move, pixel by pixel
        ty, tx = int(p.ty[k]), int(p.tx[k])
        expected = np.zeros((40, 40), np.uint8)
        for i in range(40):
            for j in range(40):
                if 0 <= i + ty < 40 and 0 <= j + tx < 40:
                    expected[i + ty, j + tx] = start[k, i, j]
        np.testing.assert_array_equal(got[k], expected)
        # the ink (rows and columns 10..29 centred) fits while each axis moves <= 10
        fits = abs(ty) <= 10 and abs(tx) <= 10
        assert (np.count_nonzero(got[k]) == np.count_nonzero(x[k])) == fits


def test_a_move_of_up_to_10_pixels_keeps_all_the_ink_on_40x40():
    x = digits(30, seed=2)
    got = transformed(x, affine_params("translation", 9.0, draw_directions(30, 0)), 40)
    for image, digit in zip(got, x):
        assert np.count_nonzero(image) == np.count_nonzero(digit)
        assert int(image.astype(int).sum()) == int(digit.astype(int).sum())


@pytest.mark.parametrize("factor", [0.6, 1.4])
def test_a_scaled_square_has_the_scaled_size(factor):
    square = np.zeros((1, 28, 28), np.uint8)
    square[0, 4:24, 4:24] = 255                          # 20x20, centred
    got = transformed(square, affine_params("scale", factor, draw_directions(1)), 40)[0]
    top, bottom, left, right = ink_box(got)
    for low, high in ((top, bottom), (left, right)):
        assert abs((high - low + 1) - 20 * factor) <= 2           # bilinear edges: +-1 a side
        assert abs((low + high) / 2 - 19.5) <= 0.5                # about the centre
    area = 400 * factor ** 2                                      # the square's, scaled
    assert abs(int(got.astype(int).sum()) - 255 * area) < 0.05 * 255 * area


@pytest.mark.parametrize("angle", [15.0, 60.0])
def test_a_rotated_digit_keeps_its_ink_on_40x40(angle):
    square = np.zeros((1, 28, 28), np.uint8)
    square[0, 4:24, 4:24] = 255
    got = transformed(square, affine_params("rotation", angle, draw_directions(1)), 40)[0]
    top, bottom, left, right = ink_box(got)
    reach = 20 * (np.cos(np.deg2rad(angle)) + np.sin(np.deg2rad(angle)))  # its bounding box
    assert 0 < top and bottom < 39 and 0 < left and right < 39   # nothing at the border
    assert abs((bottom - top + 1) - reach) <= 2 and abs((right - left + 1) - reach) <= 2
    assert abs(int(got.astype(int).sum()) - 255 * 400) < 0.03 * 255 * 400   # area kept


def test_only_images_that_centre_pixel_for_pixel_are_taken():
    check_canvas((28, 28), 40)
    check_canvas((32, 32, 3), 32)
    for shape, size in (((28, 28), 41), ((28, 28), 20), ((28, 30), 28)):
        with pytest.raises(ValueError, match="cannot be centred"):
            check_canvas(shape, size)


def test_colour_channels_move_together():
    x = np.stack([digits(4, 0), digits(4, 1), digits(4, 2)], axis=-1)     # (4, 28, 28, 3)
    p = affine_params("rotation", 30.0, draw_directions(4, 0))
    got = transformed(x, p, 40)
    for c in range(3):
        np.testing.assert_array_equal(got[..., c], transformed(x[..., c], p, 40))


# --- the accuracy -----------------------------------------------------------------------------

def tiny_pair(seed=0):
    """An untrained tiny CapsNet (fast, as robustness gets it from a checkpoint) and CNN,
    both reading 40x40 digits of 10 classes."""
    capsnet = mc.build_model(tiny_config(input_shape=(40, 40, 1), num_classes=10,
                                         conv1_kernel=5, primary_kernel=5), seed=seed)
    cnn = BaselineCNN(CNNConfig(input_shape=(40, 40, 1), num_classes=10, conv_channels=(4,),
                                conv_kernel=3, pool_after=(1,), fc_sizes=(16,)), seed=seed)
    return capsnet, cnn


def test_strength_zero_scores_the_plain_accuracy():
    x, labels = digits(30, seed=3), np.arange(30) % 10
    models = tiny_pair()
    rows = robustness(models, x, labels, 40, steps=2, seed=1, batch_size=7)
    plain = [evaluate(m, centred_by_hand(x, 40), labels,
                      batch_size=30)["accuracy"] for m in models]
    identity = [r for r in rows if r["strength"] == IDENTITY[r["transformation"]]]
    assert [r["transformation"] for r in identity] == list(TRANSFORMATIONS)
    for row in identity:
        assert row["accuracy"] == pytest.approx(plain, abs=0)
    assert len(rows) == 3 + 3 + 5 + 3


def test_each_strength_scores_the_images_it_names():
    x, labels = digits(20, seed=4), np.arange(20) % 10
    capsnet, cnn = tiny_pair(seed=1)
    rows = robustness([capsnet, cnn], x, labels, 40, steps=1, seed=2)
    directions = draw_directions(20, 2)
    for row in rows:                 # each row against the model's own predict on its images
        pictures = transformed(x, affine_params(row["transformation"], row["strength"],
                                                directions), 40)
        expected = [np.mean(m.predict(to_model_input(pictures)) == labels)
                    for m in (capsnet, cnn)]
        assert row["accuracy"] == pytest.approx(expected, abs=0)


# --- the command ------------------------------------------------------------------------------

def save(path, model, dataset="affnist-generated", classes=CLASSES):
    settings = {"dataset": dataset, "classes": classes}
    return save_checkpoint(path, model, mc.Adam(), epoch=1, step=1,
                           rng_state=np.random.default_rng(0), extra={"settings": settings})


@pytest.fixture
def mnist(monkeypatch, tmp_path):
    data = synthetic_mnist(n_train=4, n_test=10)
    monkeypatch.setattr("minicaps.data.mnist.load_mnist", lambda *a, **k: data)
    monkeypatch.setenv("MINICAPS_DATA", str(tmp_path))
    return data


def test_the_command_draws_both_networks(tmp_path, capsys, mnist, drawn):
    capsnet, cnn = tiny_pair()
    a, b = save(tmp_path / "caps" / "best.npz", capsnet), save(tmp_path / "cnn" / "best.npz", cnn)
    out = tmp_path / "pics"
    assert cli.main(["robustness", str(a), str(b), "--steps", "2", "--limit-test", "8",
                     "--out", str(out), "--seed", "3"]) == 0
    printed = capsys.readouterr().out
    assert "8 mnist test images" in printed and "40x40" in printed
    numbers = json.loads((out / "robustness.json").read_text())
    assert numbers["names"] == ["CapsNet", "CNN"] and numbers["images"] == 8
    assert len(numbers["rows"]) == 14
    x, labels = mnist[2][:8], mnist[3][:8]
    plain = [np.mean(m.predict(to_model_input(centred_by_hand(x, 40))) == labels)
             for m in (capsnet, cnn)]
    assert numbers["rows"][0]["accuracy"] == pytest.approx(plain, abs=0)
    for row in numbers["rows"]:                     # the table says what the file says
        assert "".join(f"{v:>14.2%}" for v in row["accuracy"]) in printed
    assert (out / "robustness.png").stat().st_size > 0
    fig = drawn["robustness.png"]
    panels = [ax for ax in fig.axes if ax.get_lines()]
    assert [ax.get_title() for ax in panels] == list(TRANSFORMATIONS)
    for ax in panels:
        assert len(ax.get_lines()) == 2 and ax.get_ylim() == (0, 100)
        assert "%" in panels[0].get_ylabel() and ax.get_xlabel()
    legend = [t.get_text() for t in panels[0].get_legend().get_texts()]
    assert legend == ["CapsNet: caps/best.npz", "CNN: cnn/best.npz"]


def test_networks_of_28x28_are_tested_on_the_test_images_as_they_are(tmp_path, capsys, mnist):
    tiny = dict(num_classes=10, conv_channels=(4,), conv_kernel=3, pool_after=(1,),
                fc_sizes=(16,))
    models = [BaselineCNN(CNNConfig(input_shape=(28, 28, 1), **tiny), seed=k) for k in (0, 1)]
    a, b = (save(tmp_path / f"{k}" / "best.npz", m, dataset="mnist")
            for k, m in enumerate(models))
    assert cli.main(["robustness", str(a), str(b), "--steps", "1", "--out", str(tmp_path)]) == 0
    assert "10 mnist test images, each transformed alone on the 28x28" in capsys.readouterr().out
    rows = json.loads((tmp_path / "robustness.json").read_text())["rows"]
    x, labels = mnist[2], mnist[3]
    plain = [np.mean(m.predict(to_model_input(x)) == labels) for m in models]
    assert rows[0]["accuracy"] == pytest.approx(plain, abs=0)


def test_the_command_refuses_what_it_cannot_test(tmp_path, capsys, mnist):
    capsnet, cnn = tiny_pair()
    a = save(tmp_path / "a.npz", capsnet)
    small = save(tmp_path / "small.npz", BaselineCNN(CNNConfig(
        input_shape=(28, 28, 1), num_classes=10, conv_channels=(4,), conv_kernel=3,
        pool_after=(1,), fc_sizes=(16,))), dataset="affnist-generated")
    fewer = save(tmp_path / "fewer.npz", mc.CapsNet(tiny_config(
        input_shape=(40, 40, 1), num_classes=3, conv1_kernel=5, primary_kernel=5)),
        classes=["0", "1", "2"])
    odd = [save(tmp_path / f"odd{k}.npz", BaselineCNN(CNNConfig(
        input_shape=(39, 39, 1), num_classes=10, conv_channels=(4,), conv_kernel=3,
        pool_after=(1,), fc_sizes=(16,)), seed=k)) for k in (0, 1)]
    for pair, said in (((a, small), "different inputs or classes"),
                       ((a, fewer), "different inputs or classes"),
                       (odd, "cannot be centred")):
        assert cli.main(["robustness", *map(str, pair), "--out", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert said in err and err.count("\n") == 1, err
    with pytest.raises(SystemExit) as stop:
        cli.main(["robustness", str(a), str(a), "--steps", "0"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "--steps: must be an integer from 1 to 100" in err and err.count("\n") == 1
