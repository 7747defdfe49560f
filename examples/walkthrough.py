# ---
# jupyter:
#   jupytext:
#     formats: py:percent
# ---

# %% [markdown]
# # One image through CapsNet, piece by piece
#
# This script follows one image through the network of Sabour, Frosst & Hinton (2017)
# calling the reference ops of `minicaps.ops` one at a time, printing what each piece makes:
# primary capsules, the predictions u_hat, the routing logits b, the agreement and the
# coupling used in each routing iteration, the capsule lengths, the reconstruction; then it
# checks three backward passes against finite differences (squash, routing, and every
# parameter of a tiny network) and stops with an error if one is wrong. docs/tour.md
# explains each piece and its derivative.
#
#     python examples/walkthrough.py                    # the paper's network, random weights
#     python examples/walkthrough.py --pretrained       # the network that ships, trained
#     python examples/walkthrough.py runs/x/best.npz    # a trained checkpoint
#     python examples/walkthrough.py --tiny             # a 10x10, 3-class toy (no MNIST needed)
#
# The same choices come from the environment (for a notebook, via jupytext):
# `MINICAPS_CHECKPOINT=path`, `MINICAPS_TINY=1`. The image is the first MNIST test
# image when the files are on disk (`$MINICAPS_DATA`) and the network takes 28x28, else a
# drawn 7. With random weights the capsules are short and routing barely moves: the
# numbers only mean something for a trained checkpoint.

# %%
import argparse
import os
import sys

import numpy as np

import minicaps as mc
from minicaps import ops
from minicaps import viz
from minicaps.gradcheck import (check_model, check_op, randomize_params, routing_v,
                                tiny_config)


def options():
    """(checkpoint or None, tiny): the command line, else the environment."""
    checkpoint = os.environ.get("MINICAPS_CHECKPOINT") or None
    tiny = os.environ.get("MINICAPS_TINY", "") not in ("", "0")
    if "ipykernel" in sys.modules:           # a notebook's argv belongs to the kernel
        return checkpoint, tiny
    parser = argparse.ArgumentParser(description="One image through CapsNet, piece by piece.")
    parser.add_argument("checkpoint", nargs="?", default=checkpoint)
    parser.add_argument("--tiny", action="store_true", default=tiny)
    parser.add_argument("--pretrained", action="store_true",
                        help="the network that ships with minicaps (trained on MNIST)")
    args = parser.parse_args()
    if args.pretrained:
        from minicaps.io.weights import SHIPPED
        return str(SHIPPED), args.tiny
    return args.checkpoint, args.tiny


def ascii_art(*images):
    """Gray images in [0, 1] (H, W), side by side, one character per pixel."""
    ramp = " .:-=+*#%@"
    rows = []
    for lines in zip(*images):
        rows.append("   ".join("".join(ramp[min(int(p * len(ramp)), len(ramp) - 1)] for p in line)
                               for line in lines))
    return "\n".join(rows)


def drawn_seven(H, W):
    """A '7' drawn with two strokes, anti-aliased, white on black, H x W in [0, 1]."""
    yy, xx = np.mgrid[0:H, 0:W] + 0.5
    strokes = [((0.22, 0.25), (0.22, 0.75)), ((0.22, 0.75), (0.80, 0.42))]   # (y, x) fractions
    image = np.zeros((H, W))
    for (y0, x0), (y1, x1) in strokes:
        a, b = np.array([y0 * H, x0 * W]), np.array([y1 * H, x1 * W])
        t = np.clip(((yy - a[0]) * (b[0] - a[0]) + (xx - a[1]) * (b[1] - a[1]))
                    / ((b - a) @ (b - a)), 0, 1)
        dist = np.hypot(yy - (a[0] + t * (b[0] - a[0])), xx - (a[1] + t * (b[1] - a[1])))
        image = np.maximum(image, np.clip(1.5 - dist / (0.05 * H), 0, 1))
    return image


CHECKPOINT, TINY = options()

# %% [markdown]
# ## The network and the image

# %%
if CHECKPOINT:
    from minicaps.io.weights import load_any      # a checkpoint or a weights file
    model, weights = load_any(CHECKPOINT, device="cpu").model_with("auto")
    print(f"loaded {CHECKPOINT} ({weights} parameters)")
elif TINY:
    model = mc.CapsNet(tiny_config(), seed=0, dtype="float64", device="cpu")
    randomize_params(model, np.random.default_rng(0))   # weights of order one: something to see
    print("a tiny CapsNet with random weights (10x10 inputs, 3 classes)")
