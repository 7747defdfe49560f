"""An independent PyTorch CapsNet (Sabour et al. 2017), the peer minicaps is measured and checked against.

It implements the same model as ``minicaps.CapsNet`` and holds the same parameters under the
same names, so a minicaps parameter dict can be copied in (``load_minicaps_params``) and the
PyTorch gradients read back in the minicaps layout (``grads_as_minicaps``):

    conv1.W (9,9,1,256)  conv1.b (256,)      primary.W (9,9,256,256)  primary.b (256,)
    digit.W (1152,10,16,8)
    dec1.W (160,512) dec1.b (512,)  dec2.W (512,1024) dec2.b (1024,)  dec3.W (1024,784) dec3.b (784,)

8,215,568 parameters for the paper's sizes.  Inside, the layers are ordinary ``nn.Conv2d`` (NCHW,
weights (Cout,Cin,kh,kw)) and ``nn.Linear`` (weights (out,in)); only ``digit.W`` keeps the minicaps
shape.  Conventions shared with minicaps:

* input x is NHWC in [0,1]; reconstruction targets are x flattened in NHWC order;
* primary conv channel = map*primary_dims + dim; primary capsule i = (row*W + col)*maps + map;
* squash(s) = |s|^2/(1+|s|^2) * s / sqrt(|s|^2 + eps); lengths = sqrt(|v|^2 + eps);
* u_hat[n,i,j] = digit.W[i,j] @ u[n,i]; routing starts from b = 0, softmax over the outputs j,
  and updates b += <u_hat, v> after every iteration but the last;
  routing_grad="full" backpropagates through every iteration, routing_grad="stop" computes the
  logit updates from detached u_hat and v (the couplings are constants for the gradient, while
  s_j = sum_i c_ij u_hat_ij keeps its gradient to u_hat);
* margin loss (m+=0.9, m-=0.1, lambda=0.5) summed over classes, mean over the batch;
  reconstruction loss = per-image sum of squared errors, mean over the batch;
  total = margin + recon_weight * recon;
* the decoder sees v masked by the label in training (``loss``), by the longest capsule otherwise.

Benchmark from the command line (CPU, 2 threads by default):

    python bench/torch_capsnet.py --batch 32 --iters 5

Peak memory is measured crudely but honestly: each phase (train, inference) runs in a fresh
child process, which reports its resident-set high-water mark (``ru_maxrss``) after the steps and
that mark minus the one taken just before the first step (model, optimizer and data already
built).  The delta is what the steps themselves (activations, gradients, optimizer state,
allocator caches) added on top.
"""
import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

PARAM_NAMES = ("conv1.W", "conv1.b", "primary.W", "primary.b", "digit.W",
               "dec1.W", "dec1.b", "dec2.W", "dec2.b", "dec3.W", "dec3.b")

DEFAULTS = dict(input_shape=(28, 28, 1), conv1_channels=256, conv1_kernel=9,
                primary_maps=32, primary_dims=8, primary_kernel=9, primary_stride=2,
                num_classes=10, digit_dims=16, routing_iters=3, routing_grad="full",
                decoder_sizes=(512, 1024), recon_weight=0.0005, primary_relu=False,
                squash_eps=1e-7, m_plus=0.9, m_minus=0.1, lambda_=0.5)


def squash(s, eps=1e-7, dim=-1):
    """|s|^2/(1+|s|^2) * s/sqrt(|s|^2+eps), over ``dim``."""
    sq = (s * s).sum(dim, keepdim=True)
    return (sq / (1.0 + sq)) * s / torch.sqrt(sq + eps)


class _DigitCaps(nn.Module):
    """Holds ``W`` (I, J, D_out, D_in) so that its parameter is named ``digit.W``."""

    def __init__(self, num_in, num_out, dim_out, dim_in):
        super().__init__()
        self.W = nn.Parameter(torch.randn(num_in, num_out, dim_out, dim_in) * 0.01)


