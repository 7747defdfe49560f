"""Routes chosen by measurement, as FFTW's planner and cuDNN's benchmark mode choose theirs.

The fast CapsNet can compute the same step several ways: the primary capsules' convolution
through im2col + GEMM or through the DFT (conv_fft.py), the digit capsules a chunk of 8, 16,
32 or 64 images at a time. Which is fastest depends on the CPU, the threads, the batch and
whether a backward pass follows. The first time a network meets a (batch, training or
inference) it times each candidate on inputs of that shape, with its own weights, keeps the
fastest, and writes the choice to a plan file keyed by the CPU model, the thread counts,
the network's shapes, the dtype and the minicaps version; a later process on the same
machine reads it instead of timing again. Only the speed and the float32 rounding depend on
the choice (tests/fast/test_plans.py compares the routes on the same inputs).

$MINICAPS_ROUTES picks the policy for networks built without one: "measure" (the default),
"auto" or "rules" (the fixed rules written before: conv_fft.fft_pays and chunks of 16),
"gemm" or "fft" (that route for the primary capsules' convolution, chunks of 16).
$MINICAPS_PLAN_FILE names the plan file (default: plans.json in $XDG_CACHE_HOME/minicaps,
else ~/.cache/minicaps).
"""
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from minicaps import backend

POLICIES = ("measure", "auto", "gemm", "fft")      # "auto": the fixed rules ("rules" too)
CAPSULE_CHUNKS = (8, 16, 32, 64)      # the digit capsules' candidate chunk sizes
ROUNDS = 3                            # timed rounds per candidate, taking turns; least kept
LEVEL = 0.03      # candidates within 3% of the fastest count as level: the least memory wins
MAX_TIMED_BATCH = 256     # larger batches take the fixed rules: no inputs that size are made
_known = {}               # plans of this process by key: measured once even when unsaved


def default_policy():
    """$MINICAPS_ROUTES, else "measure"."""
    policy = os.environ.get("MINICAPS_ROUTES", "").strip() or "measure"
    if canonical(policy) is None:
        raise ValueError(f"MINICAPS_ROUTES={policy!r}: give one of "
                         f"{', '.join(POLICIES + ('rules',))}")
    return canonical(policy)


def canonical(policy):
    """The policy's name in POLICIES ("rules" is "auto"), or None when it is none."""
    policy = "auto" if policy == "rules" else policy
    return policy if policy in POLICIES else None


def plan_file():
    """Where plans are kept: $MINICAPS_PLAN_FILE, else plans.json in the cache folder."""
    named = os.environ.get("MINICAPS_PLAN_FILE")
    if named:
        return Path(named).expanduser()
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "minicaps" / "plans.json"


def cpu_model():
    """The CPU's model name (Linux: /proc/cpuinfo), else what platform says."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def plan_key(shapes, batch, training, dtype):
    """The plan file's key: the machine (CPU model, threads), minicaps' version, and the
    problem (the network's shapes, the batch, training or inference, the dtype)."""
    from minicaps import __version__
    return json.dumps({"cpu": cpu_model(), "threads": backend.cpu_threads(),
                       "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
                       "minicaps": __version__, "shapes": shapes, "batch": int(batch),
                       "mode": "training" if training else "inference", "dtype": str(dtype)},
                      sort_keys=True)


def read_plans(path=None):
    """The plan file's {key: plan}; {} when it is missing, unreadable or not a plan file
    (it is then written anew: a plan is only ever a speed choice)."""
    import stat
    path = plan_file() if path is None else Path(path)
    try:          # non-blocking: a FIFO in its place must not hang the first forward pass
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                return {}
            text = f.read(1 << 22)              # plans are small; a huge file is not ours
        plans = json.loads(text)
    except (OSError, ValueError, RecursionError):
        return {}
    if not isinstance(plans, dict):
        return {}
    return {k: v for k, v in plans.items() if isinstance(k, str) and valid_plan(v)}


def valid_plan(plan):
    return (isinstance(plan, dict) and plan.get("primary") in ("gemm", "fft")
            and type(plan.get("capsule_chunk")) is int
            and plan["capsule_chunk"] in CAPSULE_CHUNKS)


def known_plan(key):
    """The plan of ``key``: this process's, else the plan file's (None: to be measured)."""
    if key in _known:
        return _known[key]
    saved = read_plans().get(key)
    if saved is not None:
        _known[key] = saved = dict(saved, how="plan file")
    return saved


def keep_plan(key, plan):
    """Remember ``plan`` in this process and add it to the plan file."""
    _known[key] = plan
    save_plan(key, plan)


def save_plan(key, plan, path=None):
    """Add ``plan`` under ``key`` to the plan file (written whole to a temp file, then
    renamed over it). A file that cannot be written leaves the plan in memory only."""
    path = plan_file() if path is None else Path(path)
    plans = read_plans(path)
    plans[key] = plan
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".plans.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w") as f:
            json.dump(plans, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
        return True
    except OSError:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        return False


def rules_plan(x_shape, w_shape, stride, training, policy="auto"):
    """The fixed rules: the DFT route where conv_fft.fft_pays counts it faster (training;
    for inference the spectrum is made by fixed_weights, which asks the same), else GEMM,
    chunks of 16; or the convolution route the policy forces."""
    from minicaps.fast.capsules import CAPSULE_CHUNK
    from minicaps.fast.conv_fft import fft_pays
    if policy in ("gemm", "fft"):
        primary = policy
    else:
        primary = "fft" if fft_pays(x_shape, w_shape, stride, training=training) else "gemm"
    return {"primary": primary, "capsule_chunk": CAPSULE_CHUNK,
            "how": "the fixed rules" if policy == "auto" else f"--routes {policy}"}


def best_times(candidates, rounds=ROUNDS):
    """{name: least seconds} of each candidate (a function of no arguments) over
    ``rounds`` rounds in which the candidates take turns, so that a slow moment of the
    machine falls on all of them alike. Each timed call comes right after an untimed one of
    the same candidate: it then finds memory laid out as its own last call left it, as a
    training step finds it step after step (timed straight after another candidate, the
    DFT route's 100 MB arrays met the GEMM's blocks and took fresh pages: 230 instead of
    160 ms at batch 32). The least time of the rounds, as other work on the machine only
    ever adds to a time."""
    times = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, fn in candidates.items():
            fn()
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: min(t) for name, t in times.items()}


