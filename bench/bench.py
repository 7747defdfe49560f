"""Benchmark minicaps against an independent PyTorch CapsNet on the same machine.

    python bench/bench.py                 # batches 32 and 128, numpy (+ cupy, + torch CPU/CUDA if present)
    python bench/bench.py --quick         # tiny network, a few seconds (the smoke test)
    python bench/bench.py --scaling       # time and memory against batch size and routing iterations
    python bench/bench.py --cnn pooled    # the CNN baseline (--preset pooled) against PyTorch's
    python bench/bench.py --no-cpu --batches 100 128 --json-lines r.jsonl   # the GPU's rows, each
                                          # appended to r.jsonl as soon as it is measured
    bench_main(["--quick"])               # the same from Python (``minicaps bench`` calls this)

What is measured (medians of --repeats runs after --warmup runs):

* train step: ``loss_and_grads`` + ``Adam.step`` for minicaps, forward + backward + Adam for
  torch; both start from the same parameters (copied into torch with load_minicaps_params), the
  same images and labels, float32.
* inference: predicting a stream of --infer-batches batches (default 8) and dividing the time by
  their number: one ``FastCapsNet.predict`` call for minicaps (no decoder; it holds the weights fixed
  over its batches, so the primary capsules' weight spectrum is made once per call where the DFT
  route pays, see ``FastCapsNet.fixed_weights``), ``torch_infer`` on each batch in turn for torch (no
  autograd; its forward also runs the decoder, under 1% of the FLOPs).
* per layer: minicaps' forward and backward ops timed one by one, in the order the model calls them
  (the capsule part in the model's chunks).
* GFLOP/s from the analytic FLOP counts of ``flop_counts`` (a multiply-add is 2 FLOPs; only the
  products and sums of the network's equations, not softmax/squash/elementwise work, which is
  under 1%); fraction of GEMM peak = GFLOP/s of the train step / GFLOP/s of one large float32
  matmul measured in the same run (the best of two measurements, at the start and at the end).
* peak memory: every (library, batch) runs in a fresh child process; after building the model,
  optimizer and data it resets the kernel's peak-RSS mark (Linux ``/proc/self/clear_refs``) and
  notes the resident MB, runs the steps and reads the peak (``VmHWM``). ``peak MB`` is the
  difference: what the steps added at their worst (activations, gradients, optimizer state,
  allocator caches). Without /proc, the ``ru_maxrss`` high-water mark before and after. Train
  and inference run in separate children (in --quick mode one child runs inference, then
  training). On the GPU, the bytes held by CuPy's memory pool instead, and for torch
  ``torch.cuda.max_memory_allocated`` over the steps minus what was allocated before them.
* on a GPU, torch runs on CUDA too (eager mode, TF32 switched off in cuDNN and in products,
  as minicaps computes strict float32; with --tf32 both let their float32 products use TF32),
  and the GPU ratios compare the two there.
* ratios minicaps / torch come from numbers taken in the same run, batch by batch.

The machine may be shared: compare numbers from one run, not across runs.
"""
import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# minicaps before NumPy, as the minicaps command does: backend sets OpenBLAS's idle-thread
# timeout, which OpenBLAS reads when NumPy loads it (backend.blas_thread_timeout).
from minicaps import backend  # noqa: E402
import numpy as np  # noqa: E402

from minicaps.nn.capsnet import CapsNetConfig, init_params  # noqa: E402
from minicaps.nn.cnn import CNNConfig  # noqa: E402
from minicaps.nn.registry import build_model  # noqa: E402

QUICK_CONFIG = dict(input_shape=(12, 12, 1), conv1_channels=16, conv1_kernel=3, primary_maps=4,
                    primary_dims=4, primary_kernel=3, primary_stride=2, num_classes=4,
                    digit_dims=8, decoder_sizes=(16, 32))
LAYERS = ("conv1", "primary conv", "primary caps", "u_hat", "routing", "lengths+margin",
          "decoder")


