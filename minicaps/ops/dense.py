"""Fully connected layer and the two elementwise nonlinearities of CapsNet."""
from ..backend import get_xp


def dense_forward(x, W, b):
    """y = x @ W + b.   x: (N, D_in), W: (D_in, D_out), b: (D_out,) -> (N, D_out)."""
    return x @ W + b, (x, W)


def dense_backward(dout, cache):
    """(dx, dW, db) of dense_forward."""
    x, W = cache
    return dout @ W.T, x.T @ dout, dout.sum(axis=0)


def relu_forward(x, out=None):
    """max(0, x), any shape. ``out=x`` overwrites x (for a fresh array nobody else holds).

    The cache is the output y itself: y > 0 exactly where x > 0, and the next
    layer keeps y anyway.
    """
    xp = get_xp(x)
    y = xp.maximum(x, 0, out=out)
    return y, y


def relu_backward(dout, cache, out=None):
    """d max(0, x)/dx = 1 where x > 0, else 0 (0 at the kink). ``out=dout`` works in place."""
    xp = get_xp(dout)
    return xp.multiply(dout, cache > 0, out=out)


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
