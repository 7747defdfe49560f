"""The `minicaps` command: argparse front end only; the work happens in the library."""
import argparse
import math
import sys
import time
from pathlib import Path

from minicaps.data.multimnist import MAX_PAIRS_PER_DIGIT
from minicaps.training.robustness import MAX_STEPS
from minicaps.training.run import AFFINE_SETS

DATASETS = ("mnist", "fashion-mnist", "cifar10", "svhn", "smallnorb", "multimnist", "affnist",
            "affnist-like", "affnist-wide")
# --preset: the network and the recipe. "paper": the paper's network and learning rate;
# "quick": a smaller CapsNet (64 conv1 channels, 16 primary capsule maps: 2.8 M parameters
# against 8.2 M, about 3x the images per second) at twice the learning rate, 2 epochs.
PRESETS = {"paper": {"config": {}, "epochs": 1, "lr": 1e-3},
           "quick": {"config": {"conv1_channels": 64, "primary_maps": 16}, "epochs": 2,
                     "lr": 2e-3}}
# --preset with --model cnn: the paper's CNN baselines (minicaps/nn/cnn.py), fitted to the
# data's input size and classes: "paper", three 5x5 SAME convolutions of 256, 256, 128
# channels, fc 328-192, dropout (35.4 M parameters at 28x28); "pooled", a 2x2 max-pool
# after conv1 and conv2 and fc 847-192 (the affNIST experiment's baseline: CapsNet's size
# at 40x40, 7.9 M parameters at 28x28); "pooled-quick", the same kind of network the size of
# --preset quick's CapsNet at 40x40 (5x5 convolutions of 64, 128, 128, fc 404-192: 5,867,614
# parameters against 5,865,792); "released", the authors' released baseline, 5x5
# convolutions of 512 and 256 channels each with a 2x2 max-pool, fc 1024 (Table 1's
# MultiMNIST CNN: 24.5 M parameters at 36x36). "model" is train()'s name of the network.
CNN_PRESETS = {"paper": {"model": "cnn", "config": {}, "epochs": 1, "lr": 1e-3},
               "pooled": {"model": "cnn-pooled", "config": {}, "epochs": 1, "lr": 1e-3},
               "pooled-quick": {"model": "cnn-pooled-quick", "config": {}, "epochs": 1,
                                "lr": 1e-3},
               "released": {"model": "cnn-released", "config": {}, "epochs": 1, "lr": 1e-3}}
MODELS = ("capsnet", "cnn")                       # --model
GRADCHECK_NAMES = {"capsnet": "CapsNet", "cnn": "CNN baseline"}   # gradcheck's title
PLOT_KINDS = ("reconstructions", "perturbation", "routing", "lengths", "curves", "confusion",
              "pairs")
CAPSULE_KINDS = ("reconstructions", "perturbation", "routing", "lengths", "pairs")   # a CapsNet's only
PAIR_KINDS = ("pairs", "curves")            # what a MultiMNIST network draws
WEIGHTS = {"average": "moving average of the parameters", "trained": "trained parameters"}


def cmd_gradcheck(args):
    from minicaps.gradcheck import report, format_table
    models = MODELS if args.model == "all" else (args.model,)
    rows = report(seed=args.seed, models=models)
    print(f"Gradient check of the {' and the '.join(GRADCHECK_NAMES[m] for m in models)}: "
          f"central differences in float64 vs the hand-written backward passes")
    print(format_table(rows))
    bad = [r for r in rows if not r[2] <= r[3]]
    worst = max(rows, key=lambda r: r[2] / r[3])
    print(f"\n{len(rows) - len(bad)}/{len(rows)} checks within tolerance; closest to its "
          f"tolerance: {worst[0]}, {worst[1]}: {worst[2]:.2e} (<= {worst[3]:g})")
    return 1 if bad else 0


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


def cmd_train(args):
    from minicaps.training import distributed
    comm = getattr(args, "comm", None) or distributed.from_environment()
    if comm is None:          # one process (not started by mpiexec, srun)
        return _train_command(args)
    return comm.run(lambda: _train_command(args, comm))   # output from rank 0, faults end all


def _train_command(args, comm=None):
    from minicaps.training.run import check_before_loading, config_for_data, train
    _check_data_options(args)
    out = args.out
    if out is None:
        name = Path(args.data_dir).resolve().name if args.data_dir else args.dataset
        out = (Path(args.resume).parent if args.resume
               else Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}")
    preset, fields = _network_options(args)
    if args.shift is None:     # MultiMNIST's pairs come shifted by up to 4 pixels already;
        # expanded MNIST's centred digits move by up to 6 (affnist.TRAIN_SHIFT)
        args.shift = (0 if args.dataset == "multimnist" and args.data_dir is None else
                      6 if args.dataset in AFFINE_SETS and args.data_dir is None else 2)
    args.epochs = preset["epochs"] if args.epochs is None else args.epochs
    args.lr = preset["lr"] if args.lr is None else args.lr
    check_before_loading(epochs=args.epochs, out_dir=out, resume=args.resume,
                         overwrite=args.overwrite, batch_size=args.batch_size, lr=args.lr,
                         lr_decay=args.lr_decay, decay_steps=args.decay_steps, seed=args.seed,
                         limit_train=args.limit_train, limit_test=args.limit_test,
                         val_size=args.val_size, shift=args.shift,
                         average=None if args.no_average else args.average)
    _check_folder_network(args, preset, fields)
    if comm is not None:
        out = comm.on_root(lambda: out, "the run folder's name")   # a clock's name: rank 0's
        comm.on_root(lambda: _training_data(args) and None, "rank 0's download", seconds=3600)
    data = _training_data(args)
    crop = (data.info or {}).get("crop") if args.crop is None else (args.crop or None)
    config = config_for_data(data, crop, preset.get("model", "capsnet"), **fields)
    network = ("" if args.model == "capsnet" else
               f"the CNN baseline (--preset {args.preset}, {config.num_params():,} parameters) ")
    pairs = (data.info or {}).get("pairs_per_digit")
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
        result = train(config, epochs=args.epochs, out_dir=out, batch_size=args.batch_size,
                       lr=args.lr, lr_decay=args.lr_decay, decay_steps=args.decay_steps,
                       seed=args.seed, dtype=args.dtype, device=args.device,
                       data=data, dataset=args.dataset,
                       limit_train=args.limit_train, limit_test=args.limit_test,
                       val_size=args.val_size, shift=args.shift, crop=crop,
                       flip=args.flip or None,
                       average=None if args.no_average else args.average,
                       resume=args.resume, overwrite=args.overwrite,
                       progress=not args.no_progress, comm=comm,
                       keep_epochs=args.keep_epochs)
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


