"""examples/walkthrough.py runs top to bottom on a tiny network, without MNIST, and stops
with an error when a backward pass it checks is wrong."""
import importlib
import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import minicaps as mc
from minicaps.io.checkpoint import save_checkpoint
from minicaps.gradcheck import tiny_config

ROOT = Path(__file__).resolve().parents[2]
WALKTHROUGH = ROOT / "examples" / "walkthrough.py"


def run(*args, **env):
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "MINICAPS_DATA": "", **env}
    return subprocess.run([sys.executable, str(WALKTHROUGH), *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_walkthrough_tiny():
    result = run("--tiny")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for text in ("primary capsules u: (1, 18, 4)", "u_hat: (1, 18, 3, 4)", "iteration 1: coupling",
                 "iteration 3: coupling", "sum over j is 1: True", "the model's own forward pass agrees: True",
                 "reconstruction: sum of squared errors", "routing_forward gives the same v: True",
                 "walkthrough done"):
        assert text in out, text
    assert "iteration 4" not in out
    # routing starts from the uniform coupling 1/J (J = 3): b = 0 in iteration 1
    assert "iteration 1: coupling to class" in out and "mean 0.3333, max 0.3333" in out
    lines = out.splitlines()
    first = lines.index(next(l for l in lines if l.startswith("iteration 1:")))
    assert lines[first + 1].split() == ["b_ij", "0", "0", "0"]
    assert lines[first + 2].split() == ["c_ij", "0.333", "0.333", "0.333"]
    assert lines[first + 3].startswith("  u_hat . v_j")
    # b of iteration 2 is the agreement of iteration 1
    assert lines[first + 5].split()[1:] == lines[first + 3].split()[3:]
    # three backward passes against finite differences: squash, routing, every parameter
    checks = [l.split() for l in lines if "relative error" in l]
    assert checks[0][:2] == ["squash", "s"] and checks[1][:2] == ["routing", "(full,"]
    assert {c[4] for c in checks[2:]} == set(mc.CapsNet(tiny_config(), device="cpu").params)
    assert all(float(c[-1]) < 1e-5 for c in checks)


def broken(backward):
    """backward with its gradients 1% too big: the kind of mistake a check must catch."""
    def wrong(*args):
        grads = backward(*args)
        return tuple(1.01 * g for g in grads) if isinstance(grads, tuple) else 1.01 * grads
    return wrong


@pytest.mark.parametrize("module, op, said", [
    ("minicaps.ops", "squash_backward", "squash"),
    ("minicaps.ops", "routing_backward", "routing (full, 3 iterations)"),
    ("minicaps.nn.capsnet", "routing_backward", "tiny CapsNet, every parameter"),   # CapsNet.backward's
])
def test_the_walkthrough_stops_at_a_wrong_gradient(monkeypatch, capsys, module, op, said):
    target = importlib.import_module(module)
    monkeypatch.setattr(target, op, broken(getattr(target, op)))
    monkeypatch.setattr(sys, "argv", [str(WALKTHROUGH), "--tiny"])
    monkeypatch.setenv("MINICAPS_DATA", "")
    with pytest.raises(RuntimeError, match=re.escape(said) + ": the gradient of .* is wrong"):
        runpy.run_path(str(WALKTHROUGH), run_name="__main__")
    assert "walkthrough done" not in capsys.readouterr().out


def test_walkthrough_checkpoint_from_the_environment(tmp_path):
    model = mc.CapsNet(tiny_config(routing_iters=2), seed=1, device="cpu")
    path = save_checkpoint(tmp_path / "tiny.npz", model, mc.Adam(), epoch=1, step=1,
                           rng_state=np.random.default_rng(0))
    result = run(MINICAPS_CHECKPOINT=str(path))
    assert result.returncode == 0, result.stderr
    assert f"loaded {path}" in result.stdout and "iteration 2: coupling" in result.stdout
    assert "iteration 3" not in result.stdout and "walkthrough done" in result.stdout


def test_walkthrough_is_jupytext_percent_format():
    text = WALKTHROUGH.read_text()
    assert text.count("# %%") >= 8 and "# %% [markdown]" in text
    assert "formats: py:percent" in text


def test_the_tour_names_functions_that_exist():
    """docs/tour.md points learners at the reference ops by name; a rename in ops/ must not
    leave it pointing nowhere, nor at the fast path's helpers."""
    from minicaps.ops import capsules, conv, dense, losses
    text = (ROOT / "docs" / "tour.md").read_text()
    named = set(re.findall(r"`([a-z0-9_]+_(?:forward|backward)|im2col|col2im|windows|weighted_sum"
                           r"|agreement|outer_sums|one_hot|real_dft)`", text))
    assert len(named) >= 23
    missing = [n for n in named if not any(hasattr(m, n) for m in (capsules, conv, dense, losses))]
    assert not missing, f"docs/tour.md names functions that minicaps.ops does not have: {missing}"
    for path in re.findall(r"`((?:ops|fast)/[a-z_]+\.py)`", text):
        assert (ROOT / "minicaps" / path).is_file(), path
