"""Checks of the PyTorch peer (bench/torch_capsnet.py) itself, then of minicaps against it.

The peer is only a fair yardstick if it is right, so it is checked here without minicaps:
parameter count and shapes, routing invariants, float64 gradients against
``torch.autograd.gradcheck`` on a tiny config, the "stop" routing gradient against a model
whose couplings are constants, and the whole forward (parameter layout, capsule ordering)
against a plain NumPy loop written from the spec.  The last tests compare
``minicaps.CapsNet.loss_and_grads`` with the peer in float64.
"""
import inspect
import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import paper_reference
from conftest import load_bench_module

tc = load_bench_module("torch_capsnet.py", "torch_capsnet")

# 12x12x1 -> conv1 3x3 (4 ch) -> 10x10 -> primary 3x3 stride 2 -> 4x4 grid, 2 maps x 4 dims
# -> 32 primary capsules -> 3 classes x 4 dims -> decoder 12 -> 8 -> 6 -> 144
TINY = dict(input_shape=(12, 12, 1), conv1_channels=4, conv1_kernel=3, primary_maps=2,
            primary_dims=4, primary_kernel=3, primary_stride=2, num_classes=3, digit_dims=4,
            routing_iters=3, decoder_sizes=(8, 6))


# smaller still for the full (element by element) gradcheck: 8 primary capsules, ~750 parameters
MICRO = dict(input_shape=(8, 8, 1), conv1_channels=2, conv1_kernel=3, primary_maps=2,
             primary_dims=3, primary_kernel=3, primary_stride=2, num_classes=3, digit_dims=3,
             routing_iters=3, decoder_sizes=(5, 4))


