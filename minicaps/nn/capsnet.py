"""The CapsNet of Sabour, Frosst & Hinton (2017): forward and backward, as the paper writes them.

    x (N, 28, 28, 1)
    -> conv1 9x9, 256, ReLU                      (N, 20, 20, 256)
    -> primary conv 9x9 stride 2, 32 x 8D        (N, 6, 6, 256)
    -> primary capsules, squash                  u (N, 1152, 8)
    -> predictions u_hat = W u                   (N, 1152, 10, 16)
    -> dynamic routing, 3 iterations             v (N, 10, 16)
    -> lengths |v| -> margin loss
    -> mask by label -> decoder 160-512-1024-784 -> reconstruction loss

CapsNet chains the reference ops of minicaps.ops; its sizes are CapsNetConfig's
(nn/capsnet_config.py), its parameters a dict keyed by name ("conv1.W", "digit.W", ...)
held by nn/base.py's Network, and the gradients come back in a dict with the same keys.

This is the network to read. What trains is its fast twin, FastCapsNet (fast/model.py: the
same functions made fast, the same parameters, results equal to rounding), which
build_model(config) builds (nn/registry.py); it adds K labels an image (MultiMNIST's
pairs, nn/multi_label.py) and the training loop's options.
"""
from minicaps.nn.base import Network, check_buildable, check_network_fits, glorot_uniform
from minicaps.nn.capsnet_config import (CapsNetConfig, CapsNetMemory, MAX_ROUTING_ITERS,
                                        init_params)
from minicaps.ops import (conv2d_forward, conv2d_backward, relu_forward, relu_backward,
                          dense_forward, dense_backward, sigmoid_forward, sigmoid_backward,
                          primary_capsules_forward, primary_capsules_backward,
                          predictions_forward, predictions_backward, routing_forward,
                          routing_backward, length_forward, length_backward,
                          margin_loss_forward, margin_loss_backward, mask_forward,
                          mask_backward, one_hot, reconstruction_loss_forward,
                          reconstruction_loss_backward)

__all__ = ["CapsNet", "CapsNetConfig", "init_params", "MAX_ROUTING_ITERS",
           "check_buildable", "check_network_fits", "glorot_uniform"]


