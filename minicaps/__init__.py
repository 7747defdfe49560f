"""minicaps: Capsule Networks with dynamic routing, written by hand on NumPy and CuPy."""
from minicaps.backend import gpu_available, resolve_device, to_device, to_numpy
from minicaps.nn.capsnet import CapsNet, CapsNetConfig, init_params
from minicaps.training.optim import Adam
from minicaps.data.mnist import Dataset
from minicaps.data.registry import load_dataset
from minicaps.data.folder import load_image_folder
from minicaps import ops, fast, gradcheck

__version__ = "0.1.0"
__all__ = ["CapsNet", "CapsNetConfig", "Adam", "init_params", "ops", "fast", "gradcheck",
           "gpu_available", "resolve_device", "to_device", "to_numpy", "Dataset", "load_dataset",
           "load_image_folder"]