@pytest.fixture
def one_thread():
    """Tiny float64 graphs: threads only add overhead, worse on a shared, loaded machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_model(seed=0, **over):
    torch.manual_seed(seed)
    m = tc.TorchCapsNet(**dict(TINY, **over)).double()
    with torch.no_grad():   # larger weights than the default init: long capsules, routing far from uniform
        for p in (m.conv1.weight, m.primary.weight, m.digit.W):
            p.normal_(0.0, 0.5)
    return m


def tiny_data(n=3, seed=1, shape=(12, 12, 1), classes=3):
    rng = np.random.default_rng(seed)
    x = rng.random((n,) + tuple(shape))
    y = rng.integers(0, classes, n)
    return x, y


# ---- the peer on its own ------------------------------------------------------------------------
def test_param_count_and_names():
    m = tc.TorchCapsNet()
    assert tc.count_params(m) == 8_215_568
    shapes = {k: v.shape for k, v in tc.params_as_minicaps(m).items()}
    assert shapes == {"conv1.W": (9, 9, 1, 256), "conv1.b": (256,), "primary.W": (9, 9, 256, 256),
                      "primary.b": (256,), "digit.W": (1152, 10, 16, 8), "dec1.W": (160, 512),
                      "dec1.b": (512,), "dec2.W": (512, 1024), "dec2.b": (1024,),
                      "dec3.W": (1024, 784), "dec3.b": (784,)}
    assert m.num_primary == 1152 and m.grid == (6, 6)


def test_shapes_and_coupling_sums_to_one():
    torch.manual_seed(0)
    m = tc.TorchCapsNet()
    x = np.random.default_rng(0).random((2, 28, 28, 1)).astype(np.float32)
    y = np.array([3, 7])
    total, margin, recon, lengths, v, rec, c = m.loss(x, y)
    assert total.shape == margin.shape == recon.shape == ()
    assert lengths.shape == (2, 10) and v.shape == (2, 10, 16)
    assert rec.shape == (2, 784) and c.shape == (2, 1152, 10)
    np.testing.assert_allclose(c.sum(-1).detach().numpy(), 1.0, rtol=1e-5)
    assert torch.all(lengths < 1) and torch.all(lengths > 0)
    assert torch.all((rec > 0) & (rec < 1))
    lens, pred = tc.torch_infer(m, torch.from_numpy(x))          # torch NHWC input works too
    np.testing.assert_allclose(lens.numpy(), lengths.detach().numpy(), rtol=1e-5, atol=1e-6)
    assert pred.shape == (2,)


def test_coupling_sums_to_one_tiny_and_routing_changes_it():
    m = tiny_model()
    x, y = tiny_data()
    c = m.loss(x, y)[6].detach().numpy()
    np.testing.assert_allclose(c.sum(-1), 1.0, rtol=1e-12)
    assert np.abs(c - 1.0 / 3).max() > 1e-3          # after 3 iterations no longer uniform
    c1 = tiny_model(routing_iters=1).loss(x, y)[6].detach().numpy()
    np.testing.assert_allclose(c1, 1.0 / 3, rtol=1e-12)


def test_stop_and_full_have_the_same_forward():
    x, y = tiny_data()
    a = tiny_model(routing_grad="full").loss(x, y)
    b = tiny_model(routing_grad="stop").loss(x, y)
    for s, t in zip(a, b):
        np.testing.assert_array_equal(s.detach().numpy(), t.detach().numpy())


def test_inference_masks_by_argmax():
    m = tiny_model()
    x, _ = tiny_data()
    out = m(x)
    pred = out["lengths"].argmax(1)
    np.testing.assert_allclose(out["reconstruction"].detach().numpy(),
                               m(x, pred)["reconstruction"].detach().numpy(), rtol=1e-14)


class _LossWrap(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x, y):
        return self.m.loss(x, y)[0]


def _gradcheck_model(m, x, y, fast_mode=False):
    w = _LossWrap(m)
    names = [n for n, _ in w.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for p in w.parameters()]
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)

    def f(*ps):
        return torch.func.functional_call(w, dict(zip(names, ps)), (xt, yt))

    assert torch.autograd.gradcheck(f, params, eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=fast_mode)


@pytest.mark.parametrize("iters", [1, 3])
@pytest.mark.parametrize("primary_relu", [False, True])
def test_gradcheck_full_routing_float64(iters, primary_relu, one_thread):
    """Every parameter element, by central differences, on the micro config."""
    m = tiny_model(**dict(MICRO, routing_iters=iters, primary_relu=primary_relu))
    x, y = tiny_data(n=2, shape=MICRO["input_shape"])
    _gradcheck_model(m, x, y)


def test_gradcheck_tiny_config_fast_mode(one_thread):
    """The larger tiny config (32 capsules), by random projections (gradcheck fast_mode)."""
    m = tiny_model()
    x, y = tiny_data()
    _gradcheck_model(m, x, y, fast_mode=True)


def test_gradcheck_input_gradient(one_thread):
    m = tiny_model()
    x, y = tiny_data()
    xt = torch.from_numpy(x).requires_grad_(True)
    yt = torch.from_numpy(y)
    assert torch.autograd.gradcheck(lambda a: m.loss(a, yt)[0], (xt,), eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("iters", [1, 3])
def test_stop_gradient_equals_constant_coupling(iters):
    """routing_grad='stop' must give the gradient of the model whose final couplings are constants."""
    x, y = tiny_data()
    m = tiny_model(routing_iters=iters, routing_grad="stop")
    m.zero_grad()
    m.loss(x, y)[0].backward()
    g_stop = tc.grads_as_minicaps(m)

    ref = tiny_model(routing_iters=iters, routing_grad="full")
    ref.zero_grad()
    xt = ref.as_input(x)
    u_hat = ref.prediction_vectors(ref.primary_capsules(xt))
    with torch.no_grad():
        _, c = ref.route(u_hat)
    v = tc.squash(torch.einsum("nij,nijd->njd", c, u_hat), ref.cfg["squash_eps"])
    L = torch.sqrt((v * v).sum(-1) + ref.cfg["squash_eps"])
    T = ref.one_hot(y)
    margin = (T * torch.relu(0.9 - L) ** 2 + 0.5 * (1 - T) * torch.relu(L - 0.1) ** 2).sum(1).mean()
    recon = ((ref.decode(v, T) - xt.reshape(len(x), -1)) ** 2).sum(1).mean()
    (margin + 0.0005 * recon).backward()
    g_ref = tc.grads_as_minicaps(ref)
    for k in tc.PARAM_NAMES:
        np.testing.assert_allclose(g_stop[k], g_ref[k], rtol=1e-10, atol=1e-14, err_msg=k)

    if iters == 3:   # and it really differs from the full gradient
        f = tiny_model(routing_iters=iters, routing_grad="full")
        f.loss(x, y)[0].backward()
        g_full = tc.grads_as_minicaps(f)
        assert not np.allclose(g_full["digit.W"], g_stop["digit.W"], rtol=1e-6, atol=0)
    else:            # one iteration: nothing to stop
        f = tiny_model(routing_iters=iters, routing_grad="full")
        f.loss(x, y)[0].backward()
        g_full = tc.grads_as_minicaps(f)
        for k in tc.PARAM_NAMES:
            np.testing.assert_allclose(g_full[k], g_stop[k], rtol=1e-12, atol=1e-15, err_msg=k)


# ---- the peer against a plain NumPy transcription of the spec (layout and ordering) ------------
@pytest.mark.parametrize("primary_relu", [False, True])
def test_forward_matches_numpy_transcription_of_spec(primary_relu):
    """Random minicaps-layout params loaded into the peer give the spec's numbers (ordering check)."""
    cfg = dict(TINY, primary_relu=primary_relu)
    rng = np.random.default_rng(5)
    shapes = {k: v.shape for k, v in tc.params_as_minicaps(tiny_model(**cfg)).items()}
    p = {k: rng.normal(0, 0.5, s) for k, s in shapes.items()}
    x, y = tiny_data(n=2)
    m = tc.load_minicaps_params(tiny_model(**cfg), p)
    for k, a in tc.params_as_minicaps(m).items():
        np.testing.assert_array_equal(a, p[k])
    got = m.loss(x, y)
    want = paper_reference.capsnet_loss(p, x, y, cfg)
    for name, g, w in zip(("total", "margin", "recon", "lengths", "v", "rec", "c"), got, want):
        np.testing.assert_allclose(g.detach().numpy(), w, rtol=1e-10, atol=1e-13, err_msg=name)


