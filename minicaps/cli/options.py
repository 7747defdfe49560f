"""What several commands share: the argument types (a bad value is one line, exit status 2),
the option groups, the parser and its help formatter, and the choices of the options."""
import argparse
import math
from pathlib import Path

from minicaps.data.multimnist import MAX_PAIRS_PER_DIGIT
from minicaps.nn.registry import PRESETS as NETWORK_PRESETS
from minicaps.training.robustness import MAX_STEPS

# --preset: the network and the recipe (nn/registry.py says what each preset is), of
# --model capsnet and of --model cnn
PRESETS = NETWORK_PRESETS["capsnet"]
CNN_PRESETS = NETWORK_PRESETS["cnn"]
MODELS = ("capsnet", "cnn")                       # --model
WEIGHTS = {"average": "moving average of the parameters", "trained": "trained parameters"}


# --- argument types: a bad value is an argparse error (one line, exit status 2) -----------

def _number(convert, ok, must, name):
    """An argparse type: ``convert(text)``, refused unless ``ok(value)`` ("must <must>")."""
    def parse(text):
        value = convert(text)
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must {must}, got {text}")
        return value
    parse.__name__ = name          # argparse's "invalid <name> value" for unparsable text
    return parse


positive_int = _number(int, lambda v: v >= 1, "be a positive integer", "positive_int")
nonnegative_int = _number(int, lambda v: v >= 0, "be 0 or more", "nonnegative_int")
positive_float = _number(float, lambda v: v > 0 and math.isfinite(v),
                         "be a finite positive number", "positive_float")
rate = _number(float, lambda v: 0 < v <= 1, "lie in (0, 1] (such as 0.96)", "rate")
decay = _number(float, lambda v: 0 < v < 1, "lie between 0 and 1 (such as 0.999)", "decay")
pairs_per_digit = _number(int, lambda v: 1 <= v <= MAX_PAIRS_PER_DIGIT,
                          f"be an integer from 1 to {MAX_PAIRS_PER_DIGIT} (the paper: 1000)",
                          "pairs_per_digit")


def image_size(text):
    from minicaps.data.folder import parse_image_size
    try:
        return parse_image_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


robustness_steps = _number(int, lambda v: 1 <= v <= MAX_STEPS,
                           f"be an integer from 1 to {MAX_STEPS}", "robustness_steps")
fraction = _number(float, lambda v: 0 < v < 1, "lie between 0 and 1 (such as 0.1)", "fraction")


def folder(text):
    """An existing folder (a data root): a typo is said, not created."""
    if not Path(text).expanduser().is_dir():
        raise argparse.ArgumentTypeError(f"{text} is not a folder; give the folder that holds "
                                         f"the data files")
    return text


def add_device_option(p):
    p.add_argument("--device", choices=("cpu", "gpu"), default=None,
                   help="where to compute (default: $MINICAPS_DEVICE, else cpu)")
    p.add_argument("--tf32", action="store_true",
                   help="let the GPU's float32 matrix products use TF32 tensor cores (faster; "
                        "their inputs rounded to 10 bits of mantissa). Without it float32 "
                        "stays strict float32. Needs --device gpu")


def use_math_mode(args):
    """Switch TF32 on for the GPU when --tf32 asks (a clear error on the CPU)."""
    if getattr(args, "tf32", False):
        from minicaps import backend
        if backend.resolve_device(args.device) != "gpu":
            raise ValueError("--tf32 is a math mode of the GPU: give --device gpu "
                             "(or set MINICAPS_DEVICE=gpu)")
        backend.set_tf32(True)


def add_weights_option(p):
    from minicaps.io.checkpoint import WEIGHT_CHOICES
    p.add_argument("--weights", choices=WEIGHT_CHOICES, default="auto",
                   help="which parameters of the checkpoint: the moving average of the "
                        "parameters that train keeps, the trained ones, or auto: the average "
                        "if the checkpoint has one (default: auto)")


def add_data_options(p):
    p.add_argument("--data-root", metavar="DIR", type=folder, default=None,
                   help="folder with the IDX files (.gz or not), directly or in "
                        "DIR/<dataset>/; default $MINICAPS_DATA, else a per-user cache "
                        "(downloaded there if missing)")
    p.add_argument("--limit-test", type=positive_int, metavar="N", default=None,
                   help="evaluate on the first N test images only (default: all 10000)")


def add_checkpoint_options(p):
    """CHECKPOINT or --pretrained: the network evaluate, plot and predict read
    (checkpoints.load_checkpoint)."""
    p.add_argument("checkpoint", metavar="CHECKPOINT", nargs="?", default=None,
                   help="a .npz file written by train (or by export-weights)")
    p.add_argument("--pretrained", action="store_true",
                   help="use the network that ships with minicaps (the paper's, trained on "
                        "MNIST) instead of a CHECKPOINT")


def add_folder_options(p):
    p.add_argument("--data-dir", metavar="DIR", type=folder, default=None,
                   help="your own images: DIR holds one subfolder per class (DIR/cat/*.png, "
                        "DIR/dog/*.jpg), or DIR/train/<class>/ and DIR/test/<class>/; "
                        "instead of --dataset")


class Parser(argparse.ArgumentParser):
    """argparse's parser, whose errors are one line (what was wrong, where to read more)
    instead of the usage block followed by the error."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: ...)" to each option's help unless the help already says it
    or there is no default to tell (None, or False for a flag)."""

    def _get_help_string(self, action):
        if "(default:" in (action.help or "") or action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)
