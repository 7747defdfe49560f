"""minicaps export-weights: a checkpoint's weights alone, without its training state."""
from minicaps.cli.options import add_weights_option


def cmd_export_weights(args):
    from minicaps.io.weights import export_weights
    path = export_weights(args.checkpoint, args.out, weights=args.weights, dtype=args.dtype)
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB): the {args.weights} weights "
          f"of {args.checkpoint} in {args.dtype}; use it as a CHECKPOINT of evaluate, plot "
          f"and predict")
    return 0


def add_parser(sub):
    """The export-weights command's parser."""
    p = sub.add_parser(
        "export-weights", help="write a checkpoint's weights alone (float16: 1/8 of its size)",
        description="Write the weights of a checkpoint without its training state (Adam's "
                    "moments, the random state) into a smaller .npz that evaluate, plot and "
                    "predict read like a checkpoint; its provenance (epoch, step, settings) "
                    "comes along.")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="a .npz file written by train")
    p.add_argument("out", metavar="OUT", help="the weights file to write, e.g. weights.npz")
    add_weights_option(p)
    p.add_argument("--dtype", choices=("float16", "float32", "float64"), default="float16",
                   help="how the weights are stored (default: float16)")
    p.set_defaults(func=cmd_export_weights)
