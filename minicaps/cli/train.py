"""minicaps train: the options checked and resolved (preset, data, defaults), then
training.run.train."""
import sys
import time
from pathlib import Path

from minicaps.cli.options import (CNN_PRESETS, MODELS, PRESETS,
                                  DefaultsHelpFormatter, add_data_options, add_device_option,
                                  add_folder_options, decay, fraction, image_size,
                                  nonnegative_int, pairs_per_digit, positive_float,
                                  positive_int, rate)
from minicaps.data.registry import dataset_names
from minicaps.data.multimnist import MAX_PAIRS_PER_DIGIT


def cmd_train(args):
    from minicaps.training import distributed
    comm = getattr(args, "comm", None) or distributed.from_environment()
    if comm is None:          # one process (not started by mpiexec, srun)
        return _train_command(args)
    return comm.run(lambda: _train_command(args, comm))   # output from rank 0, faults end all


def _train_command(args, comm=None):
    from minicaps.training.config import TrainConfig, check_before_loading
    from minicaps.training.run import train
    from minicaps.training.splits import config_for_data, pairs_per_digit
    _check_data_options(args)
    out = args.out
    if out is None:
        name = Path(args.data_dir).resolve().name if args.data_dir else args.dataset
        out = (Path(args.resume).parent if args.resume
               else Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}")
    preset, fields = _network_options(args)
    training = TrainConfig(
        epochs=preset["epochs"] if args.epochs is None else args.epochs,
        batch_size=args.batch_size, lr=preset["lr"] if args.lr is None else args.lr,
        lr_decay=args.lr_decay, decay_steps=args.decay_steps, seed=args.seed,
        shift=args.shift, dtype=args.dtype, dataset=args.dataset, val_size=args.val_size,
        limit_train=args.limit_train, limit_test=args.limit_test, crop=args.crop,
        flip=args.flip or None, average=None if args.no_average else args.average)
    check_before_loading(training, out_dir=out, resume=args.resume, overwrite=args.overwrite)
    _check_folder_network(args, preset, fields)
    if comm is not None:
        out = comm.on_root(lambda: out, "the run folder's name")   # a clock's name: rank 0's
        comm.on_root(lambda: _training_data(args) and None, "rank 0's download", seconds=3600)
    data = _training_data(args)
    pairs = pairs_per_digit(data)
    crop = training.for_data(data.info or {}, pairs).crop      # the data's, unless --crop
    config = config_for_data(data, crop, preset.get("model", "capsnet"), **fields)
    network = ("" if args.model == "capsnet" else
               f"the CNN baseline (--preset {args.preset}, {config.num_params():,} parameters) ")
    n_train = max(len(data.y_train) - args.val_size, 0)     # --val-size's share held out first
    if args.limit_train is not None:
        n_train = min(args.limit_train, n_train)
    held_out = f", {args.val_size} held out for validation" if args.val_size else ""
    seen = (f"{n_train} training digits, {n_train * pairs} pairs an epoch"
            if pairs else f"{n_train} training images{held_out}")
    print(f"training {network}on {data.name or args.dataset} ({seen}, "
          f"{config.num_classes} classes, input "
          f"{'x'.join(map(str, config.input_shape))}), writing to {out}")
    try:
        result = train(config, training=training, out_dir=out, device=args.device, data=data,
                       resume=args.resume, overwrite=args.overwrite,
                       progress=not args.no_progress, comm=comm,
                       keep_epochs=args.keep_epochs, keep_every=args.keep_every)
    except KeyboardInterrupt:
        print(f"\ninterrupted; {_how_to_go_on(Path(out) / 'last.npz')}", file=sys.stderr)
        return 130
    if result.history:
        last = result.history[-1]
        average = (f", moving average of the parameters {last['avg_test_accuracy']:.4f}"
                   if "avg_test_accuracy" in last else "")
        print(f"done: test accuracy {last['test_accuracy']:.4f}{average}; "
              f"checkpoints {result.last_checkpoint}, {result.best_checkpoint}")
    else:
        print(f"nothing to do: the checkpoint has already done {result.epoch} epochs; "
              f"give --epochs {result.epoch + 1} or more to train further")
    return 0


