"""The networks: the paper's CapsNet (capsnet.py, its sizes in capsnet_config.py) and its CNN
baselines (cnn.py), each a config dataclass and a network holding its parameters in one dict
keyed by name (base.py: what every network shares), with a forward and a backward pass
written by hand from minicaps.ops; multi_label.py adds K labels an image (MultiMNIST) and
the training loop's options to a CapsNet. registry.py names every kind of network with its
reference and fast classes (minicaps/fast/), the layouts train builds by name and the
presets of ``minicaps train``."""
