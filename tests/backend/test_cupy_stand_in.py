"""The CuPy stand-in keeps CuPy's rules for device arrays, so that the tests marked gpu
catch on a machine without a GPU what CuPy would refuse on one."""
import numpy as np
import pytest

import cupy_stand_in as cp


def test_device_arrays_refuse_to_mix_with_numpy_arrays():
    a, host = cp.arange(6.0).reshape(2, 3), np.ones((2, 3))
    for mixed in (lambda: a + host, lambda: host * a, lambda: cp.matmul(a, host.T),
                  lambda: cp.concatenate([a, host]), lambda: np.add(a, host, out=a)):
        with pytest.raises(TypeError, match="numpy.ndarray"):
            mixed()
    with pytest.raises(TypeError, match="numpy.ndarray"):
        a[0] = host[0]                   # stricter than CuPy may be: no host values stored
    with pytest.raises(TypeError, match="Implicit conversion"):
        np.asarray(a)
    assert not isinstance(a, np.ndarray)


def test_device_arrays_compute_like_numpy_and_come_back_explicitly():
    host = np.arange(12.0).reshape(3, 4)
    a = cp.asarray(host)
    host[0, 0] = 100.0                       # asarray copied: a transfer, not a view
    b = (a * 2 + 1) @ cp.ones((4, 2))
    assert isinstance(b, cp.ndarray)
    np.testing.assert_array_equal(cp.asnumpy(b), (np.arange(12.0).reshape(3, 4) * 2 + 1) @ np.ones((4, 2)))
    a[1] = cp.zeros(4)                       # writes through views and items
    a.reshape(-1)[0] = -1.0
    np.testing.assert_array_equal(a.get()[:2], [[-1, 1, 2, 3], [0, 0, 0, 0]])
    a += 1                                   # in place stays on the device, in the same array
    assert a.get()[0, 0] == 0.0 and isinstance(a, cp.ndarray)


def test_reductions_give_zero_dimensional_device_arrays():
    a = cp.asarray(np.array([1.0, 3.0, 2.0]))
    for r in (a.sum(), a.max(), cp.sum(a), a.argmax()):
        assert isinstance(r, cp.ndarray) and r.shape == ()
    assert float(a.sum()) == 6.0 and int(a.argmax()) == 1 and bool(a.max() > 2)
    assert a.sum().item() == 6.0
    for same in (cp.array_equal(a, a), cp.array_equiv(a, a[None]), cp.allclose(a, a + 1e-12)):
        assert isinstance(same, cp.ndarray) and same.shape == ()
        cp.waits.clear()
        assert bool(same) is True and cp.waits["bool"] == 1     # reading it makes the host wait
    assert bool(cp.array_equal(a, a + 1)) is False


def test_views_launch_nothing_and_copies_launch_one_kernel():
    # What CuPy launches a kernel for (tests/fast/test_gpu_launches.py counts a training step's).
    a = cp.asarray(np.arange(24.0, dtype=np.float32).reshape(2, 3, 4))
    cp.launches.clear()
    views = (a.reshape(6, 4), a.transpose(2, 0, 1), a[1], a[:, 1:], a.T, a.astype(np.float32,
             copy=False), cp.ascontiguousarray(a), cp.empty_like(a))
    assert len(views) == 8 and sum(cp.launches.values()) == 0
    a.transpose(2, 0, 1).reshape(-1)                  # must copy: not contiguous
    a * 2
    a.sum(axis=0)
    a[0] @ a[1].T
    a[cp.asarray(np.array([1, 0]))]                   # a gather; the index's transfer too
    a[0] = 0
    cp.multiply(a, 2, out=a)                          # in place is a kernel as well
    assert cp.launches == {"copy": 2, "elementwise": 2, "reduction": 1, "matmul": 1,
                           "gather": 1, "transfer": 1}