def measure_plan(model, batch, training):
    """Time the candidate routes of ``model`` (a FastCapsNet on the CPU) for a batch of
    ``batch`` images, with its own weights and random inputs of the right shapes; returns
    the plan: the fastest of each, and every time measured (milliseconds)."""
    from minicaps.fast import conv_fft
    from minicaps.fast.capsules import (capsule_chunks, digit_capsules_backward,
                                        digit_capsules_forward)
    from minicaps.fast.conv import conv2d_backward, conv2d_forward
    cfg, p, xp = model.config, model.params, model.xp
    rng = np.random.default_rng(0)
    dtype = model.dtype
    W, b = p["primary.W"], p["primary.b"]
    h = xp.asarray(rng.random((batch, *cfg.conv1_out, cfg.conv1_channels), dtype=dtype))
    conv = {}
    if training:
        for method in ("gemm", "fft"):
            def step(method=method):
                out, cache = conv2d_forward(h, W, b, cfg.primary_stride, method=method)
                conv2d_backward(out, cache)
            conv[method] = step
    else:
        plan = conv_fft.dft_plan(h.shape, W.shape, cfg.primary_stride, W)
        spectrum = conv_fft.weight_spectrum(W, plan)
        made = best_times({"spectrum": lambda: conv_fft.weight_spectrum(W, plan)})
        conv["gemm"] = lambda: conv2d_forward(h, W, b, cfg.primary_stride, method="gemm",
                                              training=False)
        conv["fft"] = lambda: conv2d_forward(h, W, b, cfg.primary_stride, method="fft",
                                             training=False, spectrum=spectrum)
    conv_ms = best_times(conv)
    u = model.xp.asarray(rng.random((batch, cfg.num_primary_caps, cfg.primary_dims),
                                    dtype=dtype) - 0.5)
    Wd = p["digit.W"]
    caps, seen = {}, set()
    for chunk in CAPSULE_CHUNKS:
        split = tuple((s.start, s.stop) for s in capsule_chunks(batch, chunk))
        if split in seen:                     # the same chunks as a smaller size gave
            continue
        seen.add(split)

        def step(chunk=chunk):
            (v, _), cache = digit_capsules_forward(u, Wd, cfg.routing_iters, cfg.routing_grad,
                                                   cfg.squash_eps, chunk=chunk)
            if training:
                digit_capsules_backward(v, cache)
        caps[chunk] = step
    caps_ms = best_times(caps)
    primary = least_memory_of_the_fastest(conv_ms, ("gemm", "fft"))
    chunk = least_memory_of_the_fastest(caps_ms, sorted(caps_ms))
    ms = {"primary": {k: round(1e3 * v, 3) for k, v in conv_ms.items()},
          "capsule_chunk": {str(k): round(1e3 * v, 3) for k, v in caps_ms.items()}}
    if not training:        # made once per block of batches (fixed_weights), timed apart
        ms["spectrum"] = round(1e3 * made["spectrum"], 3)
    return {"primary": primary, "capsule_chunk": int(chunk), "how": "measured", "ms": ms}


def spectrum_pays(plan, batches):
    """Whether a block of ``batches`` inference passes is faster through the DFT, its
    weights' spectrum made once for the block, than through im2col + GEMM, by the plan's
    times (a plan without them: its route)."""
    ms = plan.get("ms") or {}
    conv, made = ms.get("primary") or {}, ms.get("spectrum")
    if made is None or not {"gemm", "fft"} <= set(conv):
        return plan["primary"] == "fft"
    return batches * conv["fft"] + made < batches * conv["gemm"] / (1 + LEVEL)


def least_memory_of_the_fastest(times, by_memory):
    """Of the candidates within LEVEL of the least time, the first in ``by_memory`` (the
    candidates from the least memory to the most): im2col + GEMM holds no weights'
    spectrum (100 MB for the paper's primary capsules), smaller chunks a smaller u_hat.
    Timings on a busy machine differ by a few percent from round to round: a route that
    is not clearly faster is not worth its memory."""
    best = min(times.values())
    return next(name for name in by_memory if name in times and times[name] <= best * (1 + LEVEL))


def describe(plan):
    """One line: the routes of a plan and how they were chosen."""
    how = {"measured": "measured here", "plan file": "measured before, from the plan file"}.get(
        plan.get("how"), plan.get("how"))
    conv = {"gemm": "im2col + GEMM", "fft": "the DFT route"}[plan["primary"]]
    return (f"primary capsules' convolution {conv}, digit capsules in chunks of at most "
            f"{plan['capsule_chunk']} ({how})")