def _check_folder_network(args, preset, fields):
    """With --data-dir and --image-size the network's input is known before a picture is
    read: refused then (check_network_fits) when even the smallest network the folder
    could give (gray unless --color rgb, 2 classes) would not fit in memory."""
    from minicaps.backend import resolve_device
    from minicaps.nn.capsnet import check_network_fits
    from minicaps.training.run import NETWORKS
    if args.data_dir is None or args.image_size is None or args.resume is not None:
        return
    height, width = (args.crop, args.crop) if args.crop else args.image_size
    channels = 3 if args.color == "rgb" else 1
    try:
        config = NETWORKS[preset.get("model", "capsnet")](
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


def _test_data(args, ckpt):
    """(test Split, class names, dataset name) for a checkpoint: the data it was trained
    on (its image folder, read the same way, or its dataset), or the one the options name."""
    from minicaps.training.run import load_data, prepare_data
    settings = ckpt.extra.get("settings", {}) or {}
    info = settings.get("data_info") or {}
    folder = getattr(args, "data_dir", None) or (info.get("folder") if args.dataset is None
                                                 else None)
    if folder:
        data = _read_test_folder(folder, info)
    else:
        data = load_data(args.dataset or settings.get("dataset", "mnist"), args.data_root)
        if settings.get("pairs_per_digit") and args.dataset in (None, "multimnist"):
            data = data._replace(info={"pairs_per_digit": settings["pairs_per_digit"]})
    classes = _trained_classes(ckpt) or list(data.classes)
    if data.classes and classes and list(data.classes) != list(classes):
        raise ValueError(f"{data.name} has the classes {', '.join(data.classes)} but "
                         f"{ckpt.path} was trained on {', '.join(classes)}")
    if folder:                  # its training images were not read: the test split as is
        from minicaps.data.augment import center_crop
        from minicaps.training.run import Split
        cut = slice(None, args.limit_test)
        test = Split(center_crop(data.x_test[cut], settings.get("crop")), data.y_test[cut])
    else:
        _, _, test = prepare_data(data, limit_test=args.limit_test, crop=settings.get("crop"))
    return test, classes, data.name


def _read_test_folder(folder, info):
    """The test images of an image folder (its training images are not decoded), split as
    the run recorded in ``info`` (its data_info). A ValueError when it is the run's folder
    and no longer splits as it did: other split folders, or another seeded test share."""
    from minicaps.data.folder import load_image_folder
    options = dict(image_size=info.get("image_size"), color=info.get("color"),
                   test_fraction=info.get("test_fraction", 0.1), seed=info.get("seed", 0),
                   bad_images="skip")
    data = load_image_folder(folder, only="test", **options)
    if not (info.get("folder") and Path(folder).resolve() == Path(info["folder"])):
        return data                      # another folder: its own test share
    if info.get("split") and data.info["split"] != info["split"]:
        raise ValueError(f"{folder} was split by {info['split']} when the run was trained, "
                         f"and is split by {data.info['split']} now: evaluate with the "
                         f"folders as they were, or on another folder (--data-dir)")
    trained = info.get("test_files_sha256")
    if trained and data.info["test_files_sha256"] != trained and info.get("undecodable", 1):
        # the run drew its split after leaving out pictures it could not decode
        data = load_image_folder(folder, **options)
    if trained and data.info["test_files_sha256"] != trained:
        raise ValueError(
            f"{folder} has changed since the run was trained (files added, removed, "
            f"renamed or now unreadable): its seeded test share is no longer the one held "
            f"out, and may hold images the network trained on. Evaluate on a fixed split "
            f"(DIR/train and DIR/test folders) or on another folder (--data-dir)")
    return data


def _trained_classes(ckpt, num_classes=None):
    """The class names a network was trained on: its settings' classes, else those of the
    data set it names (a file from before the classes were kept: MNIST's digits, say), else
    None (not known, or not ``num_classes`` of them)."""
    from minicaps.data.registry import FASHION_CLASSES, MNIST_CLASSES
    settings = ckpt.extra.get("settings") or {}
    known = {"mnist": MNIST_CLASSES, "fashion-mnist": FASHION_CLASSES}
    classes = list(settings.get("classes") or known.get(settings.get("dataset"), ()))
    if not classes or (num_classes is not None and len(classes) != num_classes):
        return None
    return classes


def _listed(classes, most=12):
    shown = ", ".join(str(c) for c in classes[:most])
    return shown + (", ..." if len(classes) > most else "")


def _named(classes):
    """The class names for the pictures, or None where they are just the numbers 0, 1, ..."""
    if not classes or [str(c) for c in classes] == [str(j) for j in range(len(classes))]:
        return None
    return list(classes)


def _how_to_go_on(last):
    from minicaps.io.checkpoint import read_epoch
    try:
        epoch = read_epoch(last)
    except (OSError, ValueError):
        return "no epoch was finished, so nothing was saved: start the run again"
    return f"{last} holds epoch {epoch}: continue with --resume {last} (and the same options)"


def _load(args):
    """The checkpoint or weights file the command names; --pretrained: the shipped network."""
    from minicaps.io.files import regular_file
    from minicaps.io.weights import SHIPPED, load_any, load_pretrained
    if args.pretrained == (args.checkpoint is not None):
        raise ValueError("give a CHECKPOINT (a .npz of a run, or a weights file) or "
                         "--pretrained (the network that ships with minicaps), one of them")
    if args.pretrained:
        args.checkpoint = str(SHIPPED)
        return load_pretrained(device=args.device)      # checked against its SHA-256
    regular_file(args.checkpoint, "checkpoint file")
    return load_any(args.checkpoint, device=args.device)


def cmd_export_weights(args):
    from minicaps.io.weights import export_weights
    path = export_weights(args.checkpoint, args.out, weights=args.weights, dtype=args.dtype)
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB): the {args.weights} weights "
          f"of {args.checkpoint} in {args.dtype}; use it as a CHECKPOINT of evaluate, plot "
          f"and predict")
    return 0


