"""Every network by name, in one registry: the kinds a checkpoint can hold, the layouts
train builds by name, and the presets of ``minicaps train --preset``.

A kind ("capsnet", "cnn") is a config class and the two network classes built from it:
the reference one, which chains the ops of minicaps.ops as the paper writes them, and the
fast one (minicaps/fast/), the same function made fast, which build_model builds unless
told otherwise, so that everything that trains, loads, evaluates, predicts or benchmarks a
network runs the fast one. A checkpoint's "model" tag names its kind (a file without the tag, written before the CNN
baselines came, holds a CapsNet). A layout ("capsnet", "cnn", "cnn-pooled", ...) is a
function making a config of some kind, with the paper's sizes; a preset adds the recipe
(epochs, learning rate) to a layout. Adding a network: its config and network classes in a
module of nn/ (and its fast twin in fast/, or the reference class again), one line in KINDS, and a line in LAYOUTS and PRESETS for each layout
(docs/architecture.md).
"""
from minicaps.nn.capsnet import CapsNetConfig
from minicaps.nn.multi_label import MultiLabelCapsNet
from minicaps.nn.cnn import BaselineCNN, CNNConfig

# kind -> (config class, reference network class, the function giving the fast class). The reference
# CapsNet here is nn/capsnet.py's CapsNet with the K-label path and the training loop's
# options (nn/multi_label.py), so that it runs wherever the fast one does.
def fast_capsnet():
    from minicaps.fast.model import FastCapsNet      # the fast path loads when first built
    return FastCapsNet


def fast_cnn():
    from minicaps.fast.cnn import FastBaselineCNN
    return FastBaselineCNN


KINDS = {"capsnet": (CapsNetConfig, MultiLabelCapsNet, fast_capsnet),
         "cnn": (CNNConfig, BaselineCNN, fast_cnn)}
DEFAULT_KIND = "capsnet"
IMPLS = ("fast", "reference")

# The networks train builds by name (model=...) when it is given no config: their configs.
LAYOUTS = {"capsnet": CapsNetConfig,          # the paper's CapsNet
           "cnn": CNNConfig.paper,            # its CNN baseline (section 5), 35.4 M at 28x28
           "cnn-pooled": CNNConfig.pooled,    # the max-pooling baseline of section 5.2
           "cnn-pooled-quick": CNNConfig.pooled_quick,   # the same, the quick CapsNet's size
           "cnn-released": CNNConfig.released}    # the MultiMNIST baseline of Table 1

# --preset of each kind: the layout ("model"), its config fields, and the recipe.
# capsnet "paper": the paper's network and learning rate; "quick": a smaller CapsNet (64
# conv1 channels, 16 primary capsule maps: 2.8 M parameters against 8.2 M, about 3x the
# images per second) at twice the learning rate, 2 epochs.
# cnn (fitted to the data's input size and classes): "paper", three 5x5 SAME convolutions
# of 256, 256, 128 channels, fc 328-192, dropout (35.4 M parameters at 28x28); "pooled", a
# 2x2 max-pool after conv1 and conv2 and fc 847-192 (the affNIST experiment's baseline:
# CapsNet's size at 40x40, 7.9 M parameters at 28x28); "pooled-quick", the same kind of
# network the size of the quick CapsNet at 40x40 (5x5 convolutions of 64, 128, 128, fc
# 404-192: 5,867,614 parameters against 5,865,792); "released", the authors' released
# baseline, 5x5 convolutions of 512 and 256 channels each with a 2x2 max-pool, fc 1024
# (Table 1's MultiMNIST CNN: 24.5 M parameters at 36x36).
PRESETS = {
    "capsnet": {"paper": {"model": "capsnet", "config": {}, "epochs": 1, "lr": 1e-3},
                "quick": {"model": "capsnet", "config": {"conv1_channels": 64,
                                                         "primary_maps": 16},
                          "epochs": 2, "lr": 2e-3}},
    "cnn": {"paper": {"model": "cnn", "config": {}, "epochs": 1, "lr": 1e-3},
            "pooled": {"model": "cnn-pooled", "config": {}, "epochs": 1, "lr": 1e-3},
            "pooled-quick": {"model": "cnn-pooled-quick", "config": {}, "epochs": 1,
                             "lr": 1e-3},
            "released": {"model": "cnn-released", "config": {}, "epochs": 1, "lr": 1e-3}},
}


def model_kind(network):
    """The kind of a network, or of its config: "capsnet" or "cnn"."""
    config = getattr(network, "config", network)
    for kind, (config_class, *_) in KINDS.items():
        if isinstance(config, config_class):
            return kind
    raise ValueError(f"not a minicaps network or config: {type(network).__name__}")


def build_model(config, impl="fast", **kw):
    """The network ``config`` describes, built with ``kw`` (seed, dtype, device, params, a
    fast CapsNet's conv_method): FastCapsNet or FastBaselineCNN, or with impl="reference"
    the reference class (MultiLabelCapsNet, BaselineCNN): the same parameters and results."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be 'fast' or 'reference', got {impl!r}")
    _, reference, fast = KINDS[model_kind(config)]
    return (fast() if impl == "fast" else reference)(config, **kw)


def layout_config(model="capsnet", **fields):
    """The config of the layout ``model`` names (LAYOUTS), with ``fields`` over its sizes."""
    if model not in LAYOUTS:
        raise ValueError(f"model must be one of {', '.join(LAYOUTS)}, got {model!r}")
    return LAYOUTS[model](**fields)