def _network_options(args):
    """(preset, config fields) of --model and --preset: a CapsNet preset with the routing
    options, or a CNN preset (which takes none)."""
    presets = CNN_PRESETS if args.model == "cnn" else PRESETS
    if args.preset not in presets:
        raise ValueError(f"--preset {args.preset} is not a preset of --model {args.model}; "
                         f"give {' or '.join(presets)}")
    preset = presets[args.preset]
    if args.model == "cnn":
        given = [option for option, value in (("--routing-iters", args.routing_iters),
                                              ("--routing-grad", args.routing_grad))
                 if value is not None]
        if given:
            raise ValueError(f"{' and '.join(given)}: the CNN baseline has no routing; "
                             f"these are options of --model capsnet")
        return preset, dict(preset["config"])
    return preset, {"routing_iters": 3 if args.routing_iters is None else args.routing_iters,
                    "routing_grad": args.routing_grad or "full", **preset["config"]}


def _check_data_options(args):
    """--dataset or --data-dir, and the folder's options only with --data-dir; then the
    defaults of those left out."""
    if args.data_dir is not None and args.dataset is not None:
        raise ValueError(f"--dataset {args.dataset} and --data-dir {args.data_dir} both name "
                         f"the data: give one")
    if args.data_dir is None:
        given = [flag for flag, value in (("--image-size", args.image_size),
                                          ("--color", args.color),
                                          ("--test-fraction", args.test_fraction),
                                          ("--bad-images", args.bad_images)) if value is not None]
        if given:
            raise ValueError(f"{', '.join(given)} read an image folder: give --data-dir DIR "
                             f"too, or leave {'them' if len(given) > 1 else 'it'} out")
    args.dataset = args.dataset or "mnist"
    if args.test_fraction is not None and args.data_dir is not None:
        from minicaps.data.folder import split_folders
        folders = split_folders(args.data_dir)
        if folders:
            print(f"note: {args.data_dir} has a split of its own ({folders[0].name}/ and "
                  f"{folders[1].name}/), so --test-fraction is not used")
    args.test_fraction = 0.1 if args.test_fraction is None else args.test_fraction
    args.bad_images = args.bad_images or "error"


def _check_folder_network(args, preset, fields):
    """With --data-dir and --image-size the network's input is known before a picture is
    read: refused then (check_network_fits) when even the smallest network the folder
    could give (gray unless --color rgb, 2 classes) would not fit in memory."""
    from minicaps.backend import resolve_device
    from minicaps.nn.capsnet import check_network_fits
    from minicaps.nn.registry import LAYOUTS
    if args.data_dir is None or args.image_size is None or args.resume is not None:
        return
    height, width = (args.crop, args.crop) if args.crop else args.image_size
    channels = 3 if args.color == "rgb" else 1
    try:
        config = LAYOUTS[preset.get("model", "capsnet")](
            **{**fields, "input_shape": (height, width, channels), "num_classes": 2})
    except ValueError:
        return              # too small for the network: said, as now, once the data is read
    check_network_fits(config, args.dtype, resolve_device(args.device))


def _training_data(args):
    """The data train reads: an image folder (--data-dir) or a named dataset."""
    from minicaps.training.run import load_data
    if args.data_dir is None:
        data = load_data(args.dataset, args.data_root)
        if args.dataset == "multimnist":
            data = data._replace(info={"pairs_per_digit": args.pairs_per_digit})
        return data
    from minicaps.data.folder import load_image_folder
    return load_image_folder(args.data_dir, image_size=args.image_size, color=args.color,
                             test_fraction=args.test_fraction, seed=args.seed,
                             bad_images=args.bad_images)