def cmd_evaluate(args):
    from minicaps.io.checkpoint import model_kind
    from minicaps.training.run import evaluate
    ckpt = _load(args)
    model, weights = ckpt.model_with(args.weights)
    test, classes, dataset = _test_data(args, ckpt)
    pairs = test.targets is not None
    model.check_batch_fits(max(1, min(args.batch_size, len(test.labels))), training=False)
    scores = evaluate(model, test.images, test.labels, batch_size=args.batch_size,
                      progress=not args.no_progress, desc="test set", per_class=not pairs,
                      targets=test.targets)
    print(f"{args.checkpoint} (epoch {ckpt.epoch}, step {ckpt.step}, {WEIGHTS[weights]}) on "
          f"{scores['n']} {dataset} test {'pairs' if pairs else 'images'}:")
    print(f"  accuracy            {scores['accuracy']:.4f} "
          f"({round(scores['accuracy'] * scores['n'])}/{scores['n']}, "
          f"error {100 * (1 - scores['accuracy']):.2f}%)"
          + (f"; a pair is right when its two digits are the two "
             f"{'longest capsules' if model_kind(model) == 'capsnet' else 'most probable classes'}"
             if pairs else ""))
    if pairs:
        print(f"  one or more right   {scores['one_or_more']:.4f}")
    if "cross_entropy" in scores:                 # the CNN baseline: its whole loss
        print(f"  cross-entropy       {scores['cross_entropy']:.5f} (the CNN baseline's loss)")
    else:
        print(f"  margin loss         {scores['margin_loss']:.5f}")
        if scores["reconstruction_loss"] is not None:
            print(f"  reconstruction loss {scores['reconstruction_loss']:.4f} "
                  + ("(sum of squared pixel errors per pair, each digit from its label's "
                     "capsule)" if pairs else "(sum of squared pixel errors per image, "
                     "decoder masked by the prediction)"))
        print(f"  total loss          {scores['loss']:.5f}")
    if classes and not pairs:
        width = max(len(str(c)) for c in classes)
        print(f"  per class: {'class':{width}}  images  accuracy")
        for name, (n, accuracy) in zip(classes, scores["per_class"]):
            shown = f"{accuracy:.4f}" if n else "-"
            print(f"             {str(name):{width}}  {n:6d}  {shown}")
    return 0


