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
