"""K labels an image (MultiMNIST, section 6 of the paper), and what the training loop asks
of a CapsNet beyond the paper's forward pass.

With y (N, K), K different classes present in each image (MultiMNIST: the two digits), all
K count as present in the margin loss (eq. 4), and the decoder runs once per label, on that
capsule alone, reconstructing ``targets`` (N, K, H, W, C) (each digit alone): the K passes
go through the decoder as one batch of N K rows (row n K + k: image n's label k), the
reconstruction loss sums the K squared errors, and backward adds the K passes' gradients
on each image's capsules (decoded_backward).

MultiLabel is a mixin of the CapsNet classes, written with the reference ops like
nn/capsnet.py, whose stages (primary_capsules, digit_capsules, decode) it composes:
- MultiLabelCapsNet: the reference CapsNet with it, what the fast model is checked against
  on pairs (tests/nn/test_two_labels.py), and what a training loop drives when it is given the
  reference network (build_model(config, impl="reference"));
- FastCapsNet (fast/model.py): the fast stages and backward pass under this forward pass.
"""
from minicaps.nn.capsnet import CapsNet
from minicaps.ops import (length_forward, margin_loss_forward, one_hot,
                          reconstruction_loss_forward)


def decoded_backward(dv, per_image):
    """The K decoder passes of each image (rows n K .. n K + K - 1) add up on its capsules:
    (N K, J, D) -> (N, J, D)."""
    if per_image == 1:
        return dv
    return dv.reshape((-1, per_image) + dv.shape[1:]).sum(axis=1)


class MultiLabel:
    """CapsNet.forward with y (N, K) and ``targets``, and the training loop's options:
    ``training``, ``check_values``, ``host_losses`` (see forward)."""

    def forward(self, x, y=None, coupling=None, decode=True, training=None, check_values=True,
                host_losses=True, targets=None, keep_couplings=False):
        """CapsNet.forward, where y may also be (N, K) (the module's docstring): then
        out["reconstruction"] is (N, K, H*W*C), from each label's capsule alone, compared
        with ``targets`` (N, K, H, W, C) in [0, 1] (default, and for one label: x).

        ``training``: whether backward() will follow (default: when y is given); only the
        fast model's speed depends on it (its convolutions' route).

        Two things make the host wait for a GPU: reading x's and y's values to check
        them (x finite, labels in range) and bringing the losses back as floats.
        check_values=False skips the first, for callers that checked the values already
        (train_epoch: images made from uint8 pixels, labels checked once an epoch);
        host_losses=False leaves the losses on the model's device, as 0-d arrays (NumPy
        scalars on the CPU) of the model's dtype, "loss" summed there. The shapes and
        dtypes are checked either way.
        """
        cfg = self.config
        x = self.check_x(x, check_values)
        N = x.shape[0]
        out = {}
        u, caches = self.primary_capsules(x, training=y is not None if training is None
                                          else training)
        (v, c), caches["digit"] = self.digit_capsules(u, coupling)
        lengths, caches["lengths"] = length_forward(v, cfg.squash_eps)
        out.update(v=v, coupling=c, lengths=lengths)
        if keep_couplings:
            out["couplings"] = self.iteration_couplings(caches["digit"])

        losses = {}                       # on the device until the end: one wait for the host
        if y is not None:
            y = self.check_y(y, N, check_values)
            losses["margin_loss"], caches["margin"] = margin_loss_forward(     # eq. 4
                lengths, y, cfg.m_plus, cfg.m_minus, cfg.lam)
            decoded = y if y.ndim == 2 else y[:, None]        # (N, K): the capsules to decode
        else:
            decoded = lengths.argmax(axis=1)[:, None]
        if cfg.use_decoder and decode:
            K = decoded.shape[1]                  # one decoder pass per label, as one batch
            mask = one_hot(decoded.reshape(-1), cfg.num_classes, self.dtype)    # (N K, J)
            r, decoder_caches = self.decode(v if K == 1 else self.xp.repeat(v, K, axis=0), mask)
            caches.update(decoder_caches)
            caches["decoded_per_image"] = K
            out["reconstruction"] = r if K == 1 else r.reshape(N, K, -1)
            if y is not None:
                target = x if targets is None else self.check_targets(targets, N, K)
                losses["reconstruction_loss"], caches["recon"] = reconstruction_loss_forward(
                    r.reshape(N, -1), target.reshape(N, -1))
        if losses and not host_losses:
            out.update(losses)
            out["loss"] = losses["margin_loss"] + cfg.recon_weight * losses.get("reconstruction_loss", 0.0)
        elif losses:
            out.update(self.host_floats(losses))
            out["loss"] = out["margin_loss"] + cfg.recon_weight * out.get("reconstruction_loss", 0.0)
        return out, caches

    def primary_capsules(self, x, training=False):
        """The reference stage: ``training`` changes nothing here (the fast model's
        convolutions choose their route by it)."""
        return super().primary_capsules(x)

    def backward(self, caches, free=False):
        """CapsNet.backward of forward's caches. ``free=True`` says that the caller is done
        with the caches (loss_and_grads): the fast model then drops each one once used,
        so its memory comes back early; here they are only read."""
        return super().backward(caches)

    def decode_backward(self, dr, caches, grads):
        """CapsNet.decode_backward of the K decoder passes, added up on each image's
        capsules: dr (N, K H W C) -> dv (N, J, D)."""
        dr = dr.reshape(caches["sigmoid"].shape)                       # (N K, H W C)
        return decoded_backward(super().decode_backward(dr, caches, grads),
                                caches["decoded_per_image"])

    def loss_and_grads(self, x, y, coupling=None, check_values=True, host_losses=True,
                       targets=None):
        """(loss, grads, out): total loss as a float, a gradient per parameter, and
        forward's outputs. Masks the decoder input by the label. check_values,
        host_losses and targets as in forward (with host_losses=False the loss is a 0-d
        array on the model's device)."""
        if y is None:
            raise ValueError("loss_and_grads needs labels y")
        out, caches = self.forward(x, y, coupling, check_values=check_values,
                                   host_losses=host_losses, targets=targets)
        return out["loss"], self.backward(caches, free=True), out

    def loss(self, x, y, coupling=None, targets=None):
        """The total loss alone (what the gradient checker differentiates)."""
        return self.forward(x, y, coupling, targets=targets)[0]["loss"]

    def class_scores(self, x):
        """The capsules' lengths (N, J) of checked images, no decoder."""
        return self.forward(x, decode=False, check_values=False)[0]["lengths"]


class MultiLabelCapsNet(MultiLabel, CapsNet):
    """The reference CapsNet (reference ops, nn/capsnet.py) with K labels an image and the
    training loop's options (MultiLabel.forward)."""
