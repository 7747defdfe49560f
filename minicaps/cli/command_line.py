"""From a command line to the Namespace of one command: the parser built from each
command's module, intermixed parsing for predict, and the ranks of a distributed train
agreeing on their options."""
import argparse
import sys

from minicaps.cli import (bench, compare, curves, evaluate, export_weights, gradcheck, plot,
                          predict, robustness, train)
from minicaps.cli.options import Parser

# in the order `minicaps --help` lists them
COMMANDS = (gradcheck, train, evaluate, plot, curves, predict, compare, robustness,
            export_weights, bench)


def build_parser():
    parser = Parser(
        prog="minicaps",
        description="Capsule Networks (Sabour et al., 2017) written by hand on NumPy/CuPy.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    parser.commands = sub.choices          # {name: its parser}: parse_command_line's
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


# commands whose options may come between their positionals (predict a.png --pretrained
# b.png): parsed by argparse's intermixed parsing, which refuses a parser with subparsers,
# so their own subparser parses what follows the command's name
INTERMIXED = ("predict",)


def parse_command_line(argv, parser=None):
    """The Namespace of a command line (without the program's name)."""
    parser = parser or build_parser()
    if argv[:1] == ["bench"]:
        # everything after 'bench' belongs to bench/bench.py, its --help included
        return argparse.Namespace(command="bench", func=bench.cmd_bench, bench_args=argv[1:])
    if argv[:1] and argv[0] in INTERMIXED:
        return _parse_intermixed(parser.commands[argv[0]], argv[1:],
                                 argparse.Namespace(command=argv[0]))
    if argv[:1] and argv[0] in parser.commands:   # its errors then say "minicaps <command>"
        return parser.commands[argv[0]].parse_args(argv[1:], argparse.Namespace(command=argv[0]))
    return parser.parse_args(argv)


def _parse_intermixed(command, argv, namespace):
    """``command``'s intermixed parse of ``argv``, where everything after '--' is a
    positional, a name that starts with '-' (-w.png) included. Intermixed parsing would
    take such a name for an option, so each argument after '--' is parsed as a stand-in
    that cannot be one (no argument holds a NUL byte) and put back after."""
    if "--" not in argv:
        return command.parse_intermixed_args(argv, namespace)
    cut = argv.index("--") + 1
    names = {f"\0{k}": name for k, name in enumerate(argv[cut:])}
    args = command.parse_intermixed_args(argv[:cut] + list(names), namespace)

    def back(value):
        return names.get(value, value) if isinstance(value, str) else value
    for key, value in vars(args).items():
        setattr(args, key, [back(v) for v in value] if isinstance(value, list) else back(value))
    return args


def parse_on_every_rank(argv, parser):
    """(the Namespace, None) of a train command line started by mpiexec or srun on several
    ranks, or (None, its exit status) once every rank has learned that some rank's options
    were refused, or that the ranks' options differ: printed once, by rank 0."""
    import contextlib
    import io
    from minicaps.training import distributed
    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said):
            args, failure = parse_command_line(argv, parser), None
    except SystemExit as e:
        if not e.code:                               # --help: printed on every rank
            return None, 0
        args, failure = None, (said.getvalue().strip().splitlines() or [f"exit {e.code}"])[-1]
    comm = distributed.from_environment()
    if comm is None:                                 # the launcher started one rank only
        sys.stderr.write(said.getvalue())
        return args, None if failure is None else 2
    error = comm.disagreement(argv, failure)
    if error is not None:
        if comm.is_root:
            prefix = "" if error.startswith("minicaps") else "minicaps train: error: "
            print(f"{prefix}{error}", file=sys.stderr, flush=True)
        return None, 2
    args.comm = comm
    return args, None
