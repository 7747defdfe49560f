"""Fully connected layer and the two elementwise nonlinearities of CapsNet."""
from minicaps.backend import get_xp


def dense_forward(x, W, b):
    """y = x @ W + b.   x: (N, D_in), W: (D_in, D_out), b: (D_out,) -> (N, D_out)."""
    return x @ W + b, (x, W)


def dense_backward(dout, cache):
    """(dx, dW, db) of dense_forward."""
    x, W = cache
    return dout @ W.T, x.T @ dout, dout.sum(axis=0)


def relu_forward(x):
    """y = max(0, x), any shape. The cache is y itself: y > 0 exactly where x > 0."""
    xp = get_xp(x)
    y = xp.maximum(x, 0)
    return y, y


def relu_backward(dout, cache):
    """dx = dout where x > 0, else 0 (0 at the kink)."""
    y = cache
    return dout * (y > 0)


def sigmoid_forward(x):
    """1 / (1 + exp(-x)), computed without overflow for large |x|."""
    xp = get_xp(x)
    e = xp.exp(-xp.abs(x))
    y = xp.where(x >= 0, 1 / (1 + e), e / (1 + e))
    return y, y


def sigmoid_backward(dout, cache):
    """d sigmoid/dx = y (1 - y)."""
    y = cache
    return dout * y * (1 - y)
