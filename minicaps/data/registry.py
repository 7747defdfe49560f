"""Every data set by name, in one registry: ``load_dataset("cifar10")`` -> data.Dataset.

Training, evaluate, plot, predict and the command line all ask this registry; adding a data
set is one module with a loader and one ``register_dataset`` line (docs/architecture.md):

    def load_letters(root=None, **options):          # returns a minicaps Dataset
        ...
    register_dataset("letters", load_letters, "uint8 (N, 28, 28), 26 letters")

A loader takes ``root`` (the data folder: the argument, else $MINICAPS_DATA, else the
per-user cache) and the download options it understands; each set below is looked up in
``<root>/<name>/`` then ``<root>/``, downloaded into ``<root>/<name>/`` when missing and
checked against published SHA-256 digests: a file gets its real name only once it passed.
Offline, the DataNotFoundError says which files to put where, and where to get them.

=================  ================================  ======================================
name               images                            files
=================  ================================  ======================================
mnist              uint8 (N, 28, 28), 10 digits      the four IDX .gz files (data.mnist)
fashion-mnist      uint8 (N, 28, 28), 10 clothes     the same four names, Zalando's content
cifar10            uint8 (N, 32, 32, 3), 10          cifar-10-binary.tar.gz (or its folder)
svhn               uint8 (N, 32, 32, 3), 10          train_32x32.mat, test_32x32.mat
smallnorb          uint8 (N, 48, 48, 2), 5           the -dat and -cat .mat.gz of both splits
multimnist         MNIST's digits, paired (36x36)    MNIST's files (data.multimnist)
affnist            expanded MNIST (40x40) to train,  MNIST's; affNIST's test.mat when there,
                   affNIST to test                   else the affnist-like set
affnist-like       the same, tested on the           MNIST's (data.affnist)
                   generated affNIST-like set
affnist-wide       the same, tested on the wide      MNIST's (data.affnist)
                   generated set (harder)
=================  ================================  ======================================

The loaders import their modules when called, so that importing the registry stays light.
"""
from typing import Callable, NamedTuple

from minicaps.data.download import DOWNLOAD_TIMEOUT

MNIST_CLASSES = tuple(str(d) for d in range(10))
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")   # Zalando's README


class Entry(NamedTuple):
    """A registered data set: its loader(root=None, **options) -> Dataset, what it holds,
    and whether the download options (download, verify, mirrors, sha256, timeout) apply."""
    load: Callable
    about: str
    downloads: bool


REGISTRY = {}
ALIASES = {"affnist-generated": "affnist-wide"}    # the name older checkpoints use
                                                   # (affnist.OLD_NAMES reads this table)


def register_dataset(name, load, about="", downloads=False):
    """Make ``load`` the data set ``name`` (a new name, or a replacement of a user's own;
    the built-in names are kept). ``load(root=None, **options)`` returns a data.Dataset."""
    if not isinstance(name, str) or not name or name != name.strip() or "/" in name:
        raise ValueError(f"a data set's name is a non-empty word, got {name!r}")
    if not callable(load):
        raise ValueError(f"the loader of {name!r} must be callable, got {load!r}")
    if name in BUILT_IN or name in ALIASES:
        raise ValueError(f"{name!r} is a built-in data set of minicaps; give yours "
                         f"another name")
    REGISTRY[name] = Entry(load, about, downloads)
    return load


def dataset_names():
    """The registered names, built-in first."""
    return tuple(REGISTRY)


def load_dataset(name, root=None, download=True, verify=True, mirrors=None, sha256=None,
                 timeout=DOWNLOAD_TIMEOUT):
    """The data set ``name`` as a data.Dataset (images uint8, labels int64 0..K-1, classes).

    For the sets that download (mnist, fashion-mnist, cifar10, svhn, smallnorb):
    ``mirrors``: base URLs tried in order instead of the set's own. ``verify``: check each
    file's published SHA-256 (a DataError if a file has none: pass ``sha256`` or
    verify=False). ``sha256``: {file name: hex digest}, for MNIST the digests of the
    gunzipped content replacing the published ones, for the others added to them.
    """
    entry = REGISTRY.get(ALIASES.get(name, name))
    if entry is None:
        raise ValueError(f"unknown data set {name!r}, expected one of "
                         f"{', '.join(dataset_names())}")
    options = dict(download=download, verify=verify, mirrors=mirrors, sha256=sha256,
                   timeout=timeout)
    if not entry.downloads:
        options = {}
    return entry.load(root=root, **options)


# --- the built-in sets -----------------------------------------------------------------------

def _mnist_like(name, classes):
    def load(root=None, **options):
        from minicaps.data.dataset import Dataset
        from minicaps.data.mnist import load_mnist
        split = load_mnist(dataset=name, root=root, **options)
        return Dataset(*split[:4], classes=classes, name=name)
    return load


def load_multimnist(root=None):
    """MultiMNIST (section 6): MNIST's digits, paired as training goes (data.multimnist)."""
    from minicaps.data.dataset import Dataset
    from minicaps.data.mnist import load_mnist
    return Dataset(*load_mnist(root=root, dataset="mnist")[:4], classes=MNIST_CLASSES,
                   name="multimnist", info={"pairs_per_digit": 1})


def _affine(test):
    def load(root=None):
        """Section 5.2: expanded MNIST to train, the affine test set ``test`` names."""
        from minicaps.data.affnist import affnist_dataset
        from minicaps.data.mnist import load_mnist
        return affnist_dataset(load_mnist(root=root, dataset="mnist")[:4], root=root,
                               test=test)
    return load


def _cifar10(root=None, **options):
    from minicaps.data.cifar10 import load_cifar10
    return load_cifar10(root=root, **options)


def _svhn(root=None, **options):
    from minicaps.data.svhn import load_svhn
    return load_svhn(root=root, **options)


def _smallnorb(root=None, **options):
    from minicaps.data.smallnorb import load_smallnorb
    return load_smallnorb(root=root, **options)


REGISTRY.update({
    "mnist": Entry(_mnist_like("mnist", MNIST_CLASSES), "uint8 (N, 28, 28), 10 digits", True),
    "fashion-mnist": Entry(_mnist_like("fashion-mnist", FASHION_CLASSES),
                           "uint8 (N, 28, 28), 10 kinds of clothes", True),
    "cifar10": Entry(_cifar10, "uint8 (N, 32, 32, 3), 10 classes", True),
    "svhn": Entry(_svhn, "uint8 (N, 32, 32, 3), 10 digits", True),
    "smallnorb": Entry(_smallnorb, "uint8 (N, 48, 48, 2), 5 toys", True),
    "multimnist": Entry(load_multimnist, "pairs of MNIST digits on 36x36", False),
    "affnist": Entry(_affine("affnist"), "expanded MNIST to train, affNIST to test", False),
    "affnist-like": Entry(_affine("affnist-like"),
                          "expanded MNIST, tested on the generated affNIST-like set", False),
    "affnist-wide": Entry(_affine("affnist-wide"),
                          "expanded MNIST, tested on the wide generated set", False),
})
BUILT_IN = frozenset(REGISTRY)
# The sets of section 5.2: trained on expanded MNIST, tested on an affine set
AFFINE_SETS = ("affnist", "affnist-like", "affnist-wide", *ALIASES)
# What load_dataset(name) downloads when it must (the others are made from MNIST's files)
DATASETS = tuple(name for name, entry in REGISTRY.items() if entry.downloads)