else:
    model = mc.CapsNet(mc.CapsNetConfig(), seed=0, device="cpu")
    print("the paper's CapsNet with random (untrained) weights")
cfg, p = model.config, model.params
H, W, C = cfg.input_shape

label = None
if (H, W, C) == (28, 28, 1):
    from minicaps.data.dataset import DataError
    from minicaps.data.mnist import load_mnist
    try:
        _, _, x_test, y_test = load_mnist(download=False)
        image, label = x_test[0] / 255.0, int(y_test[0])
    except DataError:
        print("(no MNIST files on disk: drawing a 7 instead; set MINICAPS_DATA to use MNIST)")
if label is None:
    image = drawn_seven(H, W)
x = np.repeat(image[:, :, None], C, axis=2)[None].astype(model.dtype)   # (1, H, W, C)
print(f"{model.num_params():,} parameters; input {x.shape}, label {label}")
print(ascii_art(image))

# %% [markdown]
# ## conv1 and the primary capsules
#
# conv1 is a 9x9 convolution with ReLU; the primary layer is a second 9x9 convolution
# (stride 2) whose channels are cut into 8-D vectors and squashed (eq. 1). Capsule
# i = (row * cols + col) * maps + map.

# %%
h, _ = ops.conv2d_forward(x, p["conv1.W"], p["conv1.b"], cfg.conv1_stride)
h, _ = ops.relu_forward(h)
print(f"conv1: {h.shape}, {np.mean(h > 0):.0%} of the units active")
h, _ = ops.conv2d_forward(h, p["primary.W"], p["primary.b"], cfg.primary_stride)
if cfg.primary_relu:
    h, _ = ops.relu_forward(h)
u, _ = ops.primary_capsules_forward(h, cfg.primary_dims, cfg.squash_eps)
rows, cols = cfg.primary_grid
u_length = np.sqrt((u[0] ** 2).sum(axis=-1))
print(f"primary capsules u: {u.shape} = {rows}x{cols} positions x {cfg.primary_maps} maps, "
      f"{cfg.primary_dims}-D; every length < 1: {bool((u_length < 1).all())}")
for i in np.argsort(u_length)[::-1][:5]:
    pos, m = divmod(int(i), cfg.primary_maps)
    print(f"  capsule {i:5d} (row {pos // cols}, col {pos % cols}, map {m:2d}): length {u_length[i]:.3f}")

# %% [markdown]
# ## Predictions u_hat (eq. 2)
#
# Every primary capsule i predicts every digit capsule j: u_hat_j|i = W_ij u_i. One
# batched matmul over i; W is never copied per image (tiled over a batch of 128 it would
# take 128 x I x J x 16 x 8 floats).

# %%
u_hat, _ = ops.predictions_forward(u, p["digit.W"])
I, J, D = u_hat.shape[1:]
tiled_gb = 128 * I * J * D * cfg.primary_dims * 4 / 2 ** 30
print(f"u_hat: {u_hat.shape} (N, I, J, D); W tiled over a batch of 128 would be {tiled_gb:.2f} GiB")

# %% [markdown]
# ## Routing by agreement (Procedure 1, eq. 3)
#
# Procedure 1 written out with the ops, so that the logits b can be printed. b starts at 0,
# so the coupling used in iteration 1 is uniform: c_ij = softmax_j(b_ij) = 1/J. Each
# iteration but the last adds the agreement u_hat_j|i . v_j to b_ij, so the coupling used
# in iteration t + 1 leans towards the digit capsules that capsule i agreed with in
# iteration t. Under each iteration: b, c and the agreement of one primary capsule, the
# one that routing_forward ends up coupling most strongly to the winning class, one number
# per digit capsule j.

# %%
def row(values):
    return " ".join(f"{z:9.3g}" for z in values)


