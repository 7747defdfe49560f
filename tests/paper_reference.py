"""The paper's CapsNet written as plain NumPy loops from the paper alone, sharing no code
with minicaps: the independent forward pass that minicaps' CapsNet (test_model.py) and the
PyTorch peer (test_torch_peer.py) are compared with. Slow, float64, small configs only."""
import numpy as np


def conv_valid(x, W, b, stride):
    """x (N, H, W, C) NHWC, W (kh, kw, C, O): direct loops over the output positions."""
    n, H, Wd, C = x.shape
    kh, kw, _, O = W.shape
    oh, ow = (H - kh) // stride + 1, (Wd - kw) // stride + 1
    out = np.empty((n, oh, ow, O))
    for r in range(oh):
        for q in range(ow):
            patch = x[:, r * stride:r * stride + kh, q * stride:q * stride + kw, :]
            out[:, r, q, :] = np.einsum("nhwc,hwco->no", patch, W) + b
    return out


def squash(s, eps):
    """Eq. 1, with eps inside the square root."""
    sq = (s ** 2).sum(-1, keepdims=True)
    return sq / (1 + sq) * s / np.sqrt(sq + eps)


def capsnet_loss(p, x, y, cfg):
    """(total, margin, recon, lengths, v, reconstruction, coupling) for parameters ``p``
    keyed as in minicaps ("conv1.W", ..., "dec1.W", ...), images x (N, H, W, C), labels y,
    and a dict ``cfg`` of CapsNetConfig's field names (the paper's values by default)."""
    eps = cfg.get("squash_eps", 1e-7)
    maps, pd = cfg["primary_maps"], cfg["primary_dims"]
    h = np.maximum(conv_valid(x, p["conv1.W"], p["conv1.b"], cfg.get("conv1_stride", 1)), 0)
    h = conv_valid(h, p["primary.W"], p["primary.b"], cfg["primary_stride"])
    if cfg.get("primary_relu", False):
        h = np.maximum(h, 0)
    n, gh, gw, _ = h.shape
    u = np.empty((n, gh * gw * maps, pd))     # capsule i = (row * W + col) * maps + map
    for r in range(gh):
        for q in range(gw):
            for mp in range(maps):
                u[:, (r * gw + q) * maps + mp, :] = h[:, r, q, mp * pd:(mp + 1) * pd]
    u = squash(u, eps)
    Wd = p["digit.W"]
    I, J, D, _ = Wd.shape
    u_hat = np.empty((n, I, J, D))             # eq. 2: u_hat_j|i = W_ij u_i
    for i in range(I):
        for j in range(J):
            u_hat[:, i, j, :] = u[:, i, :] @ Wd[i, j].T
    b = np.zeros((n, I, J))                    # Procedure 1
    for it in range(cfg["routing_iters"]):
        e = np.exp(b - b.max(2, keepdims=True))
        c = e / e.sum(2, keepdims=True)
        v = squash((c[..., None] * u_hat).sum(1), eps)
        if it < cfg["routing_iters"] - 1:
            b = b + (u_hat * v[:, None]).sum(-1)
    L = np.sqrt((v ** 2).sum(-1) + eps)
    T = np.eye(J)[y]                           # eq. 4
    m_plus, m_minus, lam = cfg.get("m_plus", 0.9), cfg.get("m_minus", 0.1), cfg.get("lam", 0.5)
    margin = (T * np.maximum(0, m_plus - L) ** 2
              + lam * (1 - T) * np.maximum(0, L - m_minus) ** 2).sum(1).mean()
    z = (v * T[..., None]).reshape(n, -1)      # the decoder sees the true class only
    layers = sum(1 for k in p if k.startswith("dec") and k.endswith(".W"))
    for k in range(1, layers + 1):
        z = z @ p[f"dec{k}.W"] + p[f"dec{k}.b"]
        z = np.maximum(z, 0) if k < layers else 1 / (1 + np.exp(-z))
    recon = ((z - x.reshape(n, -1)) ** 2).sum(1).mean()
    return margin + cfg.get("recon_weight", 0.0005) * recon, margin, recon, L, v, z, c
