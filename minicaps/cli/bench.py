"""minicaps bench: bench/bench.py of the source checkout, given the arguments unchanged."""
import argparse
from pathlib import Path


def cmd_bench(args):
    # bench/ sits beside the package in a source checkout; it is not installed with it
    bench_file = Path(__file__).resolve().parents[2] / "bench" / "bench.py"
    if not bench_file.exists():
        raise RuntimeError(f"the benchmark lives in bench/bench.py of a source checkout, not found "
                           f"at {bench_file}; clone the repository and install it with pip install -e .")
    import importlib.util
    spec = importlib.util.spec_from_file_location("minicaps_bench", bench_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.bench_main(args.bench_args)


def add_parser(sub):
    """The bench command's parser."""
    p = sub.add_parser(
        "bench", help="time minicaps (and PyTorch, if installed) per layer and per step",
        description="Run bench/bench.py of the source checkout: per-layer forward/backward "
                    "times, training step, inference, images/s, GFLOP/s, fraction of the GEMM "
                    "peak and peak memory at batch 32 and 128, on numpy, on cupy when a GPU is "
                    "present and on PyTorch when it is importable. Arguments after 'bench' go "
                    "to it unchanged, e.g. 'minicaps bench --quick' or 'minicaps bench --help'.",
        add_help=False)
    p.add_argument("bench_args", nargs=argparse.REMAINDER, help="arguments for bench/bench.py")
    p.set_defaults(func=cmd_bench)
