"""The typed training config (training/config.py) and the one registry of data sets
(data/registry.py): a config is checked when made, stored in every checkpoint and read back
typed to the same values; the data decides what the config leaves to it; a data set a user
registers trains through the command line like a built-in one."""
import json

import numpy as np
import pytest

from minicaps import cli
from minicaps.data.dataset import Dataset
from minicaps.data.registry import (ALIASES, REGISTRY, dataset_names, load_dataset,
                                    register_dataset)
from minicaps.gradcheck import tiny_config
from minicaps.io.checkpoint import read_meta
from minicaps.training.config import DEFAULT_SHIFT, RunSettings, TrainConfig
from minicaps.training.run import train

from synthetic import bars_data

QUIET = dict(progress=False, log=lambda line: None)


def test_the_defaults_are_the_papers_recipe():
    c = TrainConfig()
    assert (c.epochs, c.batch_size, c.lr, c.lr_decay, c.decay_steps) == (1, 100, 1e-3, 0.96,
                                                                          2000)
    assert c.shift is None and DEFAULT_SHIFT == 2 and c.average == 0.999
    assert TrainConfig(dtype=np.float64).dtype == "float64"       # a NumPy type, by name


@pytest.mark.parametrize("field, value", [
    ("epochs", -1), ("batch_size", 0), ("batch_size", 2.5), ("batch_size", True),
    ("lr", 0), ("lr", float("nan")), ("lr_decay", 1.5), ("decay_steps", 0), ("seed", -3),
    ("shift", -1), ("val_size", -1), ("limit_train", 0), ("limit_test", 0),
    ("average", 1.0), ("dtype", "float16"), ("dataset", ""), ("crop", -2)])
def test_a_wrong_value_is_refused_when_the_config_is_made_naming_its_field(field, value):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: value})
    with pytest.raises(ValueError, match=field):             # and when a copy changes it
        TrainConfig().replace(**{field: value})


@pytest.mark.parametrize("info, pairs, shift", [({}, 0, 2), ({"shift": 6}, 0, 6),
                                                ({}, 1, 0), ({"shift": 6}, 0, 6)])
def test_what_the_config_leaves_to_the_data_comes_from_the_data(info, pairs, shift):
    resolved = TrainConfig().for_data(info, pairs)
    assert resolved.shift == shift and resolved.crop is None and resolved.flip is False
    assert TrainConfig(shift=1).for_data(info, pairs).shift == 1       # given: kept
    assert TrainConfig().for_data({"crop": 32, "flip": True}).crop == 32
    assert TrainConfig(crop=0).for_data({"crop": 32}).crop is None      # 0: no crop
    assert TrainConfig(flip=False).for_data({"flip": True}).flip is False


