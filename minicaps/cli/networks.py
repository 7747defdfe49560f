"""The two networks compare and robustness test: loaded, and refused unless one test set
can score both."""
from pathlib import Path

from minicaps.cli.checkpoints import trained_classes
from minicaps.cli.evaluation_data import read_test_set
from minicaps.training.config import settings_of


def two_networks(args, test_data=None):
    """The checkpoints args.first and args.second, refused unless they read one test set:
    (loaded [(path, ckpt, model, weights)] x 2, test Split, class names, dataset name).
    test_data(args, ckpt): the test set (default: read_test_set)."""
    from minicaps.io.files import regular_file
    from minicaps.io.weights import load_any
    loaded = []
    for path in (args.first, args.second):
        regular_file(path, "checkpoint file")
        ckpt = load_any(path, device=args.device)
        model, weights = ckpt.model_with(args.weights)
        loaded.append((path, ckpt, model, weights))
    (path_a, ckpt_a, model_a, _), (path_b, ckpt_b, model_b, _) = loaded
    datasets = [settings_of(c).dataset for c in (ckpt_a, ckpt_b)]
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
    trained = [trained_classes(ckpt, model.config.num_classes)
               for _, ckpt, model, _ in loaded]
    if None not in trained and trained[0] != trained[1]:
        raise ValueError(f"{path_a} was trained on the classes {_listed(trained[0])} and "
                         f"{path_b} on {_listed(trained[1])}: one test set cannot score "
                         f"both; compare two networks trained on the same classes")
    # an image folder is split as the run trained on it split it (the first run's otherwise)
    given = args.data_dir and Path(args.data_dir).resolve()
    split_by = ckpt_b if given and str(given) == folders[1] != folders[0] else ckpt_a
    test, classes, dataset = (test_data or read_test_set)(args, split_by)
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
    return settings_of(ckpt).data_info.get("folder")


def network_names(loaded):
    """"CapsNet" or "CNN" for each loaded network, with its folder's name when both are."""
    from minicaps.nn.registry import model_kind
    names = []
    for path, _, model, _ in loaded:
        name = "CapsNet" if model_kind(model) == "capsnet" else "CNN"
        names.append(name if name not in names else f"{name} ({Path(path).parent.name})")
    return names


def _listed(classes, most=12):
    shown = ", ".join(str(c) for c in classes[:most])
    return shown + (", ..." if len(classes) > most else "")
