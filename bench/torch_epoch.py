"""Train the PyTorch peer (torch_capsnet.py) with minicaps' recipe: an independent check of
what the recipe itself reaches, apart from minicaps' hand-written passes.

Everything but the forward and backward passes is the same as in ``minicaps train``: the
initial weights of ``minicaps.CapsNet(seed=SEED)`` (or, with ``--init torch``, PyTorch's own
default initialisation), the order of the images and their shifts drawn from the same seed
(``minicaps.training.epoch.epoch_draws``), the learning rate lr * 0.96^(step / 2000), and Adam in
TensorFlow's form: PyTorch's Adam with its eps set each step to eps / sqrt(1 - beta2^t),
which makes its update equal to minicaps.Adam's. Gradients come from autograd.

    python bench/torch_epoch.py --epochs 1            # MNIST from $MINICAPS_DATA; about 12 min on 2 cores

Prints the test accuracy after each epoch and, with --json, writes the numbers to a file.
"""
import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import minicaps  # noqa: F401  (first: sets OpenBLAS's thread timeout before NumPy loads)
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch_capsnet as tc  # noqa: E402
from minicaps.data.augment import shift_images
from minicaps.data.dataset import to_model_input  # noqa: E402
from minicaps.nn.capsnet import CapsNetConfig, init_params  # noqa: E402
from minicaps.training.optim import Adam  # noqa: E402
from minicaps.training.epoch import epoch_draws, learning_rate
from minicaps.training.splits import prepare_data  # noqa: E402


def tf_adam_eps(eps, beta2, t):
    """The eps that makes PyTorch's Adam step t (1, 2, ...) equal TensorFlow's:
    PyTorch divides by sqrt(v / (1 - beta2^t)) + eps', TensorFlow by (sqrt(v) + eps) with
    the correction in the learning rate, so eps' = eps / sqrt(1 - beta2^t)."""
    return eps / math.sqrt(1.0 - beta2 ** t)


def peer_model(config, seed, init="minicaps", dtype=torch.float32):
    """The peer with minicaps' initial weights for ``seed`` (init="minicaps") or PyTorch's
    default initialisation drawn from ``seed`` (init="torch")."""
    torch.manual_seed(seed)
    model = tc.TorchCapsNet(**tc.config_from_minicaps(config.to_dict())).to(dtype)
    if init == "minicaps":
        np_dtype = "float64" if dtype == torch.float64 else "float32"
        tc.load_minicaps_params(model, init_params(config, seed, np_dtype))
    elif init != "torch":
        raise ValueError(f"init must be 'minicaps' or 'torch', got {init!r}")
    return model


def train_epochs(model, train, *, epochs=1, seed=0, batch_size=100, lr=1e-3, lr_decay=0.96,
                 decay_steps=2000, shift=2, after_epoch=None):
    """Train ``model`` as minicaps.training.run.train trains a CapsNet with the same arguments:
    the same draws from default_rng(seed), learning rates and Adam. ``train`` has
    .images (uint8) and .labels. after_epoch(epoch, seconds) is called after each epoch.
    Returns the number of steps made."""
    dtype = model.conv1.weight.dtype
    ref = Adam(lr=lr)                     # its betas and eps, so that both stay in step
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(ref.beta1, ref.beta2), eps=ref.eps)
    rng = np.random.default_rng(seed)
    labels = torch.from_numpy(np.asarray(train.labels, dtype=np.int64))
    step = 0
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        order, dy, dx = epoch_draws(len(train), batch_size, rng, shift, train.images.shape[1:3])
        for k in range(0, len(train), batch_size):
            idx = order[k:k + batch_size]
            batch = train.images[idx]
            if shift:
                batch = shift_images(batch, dy[k:k + batch_size], dx[k:k + batch_size], shift)
            x = torch.from_numpy(to_model_input(batch)).to(dtype)
            for group in opt.param_groups:
                group["lr"] = learning_rate(step, lr, lr_decay, decay_steps)
                group["eps"] = tf_adam_eps(ref.eps, ref.beta2, step + 1)
            loss = model.loss(x, labels[idx])[0]
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
        if after_epoch is not None:
            after_epoch(epoch, time.perf_counter() - start)
    return step


def accuracy(model, test, batch_size=500):
    """Test accuracy, each image masked by its longest capsule."""
    dtype = model.conv1.weight.dtype
    correct = 0
    with torch.no_grad():
        for k in range(0, len(test), batch_size):
            x = torch.from_numpy(to_model_input(test.images[k:k + batch_size])).to(dtype)
            predicted = model(x)["lengths"].argmax(1).numpy()
            correct += int((predicted == test.labels[k:k + batch_size]).sum())
    return correct / len(test)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=1, help="epochs to train (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=0,
                    help="the seed of minicaps' initial weights, order and shifts (default: %(default)s)")
    ap.add_argument("--init", choices=("minicaps", "torch"), default="minicaps",
                    help="minicaps' initial weights for the seed, or PyTorch's default initialisation (default: %(default)s)")
    ap.add_argument("--batch-size", type=int, default=100, help="images per step (default: %(default)s)")
    ap.add_argument("--lr", type=float, default=1e-3,
                    help="initial learning rate, times 0.96^(step / 2000) (default: %(default)s)")
    ap.add_argument("--shift", type=int, default=2, help="random shifts of up to this many pixels (default: %(default)s)")
    ap.add_argument("--limit-train", type=int, default=None, metavar="N",
                    help="the first N training images only (all when not given)")
    ap.add_argument("--limit-test", type=int, default=None, metavar="N",
                    help="the first N test images only (all when not given)")
    ap.add_argument("--data-root", default=None, metavar="DIR",
                    help="folder with the MNIST files (when not given: $MINICAPS_DATA, else minicaps' cache)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="PyTorch's threads (default: %(default)s)")
    ap.add_argument("--json", default=None, metavar="FILE", help="also write the results to this JSON file")
    args = ap.parse_args(argv)
    if args.epochs < 1 or args.batch_size < 1:
        ap.error("--epochs and --batch-size must be at least 1")
    torch.set_num_threads(args.threads)
    train, _, test = prepare_data(None, "mnist", args.data_root, args.limit_train,
                                  args.limit_test, 0, args.seed)
    model = peer_model(CapsNetConfig(), args.seed, args.init)
    rows = []

    def report(epoch, seconds):
        rows.append({"epoch": epoch, "test_accuracy": accuracy(model, test),
                     "epoch_seconds": seconds, "images_per_second": len(train) / seconds})
        print(f"epoch {epoch}: test accuracy {rows[-1]['test_accuracy']:.4f} "
              f"({seconds:.0f} s, {len(train) / seconds:.0f} img/s)", flush=True)

    train_epochs(model, train, epochs=args.epochs, seed=args.seed, batch_size=args.batch_size,
                 lr=args.lr, shift=args.shift, after_epoch=report)
    if args.json:
        result = {"seed": args.seed, "init": args.init, "batch_size": args.batch_size,
                  "lr": args.lr, "n_train": len(train), "n_test": len(test),
                  "torch": torch.__version__, "threads": args.threads, "epochs": rows}
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return rows


if __name__ == "__main__":
    main()
