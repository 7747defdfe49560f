"""Margin loss (eq. 4), masking, and the reconstruction loss."""
from minicaps.backend import get_xp


def one_hot(y, num_classes, dtype):
    """T[n, k] = 1 where class k is y[n], else 0; for y (N, K) of K different classes per
    image (MultiMNIST's two digits), 1 for each of them."""
    xp = get_xp(y)
    if y.ndim == 2:
        return (y[:, :, None] == xp.arange(num_classes)).any(axis=1).astype(dtype)
    return (y[:, None] == xp.arange(num_classes)[None, :]).astype(dtype)


def margin_loss_forward(lengths, y, m_plus=0.9, m_minus=0.1, lam=0.5):
    """L = mean_n sum_k T_k max(0, m+ - |v_k|)^2 + lam (1 - T_k) max(0, |v_k| - m-)^2.

    lengths: (N, J), y: (N,) ints, or (N, K) for K classes present in each image
    -> scalar loss (eq. 4).
    """
    xp = get_xp(lengths)
    T = one_hot(y, lengths.shape[1], lengths.dtype)
    present = xp.maximum(0, m_plus - lengths)
    absent = xp.maximum(0, lengths - m_minus)
    per_class = T * present ** 2 + lam * (1 - T) * absent ** 2
    loss = per_class.sum() / lengths.shape[0]
    return loss, (T, present, absent, lam)


def margin_loss_backward(dloss, cache):
    """dL/d|v_k| = (-2 T_k max(0, m+ - |v_k|) + 2 lam (1 - T_k) max(0, |v_k| - m-)) / N."""
    T, present, absent, lam = cache
    N = T.shape[0]
    return (dloss / N) * (-2 * T * present + 2 * lam * (1 - T) * absent)


def mask_forward(v, mask):
    """Keep only the chosen capsule and flatten: (N, J, D), mask (N, J) -> (N, J*D).

    In training the mask is the one-hot label, at inference the longest capsule.
    """
    N, J, D = v.shape
    return (v * mask[:, :, None]).reshape(N, J * D), (mask, v.shape)


def mask_backward(dout, cache):
    mask, shape = cache
    return dout.reshape(shape) * mask[:, :, None]


def reconstruction_loss_forward(reconstruction, target):
    """mean_n sum_p (reconstruction - target)^2: per-image sum of squared errors.

    reconstruction, target: (N, P). The model weights it by 0.0005 so that it
    does not dominate the margin loss.
    """
    diff = reconstruction - target
    return (diff * diff).sum() / diff.shape[0], diff


def reconstruction_loss_backward(dloss, cache):
    """dL/d reconstruction = 2 (reconstruction - target) / N."""
    diff = cache
    return (2 * dloss / diff.shape[0]) * diff
