"""minicaps compare: two networks on one test set, where they differ, compare.png."""
import sys
from pathlib import Path

from minicaps.cli.checkpoints import named_classes
from minicaps.cli.networks import network_names, two_networks
from minicaps.cli.options import (WEIGHTS, add_data_options, add_device_option,
                                  add_folder_options, add_weights_option, positive_int)
from minicaps.data.registry import dataset_names


def cmd_compare(args):
    """Two networks on one test set: each one's accuracy, where they differ, compare.png."""
    import numpy as np
    from minicaps import viz
    from minicaps.io.files import output_folder
    from minicaps.backend import to_numpy
    from minicaps.data.dataset import to_model_input
    loaded, test, classes, dataset = two_networks(args)
    (path_a, _, model_a, _), (path_b, _, model_b, _) = loaded
    x = to_model_input(test.images, model_a.dtype)
    names = network_names(loaded)
    predictions = [model_a.predict(x), model_b.predict(x)]
    groups = viz.agreement(test.labels, *predictions)
    n = len(test.labels)
    print(f"{n} {dataset} test images:")
    for (path, _, model, weights), name, pred in zip(loaded, names, predictions):
        print(f"  {name:<10} {np.mean(pred == test.labels):.4f}  ({path}, "
              f"{model.num_params():,} parameters, {WEIGHTS[weights]})")
    print(f"  both right {len(groups['both'])}, only {names[0]} {len(groups['only_first'])}, "
          f"only {names[1]} {len(groups['only_second'])}, neither {len(groups['neither'])}")
    out = output_folder(Path(args.out) if args.out else Path(path_a).parent / "plots")
    try:
        path = viz.plot_compare(to_numpy(x), test.labels, predictions, names,
                                out / "compare.png", dpi=args.dpi, classes=named_classes(classes))
    except ImportError as e:
        print(f"minicaps compare: error: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0


def add_parser(sub):
    """The compare command's parser."""
    p = sub.add_parser(
        "compare", help="two networks on one test set: accuracies, where they differ, a picture",
        description="Test two checkpoints (e.g. a CapsNet and the CNN baseline trained for "
                    "affNIST) on the same test set: print each one's accuracy and how many "
                    "images both, only one or neither get right, and draw compare.png: test "
                    "images only the first gets right, only the second, and neither, with "
                    "both predictions. Needs matplotlib for the picture.")
    p.add_argument("first", metavar="CHECKPOINT", help="a .npz file written by train")
    p.add_argument("second", metavar="OTHER", help="another, trained on the same data")
    p.add_argument("--dataset", choices=dataset_names(), default=None,
                   help="which test set (default: the one both were trained on)")
    add_data_options(p)
    add_folder_options(p)
    add_device_option(p)
    add_weights_option(p)
    p.add_argument("--out", metavar="DIR", default=None,
                   help="folder for compare.png (default: plots/ beside the first checkpoint)")
    p.add_argument("--dpi", type=positive_int, default=100, help="pixels per inch of the PNG")
    p.set_defaults(func=cmd_compare)