# ------------------------------------------------------------------ FLOPs
def flop_counts(cfg):
    """Analytic FLOPs per image, {layer: (forward, backward)}; a multiply-add counts 2.

    conv: 2 Ho Wo kh kw C_in C_out forward; backward dW the same and dx the same again
    (conv1 needs no dx). u_hat: 2 I J D_out D_in forward, twice that backward (du and dW).
    routing with r iterations: r weighted sums and r - 1 agreements forward, each 2 I J D;
    backward ("full") r agreements, r - 1 weighted sums and the 2r - 1 outer products that
    build du_hat; ("stop") one outer product. decoder: 2 (in*out) per dense layer forward,
    twice that backward (dx and dW). Lengths, margin, squash, softmax: O(J D) or O(I J),
    not counted.
    """
    H, W, C = cfg.input_shape
    h1, w1 = cfg.conv1_out
    gh, gw = cfg.primary_grid
    k1, k2 = cfg.conv1_kernel, cfg.primary_kernel
    ch, pc = cfg.conv1_channels, cfg.primary_maps * cfg.primary_dims
    I, J, D, d = cfg.num_primary_caps, cfg.num_classes, cfg.digit_dims, cfg.primary_dims
    r = cfg.routing_iters
    conv1 = 2 * h1 * w1 * k1 * k1 * C * ch
    primary = 2 * gh * gw * k2 * k2 * ch * pc
    u_hat = 2 * I * J * D * d
    pass_ = 2 * I * J * D
    routing_b = (4 * r - 2) * pass_ if cfg.routing_grad == "full" else pass_
    dec = 0
    if cfg.use_decoder:
        sizes = (J * D,) + tuple(cfg.decoder_sizes) + (H * W * C,)
        dec = sum(2 * a * b for a, b in zip(sizes[:-1], sizes[1:]))
    return {"conv1": (conv1, conv1), "primary conv": (primary, 2 * primary),
            "primary caps": (0, 0), "u_hat": (u_hat, 2 * u_hat),
            "routing": ((2 * r - 1) * pass_, routing_b), "lengths+margin": (0, 0),
            "decoder": (dec, 2 * dec)}


def cnn_flop_counts(cfg):
    """CNNConfig's FLOPs per image, {layer: (forward, backward)}: SAME convolutions
    2 H W k k C_in C_out forward, twice that backward (dW and dx; conv1 needs no dx);
    dense layers 2 (in*out) forward, twice backward. Pooling, ReLU, dropout, softmax: not
    counted."""
    k, out = cfg.conv_kernel, {}
    for l, (h, w, c_in, c_out, _) in enumerate(cfg.conv_layers(), start=1):
        f = 2 * h * w * k * k * c_in * c_out
        out[f"conv{l}"] = (f, f if l == 1 else 2 * f)
    sizes = (int(np.prod(cfg.feature_shape)),) + tuple(cfg.fc_sizes) + (cfg.num_classes,)
    for l, (a, b) in enumerate(zip(sizes[:-1], sizes[1:]), start=1):
        out[f"fc{l}"] = (2 * a * b, 4 * a * b)
    return out


def flops_per_image(cfg):
    if isinstance(cfg, CNNConfig):
        f = cnn_flop_counts(cfg)
        fwd, bwd = sum(a for a, _ in f.values()), sum(b for _, b in f.values())
        return {"forward": fwd, "backward": bwd, "train": fwd + bwd, "inference": fwd}
    f = flop_counts(cfg)
    fwd = sum(a for a, _ in f.values())
    return {"forward": fwd, "backward": sum(b for _, b in f.values()), "train": fwd + sum(b for _, b in f.values()),
            "inference": fwd - f["decoder"][0]}


# ------------------------------------------------------------------ timing helpers
def _median_time(fn, repeats, warmup, sync=lambda: None):
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _maxrss_mb():
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 2 ** 20 if sys.platform == "darwin" else r / 1024.0


