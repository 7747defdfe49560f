"""The paper's data sets by name: ``load_dataset("cifar10")`` -> data.Dataset.

Every set is looked up in ``<root>/<name>/`` then ``<root>/`` (root: the argument, else
$MINICAPS_DATA, else the per-user cache), downloaded into ``<root>/<name>/`` when missing, and
checked against published SHA-256 digests: a file gets its real name only once it passed.
Offline, the DataNotFoundError says which files to put where, and where to get them.

=================  =============================  =========================================
name               images                         files
=================  =============================  =========================================
mnist              uint8 (N, 28, 28), 10 digits   the four IDX .gz files (data.load_mnist)
fashion-mnist      uint8 (N, 28, 28), 10 clothes  the same four names, Zalando's content
cifar10            uint8 (N, 32, 32, 3), 10       cifar-10-binary.tar.gz (or its folder)
svhn               uint8 (N, 32, 32, 3), 10       train_32x32.mat, test_32x32.mat
smallnorb          uint8 (N, 48, 48, 2), 5        the -dat and -cat .mat.gz of both splits
=================  =============================  =========================================
"""
from minicaps.data.cifar10 import load_cifar10
from minicaps.data.mnist import DOWNLOAD_TIMEOUT, Dataset, load_mnist
from minicaps.data.smallnorb import load_smallnorb
from minicaps.data.svhn import load_svhn

DATASETS = ("mnist", "fashion-mnist", "cifar10", "svhn", "smallnorb")

MNIST_CLASSES = tuple(str(d) for d in range(10))
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")   # Zalando's README


def load_dataset(name, root=None, download=True, verify=True, mirrors=None, sha256=None,
                 timeout=DOWNLOAD_TIMEOUT):
    """Load one of DATASETS as a data.Dataset (images uint8, labels int64 0..K-1, classes).

    ``mirrors``: base URLs tried in order instead of the set's own. ``verify``: check each
    file's published SHA-256 (a DataError if a file has none: pass ``sha256`` or
    verify=False). ``sha256``: {file name: hex digest}, for MNIST the digests of the gunzipped
    content replacing the published ones, for the others added to them.
    """
    kwargs = dict(root=root, download=download, verify=verify, mirrors=mirrors, sha256=sha256,
                  timeout=timeout)
    if name in ("mnist", "fashion-mnist"):
        split = load_mnist(dataset=name, **kwargs)
        classes = MNIST_CLASSES if name == "mnist" else FASHION_CLASSES
        return Dataset(*split, classes=classes, name=name)
    loaders = {"cifar10": load_cifar10, "svhn": load_svhn, "smallnorb": load_smallnorb}
    if name not in loaders:
        raise ValueError(f"unknown data set {name!r}, expected one of {', '.join(DATASETS)}")
    return loaders[name](**kwargs)
