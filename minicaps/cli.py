"""The `minicaps` command: argparse front end only; the work happens in the library."""
import argparse
import sys


def cmd_gradcheck(args):
    from .gradcheck import report, format_table
    rows = report(seed=args.seed)
    print("Gradient check: central differences in float64 vs the hand-written backward passes")
    print(format_table(rows))
    bad = [r for r in rows if not r[2] <= r[3]]
    worst = max(rows, key=lambda r: r[2] / r[3])
    print(f"\n{len(rows) - len(bad)}/{len(rows)} checks within tolerance; "
          f"worst relative error {worst[2]:.2e} ({worst[0]}, {worst[1]})")
    return 1 if bad else 0


def build_parser():
    parser = argparse.ArgumentParser(
        prog="minicaps",
        description="Capsule Networks (Sabour et al., 2017) written by hand on NumPy/CuPy.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("gradcheck", help="prove every backward pass against finite differences",
                       description="Check every op and every parameter of small CapsNets "
                                   "(routing 'full' with 1 and 3 iterations, 'stop' with 3) "
                                   "against central finite differences in float64 and print "
                                   "the relative errors. Exit status 1 if any is above tolerance.")
    p.add_argument("--seed", type=int, default=0, help="seed for the random inputs (default 0)")
    p.set_defaults(func=cmd_gradcheck)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except (ValueError, RuntimeError, OSError) as e:
        print(f"minicaps {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