def _proc_status_mb(key):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def memory_mark():
    """Start a memory measurement; returns the resident MB it counts from.

    On Linux the kernel's peak-RSS mark is reset (/proc/self/clear_refs), so the
    setup's temporaries do not hide the steps' peak, and the count starts from what
    is resident now. Elsewhere: the ru_maxrss high-water mark so far.
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        now = _proc_status_mb("VmRSS")
        if now is not None:
            return now
    except OSError:
        pass
    return _maxrss_mb()


def memory_peak():
    """Peak resident MB since memory_mark (VmHWM), or ru_maxrss."""
    return _proc_status_mb("VmHWM") or _maxrss_mb()


def gemm_peak(device="cpu", n=4096, repeats=3):
    """GFLOP/s of an n x n float32 matmul (NumPy/OpenBLAS, or CuPy/cuBLAS on the GPU)."""
    xp = backend.xp_for(device)
    rng = np.random.default_rng(0)
    a = xp.asarray(rng.random((n, n), dtype=np.float32))
    b = xp.asarray(rng.random((n, n), dtype=np.float32))
    sync = lambda: backend.synchronize()
    t = _median_time(lambda: a @ b, repeats, 1, sync)
    return 2 * n ** 3 / t / 1e9


def _data(cfg, batch, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((batch,) + tuple(cfg.input_shape), dtype=np.float32)
    y = rng.integers(0, cfg.num_classes, batch)
    return x, y


# ------------------------------------------------------------------ minicaps per layer
def layer_times(model, x, y, repeats=3, warmup=1):
    """{layer: (forward s, backward s)}: the fast model's ops timed one by one (medians)."""
    from minicaps import fast       # the fast model's ops (minicaps.fast re-exports the rest)
    cfg, p, xp = model.config, model.params, model.xp
    sync = lambda: backend.synchronize()
    x = model.check_x(x)
    y = backend.to_device(y, model.device)
    N = x.shape[0]
    samples = {name: ([], []) for name in LAYERS}
    plan = model.plan_for(N, training=True)       # the routes the model's own step takes
    first = "gemm" if model.conv_method == "gemm" else "auto"
    second = "auto" if model.conv_method == "auto" else plan["primary"]

    def timed(name, k, fn, *args, **kw):
        sync()
        t0 = time.perf_counter()
        out = fn(*args, **kw)
        sync()
        samples[name][k].append(time.perf_counter() - t0)
        return out

    def conv1_f():
        h, c1 = fast.conv2d_forward(x, p["conv1.W"], p["conv1.b"], cfg.conv1_stride,
                                    method=first)
        h, r1 = fast.relu_forward(h, out=h)
        return h, (c1, r1)

    def primary_f(h):
        h2, c2 = fast.conv2d_forward(h, p["primary.W"], p["primary.b"], cfg.primary_stride,
                                     method=second)
        r2 = None
        if cfg.primary_relu:
            h2, r2 = fast.relu_forward(h2, out=h2)
        return h2, (c2, r2)

    chunks = fast.capsule_chunks(N, plan["capsule_chunk"],        # the model's, one after
                                 gpu=model.device == "gpu")       # another

    def u_hat_f(u):
        return [fast.predictions_forward(u[rows], p["digit.W"]) for rows in chunks]

    def routing_f(preds):
        outs = [fast.routing_forward(u_hat, cfg.routing_iters, cfg.routing_grad, cfg.squash_eps)
                for u_hat, _ in preds]
        return xp.concatenate([v for (v, _), _ in outs]), [rc for _, rc in outs]

    def margin_f(v):
        lengths, lc = fast.length_forward(v, cfg.squash_eps)
        _, mc = fast.margin_loss_forward(lengths, y, cfg.m_plus, cfg.m_minus, cfg.lam)
        return lc, mc

    def decoder_f(v):
        caches = []
        r, mc = fast.mask_forward(v, fast.one_hot(y, cfg.num_classes, model.dtype))
        n_dec = len(cfg.decoder_sizes) + 1
        for k in range(1, n_dec + 1):
            r, dc = fast.dense_forward(r, p[f"dec{k}.W"], p[f"dec{k}.b"])
            rc = None
            if k < n_dec:
                r, rc = fast.relu_forward(r, out=r)
            caches.append((dc, rc))
        r, sc = fast.sigmoid_forward(r)
        _, lc = fast.reconstruction_loss_forward(r, x.reshape(N, -1))
        return mc, caches, sc, lc

    def decoder_b(cache):
        mc, caches, sc, lc = cache
        dr = fast.sigmoid_backward(fast.reconstruction_loss_backward(cfg.recon_weight, lc), sc)
        for dc, rc in reversed(caches):
            if rc is not None:
                dr = fast.relu_backward(dr, rc, out=dr)
            dr, _, _ = fast.dense_backward(dr, dc)
        return fast.mask_backward(dr, mc)

    for it in range(warmup + repeats):
        h, c1 = timed("conv1", 0, conv1_f)
        h2, c2 = timed("primary conv", 0, primary_f, h)
        u, cc = timed("primary caps", 0, fast.primary_capsules_forward, h2, cfg.primary_dims,
                      cfg.squash_eps)
        preds = timed("u_hat", 0, u_hat_f, u)
        v, rcs = timed("routing", 0, routing_f, preds)
        lc, mc = timed("lengths+margin", 0, margin_f, v)
        dec = timed("decoder", 0, decoder_f, v) if cfg.use_decoder else None
        dv = timed("lengths+margin", 1, lambda: fast.length_backward(
            fast.margin_loss_backward(1.0, mc), lc))
        if dec is not None:
            dv = dv + timed("decoder", 1, decoder_b, dec)
        du_hats = timed("routing", 1, lambda: [
            fast.routing_backward(dv[rows], rc) for rows, rc in zip(chunks, rcs)])
        du = timed("u_hat", 1, lambda: xp.concatenate([
            fast.predictions_backward(g, pc)[0] for g, (_, pc) in zip(du_hats, preds)]))
        dh2 = timed("primary caps", 1, fast.primary_capsules_backward, du, cc)

        def primary_b():
            d = dh2
            if c2[1] is not None:
                d = fast.relu_backward(d, c2[1], out=d)
            return fast.conv2d_backward(d, c2[0])[0]

        dh = timed("primary conv", 1, primary_b)
        timed("conv1", 1, lambda: fast.conv2d_backward(fast.relu_backward(dh, c1[1], out=dh),
                                                        c1[0], need_dx=False))
        if it < warmup:
            for f, b in samples.values():
                f.clear()
                b.clear()
    return {name: (statistics.median(f) if f else 0.0, statistics.median(b) if b else 0.0)
            for name, (f, b) in samples.items()}


# ------------------------------------------------------------------ workers (one per child)
def _spec_config(spec):
    return (CNNConfig.from_dict(spec["config"]) if spec.get("cnn")
            else CapsNetConfig(**spec["config"]))


