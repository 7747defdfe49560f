"""Two digits in one image (MultiMNIST, section 6 of the paper): both classes present in the
margin loss, each digit reconstructed from its own capsule, the K reconstruction errors
summed. Against an independent sum of one-label pieces, finite differences in float64, and
the fast model against the reference one."""
import numpy as np
import pytest

import minicaps as mc
from minicaps.fast.model import FastCapsNet
from minicaps.gradcheck import check_array, randomize_params, relative_error, tiny_config
from minicaps.nn.multi_label import MultiLabelCapsNet
from minicaps.ops import margin_loss_forward

CFG = tiny_config(num_classes=4)


def models(seed=0):
    """The reference CapsNet with the K-label path (nn/multi_label.py), and the fast one."""
    reference = randomize_params(MultiLabelCapsNet(CFG, dtype="float64"),
                                 np.random.default_rng(seed))
    return reference, FastCapsNet(CFG, dtype="float64", params=reference.params)


def pair_batch(n=3, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.random((n, 10, 10, 1))
    y = np.stack([rng.choice(4, 2, replace=False) for _ in range(n)])
    targets = rng.random((n, 2, 10, 10, 1))
    return x, y, targets


def test_the_loss_is_the_sum_of_its_one_label_pieces():
    """margin loss with both classes present (T = 1 for each), plus recon_weight times the
    two digits' squared errors, each from the decoder masked to that digit's capsule."""
    model, _ = models()
    x, y, targets = pair_batch()
    out = model.forward(x, y, targets=targets)[0]
    v, lengths = out["v"], out["lengths"]
    n = len(x)
    T = np.zeros((n, 4))
    T[np.arange(n)[:, None], y] = 1
    margin = (T * np.maximum(0, 0.9 - lengths) ** 2
              + 0.5 * (1 - T) * np.maximum(0, lengths - 0.1) ** 2).sum() / n
    recon = 0.0
    for k in range(2):
        mask = np.eye(4)[y[:, k]]
        r = model.decode(v, mask)[0]
        recon += ((r - targets[:, k].reshape(n, -1)) ** 2).sum() / n
        np.testing.assert_allclose(out["reconstruction"][:, k], r, rtol=1e-13)
    assert out["margin_loss"] == pytest.approx(margin, rel=1e-12)
    assert out["reconstruction_loss"] == pytest.approx(recon, rel=1e-12)
    assert out["loss"] == pytest.approx(margin + CFG.recon_weight * recon, rel=1e-12)
    # the one-label margin loss of ops agrees with T built by hand, label by label
    assert margin_loss_forward(lengths, y)[0] == pytest.approx(margin, rel=1e-12)


@pytest.mark.parametrize("impl", ["reference", "fast"])
def test_every_gradient_against_finite_differences(impl):
    reference, fast_model = models()
    model = reference if impl == "reference" else fast_model
    x, y, targets = pair_batch()
    _, grads, _ = model.loss_and_grads(x, y, targets=targets)
    rng = np.random.default_rng(0)
    for name, p in model.params.items():
        error = check_array(lambda: model.loss(x, y, targets=targets), p, grads[name], rng=rng)
        assert error < 1e-6, (name, error)


def test_fast_equals_reference():
    reference, fast_model = models(seed=3)
    x, y, targets = pair_batch(n=5, seed=4)
    a_loss, a_grads, a_out = reference.loss_and_grads(x, y, targets=targets)
    b_loss, b_grads, b_out = fast_model.loss_and_grads(x, y, targets=targets)
    assert relative_error(np.array(a_loss), np.array(b_loss)) <= 1e-10
    for name in a_grads:
        assert relative_error(a_grads[name], b_grads[name]) <= 1e-10, name
    assert relative_error(a_out["reconstruction"], b_out["reconstruction"]) <= 1e-10


def test_one_label_as_a_column_is_one_label():
    model, _ = models()
    x, y, _ = pair_batch()
    a_loss, a_grads, _ = model.loss_and_grads(x, y[:, 0])
    b_loss, b_grads, _ = model.loss_and_grads(x, y[:, :1], targets=x[:, None])
    assert a_loss == b_loss
    for name in a_grads:
        np.testing.assert_array_equal(a_grads[name], b_grads[name])


def test_bad_pairs_are_refused():
    model, _ = models()
    x, y, targets = pair_batch()
    same = y.copy()
    same[0, 1] = same[0, 0]
    with pytest.raises(ValueError, match="different classes"):
        model.loss_and_grads(x, same, targets=targets)
    with pytest.raises(ValueError, match=r"targets must be floats of shape \(3, 2, 10, 10, 1\)"):
        model.loss_and_grads(x, y, targets=targets[:, :1])
    with pytest.raises(ValueError, match="targets must be floats"):
        model.loss_and_grads(x, y, targets=(targets * 255).astype(np.uint8))


def test_the_k_label_path_with_one_label_is_the_papers_network():
    """MultiLabel.forward composes CapsNet's stages again: with one label an image it is
    CapsNet.forward and CapsNet.backward, number for number."""
    model, _ = models()
    paper = mc.CapsNet(CFG, dtype="float64", params=model.params)
    x, y, _ = pair_batch()
    a_loss, a_grads, a_out = paper.loss_and_grads(x, y[:, 0])
    b_loss, b_grads, b_out = model.loss_and_grads(x, y[:, 0])
    assert a_loss == b_loss
    np.testing.assert_array_equal(a_out["reconstruction"], b_out["reconstruction"])
    for name in a_grads:
        np.testing.assert_array_equal(a_grads[name], b_grads[name])
