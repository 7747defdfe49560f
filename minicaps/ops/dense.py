"""Fully connected layer and the two elementwise nonlinearities of CapsNet."""
from ..backend import get_xp


def dense_forward(x, W, b):
    """y = x @ W + b.   x: (N, D_in), W: (D_in, D_out), b: (D_out,) -> (N, D_out)."""
    return x @ W + b, (x, W)


def dense_backward(dout, cache):
    """(dx, dW, db) of dense_forward."""
    x, W = cache
    return dout @ W.T, x.T @ dout, dout.sum(axis=0)


def relu_forward(x):
    """max(0, x), any shape."""
    mask = x > 0
    return x * mask, mask


def relu_backward(dout, cache):
    """d max(0, x)/dx = 1 where x > 0, else 0 (0 at the kink)."""
    return dout * cache


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