def _run_minicaps(spec):
    from minicaps.training.optim import Adam
    cfg = _spec_config(spec)
    device = spec["device"]
    if spec.get("cnn"):          # the CNN baseline, its fast class (build_model's default)
        model = build_model(cfg, seed=0, dtype="float32", device=device)
    else:
        model = build_model(cfg, seed=0, dtype="float32", device=device,
                            conv_method=spec.get("conv", "measure"))
    opt = Adam()
    x, y = _data(cfg, spec["batch"])
    sync = lambda: backend.synchronize()
    gpu = device == "gpu"
    if gpu and spec.get("tf32"):
        backend.set_tf32(True)
    if hasattr(model, "plan_for"):     # the routes chosen (timed, or read) before memory counts
        model.plan_for(spec["batch"], True)
        model.plan_for(spec["batch"], False)
    out = {}
    for phase in spec["phases"]:
        base = backend.gpu_pool_bytes() / 2 ** 20 if gpu else memory_mark()
        if phase == "infer":
            k = spec["infer_batches"]
            xd = backend.to_device(_data(cfg, k * spec["batch"])[0], device)
            sec = _median_time(lambda: model.predict(xd, batch_size=spec["batch"]),
                               spec["repeats"], spec["warmup"], sync) / k
        elif phase == "train":
            xd, yd = backend.to_device(x, device), backend.to_device(y, device)

            def step():        # as train_epoch steps, reading the loss once (as PyTorch's step)
                loss, grads, _ = model.loss_and_grads(xd, yd, check_values=False, host_losses=False)
                opt.step(model.params, grads)
                return float(loss)

            sec = _median_time(step, spec["repeats"], spec["warmup"], sync)
        else:
            out["layers"] = {k: list(v) for k, v in layer_times(model, x, y, spec["repeats"],
                                                                 spec["warmup"]).items()}
            continue
        peak = backend.gpu_pool_bytes() / 2 ** 20 if gpu else memory_peak()
        out[phase] = dict(sec=sec, peak_mb=peak, peak_delta_mb=peak - base)
    if hasattr(model, "plans_used"):       # the routes it ran with (minicaps/fast/plans.py)
        out["plans"] = {name: {k: plan[k] for k in ("primary", "capsule_chunk", "how", "ms")
                               if k in plan}
                        for name, plan in model.plans_used().items()}
    return out


def _run_torch(spec):
    import torch
    sys.path.insert(0, HERE)
    import torch_capsnet as tc
    torch.set_num_threads(spec["threads"])
    gpu = spec["device"] == "gpu"
    if gpu:            # strict float32 like minicaps, or TF32 for both with --tf32
        torch.backends.cudnn.allow_tf32 = bool(spec.get("tf32"))
        torch.backends.cuda.matmul.allow_tf32 = bool(spec.get("tf32"))
    dev = torch.device("cuda" if gpu else "cpu")
    cfg = _spec_config(spec)
    # malloc keeps freed memory for PyTorch as for minicaps (a CPU CapsNet asks for it), so
    # the ratios compare the libraries, not the allocator's settings; it speeds PyTorch's
    # batch-128 step up too (0.78-0.84x the time). MINICAPS_KEEP_FREED_MEMORY=0: neither.
    backend.keep_freed_memory()
    if spec.get("cnn"):
        import torch_cnn
        model = torch_cnn.TorchCNN(cfg).to(dev)
    else:
        params = init_params(cfg, seed=0, dtype="float32")
        model = tc.load_minicaps_params(tc.TorchCapsNet(**tc.config_from_minicaps(spec["config"])),
                                        params).to(dev)
    if spec.get("compile"):     # torch.compile (inductor) of the forward pass and the loss
        model.forward = torch.compile(model.forward)
        if hasattr(model, "loss"):
            model.loss = torch.compile(model.loss)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = _data(cfg, spec["batch"])
    xt, yt = torch.from_numpy(x).to(dev), torch.from_numpy(y).to(dev)
    sync = torch.cuda.synchronize if gpu else (lambda: None)
    out = {}
    for phase in spec["phases"]:
        if gpu:
            sync()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated() / 2 ** 20
        else:
            base = memory_mark()
        k = 1
        if phase == "train":
            fn = lambda: tc.torch_train_step(model, opt, xt, yt)
        else:
            k, B = spec["infer_batches"], spec["batch"]
            xs = torch.from_numpy(_data(cfg, k * B)[0]).to(dev)
            fn = lambda: [tc.torch_infer(model, xs[i:i + B]) for i in range(0, k * B, B)]
        sec = _median_time(fn, spec["repeats"], spec["warmup"], sync) / k
        peak = torch.cuda.max_memory_allocated() / 2 ** 20 if gpu else memory_peak()
        out[phase] = dict(sec=sec, peak_mb=peak, peak_delta_mb=peak - base)
    out["threads"] = torch.get_num_threads()
    out["torch_version"] = torch.__version__
    return out