def test_a_checkpoint_stores_the_config_and_reads_it_back_typed(tmp_path):
    config = TrainConfig(epochs=1, batch_size=20, lr=0.01, seed=4, limit_test=30,
                         average=None)
    x, y, xt, yt = bars_data()
    classes = tuple(str(k) for k in range(int(y.max()) + 1))
    data = Dataset(x, y, xt, yt, classes=classes, name="bars")
    train(tiny_config(num_classes=len(classes)), training=config, out_dir=tmp_path / "run",
          data=data, **QUIET)
    stored = read_meta(tmp_path / "run" / "last.npz")["extra"]["settings"]
    back = RunSettings.from_dict(stored)
    # what was given, and what the data decided (shift 2, no crop, no flip), typed
    assert back.config == config.replace(shift=2, crop=None, flip=False, dataset="bars")
    assert back.n_train == len(data.y_train) and back.n_test == 30
    assert back.model == "capsnet" and back.classes == classes
    assert back.to_dict() == stored                       # the same dict, key for key
    assert list(back.to_dict()) == list(stored)
    line = json.loads((tmp_path / "run" / "metrics.jsonl").read_text())
    assert line["step"] == -(-len(data.y_train) // 20)    # batches of the config's size


def test_settings_written_before_a_field_existed_read_its_default():
    old = {"batch_size": 100, "lr": 0.001, "lr_decay": 0.96, "decay_steps": 2000, "seed": 0,
           "shift": 2, "dtype": "float32", "dataset": "mnist", "n_train": 60000}
    back = RunSettings.from_dict(old)
    assert back.config == TrainConfig(shift=2)            # average, crop, flip: defaults
    assert back.n_train == 60000 and back.n_test is None and back.model is None


def test_the_train_arguments_one_by_one_are_the_same_config(tmp_path):
    data = bars_data()
    a = train(tiny_config(), out_dir=tmp_path / "a", data=data, epochs=1, batch_size=25,
              seed=2, **QUIET)
    b = train(tiny_config(), training=TrainConfig(epochs=1, batch_size=25, seed=2),
              out_dir=tmp_path / "b", data=data, **QUIET)
    for name, value in a.model.params.items():
        np.testing.assert_array_equal(value, b.model.params[name])


# --- the registry of data sets ---------------------------------------------------------------

def test_every_name_the_command_line_offers_is_in_the_registry():
    parser = cli.command_line.build_parser()
    train_parser = parser._subparsers._group_actions[0].choices["train"]
    offered = next(a.choices for a in train_parser._actions if a.dest == "dataset")
    assert tuple(offered) == dataset_names()
    assert {"mnist", "fashion-mnist", "cifar10", "svhn", "smallnorb", "multimnist",
            "affnist", "affnist-like", "affnist-wide"} == set(dataset_names())
    assert ALIASES == {"affnist-generated": "affnist-wide"}


def test_an_unknown_name_is_refused_naming_the_known_ones():
    with pytest.raises(ValueError, match="unknown data set 'letters'.*fashion-mnist"):
        load_dataset("letters")


def test_a_built_in_name_cannot_be_taken_and_a_name_is_a_word():
    with pytest.raises(ValueError, match="built-in"):
        register_dataset("mnist", lambda root=None: None)
    with pytest.raises(ValueError, match="name"):
        register_dataset(" toy", lambda root=None: None)
    with pytest.raises(ValueError, match="callable"):
        register_dataset("toy", "not a function")


@pytest.fixture
def toy_dataset(monkeypatch):
    """A data set registered the way a user would: a loader returning a Dataset."""
    monkeypatch.setattr("minicaps.data.registry.REGISTRY", dict(REGISTRY))
    rng = np.random.default_rng(0)

    def load_toy(root=None):
        """Two classes of 16x16 pictures: a bright left half, or a bright right half."""
        images = np.zeros((60, 16, 16), np.uint8)
        labels = np.arange(60) % 2
        for picture, label in zip(images, labels):
            picture[:, 8 * label:8 * label + 8] = rng.integers(150, 256)
        return Dataset(images[:40], labels[:40], images[40:], labels[40:],
                       classes=("left", "right"), name="toy")
    register_dataset("toy", load_toy, "two classes of halves")
    return load_toy


def test_a_registered_data_set_trains_and_evaluates_through_the_command_line(
        toy_dataset, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(cli.options.PRESETS, "tiny", {"config": {
        "conv1_channels": 4, "conv1_kernel": 5, "primary_maps": 2, "primary_kernel": 5,
        "digit_dims": 4, "decoder_sizes": (8,)}, "epochs": 1, "lr": 1e-2})
    assert "toy" in dataset_names()
    out = tmp_path / "run"
    assert cli.main(["train", "--dataset", "toy", "--preset", "tiny", "--batch-size", "10",
                     "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "on toy (40 training images, 2 classes, input 16x16x1)" in printed
    settings = read_meta(out / "best.npz")["extra"]["settings"]
    assert settings["dataset"] == "toy" and settings["classes"] == ["left", "right"]
    assert cli.main(["evaluate", str(out / "best.npz"), "--no-progress"]) == 0
    assert "20 toy test images" in capsys.readouterr().out


def test_a_file_that_keeps_no_settings_names_no_data_set():
    nothing = RunSettings.from_dict({})
    assert nothing.config is None and nothing.dataset is None and nothing.crop is None
    assert nothing.to_dict() == {} and RunSettings.from_dict(None) == nothing


def test_train_needs_its_epochs(tmp_path):
    with pytest.raises(TypeError, match="epochs"):
        train(tiny_config(), out_dir=tmp_path / "run", data=bars_data(), **QUIET)


def test_an_affnist_run_placed_the_earlier_way_cannot_go_on():
    from minicaps.training.resume import check_same_split

    class Old:
        path = "old/last.npz"
    earlier = {"train": "expanded-mnist", "canvas": 40, "train_seed": 40}   # no "shift"
    with pytest.raises(ValueError, match="placed the earlier way.*start a new run"):
        check_same_split(Old, earlier, {**earlier, "shift": 6})
    check_same_split(Old, {**earlier, "shift": 6}, {**earlier, "shift": 6})    # same: goes on


def test_the_reference_network_says_where_the_fast_one_is():
    from minicaps.nn.capsnet import CapsNet, CapsNetConfig
    with pytest.raises(ValueError, match=r"build_model\(config\)"):
        CapsNet(CapsNetConfig(), impl="fast")
