"""Checkpoints: exact round trip, no pickle, atomic writes, clear errors for bad files."""
import json
import os
import zipfile

import numpy as np
import pytest

import minicaps as mc
from minicaps import backend
from minicaps.io.checkpoint import load_checkpoint, save_checkpoint
from minicaps.gradcheck import tiny_config


def trained_pair(seed=0, **overrides):
    """A tiny model (fast, as training builds it and load_checkpoint rebuilds it) and an
    Adam that has taken two steps (so its moments are not zero)."""
    model = mc.build_model(tiny_config(**overrides), seed=seed, dtype="float32", device="cpu")
    opt = mc.Adam(lr=3e-3)
    rng = np.random.default_rng(seed)
    for _ in range(2):
        x = rng.uniform(0, 1, (4,) + model.config.input_shape).astype(np.float32)
        y = rng.integers(0, model.config.num_classes, 4)
        opt.step(model.params, model.loss_and_grads(x, y)[1])
    return model, opt


def save(path, model, opt, rng=None, **kw):
    rng = rng if rng is not None else np.random.default_rng(7)
    kw.setdefault("epoch", 3)
    kw.setdefault("step", 17)
    return save_checkpoint(path, model, opt, rng_state=rng.bit_generator.state, **kw)


def test_round_trip_is_exact(tmp_path):
    model, opt = trained_pair()
    rng = np.random.default_rng(2 ** 70 + 5)
    rng.random(3)   # move the state on: has_uint32 / uinteger and a 128-bit state
    path = save(tmp_path / "c.npz", model, opt, rng, metrics={"test_accuracy": 0.5},
                extra={"note": "hi"})
    ckpt = load_checkpoint(path, device="cpu")
    assert ckpt.epoch == 3 and ckpt.step == 17
    assert ckpt.metrics == {"test_accuracy": 0.5} and ckpt.extra == {"note": "hi"}
    assert ckpt.model.config == model.config and ckpt.model.dtype == model.dtype
    for name, p in model.params.items():
        assert ckpt.model.params[name].dtype == p.dtype
        np.testing.assert_array_equal(ckpt.model.params[name], p)
    hyper, moments = opt.state_dict()
    hyper2, moments2 = ckpt.optimizer.state_dict()
    assert hyper == hyper2 and hyper["t"] == 2
    assert set(moments) == set(moments2) == {f"{k}/{n}" for k in "mv" for n in model.params}
    for key in moments:
        np.testing.assert_array_equal(moments2[key], moments[key])
    # the restored generator continues the same stream
    np.testing.assert_array_equal(ckpt.rng().integers(0, 2 ** 62, 20), rng.integers(0, 2 ** 62, 20))
    # and both optimizers take the same next step
    x = np.random.default_rng(3).uniform(0, 1, (4, 10, 10, 1)).astype(np.float32)
    y = np.array([0, 1, 2, 0])
    opt.step(model.params, model.loss_and_grads(x, y)[1])
    ckpt.optimizer.step(ckpt.model.params, ckpt.model.loss_and_grads(x, y)[1])
    for name in model.params:
        np.testing.assert_array_equal(ckpt.model.params[name], model.params[name])


def test_file_is_plain_npz_without_pickle(tmp_path):
    model, opt = trained_pair()
    path = save(tmp_path / "c.npz", model, opt)
    with np.load(path, allow_pickle=False) as npz:
        files = set(npz.files)
        arrays = {k: npz[k] for k in files}
    assert {f"param/{n}" for n in model.params} <= files
    assert {f"optim/m/{n}" for n in model.params} <= files
    assert all(a.dtype != object for a in arrays.values())
    meta = json.loads(arrays["meta"].tobytes().decode())
    assert meta["config"] == model.config.to_dict()
    assert meta["epoch"] == 3 and meta["step"] == 17 and meta["dtype"] == "float32"
    assert meta["optimizer"]["name"] == "Adam" and meta["optimizer"]["t"] == 2
    assert meta["rng_state"]["bit_generator"] == "PCG64"
    assert meta["format_version"] == 1 and meta["minicaps_version"] == mc.__version__
    # every member of the zip is a .npy, none a pickle
    with zipfile.ZipFile(path) as z:
        assert all(name.endswith(".npy") for name in z.namelist())