def test_load_rejects_wrong_shapes():
    m = tiny_model()
    p = tc.params_as_minicaps(m)
    p["digit.W"] = np.zeros((1, 2, 3, 4))
    with pytest.raises(ValueError):
        tc.load_minicaps_params(m, p)
    del p["digit.W"]
    with pytest.raises(KeyError):
        tc.load_minicaps_params(m, p)


def test_train_step_and_bench_helpers_run():
    torch.manual_seed(0)
    m = tc.TorchCapsNet(**TINY)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    x, y = tiny_data(n=8)
    x = x.astype(np.float32)
    losses = [tc.torch_train_step(m, opt, x, y) for _ in range(15)]
    assert np.isfinite(losses).all() and losses[-1] < losses[0]
    sec = tc._time_steps(lambda: tc.torch_infer(m, x), 2, warmup=0)
    assert sec > 0


# ---- minicaps against the peer ----------------------------------------------------------------
def _minicaps():
    import minicaps as mc     # a broken import is a failure here, not a skip
    return mc


def _relerr(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


def _to_numpy(a):
    return np.asarray(a.get() if hasattr(a, "get") else a)


@pytest.mark.parametrize("routing_grad,iters,primary_relu", [
    ("full", 1, False), ("stop", 1, False), ("full", 3, False), ("stop", 3, False), ("full", 3, True)])
def test_minicaps_loss_and_grads_match_peer_float64(routing_grad, iters, primary_relu):
    mc = _minicaps()
    fields = dict(TINY, routing_iters=iters, routing_grad=routing_grad,
                  recon_weight=0.0005, primary_relu=primary_relu, squash_eps=1e-7)
    accepted = set(inspect.signature(mc.CapsNetConfig).parameters)
    missing = sorted(set(fields) - accepted)
    if missing:
        pytest.fail(f"CapsNetConfig has no fields {missing} (has {sorted(accepted)}); "
                    "update this test's field names")
    model = mc.CapsNet(mc.CapsNetConfig(**fields), seed=0, dtype="float64")
    # larger digit weights than the default init, so that routing moves the couplings well away
    # from uniform and "full" and "stop" gradients differ by far more than the tolerance
    W = model.params["digit.W"]
    W[...] = np.random.default_rng(3).normal(0.0, 0.5, W.shape) if isinstance(W, np.ndarray) else W * 50
    params = {k: _to_numpy(v) for k, v in model.params.items()}
    peer = tc.load_minicaps_params(tiny_model(**fields), params)
    x, y = tiny_data(n=3)
    loss, grads, out = model.loss_and_grads(x, y)

    peer.zero_grad()
    total, margin, recon, lengths, v, rec, c = peer.loss(x, y)
    total.backward()
    tg = tc.grads_as_minicaps(peer)

    assert _relerr(float(loss), total.item()) < 1e-8, (float(loss), total.item())
    assert set(grads) >= set(tc.PARAM_NAMES), sorted(set(tc.PARAM_NAMES) - set(grads))
    errs = {k: _relerr(_to_numpy(grads[k]), tg[k]) for k in tc.PARAM_NAMES}
    assert max(errs.values()) < 1e-8, errs
    if isinstance(out, dict):   # compare what minicaps chose to return, by the peer's names
        for key, ref in (("lengths", lengths), ("v", v), ("reconstruction", rec), ("coupling", c),
                         ("margin_loss", margin), ("reconstruction_loss", recon)):
            if key in out:
                assert _relerr(_to_numpy(out[key]), ref.detach().numpy()) < 1e-8, key


# ---- the recipe trained by the peer (bench/torch_epoch.py) --------------------------------------
def test_peer_trains_the_same_epochs_as_minicaps_float64(one_thread):
    """Two epochs of 8 shifted images in batches of 3 (the last batch short): the peer, given
    minicaps' initial weights, draws and Adam in TensorFlow's form, ends with the parameters
    minicaps' own training loop ends with; only the passes differ (autograd against
    hand-written)."""
    mc = _minicaps()
    from minicaps.training.epoch import train_epoch
    from minicaps.training.splits import Split
    te = load_bench_module("torch_epoch.py", "torch_epoch")
    config = mc.CapsNetConfig(**dict(TINY, recon_weight=0.0005))
    rng = np.random.default_rng(5)
    train = Split(rng.integers(0, 256, (8, 12, 12), dtype=np.uint8), rng.integers(0, 3, 8))
    recipe = dict(batch_size=3, lr=1e-2, lr_decay=0.5, decay_steps=2, shift=2)   # the decay shows

    model = mc.build_model(config, seed=4, dtype="float64")       # the one train builds
    opt, draws, step = mc.Adam(lr=recipe["lr"]), np.random.default_rng(4), 0
    for _ in range(2):
        step, _ = train_epoch(model, opt, train, draws, step, progress=False, **recipe)
    peer = te.peer_model(config, 4, "minicaps", torch.float64)
    assert te.train_epochs(peer, train, epochs=2, seed=4, **recipe) == step == 6

    theirs = tc.params_as_minicaps(peer)
    start = mc.init_params(config, 4, "float64")
    for k in tc.PARAM_NAMES:
        moved = np.abs(model.params[k] - start[k]).max()
        assert moved > 1e-4, k                                     # every parameter trained
        assert np.abs(model.params[k] - theirs[k]).max() < 1e-6 * moved, k


def test_tf_adam_eps_makes_torch_adam_equal_tensorflows():
    te = load_bench_module("torch_epoch.py", "torch_epoch")
    g = [np.array([3e-9, -2.0, 5e-7]), np.array([1e-8, 1.0, -4e-7]), np.array([-2e-9, 0.5, 1e-7])]
    p = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([p], lr=0.1, eps=1e-8)
    tf_adam, ours = _minicaps().Adam(lr=0.1, eps=1e-8), {"p": np.zeros(3)}
    for t, gt in enumerate(g, start=1):     # gradients near eps: there the two forms differ
        opt.param_groups[0]["eps"] = te.tf_adam_eps(1e-8, 0.999, t)
        p.grad = torch.from_numpy(gt.copy())
        opt.step()
        tf_adam.step(ours, {"p": gt})
        np.testing.assert_allclose(p.detach().numpy(), ours["p"], rtol=1e-10, atol=0)


@pytest.mark.skipif(not os.environ.get("MINICAPS_DATA"), reason="set MINICAPS_DATA to the MNIST files")
def test_torch_epoch_command_on_real_mnist(tmp_path, one_thread):
    te = load_bench_module("torch_epoch.py", "torch_epoch")
    out = tmp_path / "peer.json"
    rows = te.main(["--limit-train", "120", "--limit-test", "50", "--batch-size", "40",
                    "--threads", "1", "--json", str(out)])
    saved = json.loads(out.read_text())
    assert saved["n_train"] == 120 and saved["n_test"] == 50 and saved["epochs"] == rows
    assert len(rows) == 1 and rows[0]["test_accuracy"] * 50 == round(rows[0]["test_accuracy"] * 50)


def test_the_peer_takes_minicaps_configs_and_refuses_what_it_cannot_build():
    mc = _minicaps()
    fields = tc.config_from_minicaps(mc.CapsNetConfig(**dict(TINY, lam=0.25)).to_dict())
    assert fields["lambda_"] == 0.25 and fields["input_shape"] == (12, 12, 1)
    assert tc.TorchCapsNet(**fields).cfg["decoder_sizes"] == (8, 6)
    for bad in (dict(conv1_stride=2), dict(use_decoder=False)):
        with pytest.raises(ValueError, match="stride 1 and a decoder"):
            tc.config_from_minicaps(dict(mc.CapsNetConfig().to_dict(), **bad))
