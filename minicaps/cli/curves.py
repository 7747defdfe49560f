"""minicaps curves: runs side by side, at equal images seen and at equal training time."""
from pathlib import Path

from minicaps.cli.options import DefaultsHelpFormatter, positive_int


def cmd_curves(args):
    from minicaps import viz
    from minicaps.io.files import output_folder
    runs, labels = [], []
    for given in args.runs:
        path = Path(given)
        metrics = path / "metrics.jsonl" if path.is_dir() else path
        rows = viz.read_metrics(metrics)
        seen, seconds, accuracy = viz.run_budget(rows, args.split)
        name = (path if path.is_dir() else path.parent).name or str(path)
        print(f"{name}: {len(rows)} epochs, {seen[-1]:,} images seen, {seconds[-1]:,.0f} s of "
              f"training, {args.split} accuracy {accuracy[-1]:.4f} at the end, "
              f"{max(accuracy):.4f} at best")
        runs.append(rows)
        labels.append(name)
    out = output_folder(Path(args.out))
    print(viz.plot_runs(runs, labels, out / "runs.png", split=args.split, dpi=args.dpi))
    return 0


def add_parser(sub):
    p = sub.add_parser(
        "curves", formatter_class=DefaultsHelpFormatter,
        help="runs side by side at equal images seen and equal training time",
        description="Draw the test (or validation) accuracy of two or more runs after each "
                    "of their epochs against the images (MultiMNIST: pairs) they had seen, "
                    "and against their training time, into OUT/runs.png: the comparison "
                    "at equal budgets, for example of a CapsNet and its CNN baseline. The "
                    "moving average's accuracy where a run kept one.")
    p.add_argument("runs", nargs="+", metavar="RUN",
                   help="a run folder (or its metrics.jsonl)")
    p.add_argument("--split", choices=("test", "val"), default="test",
                   help="which accuracy each epoch line gives")
    p.add_argument("--out", default="runs/curves", help="folder for runs.png")
    p.add_argument("--dpi", type=positive_int, default=100, help="resolution of the picture")
    p.set_defaults(func=cmd_curves)