@pytest.mark.parametrize("failure", [RuntimeError, KeyboardInterrupt])
def test_failed_write_keeps_the_old_checkpoint(tmp_path, monkeypatch, failure):
    model, opt = trained_pair()
    path = save(tmp_path / "c.npz", model, opt, epoch=1)
    before = path.read_bytes()
    newer, newer_opt = trained_pair(seed=1)

    def savez_then_fail(file, **arrays):
        file.write(b"PK\x03\x04 half a checkpoint")   # some bytes reach the temp file
        raise failure("killed mid-write")

    monkeypatch.setattr(np, "savez", savez_then_fail)
    with pytest.raises(failure):
        save(path, newer, newer_opt, epoch=2)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["c.npz"]          # no temp file left behind
    assert path.read_bytes() == before
    ckpt = load_checkpoint(path)
    assert ckpt.epoch == 1
    np.testing.assert_array_equal(ckpt.model.params["digit.W"], model.params["digit.W"])


def test_failed_fsync_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    model, opt = trained_pair()
    path = save(tmp_path / "c.npz", model, opt, epoch=1)

    def fail(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError):
        save(path, model, opt, epoch=2)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["c.npz"]
    assert load_checkpoint(path).epoch == 1


def test_overwrite_replaces_the_checkpoint(tmp_path):
    model, opt = trained_pair()
    path = save(tmp_path / "c.npz", model, opt, epoch=1)
    save(path, model, opt, epoch=2)
    assert load_checkpoint(path).epoch == 2
    assert os.listdir(tmp_path) == ["c.npz"]


def rewrite(path, change):
    """Load the raw arrays and meta, let change(arrays, meta) edit them, save with np.savez."""
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    meta = json.loads(arrays.pop("meta").tobytes().decode())
    change(arrays, meta)
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def _flip_middle(path):
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(255 - b for b in data[middle:middle + 64])
    path.write_bytes(bytes(data))


DAMAGE = {
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
    "random bytes": lambda p: p.write_bytes(np.random.default_rng(0).bytes(5000)),
    "empty": lambda p: p.write_bytes(b""),
    "flipped bytes": _flip_middle,
    "single npy": lambda p: np.save(open(p, "wb"), np.zeros(3)),
    "no meta": lambda p: rewrite_without_meta(p),
    "meta not json": lambda p: rewrite_meta_bytes(p, b"\xff{not json"),
    "missing meta keys": lambda p: rewrite(p, lambda a, m: m.pop("step")),
    "missing parameter": lambda p: rewrite(p, lambda a, m: a.pop("param/digit.W")),
    "wrong parameter shape": lambda p: rewrite(
        p, lambda a, m: a.__setitem__("param/conv1.b", np.zeros(99, np.float32))),
    "wrong moment shape": lambda p: rewrite(
        p, lambda a, m: a.__setitem__("optim/m/conv1.b", np.zeros(99, np.float32))),
    "unknown config field": lambda p: rewrite(p, lambda a, m: m["config"].update(colour=1)),
    "bad rng state": lambda p: rewrite(p, lambda a, m: m.update(rng_state={"bit_generator": "X"})),
    "newer format": lambda p: rewrite(p, lambda a, m: m.update(format_version=99)),
    "other format": lambda p: rewrite(p, lambda a, m: m.update(format="something-else")),
}


def rewrite_without_meta(path):
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files if k != "meta"}
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def rewrite_meta_bytes(path, raw):
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["meta"] = np.frombuffer(raw, np.uint8)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_checkpoint_raises_value_error_naming_the_file(tmp_path, damage):
    model, opt = trained_pair()
    path = save(tmp_path / "damaged.npz", model, opt)
    load_checkpoint(path)              # fine before the damage
    DAMAGE[damage](path)
    with pytest.raises(ValueError, match="damaged.npz"):
        load_checkpoint(path)


@pytest.mark.parametrize("content,said", [(b"hello\n", "starts with b'hell'"),
                                          (b"", "an empty file"),
                                          (b"\x93NUMPY\x01\x00", "starts with b'\\x93NUM'")])
def test_a_file_that_is_no_zip_archive_is_named_as_such(tmp_path, content, said):
    path = tmp_path / "notes.npz"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="notes.npz") as e:
        load_checkpoint(path)
    assert "ZIP" in str(e.value) and said in str(e.value) and "pickle" not in str(e.value)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.npz"):
        load_checkpoint(tmp_path / "nothing.npz")


def test_loading_into_a_model_of_another_config_fails(tmp_path):
    model, opt = trained_pair(routing_iters=3)
    path = save(tmp_path / "c.npz", model, opt)
    other = mc.CapsNet(tiny_config(routing_iters=1, digit_dims=5), seed=0)
    before = {k: p.copy() for k, p in other.params.items()}
    with pytest.raises(ValueError, match=r"c\.npz.*digit_dims.*routing_iters"):
        load_checkpoint(path, model=other)
    for k, p in other.params.items():   # untouched
        np.testing.assert_array_equal(p, before[k])


