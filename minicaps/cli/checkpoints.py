"""The network a command reads (a checkpoint, a weights file or the shipped one), and the
class names it was trained on."""


def load_checkpoint(args):
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


def trained_classes(ckpt, num_classes=None):
    """The class names a network was trained on: its settings' classes, else those of the
    data set it names (a file from before the classes were kept: MNIST's digits, say), else
    None (not known, or not ``num_classes`` of them)."""
    from minicaps.data.registry import FASHION_CLASSES, MNIST_CLASSES
    from minicaps.training.config import settings_of
    settings = settings_of(ckpt)
    known = {"mnist": MNIST_CLASSES, "fashion-mnist": FASHION_CLASSES}
    classes = list(settings.classes or known.get(settings.dataset, ()))
    if not classes or (num_classes is not None and len(classes) != num_classes):
        return None
    return classes


def named_classes(classes):
    """The class names for the pictures, or None where they are just the numbers 0, 1, ..."""
    if not classes or [str(c) for c in classes] == [str(j) for j in range(len(classes))]:
        return None
    return list(classes)