def cmd_plot(args):
    from minicaps import viz
    from minicaps.io.files import output_folder
    from minicaps.io.checkpoint import model_kind
    from minicaps.data.mnist import to_model_input
    from minicaps.io.weights import metrics_beside
    ckpt = _load(args)
    metrics = metrics_beside(args.checkpoint)
    kinds = args.kind or [k for k in PLOT_KINDS if k != "curves" or metrics.exists()]
    if model_kind(ckpt.model) != "capsnet":
        # capsule pictures need capsules: a CNN has curves and a confusion matrix to draw
        capsules = [k for k in kinds if k in CAPSULE_KINDS]
        if args.kind and capsules:
            raise ValueError(f"{args.checkpoint} holds the CNN baseline, which has no "
                             f"capsules: the capsule pictures ({', '.join(capsules)}) need "
                             f"a CapsNet; for a CNN give --kind curves or --kind confusion")
        if capsules:
            print(f"minicaps plot: {args.checkpoint} holds the CNN baseline: drawing "
                  f"{' and '.join(k for k in kinds if k not in capsules)} only; the capsule "
                  f"pictures ({', '.join(capsules)}) need a CapsNet", file=sys.stderr)
        kinds = [k for k in kinds if k not in capsules]
    settings = ckpt.extra.get("settings", {}) or {}
    if settings.get("pairs_per_digit") and args.dataset in (None, "multimnist"):
        # MultiMNIST: its picture is the paper's fig. 5; the others read one label a picture
        single = [k for k in kinds if k not in PAIR_KINDS]
        if args.kind and single:
            raise ValueError(f"{args.checkpoint} was trained on MultiMNIST pairs: "
                             f"{', '.join(single)} need one digit a picture; give --kind "
                             f"pairs or --kind curves")
        capsnet = model_kind(ckpt.model) == "capsnet"     # a CNN draws no pairs (no decoder)
        kinds = [k for k in kinds if k in PAIR_KINDS] if args.kind else (
            (["pairs"] if capsnet else []) + (["curves"] if metrics.exists() else []))
    elif args.kind and "pairs" in args.kind:
        raise ValueError("--kind pairs draws MultiMNIST pairs: it needs a network trained "
                         "with --dataset multimnist")
    else:
        kinds = [k for k in kinds if k != "pairs"]
    model = x = labels = weights = accuracy = classes = None
    dataset = args.dataset or "mnist"
    if any(k != "curves" for k in kinds):
        model, weights = ckpt.model_with(args.weights)
        # the test accuracy these weights had when the checkpoint was saved
        accuracy = ckpt.metrics.get("avg_test_accuracy" if weights == "average" else "test_accuracy")
        test, classes, dataset = _test_data(args, ckpt)
        x, labels = to_model_input(test.images, model.dtype), test.labels
        classes = _named(classes)
    out = Path(args.out) if args.out else (
        Path("plots") if args.pretrained else Path(args.checkpoint).parent / "plots")
    output_folder(out)
    try:
        paths = viz.render(kinds, out, model, x, labels,
                           metrics=metrics,
                           indices=args.index, dpi=args.dpi, weights=weights,
                           accuracy=accuracy, dataset=dataset, classes=classes,
                           warn=lambda m: print(f"minicaps plot: warning: {m}", file=sys.stderr),
                           progress=not args.no_progress,
                           log=lambda m: print(m, file=sys.stderr))   # stdout: the paths alone
    except ImportError as e:
        print(f"minicaps plot: error: {e}", file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    return 0


def _two_networks(args, test_data=None):
    """The checkpoints args.first and args.second, refused unless they read one test set:
    (loaded [(path, ckpt, model, weights)] x 2, test Split, class names, dataset name).
    test_data(args, ckpt): the test set (default: _test_data)."""
    from minicaps.io.files import regular_file
    from minicaps.io.weights import load_any
    loaded = []
    for path in (args.first, args.second):
        regular_file(path, "checkpoint file")
        ckpt = load_any(path, device=args.device)
        model, weights = ckpt.model_with(args.weights)
        loaded.append((path, ckpt, model, weights))
    (path_a, ckpt_a, model_a, _), (path_b, ckpt_b, model_b, _) = loaded
    datasets = [(c.extra.get("settings", {}) or {}).get("dataset") for c in (ckpt_a, ckpt_b)]
    folders = [_trained_folder(c) for c in (ckpt_a, ckpt_b)]
    if args.data_dir is not None and args.dataset is not None:
        raise ValueError(f"--dataset {args.dataset} and --data-dir {args.data_dir} both name "
                         f"the test set: give one")
    if args.data_dir is None and args.dataset is None and folders[0] != folders[1]:
        said = [f or d or "data it does not name" for f, d in zip(folders, datasets)]
        raise ValueError(f"{path_a} was trained on {said[0]} and {path_b} "
                         f"on {said[1]}: give --data-dir DIR (the image "
                         f"folder to test both on) or --dataset")
    if args.data_dir is None and args.dataset is None and datasets[0] != datasets[1]:
        said = [d or "data it does not name" for d in datasets]
        raise ValueError(f"{path_a} was trained on {said[0]} and {path_b} on "
                         f"{said[1]}: give --dataset to test both on one test set")
    if (model_a.config.input_shape != model_b.config.input_shape
            or model_a.config.num_classes != model_b.config.num_classes):
        raise ValueError(f"the two networks take different inputs or classes "
                         f"({model_a.config.input_shape}, {model_a.config.num_classes} classes "
                         f"against {model_b.config.input_shape}, {model_b.config.num_classes}):"
                         f" they cannot read one test set")
    trained = [_trained_classes(ckpt, model.config.num_classes)
               for _, ckpt, model, _ in loaded]
    if None not in trained and trained[0] != trained[1]:
        raise ValueError(f"{path_a} was trained on the classes {_listed(trained[0])} and "
                         f"{path_b} on {_listed(trained[1])}: one test set cannot score "
                         f"both; compare two networks trained on the same classes")
    # an image folder is split as the run trained on it split it (the first run's otherwise)
    given = args.data_dir and Path(args.data_dir).resolve()
    split_by = ckpt_b if given and str(given) == folders[1] != folders[0] else ckpt_a
    test, classes, dataset = (test_data or _test_data)(args, split_by)
    for path, names in zip((path_a, path_b), trained):
        if names and classes and list(classes) != names:
            raise ValueError(f"{dataset} has the classes {_listed(classes)} but {path} was "
                             f"trained on {_listed(names)}: compare two networks trained on "
                             f"the same classes as the test set")
    if test.targets is not None:
        raise ValueError(f"{args.command} reads one label a picture; for MultiMNIST pairs run "
                         f"`minicaps evaluate` on each checkpoint")
    return loaded, test, classes, dataset


def _trained_folder(ckpt):
    """The image folder a network was trained on (its resolved path), or None."""
    settings = ckpt.extra.get("settings", {}) or {}
    return (settings.get("data_info") or {}).get("folder")


def _network_names(loaded):
    """"CapsNet" or "CNN" for each loaded network, with its folder's name when both are."""
    from minicaps.io.checkpoint import model_kind
    names = []
    for path, _, model, _ in loaded:
        name = "CapsNet" if model_kind(model) == "capsnet" else "CNN"
        names.append(name if name not in names else f"{name} ({Path(path).parent.name})")
    return names


def cmd_compare(args):
    """Two networks on one test set: each one's accuracy, where they differ, compare.png."""
    import numpy as np
    from minicaps import viz
    from minicaps.io.files import output_folder
    from minicaps.backend import to_numpy
    from minicaps.data.mnist import to_model_input
    loaded, test, classes, dataset = _two_networks(args)
    (path_a, _, model_a, _), (path_b, _, model_b, _) = loaded
    x = to_model_input(test.images, model_a.dtype)
    names = _network_names(loaded)
    predictions = [model_a.predict(x), model_b.predict(x)]
    groups = viz.agreement(test.labels, *predictions)
    n = len(test.labels)
    print(f"{n} {dataset} test images:")
    for (path, _, model, weights), name, pred in zip(loaded, names, predictions):
        print(f"  {name:<10} {np.mean(pred == test.labels):.4f}  ({path}, "
              f"{model.num_params():,} parameters, {WEIGHTS[weights]})")
    print(f"  both right {len(groups['both'])}, only {names[0]} {len(groups['only_first'])}, "
          f"only {names[1]} {len(groups['only_second'])}, neither {len(groups['neither'])}")
    out = output_folder(Path(args.out) if args.out else Path(path_a).parent / "plots")
    try:
        path = viz.plot_compare(to_numpy(x), test.labels, predictions, names,
                                out / "compare.png", dpi=args.dpi, classes=_named(classes))
    except ImportError as e:
        print(f"minicaps compare: error: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0


def _digits_to_transform(args, ckpt):
    """The test set robustness transforms: compare's (_test_data), except MNIST's test
    digits for networks trained on expanded MNIST (their affNIST test set is transformed
    already)."""
    settings = ckpt.extra.get("settings", {}) or {}
    if (args.dataset or settings.get("dataset")) in AFFINE_SETS:
        args = argparse.Namespace(**{**vars(args), "dataset": "mnist"})
    return _test_data(args, ckpt)


def cmd_robustness(args):
    """Two networks' accuracy under each transformation alone: a table, robustness.json
    and robustness.png."""
    import json
    from minicaps import viz
    from minicaps.io.checkpoint import replace_file
    from minicaps.io.files import output_folder
    from minicaps.training.robustness import (at_each_strength, check_canvas, robustness,
                                              strength_text)
    loaded, test, _, dataset = _two_networks(args, _digits_to_transform)
    height, width, _ = loaded[0][2].config.input_shape
    if height != width:
        raise ValueError(f"robustness transforms on a square canvas; these networks take "
                         f"{height}x{width} images")
    check_canvas(test.images.shape[1:], height)
    names = _network_names(loaded)
    n = len(test.labels)
    print(f"{n} {dataset} test images, each transformed alone on the {height}x{width} "
          f"canvas (seed {args.seed}; strength 0: the image centred, untransformed):")
    print(f"  {'transformation':<15}{'strength':<13}" + "".join(f"{m:>14}" for m in names))

    def show(row):
        print(f"  {row['transformation']:<15}"
              f"{strength_text(row['transformation'], row['strength']):<13}"
              + "".join(f"{a:>14.2%}" for a in row["accuracy"]), flush=True)

    rows = robustness([model for _, _, model, _ in loaded], test.images, test.labels, height,
                      args.steps, args.seed, args.batch_size, log=show)
    out = output_folder(Path(args.out) if args.out else Path(loaded[0][0]).parent / "plots")
    numbers = {"checkpoints": [str(p) for p, *_ in loaded], "names": names,
               "weights": [w for *_, w in loaded], "dataset": dataset, "images": n,
               "canvas": height, "steps": args.steps, "seed": args.seed, "rows": rows}
    replace_file(out / "robustness.json",
                 lambda f: f.write(json.dumps(numbers, indent=1).encode()),
                 inputs=[args.first, args.second])
    print(out / "robustness.json")
    legend = [f"{name}: {Path(p).parent.name}/{Path(p).name}"
              for name, (p, *_) in zip(names, loaded)]
    try:
        path = viz.plot_robustness(
            rows, legend, out / "robustness.png", dpi=args.dpi,
            examples=at_each_strength(test.images, height, args.steps, args.seed),
            title=f"Test accuracy under each transformation alone: {n} {dataset} test "
                  f"images on {height}x{width} (strength 0: centred, untransformed)")
    except ImportError as e:
        print(f"minicaps robustness: error: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0


def cmd_predict(args):
    from minicaps.backend import to_numpy
    from minicaps.data.pictures import save_gray
    from minicaps.io.checkpoint import model_kind
    if args.pretrained and args.checkpoint is not None:    # then every positional is a picture
        args.image, args.checkpoint = [args.checkpoint, *args.image], None
    ckpt = _load(args)
    model, _ = ckpt.model_with(args.weights)
    capsnet = model_kind(model) == "capsnet"
    if args.save_reconstruction is not None and not capsnet:
        raise ValueError(f"{args.checkpoint} holds the CNN baseline, which has no decoder: "
                         f"there is no reconstruction to save (--save-reconstruction needs a "
                         f"CapsNet with its decoder)")
    if args.save_reconstruction is not None and not model.config.use_decoder:
        raise ValueError(f"{args.checkpoint}: this network has no decoder to reconstruct with")
    if args.save_reconstruction is not None:
        _picture_target(args.save_reconstruction, [args.checkpoint, *args.image])
    settings = ckpt.extra.get("settings", {}) or {}
    classes = settings.get("classes") or [str(j) for j in range(model.config.num_classes)]
    pictures = _pictures(args.image)
    if len(pictures) > 1 or Path(args.image[0]).is_dir():
        if args.save_reconstruction is not None:
            raise ValueError("--save-reconstruction goes with one picture: give one IMAGE")
        return _predict_many(model, pictures, classes, settings, capsnet)
    x = _prepared(pictures[0], model, settings)[None].astype(model.dtype)
    if args.save_reconstruction is not None:
        out, _ = model.forward(x)
        lengths = to_numpy(out["lengths"])[0]
    else:                       # the capsules' lengths, or the CNN's softmax probabilities
        lengths = model.predict_lengths(x, batch_size=1)[0]
    pred = int(lengths.argmax())
    print(f"{pictures[0]}: predicted {classes[pred]}"
          + (f" (class {pred})" if classes[pred] != str(pred) else ""))
    width = max(5, max(len(str(c)) for c in classes))
    print(f"{'class':>{width}}  {'length' if capsnet else 'probability'}")
    for j, length in enumerate(lengths):
        bar = "#" * round(40 * min(float(length), 1.0))
        print(f"{str(classes[j]):>{width}}  {length:.4f}  {bar}{'  <- predicted' if j == pred else ''}")
    if args.save_reconstruction is not None:
        H, W, C = model.config.input_shape
        recon = to_numpy(out["reconstruction"])[0].reshape(H, W, C)
        path = save_gray([x[0], recon], args.save_reconstruction,
                         inputs=[args.checkpoint, pictures[0]])
        print(f"wrote {path} (what the network saw, then its reconstruction)")
    return 0


def _picture_target(path, inputs):
    """Refuse, before any work, a --save-reconstruction PATH whose name does not end in
    .png or that holds something other than a PNG (files.png_file), or that
    checkpoint.replace_file would refuse (files.writable_file)."""
    from minicaps.io.files import png_file, writable_file
    png_file(path, "--save-reconstruction")
    writable_file(path, inputs)


def _pictures(names):
    """The picture files that predict's IMAGE arguments name: each file, and every .png,
    .jpg or .jpeg under a folder (folder.picture_files), in order."""
    from minicaps.data.folder import picture_files
    pictures = []
    for name in names:
        path = Path(name)
        if not path.is_dir():
            pictures.append(path)          # a missing file is said when it is read
            continue
        found = picture_files(path)
        if not found:
            raise ValueError(f"{path} holds no .png, .jpg or .jpeg pictures")
        pictures += found
    return pictures


def _prepared(path, model, settings):
    """One picture as the network's data was made: as MNIST's digits for a network trained
    on MNIST or Fashion-MNIST, else as its image folder or dataset was read (_picture)."""
    from minicaps.data.pictures import load_digit
    digits = settings.get("dataset", "mnist") in ("mnist", "fashion-mnist")
    if digits and not (settings.get("data_info") or {}).get("folder"):
        return load_digit(path, model.config.input_shape)
    return _picture(path, model.config, settings)


def _predict_many(model, pictures, classes, settings, capsnet, batch=256):
    """predict on many pictures: a line each (the picture, its class, the winning length or
    probability), in batches; a picture that cannot be read is said on stderr and the
    others go on (exit status 2 if any could not be read)."""
    import numpy as np
    what, failed = "length" if capsnet else "probability", 0
    for start in range(0, len(pictures), batch):
        read, xs = [], []
        for path in pictures[start:start + batch]:
            try:
                xs.append(_prepared(path, model, settings))
                read.append(path)
            except (ValueError, OSError) as e:
                from minicaps.data.folder import printable
                print(f"minicaps predict: error: {printable(str(e))}", file=sys.stderr)
                failed += 1
        if not xs:
            continue
        lengths = model.predict_lengths(np.stack(xs).astype(model.dtype), batch_size=len(xs))
        for path, row in zip(read, lengths):
            j = int(row.argmax())
            print(f"{path}\t{classes[j]}\t{what} {row[j]:.4f}")
    if failed:
        print(f"minicaps predict: {failed} of {len(pictures)} pictures could not be read",
              file=sys.stderr)
    return 2 if failed else 0


def _picture(path, config, settings):
    """A picture as the network's test images were made: resized to the size its data was
    read at (its input size without one), in its colour, centre-cropped with a crop;
    (H, W, C) floats in [0, 1]."""
    from minicaps.data.augment import center_crop
    from minicaps.data.folder import read_image
    H, W, C = config.input_shape
    size = tuple((settings.get("data_info") or {}).get("image_size") or (H, W))
    if settings.get("crop"):
        size = (max(size[0], H), max(size[1], W))
    pixels = read_image(path, size, "rgb" if C == 3 else "gray")
    if C not in (1, 3):
        raise ValueError(f"this network reads {C}-channel images, and a picture file gives "
                         f"1 (gray) or 3 (RGB)")
    pixels = center_crop(pixels[None], settings.get("crop"))[0]
    return pixels.reshape(H, W, C) / 255.0


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


# --- argument types: a bad value is an argparse error (one line, exit status 2) -----------

def _number(convert, ok, must, name):
    """An argparse type: ``convert(text)``, refused unless ``ok(value)`` ("must <must>")."""
    def parse(text):
        value = convert(text)
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must {must}, got {text}")
        return value
    parse.__name__ = name          # argparse's "invalid <name> value" for unparsable text
    return parse


positive_int = _number(int, lambda v: v >= 1, "be a positive integer", "positive_int")
nonnegative_int = _number(int, lambda v: v >= 0, "be 0 or more", "nonnegative_int")
positive_float = _number(float, lambda v: v > 0 and math.isfinite(v),
                         "be a finite positive number", "positive_float")
rate = _number(float, lambda v: 0 < v <= 1, "lie in (0, 1] (such as 0.96)", "rate")
decay = _number(float, lambda v: 0 < v < 1, "lie between 0 and 1 (such as 0.999)", "decay")
pairs_per_digit = _number(int, lambda v: 1 <= v <= MAX_PAIRS_PER_DIGIT,
                          f"be an integer from 1 to {MAX_PAIRS_PER_DIGIT} (the paper: 1000)",
                          "pairs_per_digit")


def image_size(text):
    from minicaps.data.folder import parse_image_size
    try:
        return parse_image_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


robustness_steps = _number(int, lambda v: 1 <= v <= MAX_STEPS,
                           f"be an integer from 1 to {MAX_STEPS}", "robustness_steps")
fraction = _number(float, lambda v: 0 < v < 1, "lie between 0 and 1 (such as 0.1)", "fraction")


def folder(text):
    """An existing folder (a data root): a typo is said, not created."""
    if not Path(text).expanduser().is_dir():
        raise argparse.ArgumentTypeError(f"{text} is not a folder; give the folder that holds "
                                         f"the data files")
    return text


def add_device_option(p):
    p.add_argument("--device", choices=("cpu", "gpu"), default=None,
                   help="where to compute (default: $MINICAPS_DEVICE, else cpu)")
    p.add_argument("--tf32", action="store_true",
                   help="let the GPU's float32 matrix products use TF32 tensor cores (faster; "
                        "their inputs rounded to 10 bits of mantissa). Without it float32 "
                        "stays strict float32. Needs --device gpu")


def use_math_mode(args):
    """Switch TF32 on for the GPU when --tf32 asks (a clear error on the CPU)."""
    if getattr(args, "tf32", False):
        from minicaps import backend
        if backend.resolve_device(args.device) != "gpu":
            raise ValueError("--tf32 is a math mode of the GPU: give --device gpu "
                             "(or set MINICAPS_DEVICE=gpu)")
        backend.set_tf32(True)


def add_weights_option(p):
    from minicaps.io.checkpoint import WEIGHT_CHOICES
    p.add_argument("--weights", choices=WEIGHT_CHOICES, default="auto",
                   help="which parameters of the checkpoint: the moving average of the "
                        "parameters that train keeps, the trained ones, or auto: the average "
                        "if the checkpoint has one (default: auto)")


def add_data_options(p):
    p.add_argument("--data-root", metavar="DIR", type=folder, default=None,
                   help="folder with the IDX files (.gz or not), directly or in "
                        "DIR/<dataset>/; default $MINICAPS_DATA, else a per-user cache "
                        "(downloaded there if missing)")
    p.add_argument("--limit-test", type=positive_int, metavar="N", default=None,
                   help="evaluate on the first N test images only (default: all 10000)")


def add_checkpoint_options(p):
    """CHECKPOINT or --pretrained: the network evaluate, plot and predict read (_load)."""
    p.add_argument("checkpoint", metavar="CHECKPOINT", nargs="?", default=None,
                   help="a .npz file written by train (or by export-weights)")
    p.add_argument("--pretrained", action="store_true",
                   help="use the network that ships with minicaps (the paper's, trained on "
                        "MNIST) instead of a CHECKPOINT")


def add_folder_options(p):
    p.add_argument("--data-dir", metavar="DIR", type=folder, default=None,
                   help="your own images: DIR holds one subfolder per class (DIR/cat/*.png, "
                        "DIR/dog/*.jpg), or DIR/train/<class>/ and DIR/test/<class>/; "
                        "instead of --dataset")


class Parser(argparse.ArgumentParser):
    """argparse's parser, whose errors are one line (what was wrong, where to read more)
    instead of the usage block followed by the error."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: ...)" to each option's help unless the help already says it
    or there is no default to tell (None, or False for a flag)."""

    def _get_help_string(self, action):
        if "(default:" in (action.help or "") or action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def build_parser():
    parser = Parser(
        prog="minicaps",
        description="Capsule Networks (Sabour et al., 2017) written by hand on NumPy/CuPy.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    parser.commands = sub.choices          # {name: its parser}: parse_command_line's
    defaults = DefaultsHelpFormatter

    p = sub.add_parser("gradcheck", help="prove every backward pass against finite differences",
                       description="Check every op and every parameter of small CapsNets "
                                   "(routing 'full' with 1 and 3 iterations, 'stop' with 3), "
                                   "reference and fast, against central finite differences in "
                                   "float64 and print the relative errors. --model cnn checks "
                                   "the CNN baseline instead (its layers: SAME convolution, "
                                   "max-pooling, dropout, softmax cross-entropy; and two small "
                                   "CNN baselines); --model all, both. Exit status 1 if any "
                                   "is above tolerance.")
    p.add_argument("--model", choices=(*MODELS, "all"), default="capsnet",
                   help="which network to check: capsnet, cnn (the paper's CNN baseline) or "
                        "all (default: capsnet)")
    p.add_argument("--seed", type=int, default=0, help="seed for the random inputs (default 0)")
    p.set_defaults(func=cmd_gradcheck)

    p = sub.add_parser(
        "train", formatter_class=defaults, help="train a CapsNet (or the CNN baseline) on a dataset or your own images",
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
                        "(0: no augmentation) (default: 2; 6 for the affnist sets, whose "
                        "digits come centred on 40x40: the authors' expanded MNIST; 0 for "
                        "multimnist, whose pairs are shifted by up to 4 as they are made)")
    p.add_argument("--keep-epochs", action="store_true",
                   help="also keep every epoch's checkpoint, as epoch-001.npz and so on in "
                        "the run folder (to pick the network at a chosen validation "
                        "accuracy afterwards)")
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
    p.add_argument("--dataset", choices=DATASETS, default=None,
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

    p = sub.add_parser(
        "evaluate", formatter_class=defaults, help="test accuracy and losses of a checkpoint",
        description="Load a checkpoint and print its accuracy, margin loss and reconstruction "
                    "loss on the test set (decoder masked by the predicted class); for a CNN "
                    "baseline its accuracy and cross-entropy.")
    add_checkpoint_options(p)
    p.add_argument("--dataset", choices=DATASETS, default=None,
                   help="which test set (default: the one the checkpoint was trained on)")
    add_data_options(p)
    add_folder_options(p)
    add_device_option(p)
    p.add_argument("--batch-size", type=positive_int, default=256, help="images per forward pass")
    add_weights_option(p)
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar (without a terminal: no progress lines, which otherwise come every 30 s)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "plot", help="draw what a checkpoint learned (PNG files)",
        description="Draw pictures of a checkpoint into PNG files and print their paths: "
                    "reconstructions (inputs over their reconstructions), perturbation (the "
                    "paper's fig. 4: each pose dimension nudged over -0.25..0.25), routing "
                    "(coupling coefficients per routing iteration), lengths (capsule lengths "
                    "per class), curves (loss and accuracy per epoch from metrics.jsonl beside "
                    "the checkpoint), confusion (confusion matrix on the test set). A CNN "
                    "baseline has no capsules: curves and confusion only. Needs "
                    "matplotlib: pip install \"minicaps[viz]\".")
    add_checkpoint_options(p)
    p.add_argument("--kind", choices=PLOT_KINDS, action="append", default=None,
                   help="what to draw; repeat for several (default: all, curves only if "
                        "metrics.jsonl is there)")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="folder for the PNG files (default: plots/ beside the checkpoint)")
    p.add_argument("--index", type=nonnegative_int, nargs="+", metavar="I", default=None,
                   help="test images to draw (default: the first 8 for reconstructions, 4 for "
                        "lengths, 2 for perturbation, 1 for routing)")
    p.add_argument("--dataset", choices=DATASETS, default=None,
                   help="which test set (default: the one the checkpoint was trained on)")
    add_data_options(p)
    add_folder_options(p)
    add_device_option(p)
    p.add_argument("--dpi", type=positive_int, default=100, help="pixels per inch of the PNGs (default 100)")
    add_weights_option(p)
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar while the whole test set is classified for the "
                        "confusion matrix (without a terminal: no progress lines on stderr, "
                        "which otherwise come every 30 s)")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser(
        "predict", help="classify your own picture (a digit, or an image like the training data)",
        description="Read a picture (PNG or anything Pillow reads; any size, gray, RGB or "
                    "RGBA), prepare it as the network's training images were (for MNIST and "
                    "Fashion-MNIST: gray, white ink on black, cropped to the ink, fitted into "
                    "20x20 keeping the aspect ratio, centred by centre of mass in 28x28; for "
                    "other data: resized to its size and colour, centre-cropped where it was "
                    "cropped) and print the length of every class capsule (a CNN baseline: "
                    "the probability of every class) and the predicted class, by name. Needs "
                    "Pillow: pip install \"minicaps[viz]\".")
    add_checkpoint_options(p)
    p.add_argument("image", metavar="IMAGE", nargs="+",
                   help="the picture, e.g. digit.png; or several pictures, or folders of them "
                        "(then a line each: the picture, its class and the winning length)")
    p.add_argument("--save-reconstruction", metavar="PNG", default=None,
                   help="also write what the network saw beside the decoder's reconstruction "
                        "(masked by the predicted class) to this PNG, 4x enlarged (a CapsNet "
                        "with a decoder; a CNN baseline has none)")
    add_device_option(p)
    add_weights_option(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser(
        "compare", help="two networks on one test set: accuracies, where they differ, a picture",
        description="Test two checkpoints (e.g. a CapsNet and the CNN baseline trained for "
                    "affNIST) on the same test set: print each one's accuracy and how many "
                    "images both, only one or neither get right, and draw compare.png: test "
                    "images only the first gets right, only the second, and neither, with "
                    "both predictions. Needs matplotlib for the picture.")
    p.add_argument("first", metavar="CHECKPOINT", help="a .npz file written by train")
    p.add_argument("second", metavar="OTHER", help="another, trained on the same data")
    p.add_argument("--dataset", choices=DATASETS, default=None,
                   help="which test set (default: the one both were trained on)")
    add_data_options(p)
    add_folder_options(p)
    add_device_option(p)
    add_weights_option(p)
    p.add_argument("--out", metavar="DIR", default=None,
                   help="folder for compare.png (default: plots/ beside the first checkpoint)")
    p.add_argument("--dpi", type=positive_int, default=100, help="pixels per inch of the PNG")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser(
        "robustness", formatter_class=defaults,
        help="two networks' accuracy under rotation, shear, scale and translation, each alone",
        description="Test two checkpoints (e.g. a CapsNet and the CNN baseline trained on "
                    "expanded MNIST) on their test set under one transformation at a time, "
                    "at growing strength: rotation 0-60 degrees and shear 0-0.6, each with a "
                    "sign drawn per image; scale 0.6-1.4 (1: unchanged) along both axes; a "
                    "move of 0-12 pixels in a direction drawn per image, rounded to whole "
                    "pixels. Each image is centred on the networks' input canvas and "
                    "transformed about its centre (bilinear); what leaves the canvas is lost, "
                    "moved ink included. Strength 0 is the centred, untransformed image. "
                    "Networks trained on expanded MNIST (--dataset affnist) are tested on "
                    "MNIST's test digits on 40x40. Prints a table, writes robustness.json "
                    "and robustness.png (one panel per transformation, both networks in "
                    "each; needs matplotlib).")
    p.add_argument("first", metavar="CHECKPOINT", help="a .npz file written by train")
    p.add_argument("second", metavar="OTHER",
                   help="another, with the same input size and classes")
    p.add_argument("--dataset", choices=DATASETS, default=None,
                   help="which test set (default: the one both were trained on)")
    add_data_options(p)
    add_folder_options(p)
    p.add_argument("--steps", type=robustness_steps, metavar="K", default=4,
                   help="strengths from none to the strongest: K+1 per transformation, "
                        "2K+1 scale factors")
    p.add_argument("--seed", type=nonnegative_int, default=0,
                   help="seed for the signs and directions drawn per image")
    p.add_argument("--batch-size", type=positive_int, default=256,
                   help="images per forward pass")
    add_device_option(p)
    add_weights_option(p)
    p.add_argument("--out", metavar="DIR", default=None,
                   help="folder for robustness.json and robustness.png (default: plots/ "
                        "beside the first checkpoint)")
    p.add_argument("--dpi", type=positive_int, default=100, help="pixels per inch of the PNG")
    p.set_defaults(func=cmd_robustness)

    p = sub.add_parser(
        "export-weights", help="write a checkpoint's weights alone (float16: 1/8 of its size)",
        description="Write the weights of a checkpoint without its training state (Adam's "
                    "moments, the random state) into a smaller .npz that evaluate, plot and "
                    "predict read like a checkpoint; its provenance (epoch, step, settings) "
                    "comes along.")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="a .npz file written by train")
    p.add_argument("out", metavar="OUT", help="the weights file to write, e.g. weights.npz")
    add_weights_option(p)
    p.add_argument("--dtype", choices=("float16", "float32", "float64"), default="float16",
                   help="how the weights are stored (default: float16)")
    p.set_defaults(func=cmd_export_weights)

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
    return parser


# commands whose options may come between their positionals (predict a.png --pretrained
# b.png): parsed by argparse's intermixed parsing, which refuses a parser with subparsers,
# so their own subparser parses what follows the command's name
INTERMIXED = ("predict",)


def parse_command_line(argv, parser=None):
    """The Namespace of a command line (without the program's name)."""
    parser = parser or build_parser()
    if argv[:1] == ["bench"]:
        # everything after 'bench' belongs to bench/bench.py, its --help included
        return argparse.Namespace(command="bench", func=cmd_bench, bench_args=argv[1:])
    if argv[:1] and argv[0] in INTERMIXED:
        return _parse_intermixed(parser.commands[argv[0]], argv[1:],
                                 argparse.Namespace(command=argv[0]))
    if argv[:1] and argv[0] in parser.commands:   # its errors then say "minicaps <command>"
        return parser.commands[argv[0]].parse_args(argv[1:], argparse.Namespace(command=argv[0]))
    return parser.parse_args(argv)


def _parse_intermixed(command, argv, namespace):
    """``command``'s intermixed parse of ``argv``, where everything after '--' is a
    positional, a name that starts with '-' (-w.png) included. Intermixed parsing would
    take such a name for an option, so each argument after '--' is parsed as a stand-in
    that cannot be one (no argument holds a NUL byte) and put back after."""
    if "--" not in argv:
        return command.parse_intermixed_args(argv, namespace)
    cut = argv.index("--") + 1
    names = {f"\0{k}": name for k, name in enumerate(argv[cut:])}
    args = command.parse_intermixed_args(argv[:cut] + list(names), namespace)

    def back(value):
        return names.get(value, value) if isinstance(value, str) else value
    for key, value in vars(args).items():
        setattr(args, key, [back(v) for v in value] if isinstance(value, list) else back(value))
    return args


def _launched_ranks():
    from minicaps.training.distributed import launched_ranks
    return launched_ranks()


def _parse_on_every_rank(argv, parser):
    """(the Namespace, None) of a train command line started by mpiexec or srun on several
    ranks, or (None, its exit status) once every rank has learned that some rank's options
    were refused, or that the ranks' options differ: printed once, by rank 0."""
    import contextlib
    import io
    from minicaps.training import distributed
    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said):
            args, failure = parse_command_line(argv, parser), None
    except SystemExit as e:
        if not e.code:                               # --help: printed on every rank
            return None, 0
        args, failure = None, (said.getvalue().strip().splitlines() or [f"exit {e.code}"])[-1]
    comm = distributed.from_environment()
    if comm is None:                                 # the launcher started one rank only
        sys.stderr.write(said.getvalue())
        return args, None if failure is None else 2
    error = comm.disagreement(argv, failure)
    if error is not None:
        if comm.is_root:
            prefix = "" if error.startswith("minicaps") else "minicaps train: error: "
            print(f"{prefix}{error}", file=sys.stderr, flush=True)
        return None, 2
    args.comm = comm
    return args, None


def main(argv=None):
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["train"] and _launched_ranks() > 1:
        args, code = _parse_on_every_rank(argv, parser)
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
