"""Synthetic images the tests train on: small tasks a network learns in seconds."""
import numpy as np


def bars(n, seed):
    """uint8 images (n, 10, 10) of three classes (a horizontal bar, a vertical bar or a
    diagonal on faint noise), and their labels."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    images = rng.integers(0, 40, (n, 10, 10)).astype(np.uint8)
    for image, label in zip(images, labels):
        if label == 0:
            image[4:6, 2:8] = 255
        elif label == 1:
            image[2:8, 4:6] = 255
        else:
            image[np.arange(2, 8), np.arange(2, 8)] = 255
    return images, labels


def bars_data(n_train=120, n_test=60):
    """(x_train, y_train, x_test, y_test) of bars."""
    return bars(n_train, 0) + bars(n_test, 1)


def synthetic_mnist(n_train=16, n_test=8, seed=0):
    """Four arrays shaped like load_mnist's: a bright square whose corner says the class."""
    rng = np.random.default_rng(seed)
    def split(n):
        labels = rng.integers(0, 10, n)
        images = rng.integers(0, 30, (n, 28, 28)).astype(np.uint8)
        for image, label in zip(images, labels):
            image[2 + 2 * label:8 + 2 * label, 4:12] = 255
        return images, labels
    return split(n_train) + split(n_test)
