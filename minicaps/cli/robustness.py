"""minicaps robustness: two networks' accuracy under each transformation alone."""
import argparse
import sys
from pathlib import Path

from minicaps.cli.evaluation_data import read_test_set
from minicaps.cli.networks import network_names, two_networks
from minicaps.cli.options import (DefaultsHelpFormatter, add_data_options,
                                  add_device_option, add_folder_options, add_weights_option,
                                  nonnegative_int, positive_int, robustness_steps)
from minicaps.data.registry import dataset_names
from minicaps.data.registry import AFFINE_SETS


def _digits_to_transform(args, ckpt):
    """The test set robustness transforms: compare's (read_test_set), except MNIST's test
    digits for networks trained on expanded MNIST (their affNIST test set is transformed
    already)."""
    from minicaps.training.config import settings_of
    if (args.dataset or settings_of(ckpt).dataset) in AFFINE_SETS:
        args = argparse.Namespace(**{**vars(args), "dataset": "mnist"})
    return read_test_set(args, ckpt)


def cmd_robustness(args):
    """Two networks' accuracy under each transformation alone: a table, robustness.json
    and robustness.png."""
    import json
    from minicaps import viz
    from minicaps.io.writer import replace_file
    from minicaps.io.files import output_folder
    from minicaps.training.robustness import (at_each_strength, check_canvas, robustness,
                                              strength_text)
    loaded, test, _, dataset = two_networks(args, _digits_to_transform)
    height, width, _ = loaded[0][2].config.input_shape
    if height != width:
        raise ValueError(f"robustness transforms on a square canvas; these networks take "
                         f"{height}x{width} images")
    check_canvas(test.images.shape[1:], height)
    names = network_names(loaded)
    n = len(test.labels)
    print(f"{n} {dataset} test images, each transformed alone on the {height}x{width} "
          f"canvas (seed {args.seed}; strength 0: the image centred, untransformed):")
    print(f"  {'transformation':<15}{'strength':<13}" + "".join(f"{m:>14}" for m in names))

    def show(row):
        print(f"  {row['transformation']:<15}"
              f"{strength_text(row['transformation'], row['strength']):<13}"
              + "".join(f"{a:>14.2%}" for a in row["accuracy"]), flush=True)

    rows = robustness([model for _, _, model, _ in loaded], test.images, test.labels, height,
                      args.steps, args.seed, args.batch_size, log=show)
    out = output_folder(Path(args.out) if args.out else Path(loaded[0][0]).parent / "plots")
    numbers = {"checkpoints": [str(p) for p, *_ in loaded], "names": names,
               "weights": [w for *_, w in loaded], "dataset": dataset, "images": n,
               "canvas": height, "steps": args.steps, "seed": args.seed, "rows": rows}
    replace_file(out / "robustness.json",
                 lambda f: f.write(json.dumps(numbers, indent=1).encode()),
                 inputs=[args.first, args.second])
    print(out / "robustness.json")
    legend = [f"{name}: {Path(p).parent.name}/{Path(p).name}"
              for name, (p, *_) in zip(names, loaded)]
    try:
        path = viz.plot_robustness(
            rows, legend, out / "robustness.png", dpi=args.dpi,
            examples=at_each_strength(test.images, height, args.steps, args.seed),
            title=f"Test accuracy under each transformation alone: {n} {dataset} test "
                  f"images on {height}x{width} (strength 0: centred, untransformed)")
    except ImportError as e:
        print(f"minicaps robustness: error: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0


def add_parser(sub):
    """The robustness command's parser."""
    p = sub.add_parser(
        "robustness", formatter_class=DefaultsHelpFormatter,
        help="two networks' accuracy under rotation, shear, scale and translation, each alone",
        description="Test two checkpoints (e.g. a CapsNet and the CNN baseline trained on "
                    "expanded MNIST) on their test set under one transformation at a time, "
                    "at growing strength: rotation 0-60 degrees and shear 0-0.6, each with a "
                    "sign drawn per image; scale 0.6-1.4 (1: unchanged) along both axes; a "
                    "move of 0-12 pixels in a direction drawn per image, rounded to whole "
                    "pixels. Each image is centred on the networks' input canvas and "
                    "transformed about its centre (bilinear); what leaves the canvas is lost, "
                    "moved ink included. Strength 0 is the centred, untransformed image. "
                    "Networks trained on expanded MNIST (--dataset affnist) are tested on "
                    "MNIST's test digits on 40x40. Prints a table, writes robustness.json "
                    "and robustness.png (one panel per transformation, both networks in "
                    "each; needs matplotlib).")
    p.add_argument("first", metavar="CHECKPOINT", help="a .npz file written by train")
    p.add_argument("second", metavar="OTHER",
                   help="another, with the same input size and classes")
    p.add_argument("--dataset", choices=dataset_names(), default=None,
                   help="which test set (default: the one both were trained on)")
    add_data_options(p)
    add_folder_options(p)
    p.add_argument("--steps", type=robustness_steps, metavar="K", default=4,
                   help="strengths from none to the strongest: K+1 per transformation, "
                        "2K+1 scale factors")
    p.add_argument("--seed", type=nonnegative_int, default=0,
                   help="seed for the signs and directions drawn per image")
    p.add_argument("--batch-size", type=positive_int, default=256,
                   help="images per forward pass")
    add_device_option(p)
    add_weights_option(p)
    p.add_argument("--out", metavar="DIR", default=None,
                   help="folder for robustness.json and robustness.png (default: plots/ "
                        "beside the first checkpoint)")
    p.add_argument("--dpi", type=positive_int, default=100, help="pixels per inch of the PNG")
    p.set_defaults(func=cmd_robustness)
