"""Train a CapsNet on MNIST with the library's pieces, in one screen of code.

    python examples/train_mnist.py --epochs 1 --limit-train 2000

The data is looked up in $MINICAPS_DATA (or downloaded into a cache). `minicaps train`
does the same with checkpoints, resuming and a metrics log; this script shows the loop.
"""
import argparse
import time

import minicaps as mc      # before NumPy: it tells OpenBLAS to rest idle threads soon (README)
from minicaps.data.augment import random_shift
from minicaps.data.dataset import iterate_minibatches, to_model_input
from minicaps.data.mnist import load_mnist

import numpy as np

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--epochs", type=int, default=1)
parser.add_argument("--limit-train", type=int, default=2000, help="training images used")
parser.add_argument("--limit-test", type=int, default=1000, help="test images used")
parser.add_argument("--batch-size", type=int, default=100)
args = parser.parse_args()

# Data: uint8 images (N, 28, 28) and labels 0..9.
x_train, y_train, x_test, y_test = load_mnist()
x_train, y_train = x_train[:args.limit_train], y_train[:args.limit_train]
x_test, y_test = x_test[:args.limit_test], y_test[:args.limit_test]

# The paper's network and optimiser: 3 routing iterations, Adam with lr 0.001. build_model
# makes the fast CapsNet (minicaps/fast/); mc.CapsNet(...) is the reference, slower, to read.
model = mc.build_model(mc.CapsNetConfig(), seed=0)
optimizer = mc.Adam(lr=1e-3)
rng = np.random.default_rng(0)    # shuffling and shifts
print(f"CapsNet with {model.num_params():,} parameters, "
      f"{len(x_train)} training and {len(x_test)} test images")

step = 0
for epoch in range(1, args.epochs + 1):
    start = time.perf_counter()
    for images, labels in iterate_minibatches(x_train, y_train, args.batch_size, rng=rng):
        images = random_shift(images, max_shift=2, rng=rng)    # the only augmentation
        x = to_model_input(images, model.dtype)                 # (N, 28, 28, 1) in [0, 1]
        loss, grads, out = model.loss_and_grads(x, labels)      # decoder masked by the label
        optimizer.lr = 1e-3 * 0.96 ** (step / 2000)             # exponential decay
        optimizer.step(model.params, grads)
        step += 1
        if step % 10 == 0:
            print(f"  step {step}: loss {loss:.4f} (margin {out['margin_loss']:.4f}, "
                  f"reconstruction {out['reconstruction_loss']:.1f})")

    # Test accuracy: the predicted class is the longest digit capsule.
    predictions = model.predict(to_model_input(x_test, model.dtype))
    accuracy = np.mean(predictions == y_test)
    print(f"epoch {epoch}: test accuracy {accuracy:.4f}, "
          f"{time.perf_counter() - start:.1f} s")
