"""minicaps: Capsule Networks with dynamic routing, written by hand on NumPy and CuPy."""
from .backend import gpu_available, resolve_device, to_device, to_numpy
from .model import CapsNet, CapsNetConfig, init_params
from .optim import Adam
from .data import Dataset
from .datasets import load_dataset
from .folder import load_image_folder
from . import ops, fast, gradcheck

__version__ = "0.1.0"
__all__ = ["CapsNet", "CapsNetConfig", "Adam", "init_params", "ops", "fast", "gradcheck",
           "gpu_available", "resolve_device", "to_device", "to_numpy", "Dataset", "load_dataset",
           "load_image_folder"]
