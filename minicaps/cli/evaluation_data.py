"""The test set a checkpoint is scored on: the data it was trained on, read as it was (an
image folder refused when it no longer splits as it did), or the one the options name."""
from pathlib import Path

from minicaps.cli.checkpoints import trained_classes


def read_test_set(args, ckpt):
    """(test Split, class names, dataset name) for a checkpoint: the data it was trained
    on (its image folder, read the same way, or its dataset), or the one the options name."""
    from minicaps.training.config import settings_of
    from minicaps.training.run import load_data, prepare_data
    settings = settings_of(ckpt)
    info = settings.data_info
    folder = getattr(args, "data_dir", None) or (info.get("folder") if args.dataset is None
                                                 else None)
    if folder:
        data = read_test_folder(folder, info)
    else:
        data = load_data(args.dataset or settings.dataset or "mnist", args.data_root)
        if settings.pairs_per_digit and args.dataset in (None, "multimnist"):
            data = data._replace(info={"pairs_per_digit": settings.pairs_per_digit})
    classes = trained_classes(ckpt) or list(data.classes)
    if data.classes and classes and list(data.classes) != list(classes):
        raise ValueError(f"{data.name} has the classes {', '.join(data.classes)} but "
                         f"{ckpt.path} was trained on {', '.join(classes)}")
    if getattr(args, "split", "test") == "validation":
        return validation_split(args, ckpt, settings, data, folder), classes, data.name
    if folder:                  # its training images were not read: the test split as is
        from minicaps.data.augment import center_crop
        from minicaps.training.splits import Split
        cut = slice(None, args.limit_test)
        test = Split(center_crop(data.x_test[cut], settings.crop), data.y_test[cut])
    else:
        _, _, test = prepare_data(data, limit_test=args.limit_test, crop=settings.crop)
    return test, classes, data.name


def validation_split(args, ckpt, settings, data, folder):
    """The images the run chose its best.npz on (--split validation): its data set's own
    validation set (expanded MNIST's test digits for the affnist sets), or the --val-size
    training images it held out, drawn again from its seed."""
    from minicaps.training.run import prepare_data
    config = settings.config
    if folder or config is None or args.dataset not in (None, config.dataset):
        raise ValueError(f"--split validation scores a checkpoint on its own run's validation "
                         f"images: {ckpt.path} " + (
                             "was trained on an image folder, whose validation images are "
                             "not read back" if folder else
                             "keeps no training settings" if config is None else
                             f"was trained on {config.dataset}, not {args.dataset}")
                         + "; evaluate on a test set (--split test)")
    _, val, _ = prepare_data(data, val_size=config.val_size, seed=config.seed,
                             crop=settings.crop)
    if val is None:
        raise ValueError(f"{ckpt.path} was trained with no validation images ({config.dataset} "
                         f"has none of its own, and --val-size was 0): evaluate on its test "
                         f"set (--split test)")
    from minicaps.training.splits import Split
    cut = slice(None, args.limit_test)
    return Split(val.images[cut], val.labels[cut])


def read_test_folder(folder, info):
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
