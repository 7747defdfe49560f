"""A tiny run the run-folder tests share: a 1-epoch training on bars, seconds long (conftest's
``saved_run`` saves one per module, ``run_dir`` copies it fresh for each test)."""
from minicaps.gradcheck import tiny_config
from minicaps.training.run import train

from synthetic import bars_data

CONFIG = tiny_config(recon_weight=0.0005)
VICTIM_TEXT = b"someone else's file: not a run's\nline two\n"
SETTINGS = dict(batch_size=20, lr=0.01, shift=1, data=bars_data(60, 20), progress=False)


def quiet(line):
    pass


def run_tiny(out, epochs=1, log=quiet, **kw):
    return train(CONFIG, epochs=epochs, out_dir=out, **{**SETTINGS, "log": log, **kw})
