"""The `minicaps` command: argparse front end only; the work happens in the library.
Each command is a module here (its parser and its cmd_ function); main parses, runs the
command, and says its errors in one line."""
import sys

from minicaps.cli.command_line import build_parser, parse_command_line, parse_on_every_rank
from minicaps.cli.options import use_math_mode
from minicaps.training import distributed


def main(argv=None):
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["train"] and distributed.launched_ranks() > 1:
        args, code = parse_on_every_rank(argv, parser)
        if args is None or code is not None:
            return code
    else:
        args = parse_command_line(argv, parser)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        use_math_mode(args)
        return args.func(args)
    except (ValueError, RuntimeError, OSError, ImportError) as e:
        from minicaps.io.files import os_error_said
        from minicaps.data.folder import printable          # a file name that is not UTF-8 prints too
        said = os_error_said(e) if isinstance(e, OSError) else None   # not "[Errno 20] ..."
        print(f"minicaps {args.command}: error: {printable(said or str(e))}", file=sys.stderr)
        return 2
    except MemoryError as e:
        advice = ("give a smaller --batch-size, or free memory" if hasattr(args, "batch_size")
                  else "free memory")           # only train and evaluate take a batch size
        print(f"minicaps {args.command}: error: out of memory ({e or 'an allocation failed'}); "
              f"{advice}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