def test_loading_into_a_model_of_the_same_config(tmp_path):
    model, opt = trained_pair()
    path = save(tmp_path / "c.npz", model, opt)
    fresh = mc.CapsNet(tiny_config(), seed=123)
    ckpt = load_checkpoint(path, model=fresh)
    assert ckpt.model is fresh
    np.testing.assert_array_equal(fresh.params["digit.W"], model.params["digit.W"])


def test_unserialisable_metrics_raise_value_error(tmp_path):
    model, opt = trained_pair()
    with pytest.raises(ValueError, match="JSON"):
        save(tmp_path / "c.npz", model, opt, metrics={"a": object()})
    assert os.listdir(tmp_path) == []


@pytest.mark.gpu
def test_gpu_checkpoint_loads_on_cpu_and_back(tmp_path):
    model, opt = trained_pair()
    model.to("gpu")
    opt.m = backend.params_to_device(opt.m, "gpu")
    opt.v = backend.params_to_device(opt.v, "gpu")
    path = save(tmp_path / "c.npz", model, opt)
    on_cpu = load_checkpoint(path, device="cpu")
    on_gpu = load_checkpoint(path, device="gpu")
    assert backend.device_of(on_gpu.model.params["digit.W"]) == "gpu"
    assert backend.device_of(on_gpu.optimizer.m["digit.W"]) == "gpu"
    for name, p in model.params.items():
        np.testing.assert_array_equal(on_cpu.model.params[name], backend.to_numpy(p))
        np.testing.assert_array_equal(backend.to_numpy(on_gpu.model.params[name]),
                                      backend.to_numpy(p))


def averaged_checkpoint(path):
    """A checkpoint that keeps a moving average of the parameters (not equal to them)."""
    from minicaps.training.optim import ParameterAverage
    model, opt = trained_pair()
    average = ParameterAverage(model.params, decay=0.99)
    for name, a in average.params.items():
        a += 0.5
    return save(path, model, opt, average=average), model, average


def test_the_parameters_average_round_trips_exactly(tmp_path):
    path, model, average = averaged_checkpoint(tmp_path / "a.npz")
    ckpt = load_checkpoint(path)
    assert ckpt.average.decay == 0.99
    for name, a in average.params.items():
        np.testing.assert_array_equal(ckpt.average.params[name], a)
        np.testing.assert_array_equal(ckpt.model.params[name], model.params[name])
        assert ckpt.average.params[name].dtype == np.float32
    model, opt = trained_pair()
    assert load_checkpoint(save(tmp_path / "b.npz", model, opt)).average is None


def test_model_with_picks_the_average_or_the_trained_parameters(tmp_path):
    path, model, average = averaged_checkpoint(tmp_path / "a.npz")
    ckpt = load_checkpoint(path)
    for weights, expected, name in (("auto", average, "average"), ("average", average, "average"),
                                    ("trained", model, "trained")):
        chosen, used = ckpt.model_with(weights)
        assert used == name
        for k, p in expected.params.items():
            np.testing.assert_array_equal(chosen.params[k], p)
    for k, p in model.params.items():                 # the checkpoint's own model is untouched
        np.testing.assert_array_equal(ckpt.model.params[k], p)
    with pytest.raises(ValueError, match="'auto', 'average' or 'trained'"):
        ckpt.model_with("best")
    plain_model, opt = trained_pair()
    plain = load_checkpoint(save(tmp_path / "b.npz", plain_model, opt))
    assert plain.model_with()[1] == "trained"
    with pytest.raises(ValueError, match="b.npz keeps no moving average"):
        plain.model_with("average")


AVERAGE_DAMAGE = {
    "average without its decay": lambda a, m: m.update(average=None),
    "average of a wrong shape": lambda a, m: a.__setitem__("average/conv1.b", np.zeros(5)),
    "average lacking a parameter": lambda a, m: a.pop("average/digit.W"),
    "decay that is no number": lambda a, m: m.update(average={"decay": "high"}),
}


@pytest.mark.parametrize("damage", sorted(AVERAGE_DAMAGE))
def test_a_damaged_average_raises_value_error_naming_the_file(tmp_path, damage):
    path, _, _ = averaged_checkpoint(tmp_path / "damaged.npz")
    rewrite(path, AVERAGE_DAMAGE[damage])
    with pytest.raises(ValueError, match="damaged.npz"):
        load_checkpoint(path)
