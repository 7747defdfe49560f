import importlib.util
import os

import numpy as np
import pytest
from hypothesis import settings

from minicaps import backend

# Bounded, deadline-free property runs: the suite must stay fast on 2 cores.
settings.register_profile("minicaps", max_examples=25, deadline=None, derandomize=True)
settings.load_profile(os.environ.get("MINICAPS_HYPOTHESIS_PROFILE", "minicaps"))


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def pytest_collection_modifyitems(config, items):
    if backend.gpu_available():
        return
    skip = pytest.mark.skip(reason="needs CuPy and a GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_bench_module(filename, name):
    """A module of bench/ (not a package: it sits beside the library) loaded by its path."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "bench", filename))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
