import importlib.util
import os
import tempfile

import numpy as np
import pytest
from hypothesis import settings

from minicaps import backend

# The routes measured by the tests' networks (fast/plans.py) go to a plan file of this run,
# never to the user's; subprocesses (the CLI, mpiexec's ranks) inherit it.
os.environ["MINICAPS_PLAN_FILE"] = os.path.join(tempfile.mkdtemp(prefix="minicaps-plans-"),
                                                "plans.json")

# Bounded, deadline-free property runs: the suite must stay fast on 2 cores.
settings.register_profile("minicaps", max_examples=25, deadline=None, derandomize=True)
# Now and then: MINICAPS_HYPOTHESIS_PROFILE=thorough, many fresh random draws.
settings.register_profile("thorough", max_examples=400, deadline=None, derandomize=False)
settings.load_profile(os.environ.get("MINICAPS_HYPOTHESIS_PROFILE", "minicaps"))


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def pytest_report_header(config):
    if backend.gpu_available():
        return "tests marked gpu: on CuPy and the GPU"
    return "tests marked gpu: no GPU here, so on the CuPy stand-in (tests/cupy_stand_in.py)"


def _install_stand_in(monkeypatch):
    import cupy_stand_in
    from minicaps.fast import conv_fft
    conv_fft._plan_gpu.cache_clear()         # no DFT plans from another array library
    monkeypatch.setattr(backend.device, "_cupy", cupy_stand_in)
    cupy_stand_in.made.clear()
    cupy_stand_in._core._routines_linalg.modes.clear()      # strict float32, as CuPy starts
    cupy_stand_in.waits.clear()
    return cupy_stand_in


@pytest.fixture
def stand_in(monkeypatch):
    """The CuPy stand-in as the GPU's array library for one test, GPU or not."""
    yield _install_stand_in(monkeypatch)
    from minicaps.fast import conv_fft
    conv_fft._plan_gpu.cache_clear()


@pytest.fixture(autouse=True)
def _gpu_arrays(request, monkeypatch):
    """Without a GPU, tests marked ``gpu`` run on the CuPy stand-in: the library's GPU
    code paths then run here too, under CuPy's rules for device arrays (no mixing with
    NumPy arrays, no implicit conversion), with NumPy's numbers underneath."""
    if request.node.get_closest_marker("gpu") is None or backend.gpu_available():
        yield
        return
    _install_stand_in(monkeypatch)
    yield


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_bench_module(filename, name):
    """A module of bench/ (not a package: it sits beside the library) loaded by its path."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "bench", filename))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(name="bounded")
def bounded_fixture():
    """``with bounded(memory=..., seconds=...):`` around a hostile case (limits.bounded)."""
    from limits import bounded
    return bounded


@pytest.fixture
def drawn(monkeypatch):
    """{file name: the Figure} of every PNG minicaps.viz writes while the test runs."""
    from pathlib import Path
    from minicaps.viz import accuracy, canvas, capsules, curves, pairs
    figures, save = {}, canvas.save

    def keep(fig, path, notes=()):
        figures[Path(path).name] = fig
        return save(fig, path, notes)
    for module in (accuracy, capsules, curves, pairs):     # each imports canvas.save
        monkeypatch.setattr(module, "save", keep)
    return figures


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    """A finished 1-epoch run: its folder (copied fresh for each test by ``run_dir``)."""
    from tiny_runs import run_tiny
    out = tmp_path_factory.mktemp("saved") / "run"
    run_tiny(out)
    return out


@pytest.fixture
def run_dir(saved_run, tmp_path):
    import shutil
    out = tmp_path / "run"
    shutil.copytree(saved_run, out)
    return out


@pytest.fixture
def victim(tmp_path):
    """A file outside every run folder, which links and hard links in a run folder lead to:
    what a hostile case must leave as it was (its text: tiny_runs.VICTIM_TEXT)."""
    from tiny_runs import VICTIM_TEXT
    path = tmp_path / "elsewhere" / "victim.txt"
    path.parent.mkdir()
    path.write_bytes(VICTIM_TEXT)
    return path