class TorchCapsNet(nn.Module):
    """CapsNet with three-layer reconstruction decoder; sizes as keyword arguments (see DEFAULTS).

    ``forward(x, y=None)`` returns a dict with ``lengths`` (N,J), ``v`` (N,J,D), ``coupling``
    (N,I,J, the couplings of the last routing iteration) and ``reconstruction`` (N, H*W*C).
    """

    def __init__(self, **cfg):
        super().__init__()
        unknown = set(cfg) - set(DEFAULTS)
        if unknown:
            raise TypeError(f"unknown config fields: {sorted(unknown)}")
        c = dict(DEFAULTS, **cfg)
        if c["routing_grad"] not in ("full", "stop"):
            raise ValueError("routing_grad must be 'full' or 'stop'")
        self.cfg = c
        H, W, C = c["input_shape"]
        k1, kp, sp = c["conv1_kernel"], c["primary_kernel"], c["primary_stride"]
        maps, pd = c["primary_maps"], c["primary_dims"]
        J, D = c["num_classes"], c["digit_dims"]
        h1, w1 = H - k1 + 1, W - k1 + 1
        self.grid = ((h1 - kp) // sp + 1, (w1 - kp) // sp + 1)
        self.num_primary = self.grid[0] * self.grid[1] * maps
        self.conv1 = nn.Conv2d(C, c["conv1_channels"], k1)
        self.primary = nn.Conv2d(c["conv1_channels"], maps * pd, kp, stride=sp)
        self.digit = _DigitCaps(self.num_primary, J, D, pd)
        sizes = (J * D,) + tuple(c["decoder_sizes"]) + (H * W * C,)
        if len(sizes) != 4:
            raise ValueError("decoder_sizes must have two entries (dec1, dec2, dec3)")
        self.dec1 = nn.Linear(sizes[0], sizes[1])
        self.dec2 = nn.Linear(sizes[1], sizes[2])
        self.dec3 = nn.Linear(sizes[2], sizes[3])

    # ---- pieces -------------------------------------------------------------------------
    def as_input(self, x):
        """NHWC numpy or torch -> NHWC tensor of this model's dtype/device."""
        p = self.conv1.weight
        x = torch.as_tensor(x, device=p.device)
        if x.dim() == 3:                       # (N,H,W) -> (N,H,W,1)
            x = x.unsqueeze(-1)
        return x.to(p.dtype)

    def primary_capsules(self, x):
        """x NHWC -> squashed primary capsules u (N, I, primary_dims), i = (row*W+col)*maps+map."""
        h = F.relu(self.conv1(x.permute(0, 3, 1, 2)))
        h = self.primary(h)
        if self.cfg["primary_relu"]:
            h = F.relu(h)
        n = h.shape[0]
        # (N, maps*dims, gh, gw) -> (N, gh, gw, maps*dims) -> (N, gh*gw*maps, dims)
        u = h.permute(0, 2, 3, 1).reshape(n, self.num_primary, self.cfg["primary_dims"])
        return squash(u, self.cfg["squash_eps"])

    def prediction_vectors(self, u):
        """u_hat[n,i,j,:] = W[i,j] @ u[n,i] -> (N, I, J, D); one batched matmul over i, W not tiled."""
        W = self.digit.W                                  # (I, J, D, d)
        I, J, D, d = W.shape
        # (I, N, d) @ (I, d, J*D) -> (I, N, J*D)
        uh = torch.bmm(u.transpose(0, 1), W.reshape(I, J * D, d).transpose(1, 2))
        return uh.view(I, -1, J, D).transpose(0, 1)       # (N, I, J, D), a view

    def route(self, u_hat, iters=None, grad=None):
        """Dynamic routing; returns (v (N,J,D), c (N,I,J) of the last iteration)."""
        iters = self.cfg["routing_iters"] if iters is None else iters
        grad = self.cfg["routing_grad"] if grad is None else grad
        eps = self.cfg["squash_eps"]
        n, I, J, _ = u_hat.shape
        b = u_hat.new_zeros(n, I, J)
        u_stop = u_hat.detach() if grad == "stop" else u_hat
        for it in range(iters):
            c = torch.softmax(b, dim=2)
            s = torch.einsum("nij,nijd->njd", c, u_hat)
            v = squash(s, eps)
            if it < iters - 1:
                vv = v.detach() if grad == "stop" else v
                b = b + torch.einsum("nijd,njd->nij", u_stop, vv)
        return v, c

    def decode(self, v, mask):
        """mask (N,J) one-hot -> reconstruction (N, H*W*C)."""
        h = (v * mask.unsqueeze(-1)).flatten(1)
        h = F.relu(self.dec1(h))
        h = F.relu(self.dec2(h))
        return torch.sigmoid(self.dec3(h))

    # ---- model --------------------------------------------------------------------------
    def forward(self, x, y=None):
        x = self.as_input(x)
        u = self.primary_capsules(x)
        v, c = self.route(self.prediction_vectors(u))
        lengths = torch.sqrt((v * v).sum(-1) + self.cfg["squash_eps"])
        J = self.cfg["num_classes"]
        if y is None:
            mask = F.one_hot(lengths.argmax(1), J).to(v.dtype)
        else:
            mask = self.one_hot(y)
        return dict(lengths=lengths, v=v, coupling=c, reconstruction=self.decode(v, mask))

    def one_hot(self, y):
        p = self.conv1.weight
        y = torch.as_tensor(y, device=p.device)
        if y.dim() == 2:                                  # already one-hot
            return y.to(p.dtype)
        return F.one_hot(y.long(), self.cfg["num_classes"]).to(p.dtype)

    def loss(self, x, y):
        """Training loss with label masking: (total, margin, recon, lengths, v, reconstruction, coupling)."""
        c = self.cfg
        x = self.as_input(x)
        out = self.forward(x, y)
        T = self.one_hot(y)
        L = out["lengths"]
        margin = (T * F.relu(c["m_plus"] - L) ** 2
                  + c["lambda_"] * (1 - T) * F.relu(L - c["m_minus"]) ** 2).sum(1).mean()
        recon = ((out["reconstruction"] - x.reshape(x.shape[0], -1)) ** 2).sum(1).mean()
        total = margin + c["recon_weight"] * recon
        return total, margin, recon, L, out["v"], out["reconstruction"], out["coupling"]


# ---- minicaps layout <-> torch layout ----------------------------------------------------------
def _torch_param(model, name):
    layer, kind = name.split(".")
    mod = getattr(model, layer)
    if layer == "digit":
        return mod.W
    return mod.weight if kind == "W" else mod.bias


def _to_torch_layout(name, a):
    layer, kind = name.split(".")
    if kind == "W" and layer in ("conv1", "primary"):
        return a.transpose(3, 2, 0, 1)          # (kh,kw,Cin,Cout) -> (Cout,Cin,kh,kw)
    if kind == "W" and layer.startswith("dec"):
        return a.T                              # (in,out) -> (out,in)
    return a


def _to_minicaps_layout(name, a):
    layer, kind = name.split(".")
    if kind == "W" and layer in ("conv1", "primary"):
        return a.transpose(2, 3, 1, 0)          # (Cout,Cin,kh,kw) -> (kh,kw,Cin,Cout)
    if kind == "W" and layer.startswith("dec"):
        return a.T
    return a


def _numpy(t):
    t = t.detach() if isinstance(t, torch.Tensor) else t
    return np.asarray(t.cpu().numpy() if isinstance(t, torch.Tensor) else t)


def load_minicaps_params(model, params):
    """Copy a minicaps parameter dict (numpy or cupy arrays) into ``model``; shapes must match."""
    missing = [k for k in PARAM_NAMES if k not in params]
    if missing:
        raise KeyError(f"minicaps params lack {missing}")
    with torch.no_grad():
        for name in PARAM_NAMES:
            a = params[name]
            if hasattr(a, "get"):               # cupy array
                a = a.get()
            a = _to_torch_layout(name, np.asarray(a))
            p = _torch_param(model, name)
            if tuple(a.shape) != tuple(p.shape):
                raise ValueError(f"{name}: minicaps shape {np.asarray(params[name]).shape} does not "
                                 f"fit torch parameter {tuple(p.shape)}")
            p.copy_(torch.from_numpy(np.ascontiguousarray(a)))
    return model


def params_as_minicaps(model):
    """The model's parameters as a minicaps-layout dict of numpy arrays."""
    return {k: np.ascontiguousarray(_to_minicaps_layout(k, _numpy(_torch_param(model, k))))
            for k in PARAM_NAMES}


def grads_as_minicaps(model):
    """``.grad`` of every parameter as a minicaps-layout dict of numpy arrays (zeros where None)."""
    out = {}
    for k in PARAM_NAMES:
        p = _torch_param(model, k)
        g = p.grad if p.grad is not None else torch.zeros_like(p)
        out[k] = np.ascontiguousarray(_to_minicaps_layout(k, _numpy(g)))
    return out


def config_from_minicaps(fields):
    """TorchCapsNet keyword arguments from a minicaps ``CapsNetConfig.to_dict()``: ``lam`` becomes
    ``lambda_``, lists become tuples; a config the peer cannot build (conv1 with a stride, no
    decoder) is a ValueError."""
    if fields.get("conv1_stride", 1) != 1 or not fields.get("use_decoder", True):
        raise ValueError("the peer has conv1 at stride 1 and a decoder")
    out = {("lambda_" if k == "lam" else k): (tuple(v) if isinstance(v, list) else v)
           for k, v in fields.items()}
    return {k: v for k, v in out.items() if k in DEFAULTS}


def count_params(model):
    return sum(p.numel() for p in model.parameters())


# ---- benchmark helpers -----------------------------------------------------------------------
def torch_train_step(model, opt, x, y):
    """One optimizer step on (x, y); returns the total loss as a float."""
    model.train()
    opt.zero_grad(set_to_none=True)
    total = model.loss(x, y)[0]
    total.backward()
    opt.step()
    return float(total.detach())


def torch_infer(model, x):
    """Class lengths (N,J) and predicted labels, no autograd, masking by argmax."""
    model.eval()
    with torch.inference_mode():
        out = model(x)
    return out["lengths"], out["lengths"].argmax(1)


def _make(batch, seed=0, **cfg):
    torch.manual_seed(seed)
    model = TorchCapsNet(**cfg)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    H, W, C = model.cfg["input_shape"]
    x = torch.rand(batch, H, W, C, generator=g)
    y = torch.randint(0, model.cfg["num_classes"], (batch,), generator=g)
    return model, opt, x, y


def _time_steps(fn, n_iter, warmup=1):
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(n_iter):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def _maxrss_mb():
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024.0 if sys.platform != "darwin" else r / 2**20   # KiB on Linux, bytes on macOS


def _phase(phase, batch, n_iter, threads, warmup=1):
    """Run one phase ('train' or 'infer') here; returns seconds/step and the rss marks."""
    torch.set_num_threads(threads)
    model, opt, x, y = _make(batch)
    base = _maxrss_mb()
    if phase == "train":
        sec = _time_steps(lambda: torch_train_step(model, opt, x, y), n_iter, warmup)
    else:
        sec = _time_steps(lambda: torch_infer(model, x), n_iter, warmup)
    peak = _maxrss_mb()
    return dict(phase=phase, sec=sec, peak_rss_mb=peak, peak_delta_mb=peak - base)


def time_torch(batch=32, n_iter=5, threads=2, warmup=1, measure_memory=True):
    """Median seconds per training step (Adam) and per inference step, images/s, and peak memory.

    With ``measure_memory`` each phase runs in its own child process so that the ``ru_maxrss``
    high-water marks of training and inference do not mask each other; otherwise both run here
    and the memory fields are None.
    """
    res = {}
    for phase in ("train", "infer"):
        if measure_memory:
            cmd = [sys.executable, os.path.abspath(__file__), "--_phase", phase, "--batch", str(batch),
                   "--iters", str(n_iter), "--threads", str(threads), "--warmup", str(warmup)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
        else:
            r = _phase(phase, batch, n_iter, threads, warmup)
            r["peak_rss_mb"] = r["peak_delta_mb"] = None
        res[phase] = r
    return dict(
        batch=batch, n_iter=n_iter, threads=threads, torch_version=torch.__version__,
        train_sec=res["train"]["sec"], train_img_s=batch / res["train"]["sec"],
        infer_sec=res["infer"]["sec"], infer_img_s=batch / res["infer"]["sec"],
        train_peak_rss_mb=res["train"]["peak_rss_mb"], train_peak_delta_mb=res["train"]["peak_delta_mb"],
        infer_peak_rss_mb=res["infer"]["peak_rss_mb"], infer_peak_delta_mb=res["infer"]["peak_delta_mb"],
    )


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--no-memory", action="store_true", help="skip the child processes and the rss")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--_phase", choices=("train", "infer"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a._phase:
        print(json.dumps(_phase(a._phase, a.batch, a.iters, a.threads, a.warmup)))
        return
    r = time_torch(a.batch, a.iters, a.threads, a.warmup, measure_memory=not a.no_memory)
    if a.json:
        print(json.dumps(r))
        return
    mem = lambda v: "n/a" if v is None else f"{v:.0f} MB"
    print(f"torch {r['torch_version']} CPU, {r['threads']} threads, batch {r['batch']}, "
          f"median of {r['n_iter']} steps")
    print(f"  train : {r['train_sec'] * 1e3:9.1f} ms/step {r['train_img_s']:9.1f} img/s   "
          f"peak rss {mem(r['train_peak_rss_mb'])} (+{mem(r['train_peak_delta_mb'])} during steps)")
    print(f"  infer : {r['infer_sec'] * 1e3:9.1f} ms/step {r['infer_img_s']:9.1f} img/s   "
          f"peak rss {mem(r['infer_peak_rss_mb'])} (+{mem(r['infer_peak_delta_mb'])} during steps)")


if __name__ == "__main__":
    main()
