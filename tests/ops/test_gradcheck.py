"""The gradient checker itself: it must find wrong gradients, not only bless right ones."""
import subprocess
import sys

import numpy as np

from minicaps import ops
from minicaps.gradcheck import (check_array, check_op, numerical_gradient, op_cases,
                                relative_error)


def test_numerical_gradient_of_a_closed_form():
    x = np.array([0.3, -1.2, 2.0])
    f = lambda: float((x**3).sum() + np.sin(x).sum())
    np.testing.assert_allclose(numerical_gradient(f, x), 3 * x**2 + np.cos(x), rtol=1e-8)
    np.testing.assert_array_equal(x, [0.3, -1.2, 2.0])            # restored


def test_directional_check_of_a_big_tensor_catches_a_small_mistake():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 30))                            # above max_elements
    f = lambda: float((x**2).sum())
    assert check_array(f, x, 2 * x) < 1e-8
    wrong = 2 * x
    wrong[3, 4] += 1.0
    assert check_array(f, x, wrong, max_elements=0, n_directions=20) > 1e-3


def test_check_op_flags_a_broken_backward():
    rng = np.random.default_rng(0)
    broken = lambda dv, cache: 1.01 * ops.squash_backward(dv, cache)
    errors = check_op(ops.squash_forward, broken, [rng.standard_normal((3, 4))])
    assert errors["x0"] > 1e-3


def test_relative_error_is_symmetric_and_zero_for_equal_arrays():
    a, b = np.array([1.0, 2.0]), np.array([1.0, 2.5])
    assert relative_error(a, a) == 0.0
    assert relative_error(a, b) == relative_error(b, a) > 0
    assert relative_error(np.zeros(3), np.zeros(3)) == 0.0


def test_every_op_of_the_library_has_a_case_in_the_report():
    names = " ".join(case[0] for case in op_cases(np.random.default_rng(0)))
    for op in ("conv2d", "relu", "dense", "sigmoid", "squash", "length", "primary", "predictions",
               "routing", "margin", "mask", "reconstruction"):
        assert op in names


def gradcheck(*args):
    """`minicaps gradcheck ARGS`: (exit status, the table's rows, all of stdout)."""
    result = subprocess.run([sys.executable, "-m", "minicaps", "gradcheck", *args],
                            capture_output=True, text=True, timeout=300)
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ") and "---" not in line][1:]
    return result.returncode, rows, result.stdout + result.stderr


def test_gradcheck_command_checks_the_capsnet_by_default_every_row_within_tolerance():
    status, rows, out = gradcheck()
    assert status == 0, out
    assert len(rows) >= 40
    assert all("| yes" in row for row in rows)
    for param in ("conv1.W", "primary.W", "digit.W", "dec1.W", "dec2.b"):
        assert param in out
    for what in ("CapsNet reference (full, 3 it.)", "CapsNet fast (stop, 3 it.)",
                 "fast conv2d by DFT", "fast predictions + routing in chunks", "routing, 3 iterations"):
        assert what in out, what
    # the CNN baseline only on request
    for what in ("BaselineCNN", "conv2d SAME", "max-pool", "dropout", "softmax cross-entropy"):
        assert what not in out, what
    assert f"{len(rows)}/{len(rows)} checks within tolerance" in out


def test_gradcheck_model_cnn_checks_the_cnn_baseline_and_all_checks_both():
    status, rows, out = gradcheck("--model", "cnn")
    assert status == 0, out
    assert rows and all("| yes" in row for row in rows)
    for what in ("conv2d SAME", "max-pool 2x2", "dropout 0.4 (mask held)",
                 "softmax cross-entropy", "softmax cross-entropy, two labels each",
                 "BaselineCNN (3x3, pool 1, dropout 0.3), reference, 1 label | fc1.W",
                 "BaselineCNN (3x3, pool 1, dropout 0.3), fast, 2 labels | conv1.W"):
        assert what in out, what
    assert "CapsNet" not in "".join(rows) and "squash" not in out
    status, both, out = gradcheck("--model", "all")
    assert status == 0, out
    assert any(r.startswith("| CapsNet reference") for r in both)
    assert any(r.startswith("| BaselineCNN") for r in both)
    capsnet_rows = len(both) - len(rows)
    assert f"{len(both)}/{len(both)} checks within tolerance" in out and capsnet_rows >= 40
