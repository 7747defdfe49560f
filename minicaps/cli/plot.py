"""minicaps plot: which pictures a checkpoint can draw, then viz.render draws them."""
import sys
from pathlib import Path

from minicaps.cli.checkpoints import load_checkpoint, named_classes
from minicaps.cli.evaluation_data import read_test_set
from minicaps.cli.options import (add_checkpoint_options, add_data_options,
                                  add_device_option, add_folder_options, add_weights_option,
                                  nonnegative_int, positive_int)
from minicaps.data.registry import dataset_names

PLOT_KINDS = ("reconstructions", "perturbation", "routing", "lengths", "curves", "confusion",
              "pairs")
CAPSULE_KINDS = ("reconstructions", "perturbation", "routing", "lengths", "pairs")   # a CapsNet's only
PAIR_KINDS = ("pairs", "curves")            # what a MultiMNIST network draws


def cmd_plot(args):
    from minicaps import viz
    from minicaps.io.files import output_folder
    from minicaps.nn.registry import model_kind
    from minicaps.data.dataset import to_model_input
    from minicaps.io.weights import metrics_beside
    ckpt = load_checkpoint(args)
    metrics = metrics_beside(args.checkpoint)
    kinds = args.kind or [k for k in PLOT_KINDS if k != "curves" or metrics.exists()]
    if model_kind(ckpt.model) != "capsnet":
        # capsule pictures need capsules: a CNN has curves and a confusion matrix to draw
        capsules = [k for k in kinds if k in CAPSULE_KINDS]
        if args.kind and capsules:
            raise ValueError(f"{args.checkpoint} holds the CNN baseline, which has no "
                             f"capsules: the capsule pictures ({', '.join(capsules)}) need "
                             f"a CapsNet; for a CNN give --kind curves or --kind confusion")
        if capsules:
            print(f"minicaps plot: {args.checkpoint} holds the CNN baseline: drawing "
                  f"{' and '.join(k for k in kinds if k not in capsules)} only; the capsule "
                  f"pictures ({', '.join(capsules)}) need a CapsNet", file=sys.stderr)
        kinds = [k for k in kinds if k not in capsules]
    from minicaps.training.config import settings_of
    if settings_of(ckpt).pairs_per_digit and args.dataset in (None, "multimnist"):
        # MultiMNIST: its picture is the paper's fig. 5; the others read one label a picture
        single = [k for k in kinds if k not in PAIR_KINDS]
        if args.kind and single:
            raise ValueError(f"{args.checkpoint} was trained on MultiMNIST pairs: "
                             f"{', '.join(single)} need one digit a picture; give --kind "
                             f"pairs or --kind curves")
        capsnet = model_kind(ckpt.model) == "capsnet"     # a CNN draws no pairs (no decoder)
        kinds = [k for k in kinds if k in PAIR_KINDS] if args.kind else (
            (["pairs"] if capsnet else []) + (["curves"] if metrics.exists() else []))
    elif args.kind and "pairs" in args.kind:
        raise ValueError("--kind pairs draws MultiMNIST pairs: it needs a network trained "
                         "with --dataset multimnist")
    else:
        kinds = [k for k in kinds if k != "pairs"]
    model = x = labels = weights = accuracy = classes = None
    dataset = args.dataset or "mnist"
    if any(k != "curves" for k in kinds):
        model, weights = ckpt.model_with(args.weights)
        # the test accuracy these weights had when the checkpoint was saved
        accuracy = ckpt.metrics.get("avg_test_accuracy" if weights == "average" else "test_accuracy")
        test, classes, dataset = read_test_set(args, ckpt)
        x, labels = to_model_input(test.images, model.dtype), test.labels
        classes = named_classes(classes)
    out = Path(args.out) if args.out else (
        Path("plots") if args.pretrained else Path(args.checkpoint).parent / "plots")
    output_folder(out)
    try:
        paths = viz.render(kinds, out, model, x, labels,
                           metrics=metrics,
                           indices=args.index, dpi=args.dpi, weights=weights,
                           accuracy=accuracy, dataset=dataset, classes=classes,
                           warn=lambda m: print(f"minicaps plot: warning: {m}", file=sys.stderr),
                           progress=not args.no_progress,
                           log=lambda m: print(m, file=sys.stderr))   # stdout: the paths alone
    except ImportError as e:
        print(f"minicaps plot: error: {e}", file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    return 0


def add_parser(sub):
    """The plot command's parser."""
    p = sub.add_parser(
        "plot", help="draw what a checkpoint learned (PNG files)",
        description="Draw pictures of a checkpoint into PNG files and print their paths: "
                    "reconstructions (inputs over their reconstructions), perturbation (the "
                    "paper's fig. 4: each pose dimension nudged over -0.25..0.25), routing "
                    "(coupling coefficients per routing iteration), lengths (capsule lengths "
                    "per class), curves (loss and accuracy per epoch from metrics.jsonl beside "
                    "the checkpoint), confusion (confusion matrix on the test set). A CNN "
                    "baseline has no capsules: curves and confusion only. Needs "
                    "matplotlib: pip install \"minicaps[viz]\".")
    add_checkpoint_options(p)
    p.add_argument("--kind", choices=PLOT_KINDS, action="append", default=None,
                   help="what to draw; repeat for several (default: all, curves only if "
                        "metrics.jsonl is there)")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="folder for the PNG files (default: plots/ beside the checkpoint)")
    p.add_argument("--index", type=nonnegative_int, nargs="+", metavar="I", default=None,
                   help="test images to draw (default: the first 8 for reconstructions, 4 for "
                        "lengths, 2 for perturbation, 1 for routing)")
    p.add_argument("--dataset", choices=dataset_names(), default=None,
                   help="which test set (default: the one the checkpoint was trained on)")
    add_data_options(p)
    add_folder_options(p)
    add_device_option(p)
    p.add_argument("--dpi", type=positive_int, default=100, help="pixels per inch of the PNGs (default 100)")
    add_weights_option(p)
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar while the whole test set is classified for the "
                        "confusion matrix (without a terminal: no progress lines on stderr, "
                        "which otherwise come every 30 s)")
    p.set_defaults(func=cmd_plot)
