"""minicaps: Capsule Networks with dynamic routing, written by hand on NumPy and CuPy.

The package is laid out by role (docs/architecture.md): ``backend`` (NumPy or CuPy),
``ops`` (the paper's math, forward and backward), ``fast`` (the same functions, fast),
``nn`` (the networks), ``data`` (every data set behind one registry), ``training`` (the
run, its config, Adam), ``io`` (checkpoints), ``viz`` (pictures), ``cli`` (the command).

``import minicaps`` loads nothing but this list; each name below is imported the first time
it is used (``minicaps.CapsNet`` imports the network, ``minicaps.load_dataset`` the data
registry). ``minicaps.CapsNet`` is the reference network, the one to read;
``minicaps.build_model(config)`` builds its fast twin, the one that trains.
"""
import importlib
import os
import sys

# OpenBLAS reads OPENBLAS_THREAD_TIMEOUT once, when NumPy loads it: minicaps sets it here,
# before anything imports NumPy (backend/threads.py says why, and what it measured), unless
# it is set already or NumPy came first (then BLAS_TIMEOUT_AT_LOAD is None).
BLAS_THREAD_TIMEOUT = 10
BLAS_TIMEOUT_AT_LOAD = (os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", str(BLAS_THREAD_TIMEOUT))
                        if "numpy" not in sys.modules else None)

__version__ = "0.1.0"

# public name -> the module that holds it
_HOMES = {"CapsNet": "minicaps.nn.capsnet", "CapsNetConfig": "minicaps.nn.capsnet",
          "init_params": "minicaps.nn.capsnet", "build_model": "minicaps.nn.registry",
          "Adam": "minicaps.training.optim",
          "TrainConfig": "minicaps.training.config", "train": "minicaps.training.run",
          "Dataset": "minicaps.data.dataset", "load_dataset": "minicaps.data.registry",
          "register_dataset": "minicaps.data.registry",
          "load_image_folder": "minicaps.data.folder",
          "gpu_available": "minicaps.backend", "resolve_device": "minicaps.backend",
          "to_device": "minicaps.backend", "to_numpy": "minicaps.backend"}
_MODULES = ("ops", "fast", "gradcheck", "backend", "nn", "data", "training", "io", "viz",
            "cli")

__all__ = [*_HOMES, *_MODULES]


def __getattr__(name):
    # PEP 562: a name is imported from its module on first use, then kept here
    if name in _HOMES:
        value = getattr(importlib.import_module(_HOMES[name]), name)
    elif name in _MODULES:
        value = importlib.import_module(f"minicaps.{name}")
    else:
        raise AttributeError(f"module 'minicaps' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted([*globals(), *__all__])