def _worker(spec):
    return _run_minicaps(spec) if spec["library"] == "minicaps" else _run_torch(spec)


def run_child(spec, timeout=1800):
    """Run one worker spec in a fresh Python process; its JSON result."""
    cmd = [sys.executable, os.path.abspath(__file__), "--_worker", json.dumps(spec)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:
        raise RuntimeError(f"benchmark child failed ({spec['library']}, batch {spec['batch']}):\n"
                           + res.stderr[-3000:])
    return json.loads(res.stdout.strip().splitlines()[-1])


def torch_available(device="cpu"):
    """Whether the PyTorch peer can run on ``device`` ("gpu": torch built with CUDA and a GPU)."""
    try:
        import importlib.util
        if importlib.util.find_spec("torch") is None:
            return False
        if device == "gpu":
            import torch
            return bool(torch.cuda.is_available())
        return True
    except Exception:
        return False


# ------------------------------------------------------------------ the benchmark
def _config_dict(cfg):
    d = cfg.to_dict()
    d["input_shape"] = list(d["input_shape"])
    return d


def cnn_config(preset, quick=False):
    """The CNN baseline ``preset`` (cli's --model cnn --preset) on MNIST-sized input (the
    pooled and released presets on the 40x40 and 36x36 inputs they were made for);
    --quick: a tiny one."""
    if quick:
        return CNNConfig(input_shape=(12, 12, 1), conv_channels=(8, 8), conv_kernel=3,
                         pool_after=(1,), fc_sizes=(16,), num_classes=4)
    return getattr(CNNConfig, preset)()


def measure(library, device, batch, cfg, args):
    """Train, inference (and per-layer, minicaps only) numbers for one library and batch."""
    common = dict(library=library, device=device, batch=batch, config=_config_dict(cfg),
                  repeats=args.repeats, warmup=args.warmup, threads=args.threads,
                  conv=args.conv, infer_batches=args.infer_batches,
                  tf32=bool(args.tf32 and device == "gpu"), cnn=args.cnn,
                  compile=library == "torch-compile")
    layers = ["layers"] if library == "minicaps" and not args.cnn else []
    if args.quick:                    # one child: inference, then training
        r = run_child(dict(common, phases=["infer", "train"] + layers))
    else:
        r = run_child(dict(common, phases=["train"] + layers))
        infer = run_child(dict(common, phases=["infer"]))
        r["infer"] = infer["infer"]
        if "plans" in infer:
            r.setdefault("plans", {}).update(infer["plans"])
    f = flops_per_image(cfg)
    train, infer = r["train"], r["infer"]
    row = dict(library=library, device=device, batch=batch,
               train_sec=train["sec"], train_img_s=batch / train["sec"],
               infer_sec=infer["sec"], infer_img_s=batch / infer["sec"],
               train_gflops=f["train"] * batch / train["sec"] / 1e9,
               infer_gflops=f["inference"] * batch / infer["sec"] / 1e9,
               train_peak_mb=train["peak_mb"], train_peak_delta_mb=train["peak_delta_mb"],
               infer_peak_mb=infer["peak_mb"], infer_peak_delta_mb=infer["peak_delta_mb"])
    if library != "minicaps":
        row.update(threads=r["threads"], torch_version=r["torch_version"])
    if "plans" in r:
        row["plans"] = r["plans"]
    if "layers" in r:
        fl = flop_counts(cfg)
        row["layers"] = {name: dict(forward_ms=t[0] * 1e3, backward_ms=t[1] * 1e3,
                                    forward_mflop_per_img=fl[name][0] / 1e6,
                                    backward_mflop_per_img=fl[name][1] / 1e6)
                         for name, t in r["layers"].items()}
        row["layers"]["total"] = dict(
            forward_ms=sum(v["forward_ms"] for v in row["layers"].values()),
            backward_ms=sum(v["backward_ms"] for v in row["layers"].values()),
            forward_mflop_per_img=f["forward"] / 1e6, backward_mflop_per_img=f["backward"] / 1e6)
    return row


def _median_row(rows):
    """One row from the rounds: the median of every number (per-layer times from the first)."""
    out = dict(rows[0])
    for key, value in rows[0].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "batch":
            out[key] = statistics.median(r[key] for r in rows)
    out["rounds"] = len(rows)
    return out


def scaling(cfg, args, device="cpu"):
    """Train-step time and memory against batch size, then against routing iterations."""
    batches = (2, 4, 8) if args.quick else (8, 16, 32, 64, 128, 256)
    iters = (1, 2, 3) if args.quick else (1, 2, 3, 4, 5)
    reps = dict(repeats=max(1, min(args.repeats, 3)), warmup=1, threads=args.threads,
                conv=args.conv)
    rows = []
    for b in batches:
        r = run_child(dict(reps, library="minicaps", device=device, batch=b,
                           config=_config_dict(cfg), phases=["train"]))["train"]
        rows.append(dict(kind="batch", batch=b, routing_iters=cfg.routing_iters, train_sec=r["sec"],
                         train_img_s=b / r["sec"], train_peak_delta_mb=r["peak_delta_mb"]))
    b = 8 if args.quick else 32
    for it in iters:
        c = CapsNetConfig(**dict(cfg.to_dict(), routing_iters=it))
        r = run_child(dict(reps, library="minicaps", device=device, batch=b,
                           config=_config_dict(c), phases=["train"]))["train"]
        rows.append(dict(kind="routing", batch=b, routing_iters=it, train_sec=r["sec"],
                         train_img_s=b / r["sec"], train_peak_delta_mb=r["peak_delta_mb"]))
    return rows


def machine_info():
    info = dict(platform=platform.platform(), python=platform.python_version(),
                numpy=np.__version__, cpu_count=os.cpu_count(), processor=platform.processor())
    if hasattr(os, "getloadavg"):
        info["load_average"] = list(os.getloadavg())    # other work on a shared machine
    try:
        with open("/proc/cpuinfo") as f:
            names = [l.split(":", 1)[1].strip() for l in f if l.startswith("model name")]
        if names:
            info["cpu"] = names[0]
    except OSError:
        pass
    return info


# ------------------------------------------------------------------ report
def _fmt(v, nd=1):
    return "n/a" if v is None else f"{v:,.{nd}f}"


def format_report(result):
    machine = result.get("machine", {})
    lines = [f"network: {result.get('network', 'CapsNet')}",
             f"CPU: {machine.get('cpu') or machine.get('processor') or 'unknown'}, "
             f"{machine.get('cpu_count')} cores; load average at the end "
             f"{', '.join(f'{v:.2f}' for v in machine.get('load_average', []))}"]
    peak = result["gemm_peak_gflops"]
    lines.append(f"GEMM peak (float32 matmul): " + ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in peak.items()))
    fl = result["flops_per_image"]
    lines.append(f"FLOPs per image: forward {fl['forward'] / 1e6:.1f} M, training step "
                 f"{fl['train'] / 1e6:.1f} M, inference {fl['inference'] / 1e6:.1f} M "
                 f"(direct convolution; minicaps conv: {result.get('conv_method', 'auto')}, and "
                 f"where the DFT route runs it does fewer, so its GFLOP/s are effective rates)\n")
    lines.append("| library | device | batch | train img/s | infer img/s | train GFLOP/s | "
                 "of GEMM peak | train peak MB | infer peak MB |")
    lines.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in result["results"]:
        frac = r["train_gflops"] / peak[r["device"]] if r["device"] in peak else None
        lines.append(f"| {r['library']} | {r['device']} | {r['batch']} | {_fmt(r['train_img_s'])} | "
                     f"{_fmt(r['infer_img_s'])} | {_fmt(r['train_gflops'])} | "
                     f"{'n/a' if frac is None else f'{100 * frac:.0f}%'} | "
                     f"{_fmt(r['train_peak_delta_mb'], 0)} | {_fmt(r['infer_peak_delta_mb'], 0)} |")
    if result["ratios"]:
        compiled = any("train_speed_compiled" in q for q in result["ratios"])
        lines.append("\nminicaps / torch, same run (above 1: minicaps faster; memory: below 1 is less)\n")
        lines.append("| device | batch | train speed | inference speed | train peak memory | "
                     "infer peak memory |" + (" train vs torch.compile | infer vs torch.compile |"
                                              if compiled else ""))
        lines.append("| --- " * (6 if compiled else 4) + "| --- | --- |")
        for q in result["ratios"]:
            more = (f" {_fmt(q.get('train_speed_compiled'), 2)}x | "
                    f"{_fmt(q.get('infer_speed_compiled'), 2)}x |" if compiled else "")
            lines.append(f"| {q['device']} | {q['batch']} | {q['train_speed']:.2f}x | "
                         f"{q['infer_speed']:.2f}x | {q['train_memory']:.2f}x | "
                         f"{_fmt(q.get('infer_memory'), 2)}x |" + more)
    planned = [r for r in result["results"] if r.get("plans")]
    if planned:
        lines.append("\nminicaps' routes (minicaps/fast/plans.py; times of each candidate in ms)\n")
        lines.append("| device | batch | pass | primary capsules' convolution | digit capsules' "
                     "chunk | how | candidates |")
        lines.append("| --- | --- | --- | --- | --- | --- | --- |")
        for r in planned:
            for name, plan in r["plans"].items():
                ms = plan.get("ms") or {}
                tried = "; ".join(
                    f"{part}: " + (", ".join(f"{k} {v:.1f}" for k, v in t.items())
                                   if isinstance(t, dict) else f"{t:.1f}")
                    for part, t in ms.items())
                lines.append(f"| {r['device']} | {r['batch']} | {name} | {plan['primary']} | "
                             f"{plan['capsule_chunk']} | {plan['how']} | {tried or '-'} |")
    for r in result["results"]:
        if "layers" not in r:
            continue
        lines.append(f"\nminicaps per layer, {r['device']}, batch {r['batch']} (ms per batch)\n")
        lines.append("| layer | forward ms | backward ms | MFLOP/img fwd+bwd | GFLOP/s |")
        lines.append("| --- | --- | --- | --- | --- |")
        for name, v in r["layers"].items():
            ms = v["forward_ms"] + v["backward_ms"]
            mf = v["forward_mflop_per_img"] + v["backward_mflop_per_img"]
            gf = mf * r["batch"] / ms if ms > 0 and mf > 0 else None
            lines.append(f"| {name} | {v['forward_ms']:.1f} | {v['backward_ms']:.1f} | {mf:.1f} | "
                         f"{_fmt(gf)} |")
    if result.get("scaling"):
        lines.append("\nscaling (minicaps training step)\n")
        lines.append("| batch | routing iterations | ms per step | img/s | peak MB |")
        lines.append("| --- | --- | --- | --- | --- |")
        for s in result["scaling"]:
            lines.append(f"| {s['batch']} | {s['routing_iters']} | {1e3 * s['train_sec']:.1f} | "
                         f"{s['train_img_s']:.1f} | {s['train_peak_delta_mb']:.0f} |")
    return "\n".join(lines)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="bench", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny network, few repetitions (smoke test)")
    ap.add_argument("--scaling", action="store_true",
                    help="also time batch sizes 8..256 and routing iterations 1..5")
    ap.add_argument("--batches", type=int, nargs="+", help="batch sizes (default 32 128; quick: 8)")
    ap.add_argument("--repeats", type=int, help="timed runs per measurement (default 7; quick: 2)")
    ap.add_argument("--warmup", type=int, help="untimed runs first (default 3; quick: 1): a fresh "
                                                 "process's first steps run slower")
    ap.add_argument("--rounds", type=int, help="alternating minicaps/torch rounds per batch, "
                                                "medians reported (default 3; quick: 1)")
    ap.add_argument("--infer-batches", type=int, help="batches per inference measurement, "
                                                       "predicted in one call (default 8; quick: 2)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--conv", choices=("measure", "auto", "gemm", "fft"), default="measure",
                    help="minicaps' routes: 'measure' (timed on first use and kept in the plan "
                         "file, as the library does by default), 'auto' (the fixed rules), "
                         "'gemm' or 'fft' (that route for the primary capsules)")
    ap.add_argument("--compile", action="store_true",
                    help="add torch.compile (inductor) of the PyTorch peer as a third library, "
                         "and minicaps' ratios to it")
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch peer")
    ap.add_argument("--no-gpu", action="store_true", help="skip CuPy even when a GPU is present")
    ap.add_argument("--no-cpu", action="store_true",
                    help="time the GPU only (CuPy, and torch on CUDA): on a GPU machine the CPU "
                         "rows take minutes and compare with nothing there")
    ap.add_argument("--tf32", action="store_true",
                    help="GPU rows with TF32 matrix products in both libraries (CuPy's compute "
                         "type, torch's allow_tf32); without it both compute strict float32")
    ap.add_argument("--json", metavar="PATH", help="where to write the results "
                                                     "(default bench/results/bench-<device>.json)")
    ap.add_argument("--json-lines", metavar="PATH",
                    help="append every number to PATH as soon as it is measured, one JSON "
                         "object a line (kind: start, gemm_peak, measurement, result), so a "
                         "run stopped midway keeps what it measured")
    ap.add_argument("--cnn", choices=("paper", "pooled", "released"), default=None,
                    help="time the CNN baseline of this preset (as `minicaps train --model cnn "
                         "--preset`; pooled at 40x40, released at 36x36) against the same "
                         "network in PyTorch, instead of the CapsNet")
    ap.add_argument("--_worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    defaults = dict(batches=[8] if args.quick else [32, 128], repeats=2 if args.quick else 7,
                    warmup=1 if args.quick else 3, rounds=1 if args.quick else 3, infer_batches=2 if args.quick else 8)
    for name, default in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, default)
    for name in ("batches", "repeats", "rounds", "infer_batches", "threads"):
        value = getattr(args, name)
        if min(value if isinstance(value, list) else [value]) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if args.warmup < 0:
        ap.error(f"--warmup must be 0 or more, got {args.warmup}")
    if args.no_cpu and args.no_gpu:
        ap.error("--no-cpu and --no-gpu together leave nothing to time")
    if args.no_cpu and args.scaling:
        ap.error("--scaling times the CPU only: leave out --no-cpu")
    if args.cnn and args.scaling:
        ap.error("--scaling times the CapsNet's batch sizes and routing: leave out --cnn")
    return args