def _how_to_go_on(last):
    from minicaps.io.checkpoint import read_epoch
    try:
        epoch = read_epoch(last)
    except (OSError, ValueError):
        return "no epoch was finished, so nothing was saved: start the run again"
    return f"{last} holds epoch {epoch}: continue with --resume {last} (and the same options)"


def add_parser(sub):
    """The train command's parser."""
    p = sub.add_parser(
        "train", formatter_class=DefaultsHelpFormatter, help="train a CapsNet (or the CNN baseline) on a dataset or your own images",
        description="Train the paper's CapsNet (3 routing iterations, decoder, margin loss) "
                    "with Adam, learning rate lr * 0.96^(step/2000) and random shifts of up to "
                    "2 pixels. Each epoch prints the test accuracy, appends a line to "
                    "OUT/metrics.jsonl and saves OUT/last.npz and OUT/best.npz. The full recipe "
                    "is 50 epochs (--epochs 50; measured: 99.69% at best, at epoch 21; the authors' "
                    "code trains 300,000 steps); on a 2-core CPU one epoch of 60000 images "
                    "takes 5 to 13 minutes (measured: 290-796 s, 75-207 img/s), so start with e.g. "
                    "--epochs 1 --limit-train 10000. --model cnn trains the paper's CNN "
                    "baseline instead, with the same data, loop, checkpoints and options "
                    "(its loss: softmax cross-entropy, with dropout).")
    p.add_argument("--model", choices=MODELS, default="capsnet",
                   help="capsnet: a CapsNet; cnn: the paper's CNN baseline (section 5), "
                        "fitted to the data's input size and classes (default: capsnet)")
    p.add_argument("--preset", choices=tuple(dict.fromkeys([*PRESETS, *CNN_PRESETS])),
                   default="paper",
                   help="paper: the paper's network (with --model cnn: its CNN baseline, "
                        "256-256-128 5x5 convolutions, fc 328-192, dropout); quick: a smaller "
                        "CapsNet (64 conv1 channels, 16 primary maps) at lr 0.002 for 2 "
                        "epochs, 99%% in minutes; pooled (--model cnn): the max-pooling "
                        "baseline of the affNIST experiment, a 2x2 max-pool after conv1 and "
                        "conv2, fc 847-192; pooled-quick (--model cnn): the same kind, the "
                        "size of the quick CapsNet at 40x40 (64-128-128 channels, fc "
                        "404-192); released (--model cnn): the authors' released "
                        "baseline, Table 1's for MultiMNIST, 512-256 5x5 convolutions each "
                        "with a 2x2 max-pool, fc 1024 (default: paper)")
    p.add_argument("--epochs", type=nonnegative_int, default=None,
                   help="train until this many epochs are done in all (with --resume: "
                        "counting those in the checkpoint) (default: 1; 2 with --preset quick)")
    p.add_argument("--batch-size", type=positive_int, default=100, help="images per step")
    p.add_argument("--lr", type=positive_float, default=None,
                   help="initial Adam learning rate (default: 0.001; 0.002 with --preset quick)")
    p.add_argument("--lr-decay", type=rate, default=0.96,
                   help="the learning rate is multiplied by this every --decay-steps steps "
                        "(continuously)")
    p.add_argument("--decay-steps", type=positive_int, default=2000, help="see --lr-decay")
    p.add_argument("--shift", type=nonnegative_int, default=None,
                   help="random shift of each training image by up to this many pixels "
                        "(0: no augmentation) (default: the data's: 2; 6 for the affnist sets, whose "
                        "digits come centred on 40x40: the authors' expanded MNIST; 0 for "
                        "multimnist, whose pairs are shifted by up to 4 as they are made)")
    p.add_argument("--keep-epochs", action="store_true",
                   help="also keep every epoch's checkpoint, as epoch-001.npz and so on in "
                        "the run folder (to pick the network at a chosen validation "
                        "accuracy afterwards)")
    p.add_argument("--keep-every", type=nonnegative_int, default=0, metavar="N",
                   help="also keep the parameters every N steps, as step-0000600.npz and so "
                        "on, finer than --keep-epochs (to evaluate and pick from, not to "
                        "resume from; each the size of last.npz: parameters, Adam's moments "
                        "and the average) (default: 0, none)")
    p.add_argument("--pairs-per-digit", type=pairs_per_digit, metavar="K", default=1,
                   help="with --dataset multimnist: each epoch pairs every training digit K "
                        "times with a digit of another class, K from 1 to "
                        f"{MAX_PAIRS_PER_DIGIT:,} (the paper: 1000)")
    p.add_argument("--routing-iters", type=positive_int, default=None,
                   help="iterations of dynamic routing (CapsNet), 1 to 100 (default: 3)")
    p.add_argument("--routing-grad", choices=("full", "stop"), default=None,
                   help="'full': backpropagate through all routing iterations; 'stop': "
                        "treat the coupling coefficients as constants (CapsNet) "
                        "(default: full)")
    add_device_option(p)
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                   help="floating-point type of parameters and activations")
    p.add_argument("--seed", type=nonnegative_int, default=0,
                   help="seed for the initial weights, the shuffling, the shifts, the "
                        "validation split, and an image folder's test split and order")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="folder for metrics.jsonl and the checkpoints (default: "
                        "runs/<dataset>-<date>-<time>, or the folder of --resume)")
    p.add_argument("--resume", metavar="CKPT", default=None,
                   help="continue exactly from this checkpoint (e.g. OUT/last.npz); "
                        "give the same options as the original run")
    p.add_argument("--overwrite", action="store_true",
                   help="start a new run in an --out folder that holds one, deleting its "
                        "last.npz, best.npz and metrics.jsonl (without it, that is refused)")
    p.add_argument("--limit-train", type=positive_int, metavar="N", default=None,
                   help="train on the first N training images only (default: all)")
    p.add_argument("--val-size", type=nonnegative_int, metavar="N", default=0,
                   help="hold out N random training images for validation; best.npz then "
                        "goes by validation accuracy instead of test accuracy")
    keep = p.add_mutually_exclusive_group()
    keep.add_argument("--average", type=decay, metavar="DECAY", default=0.999,
                   help="keep a moving average of the parameters with this decay beside "
                        "training and report its test accuracy each epoch too; it is the "
                        "model that evaluate, plot and predict use, and best.npz goes by "
                        "its accuracy. Training itself is unchanged")
    keep.add_argument("--no-average", action="store_true",
                   help="keep no moving average (evaluation then takes half the time)")
    p.add_argument("--dataset", choices=dataset_names(), default=None,
                   help="which data set (default: mnist)")
    add_data_options(p)
    add_folder_options(p)
    p.add_argument("--image-size", metavar="N|HxW", type=image_size, default=None,
                   help="with --data-dir: resize every image to N x N (or H x W) pixels "
                        "(default: the size they all have; mixed sizes need it)")
    p.add_argument("--color", choices=("gray", "rgb"), default=None,
                   help="with --data-dir: read the images as gray or RGB (default: rgb if "
                        "any image is in colour)")
    p.add_argument("--test-fraction", type=fraction, default=None, metavar="F",
                   help="with --data-dir and no DIR/train + DIR/test: hold out this share of "
                        "each class for testing, drawn with --seed (default: 0.1)")
    p.add_argument("--bad-images", choices=("error", "skip"), default=None,
                   help="with --data-dir: stop at an image (or a folder in a class folder) "
                        "that cannot be read (error), or leave it out with a warning naming "
                        "it (skip) (default: error)")
    p.add_argument("--crop", type=nonnegative_int, metavar="N", default=None,
                   help="train on random N x N crops and test on the centre crop (default: "
                        "the dataset's protocol: 32 for smallnorb, none otherwise; 0: none)")
    p.add_argument("--flip", action="store_true",
                   help="mirror a random half of the training images left to right (for "
                        "photographs; not for digits)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar (without a terminal: no progress lines, which otherwise come every 30 s)")
    p.set_defaults(func=cmd_train)