class CapsNet(CapsNetMemory, Network):
    """The capsule network with hand-written forward and backward passes.

    model = CapsNet(CapsNetConfig(), seed=0, dtype="float32", device="cpu")
    loss, grads, out = model.loss_and_grads(x, y)   # x (N, H, W, C) in [0, 1], y (N,)
    """
    config_class = CapsNetConfig
    init_params = staticmethod(init_params)

    # ------------------------------------------------------------ the stages of the forward pass
    def primary_capsules(self, x):
        """conv1 -> ReLU -> primary conv (-> ReLU) -> squash: u (N, I, D_in) and the caches."""
        cfg, p, caches = self.config, self.params, {}
        h, caches["conv1"] = conv2d_forward(x, p["conv1.W"], p["conv1.b"], cfg.conv1_stride)
        h, caches["relu1"] = relu_forward(h)
        h, caches["primary"] = conv2d_forward(h, p["primary.W"], p["primary.b"],
                                              cfg.primary_stride)
        if cfg.primary_relu:
            h, caches["relu2"] = relu_forward(h)
        u, caches["caps"] = primary_capsules_forward(h, cfg.primary_dims, cfg.squash_eps)
        return u, caches

    def digit_capsules(self, u, coupling=None):
        """Predictions u_hat = W u (eq. 2), then routing (Procedure 1): (v, c) and the cache.
        ``coupling`` fixes c (see routing_forward)."""
        cfg = self.config
        u_hat, predictions = predictions_forward(u, self.params["digit.W"])
        (v, c), routing = routing_forward(u_hat, cfg.routing_iters, cfg.routing_grad,
                                          cfg.squash_eps, coupling)
        return (v, c), (predictions, routing)

    def iteration_couplings(self, digit_cache):
        """The coupling c (N, I, J) each routing iteration used, from digit_capsules' cache
        (which keeps them for the backward pass): the first is uniform, 1/J."""
        _, (_, steps, _) = digit_cache
        return [c for c, _, _ in steps]

    def decode(self, v, mask):
        """The decoder on digit capsules v (N, J, D) masked by mask (N, J): the
        reconstruction (N, H*W*C) and the caches. Any pose v can be decoded."""
        cfg, p, caches = self.config, self.params, {}
        if not cfg.use_decoder:
            raise ValueError("this network has no decoder (use_decoder=False)")
        r, caches["mask"] = mask_forward(v, mask)
        n_dec = len(cfg.decoder_sizes) + 1
        for k in range(1, n_dec + 1):
            r, caches[f"dec{k}"] = dense_forward(r, p[f"dec{k}.W"], p[f"dec{k}.b"])
            if k < n_dec:
                r, caches[f"dec{k}.relu"] = relu_forward(r)
        r, caches["sigmoid"] = sigmoid_forward(r)
        return r, caches

    # ------------------------------------------------------------ forward / backward
    def forward(self, x, y=None, coupling=None, decode=True, keep_couplings=False):
        """Run the network on images x (N, H, W, C) in [0, 1]: (out, caches).

        out holds the digit capsules "v" (N, J, D), their "lengths" (N, J), the last
        routing iteration's "coupling" (N, I, J) and, with a decoder, the "reconstruction"
        (N, H*W*C) from the capsule of the label y (N,) when given (training), else of the
        longest capsule (inference). With y also the "margin_loss", the
        "reconstruction_loss" and their weighted sum, the "loss", as floats.
        ``coupling`` fixes the routing coefficients (routing_forward: the function that
        routing_grad="stop" differentiates); decode=False skips the decoder;
        keep_couplings=True adds "couplings", the c each routing iteration used.
        """
        cfg = self.config
        x = self.check_x(x)
        N = x.shape[0]
        u, caches = self.primary_capsules(x)                              # (N, I, D_in)
        (v, c), caches["digit"] = self.digit_capsules(u, coupling)       # (N, J, D)
        lengths, caches["lengths"] = length_forward(v, cfg.squash_eps)
        out, losses = {"v": v, "coupling": c, "lengths": lengths}, {}
        if keep_couplings:
            out["couplings"] = self.iteration_couplings(caches["digit"])
        if y is not None:
            y = self.check_y(y, N, one_label=True)
            losses["margin_loss"], caches["margin"] = margin_loss_forward(     # eq. 4
                lengths, y, cfg.m_plus, cfg.m_minus, cfg.lam)
        if cfg.use_decoder and decode:
            shown = y if y is not None else lengths.argmax(axis=1)
            r, decoder_caches = self.decode(v, one_hot(shown, cfg.num_classes, self.dtype))
            caches.update(decoder_caches)
            out["reconstruction"] = r
            if y is not None:
                losses["reconstruction_loss"], caches["recon"] = reconstruction_loss_forward(
                    r, x.reshape(N, -1))
        if losses:
            out.update(self.host_floats(losses))
            out["loss"] = out["margin_loss"] + cfg.recon_weight * out.get("reconstruction_loss", 0.0)
        return out, caches

    def backward(self, caches):
        """Gradients of the loss for every parameter, from forward's caches (with labels):
        the forward's ops walked back in reverse order."""
        cfg, grads = self.config, {}
        dlengths = margin_loss_backward(1.0, caches["margin"])
        dv = length_backward(dlengths, caches["lengths"])
        if cfg.use_decoder:                 # v feeds the margin loss and the decoder: dv adds up
            dr = reconstruction_loss_backward(cfg.recon_weight, caches["recon"])
            dv = dv + self.decode_backward(dr, caches, grads)
        predictions, routing = caches["digit"]
        du_hat = routing_backward(dv, routing)
        du, grads["digit.W"] = predictions_backward(du_hat, predictions)
        dh = primary_capsules_backward(du, caches["caps"])
        if cfg.primary_relu:
            dh = relu_backward(dh, caches["relu2"])
        dh, grads["primary.W"], grads["primary.b"] = conv2d_backward(dh, caches["primary"])
        dh = relu_backward(dh, caches["relu1"])
        _, grads["conv1.W"], grads["conv1.b"] = conv2d_backward(dh, caches["conv1"])
        return {name: grads[name] for name in self.params}

    def decode_backward(self, dr, caches, grads):
        """decode's backward pass: the gradient for v (N, J, D) from the reconstruction's dr;
        the decoder's parameter gradients go into ``grads``."""
        cfg = self.config
        dr = sigmoid_backward(dr, caches["sigmoid"])
        n_dec = len(cfg.decoder_sizes) + 1
        for k in range(n_dec, 0, -1):
            if k < n_dec:
                dr = relu_backward(dr, caches[f"dec{k}.relu"])
            dr, grads[f"dec{k}.W"], grads[f"dec{k}.b"] = dense_backward(dr, caches[f"dec{k}"])
        return mask_backward(dr, caches["mask"])

    def loss_and_grads(self, x, y, coupling=None):
        """(loss, grads, out): the loss as a float, a gradient per parameter, forward's out."""
        if y is None:
            raise ValueError("loss_and_grads needs labels y")
        out, caches = self.forward(x, y, coupling)
        return out["loss"], self.backward(caches), out

    def loss(self, x, y, coupling=None):
        """The loss alone (what the gradient checker differentiates)."""
        return self.forward(x, y, coupling)[0]["loss"]

    def class_scores(self, x):
        """The capsules' lengths (N, J), the decoder skipped: what predict reads."""
        return self.forward(x, decode=False)[0]["lengths"]