def emit(args, kind, **record):
    """Append one record to --json-lines (nothing without it), flushed at once."""
    if args.json_lines:
        os.makedirs(os.path.dirname(os.path.abspath(args.json_lines)), exist_ok=True)
        with open(args.json_lines, "a") as f:
            f.write(json.dumps(dict(kind=kind, tf32=bool(args.tf32), **record)) + "\n")


def run(args):
    if args.cnn:
        cfg = cnn_config(args.cnn, args.quick)
    else:
        cfg = CapsNetConfig(**QUICK_CONFIG) if args.quick else CapsNetConfig()
    devices = (([] if args.no_cpu else ["cpu"])
               + (["gpu"] if not args.no_gpu and backend.gpu_available() else []))
    if not devices:
        raise SystemExit("bench: --no-cpu asks for the GPU only, but CuPy sees no GPU here "
                         "(pip install -e '.[gpu]' on a machine with one, or leave out --no-cpu)")
    if args.tf32:
        if "gpu" not in devices:
            raise SystemExit("bench: --tf32 is a math mode of the GPU, but CuPy sees no GPU here "
                             "(or --no-gpu was given)")
        backend.set_tf32(True)      # for the GPU's GEMM peak too
    with_torch = not args.no_torch and torch_available()
    emit(args, "start", devices=devices, batches=args.batches, rounds=args.rounds,
         repeats=args.repeats, warmup=args.warmup, conv_method=args.conv, quick=bool(args.quick),
         machine=machine_info(), gpu=backend.gpu_summary() if "gpu" in devices else None)
    n = 512 if args.quick else 4096
    peaks = {d: gemm_peak(d, n) for d in devices}
    for d, gflops in peaks.items():
        emit(args, "gemm_peak", device=d, n=n, gflops=gflops, when="start")
    results, ratios = [], []
    for batch in args.batches:
        for device in devices:
            libs = ["minicaps"] + (["torch"] if with_torch and torch_available(device) else [])
            if "torch" in libs and args.compile:
                libs.append("torch-compile")
            rounds = {lib: [] for lib in libs}
            for k in range(args.rounds):       # alternate the order: load that comes and goes
                for lib in (libs if k % 2 == 0 else libs[::-1]):
                    rounds[lib].append(measure(lib, device, batch, cfg, args))
                    emit(args, "measurement", round=k + 1, **rounds[lib][-1])
            rows = {lib: _median_row(rs) for lib, rs in rounds.items()}
            results.extend(rows.values())
            if "torch" in rows:
                mc, tr = rows["minicaps"], rows["torch"]
                ratio = dict(device=device, batch=batch,
                             train_speed=mc["train_img_s"] / tr["train_img_s"],
                             infer_speed=mc["infer_img_s"] / tr["infer_img_s"],
                             train_memory=mc["train_peak_delta_mb"] / max(tr["train_peak_delta_mb"], 1e-9),
                             infer_memory=mc["infer_peak_delta_mb"] / max(tr["infer_peak_delta_mb"], 1e-9))
                if "torch-compile" in rows:
                    tc = rows["torch-compile"]
                    ratio.update(train_speed_compiled=mc["train_img_s"] / tc["train_img_s"],
                                 infer_speed_compiled=mc["infer_img_s"] / tc["infer_img_s"])
                ratios.append(ratio)
    for d in devices:
        again = gemm_peak(d, n)
        emit(args, "gemm_peak", device=d, n=n, gflops=again, when="end")
        peaks[d] = max(peaks[d], again)
    for r in results:
        r["train_peak_fraction"] = r["train_gflops"] / peaks[r["device"]]
    result = dict(device="gpu" if "gpu" in devices else "cpu", quick=bool(args.quick),
                  machine=machine_info(), config=_config_dict(cfg), gemm_peak_gflops=peaks,
                  flops_per_image=flops_per_image(cfg), repeats=args.repeats, warmup=args.warmup,
                  memory_method="peak resident set (VmHWM, reset through /proc/self/clear_refs after "
                                "setup) minus the resident set after setup, in a fresh child process "
                                "per library and batch (ru_maxrss without /proc; GPU: CuPy pool bytes)",
                  conv_method=args.conv, tf32=bool(args.tf32),
                  keep_freed_memory=backend.keep_freed_memory(),
                  openblas_thread_timeout=backend.blas_thread_timeout(),
                  results=results, ratios=ratios, scaling=None,
                  network=f"CNN baseline --preset {args.cnn}" if args.cnn else "CapsNet")
    if args.scaling:
        result["scaling"] = scaling(cfg, args)
    return result


def bench_main(argv=None):
    """Command-line entry point: run, print the markdown report, write the JSON. Returns 0."""
    args = parse_args(argv)
    if args._worker:
        print(json.dumps(_worker(json.loads(args._worker))))
        return 0
    result = run(args)
    emit(args, "result", **{k: v for k, v in result.items() if k != "tf32"})
    print(format_report(result))
    path = args.json or os.path.join(HERE, "results", f"bench-{result['device']}.json")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(bench_main())
