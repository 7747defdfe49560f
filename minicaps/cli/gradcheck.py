"""minicaps gradcheck: every backward pass against central finite differences."""
from minicaps.cli.options import MODELS

GRADCHECK_NAMES = {"capsnet": "CapsNet", "cnn": "CNN baseline"}   # gradcheck's title


def cmd_gradcheck(args):
    from minicaps.gradcheck import report, format_table
    models = MODELS if args.model == "all" else (args.model,)
    rows = report(seed=args.seed, models=models)
    print(f"Gradient check of the {' and the '.join(GRADCHECK_NAMES[m] for m in models)}: "
          f"central differences in float64 vs the hand-written backward passes")
    print(format_table(rows))
    bad = [r for r in rows if not r[2] <= r[3]]
    worst = max(rows, key=lambda r: r[2] / r[3])
    print(f"\n{len(rows) - len(bad)}/{len(rows)} checks within tolerance; closest to its "
          f"tolerance: {worst[0]}, {worst[1]}: {worst[2]:.2e} (<= {worst[3]:g})")
    return 1 if bad else 0


def add_parser(sub):
    """The gradcheck command's parser."""
    p = sub.add_parser("gradcheck", help="prove every backward pass against finite differences",
                       description="Check every op and every parameter of small CapsNets "
                                   "(routing 'full' with 1 and 3 iterations, 'stop' with 3), "
                                   "reference and fast, against central finite differences in "
                                   "float64 and print the relative errors. --model cnn checks "
                                   "the CNN baseline instead (its layers: SAME convolution, "
                                   "max-pooling, dropout, softmax cross-entropy; and two small "
                                   "CNN baselines); --model all, both. Exit status 1 if any "
                                   "is above tolerance.")
    p.add_argument("--model", choices=(*MODELS, "all"), default="capsnet",
                   help="which network to check: capsnet, cnn (the paper's CNN baseline) or "
                        "all (default: capsnet)")
    p.add_argument("--seed", type=int, default=0, help="seed for the random inputs (default 0)")
    p.set_defaults(func=cmd_gradcheck)
