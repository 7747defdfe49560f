"""The networks: the paper's CapsNet (capsnet.py) and its CNN baselines (cnn.py), each a
config dataclass and a network holding its parameters in one dict keyed by name, with a
forward and a backward pass written by hand from minicaps.ops. registry.py names every kind
of network, the layouts train builds by name and the presets of ``minicaps train``."""