(v_ops, c_ops), _ = ops.routing_forward(u_hat, cfg.routing_iters, "full", cfg.squash_eps)
winner = int((v_ops[0] ** 2).sum(axis=-1).argmax())
i = int(c_ops[0, :, winner].argmax())                          # the capsule to watch
print(f"primary capsule i = {i}, one column per digit capsule j:\n  {'j':13s}{row(range(J))}")
b = np.zeros(u_hat.shape[:3])                                  # (N, I, J) logits, float64
for t in range(1, cfg.routing_iters + 1):
    c = ops.softmax_forward(b, axis=2)                         # eq. 3
    v, _ = ops.squash_forward(np.einsum("nij,nijd->njd", c, u_hat), cfg.squash_eps)   # eqs. 2, 1
    agreement = np.einsum("nijd,njd->nij", u_hat, v)           # u_hat_j|i . v_j
    lengths = np.sqrt((v[0] ** 2).sum(axis=-1))
    j = int(lengths.argmax())
    print(f"iteration {t}: coupling to class {j}: mean {c[0, :, j].mean():.4f}, "
          f"max {c[0, :, j].max():.4f}; sum over j is 1: {np.allclose(c.sum(axis=2), 1)}; "
          f"lengths {' '.join(f'{l:.3f}' for l in lengths)}")
    print(f"  b_ij         {row(b[0, i])}")
    print(f"  c_ij         {row(c[0, i])}")
    print(f"  u_hat . v_j  {row(agreement[0, i])}")
    if t < cfg.routing_iters:                                  # the last update would go unused
        b = b + agreement
print(f"routing_forward gives the same v: {np.allclose(v, v_ops)}")
v = v_ops                                                      # in the model's dtype

# %% [markdown]
# ## Capsule lengths: the class
#
# The length of digit capsule j says how sure the network is that class j is there. The
# margin loss (eq. 4) pushes the true class above m+ = 0.9 and the others below m- = 0.1.

# %%
lengths, _ = ops.length_forward(v, cfg.squash_eps)
out, _ = model.forward(x)
pred = int(lengths[0].argmax())
print(f"predicted class {pred}; the model's own forward pass agrees: "
      f"{np.allclose(lengths, out['lengths'])}")
for j_, length in enumerate(lengths[0]):
    print(f"  {j_:2d}  {length:.4f}  {'#' * round(40 * float(length))}")

# %% [markdown]
# ## Reconstruction
#
# The decoder sees only the winning capsule's 16 numbers (the others masked to 0) and
# draws the digit back. Its loss is the sum of squared pixel errors times
# cfg.recon_weight: 0.0005 in the paper's network, 0.05 in the --tiny toy (the line below
# prints the one in use).

# %%
if cfg.use_decoder:
    mask = ops.one_hot(np.array([pred]), J, model.dtype)
    recon = viz.decode(model, v, mask).reshape(H, W, C).mean(axis=-1)
    sse = float(((recon - image) ** 2).sum())
    print(f"reconstruction: sum of squared errors {sse:.2f}, times {cfg.recon_weight} "
          f"= {cfg.recon_weight * sse:.4f} in the loss")
    print(ascii_art(image, recon))

# %% [markdown]
# ## Checking the backward passes
#
# Each backward pass is compared with central differences of its forward pass, in float64,
# by minicaps.gradcheck (the code behind `minicaps gradcheck`): check_op for one op,
# check_model for every parameter of a network. A right gradient gives a relative error
# of 1e-8 or less; a wrong one, 1e-3 or more. Three checks, each stopping the script with an
# error when a gradient is wrong:
#
# 1. squash_backward, with one all-zero capsule (squash's eps keeps the gradient finite);
# 2. routing_backward through 3 iterations, the agreement path included ("full");
# 3. CapsNet.backward, the whole reference network: a tiny one (10x10 inputs, 3 classes).

# %%
def checked(what, errors, tolerance):
    """Print each relative error; raise if one is above ``tolerance``."""
    for name, error in errors.items():
        print(f"{what:34s} {name:10s} relative error {error:.1e}")
    worst = max(errors, key=errors.get)
    if not errors[worst] <= tolerance:
        raise RuntimeError(f"{what}: the gradient of {worst} is wrong (relative error "
                           f"{errors[worst]:.1e}, above {tolerance:g})")


rng = np.random.default_rng(0)
s = np.vstack([np.zeros((1, 8)), rng.standard_normal((4, 8))])
checked("squash", check_op(ops.squash_forward, ops.squash_backward, [s], ["s"], rng=rng), 1e-7)

u_hat_small = rng.standard_normal((2, 6, 3, 4))                # (N, I, J, D)
checked("routing (full, 3 iterations)",
        check_op(lambda u: routing_v(u, 3, "full"), ops.routing_backward, [u_hat_small],
                 ["u_hat"], rng=rng), 1e-7)

net = mc.CapsNet(tiny_config(), seed=0, dtype="float64", device="cpu")
randomize_params(net, rng)                                     # biases away from ReLU's kink
x_small = rng.uniform(0, 1, (2,) + net.config.input_shape)
y_small = np.array([0, 2])
checked("tiny CapsNet, every parameter", check_model(net, x_small, y_small, rng=rng), 1e-5)
print("walkthrough done")
