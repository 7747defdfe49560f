"""Device selection, host/device moves, and NumPy vs CuPy parity (needs a GPU)."""
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import minicaps as mc
from minicaps import backend
from minicaps.gradcheck import randomize_params, relative_error, tiny_config


def test_cpu_is_the_default_and_the_environment_can_choose(monkeypatch):
    monkeypatch.delenv("MINICAPS_DEVICE", raising=False)
    assert backend.resolve_device() == "cpu"
    monkeypatch.setenv("MINICAPS_DEVICE", "cpu")
    assert backend.resolve_device() == "cpu"
    monkeypatch.setenv("MINICAPS_DEVICE", "tpu")
    with pytest.raises(ValueError, match="MINICAPS_DEVICE"):
        backend.resolve_device()


def test_asking_for_a_missing_gpu_is_a_clear_error():
    if backend.gpu_available():
        pytest.skip("a GPU is present")
    with pytest.raises(RuntimeError, match="device='cpu'"):
        backend.resolve_device("gpu")
    with pytest.raises(RuntimeError, match="cpu"):
        mc.CapsNet(tiny_config(), device="gpu")


# ---- choosing the GPU proves it computes: CuPy's own failures, planted in the stand-in --------
@pytest.fixture
def cupy_to_import(monkeypatch):
    """The stand-in as the module `import cupy` finds, nothing of the GPU checked yet."""
    import cupy_stand_in
    monkeypatch.setitem(sys.modules, "cupy", cupy_stand_in)
    monkeypatch.setattr(backend.device, "_cupy", None)
    monkeypatch.setattr(backend.device, "_cupy_error", None)
    cupy_stand_in.launches.clear()
    return cupy_stand_in


def test_choosing_the_gpu_runs_a_product_and_an_elementwise_kernel_first(cupy_to_import):
    assert backend.resolve_device("gpu") == "gpu" and backend.loaded_cupy() is cupy_to_import
    # two arrays sent, one product (cuBLAS), a * 2 + 1 (two kernels): read back and compared
    assert cupy_to_import.launches == {"transfer": 2, "matmul": 1, "elementwise": 2}
    summary = backend.gpu_summary()
    assert summary["cupy"] == "0+stand-in" and summary["devices"] == 1
    assert summary["cuda_runtime"] == 12080


MISSING = "cannot open shared object file: No such file or directory"


@pytest.mark.parametrize("where, error, said", [
    # CuPy 14 without CUDA's libraries: import and getDeviceCount work, the first product fails
    ("matmul", ImportError(f"libcublas.so.12: {MISSING}"),
     [r"matrix product \(cuBLAS\) failed", "libcublas.so.12 is missing",
      r'pip install "cupy-cuda1\dx\[ctk\]"', "README.md, section Install"]),
    ("elementwise", RuntimeError(f"CuPy failed to load libnvrtc.so.12: OSError: libnvrtc.so.12: "
                                 f"{MISSING}"),
     [r"elementwise kernel \(compiled by NVRTC\)", "libnvrtc.so.12 is missing", r"\[ctk\]"]),
    ("device", "cudaErrorNoDevice: no CUDA-capable device is detected",
     ["no GPU can be used", "CUDARuntimeError: cudaErrorNoDevice"]),
    ("device", ImportError(f"libcuda.so.1: {MISSING}"), ["NVIDIA driver's library"]),
])
def test_a_gpu_that_cannot_compute_is_said_before_any_data_loads(cupy_to_import, monkeypatch,
                                                                  tmp_path, where, error, said):
    from minicaps.training.run import train
    if isinstance(error, str):
        error = cupy_to_import.cuda.runtime.CUDARuntimeError(error)
    monkeypatch.setitem(cupy_to_import.broken, where, error)
    for attempt in range(2):                        # the verdict is kept, not tried again
        with pytest.raises(RuntimeError, match="device='cpu'") as e:
            backend.resolve_device("gpu")
        for sentence in said:
            assert re.search(sentence, str(e.value)), (sentence, str(e.value))
    assert backend.loaded_cupy() is None and not backend.gpu_available()
    with pytest.raises(RuntimeError, match=said[0]):
        mc.CapsNet(tiny_config(), device="gpu")
    with pytest.raises(RuntimeError, match=said[0]):  # not a missing-data error: said first
        train(epochs=1, out_dir=tmp_path / "run", device="gpu",
              data_root=tmp_path / "no-data-here")


def test_numpy_arrays_stay_numpy():
    a = np.arange(3.0)
    assert backend.get_xp(a) is np
    assert backend.to_device(a, "cpu") is a
    moved = backend.params_to_numpy({"w": a})
    assert moved["w"] is a


RESIDENT_AFTER_FREE = """
import os, numpy as np
from minicaps import backend
import minicaps as mc
mc.build_model(mc.gradcheck.tiny_config())   # a fast CPU model asks malloc to keep freed memory
def resident_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
before = resident_mb()
a = np.ones(256 * 2 ** 20 // 8)             # 256 MB, every page touched
del a
print(backend.keep_freed_memory(), resident_mb() - before)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/statm") or not sys.platform.startswith("linux"),
                    reason="reads the resident set from Linux's /proc")
@pytest.mark.parametrize("setting, kept", [("1", True), ("0", False)])
def test_a_cpu_model_keeps_freed_memory_for_the_next_step_unless_told_not_to(setting, kept):
    # A fresh interpreter each, as malloc's settings hold for the whole process.
    env = dict(os.environ, MINICAPS_KEEP_FREED_MEMORY=setting)
    out = subprocess.run([sys.executable, "-c", RESIDENT_AFTER_FREE], env=env, check=True,
                         capture_output=True, text=True).stdout.split()
    in_effect, still_resident_mb = out[0] == "True", float(out[1])
    if kept and not in_effect:
        pytest.skip("this C library's malloc has no mallopt (not glibc)")
    assert in_effect == kept
    # Kept: the freed 256 MB stay mapped for reuse. Not kept: handed back to the kernel.
    assert (still_resident_mb > 200) if kept else (still_resident_mb < 56)


# ------------------------------------------------------------------ parity (skipped without a GPU)
def both(*arrays):
    return [backend.to_device(a, "gpu") for a in arrays]


@pytest.mark.gpu
@pytest.mark.parametrize("cases", ["op_cases", "fast_op_cases"])   # reference ops, fast ops
def test_every_op_forward_and_backward_agree_on_numpy_and_cupy(cases):
    from minicaps import gradcheck
    cases = getattr(gradcheck, cases)
    on_gpu = cases(np.random.default_rng(0), device="gpu")
    for (name, fwd, bwd, inputs, _), (_, fwd_gpu, _, inputs_gpu, _) in zip(
            cases(np.random.default_rng(0)), on_gpu):
        assert all(backend.is_gpu_array(a) for a in inputs_gpu), name
        out_cpu, cache_cpu = fwd(*inputs)
        out_gpu, cache_gpu = fwd_gpu(*inputs_gpu)
        assert relative_error(out_cpu, backend.to_numpy(out_gpu)) < 1e-12, name
        dout = np.random.default_rng(1).standard_normal(np.shape(out_cpu))
        g_cpu = bwd(dout, cache_cpu)
        g_gpu = bwd(backend.to_device(dout, "gpu"), cache_gpu)
        g_cpu = g_cpu if isinstance(g_cpu, tuple) else (g_cpu,)
        g_gpu = g_gpu if isinstance(g_gpu, tuple) else (g_gpu,)
        for a, b in zip(g_cpu, g_gpu):
            assert relative_error(a, backend.to_numpy(b)) < 1e-12, name


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,tol,n", [("float64", 1e-11, 4), ("float32", 1e-4, 4),
                                         ("float32", 1e-4, 64)])   # 64: the DFT route
def test_full_model_agrees_on_numpy_and_cupy(dtype, tol, n):
    cpu = mc.build_model(mc.CapsNetConfig(), seed=0, dtype=dtype, device="cpu")
    gpu = mc.build_model(mc.CapsNetConfig(), dtype=dtype, device="gpu", params=cpu.params)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (n, 28, 28, 1)).astype(dtype)
    y = rng.integers(0, 10, n)
    l_cpu, g_cpu, o_cpu = cpu.loss_and_grads(x, y)
    l_gpu, g_gpu, o_gpu = gpu.loss_and_grads(x, y)
    assert abs(l_cpu - l_gpu) <= tol * abs(l_cpu)
    assert relative_error(o_cpu["lengths"], backend.to_numpy(o_gpu["lengths"])) <= tol
    for name in g_cpu:
        assert g_gpu[name].dtype == np.dtype(dtype)
        assert relative_error(g_cpu[name], backend.to_numpy(g_gpu[name])) <= tol, name


@pytest.mark.gpu
def test_gradient_check_on_the_gpu():
    from minicaps.gradcheck import check_model
    model = mc.build_model(tiny_config(), dtype="float64", device="gpu")
    randomize_params(model, np.random.default_rng(0))
    rng = np.random.default_rng(0)
    x, y = rng.uniform(0, 1, (2, 10, 10, 1)), rng.integers(0, 3, 2)
    assert max(check_model(model, x, y).values()) <= 1e-5


@pytest.mark.gpu
def test_shifted_batches_are_the_same_on_the_gpu():
    from minicaps.data.augment import shift_images
    from minicaps.data.dataset import to_model_input
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (50, 28, 28), np.uint8)
    dy, dx = rng.integers(-2, 3, (2, 50))
    cpu = to_model_input(shift_images(images, dy, dx, 2), np.float32)
    gpu = to_model_input(shift_images(*both(images, dy, dx), 2), np.float32)
    assert backend.is_gpu_array(gpu)
    np.testing.assert_array_equal(cpu, backend.to_numpy(gpu))


@pytest.mark.gpu
def test_an_epoch_on_the_gpu_follows_the_cpu_epoch():
    from minicaps.training.epoch import train_epoch
    from minicaps.training.splits import Split
    rng = np.random.default_rng(0)
    split = Split(rng.integers(0, 256, (60, 10, 10), np.uint8), rng.integers(0, 3, 60))
    runs = []
    for device in ("cpu", "gpu"):
        model = mc.build_model(tiny_config(), seed=0, dtype="float64", device=device)
        opt = mc.Adam(lr=0.01)
        step, stats = train_epoch(model, opt, split, np.random.default_rng(1), 0, batch_size=20,
                                  lr=0.01, lr_decay=0.96, decay_steps=2000, shift=1,
                                  progress=False)
        runs.append((step, stats, backend.params_to_numpy(model.params)))
    (s_cpu, st_cpu, p_cpu), (s_gpu, st_gpu, p_gpu) = runs
    assert s_cpu == s_gpu == 3 and st_cpu["accuracy"] == st_gpu["accuracy"]
    assert st_cpu["loss"] == pytest.approx(st_gpu["loss"], rel=1e-9)
    for name in p_cpu:
        assert relative_error(p_cpu[name], p_gpu[name]) < 1e-8, name


@pytest.mark.parametrize("n", [4, 64])          # 64: the DFT route
def test_a_float32_model_does_its_gpu_work_in_float32(stand_in, n):
    # Every array a float32 model makes on the GPU, in a training step (as the user calls
    # it and as train_epoch does), an Adam step, inference and evaluation, is float32 (or
    # integer/bool): no silent float64 or complex128 work.
    from minicaps.training.evaluation import evaluate
    model = mc.build_model(mc.CapsNetConfig(), seed=0, dtype="float32", device="gpu")
    opt = mc.Adam()
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (n, 28, 28, 1)).astype(np.float32)
    y = rng.integers(0, 10, n)
    stand_in.made.clear()
    _, grads, _ = model.loss_and_grads(x, y)
    opt.step(model.params, grads)
    _, grads, _ = model.loss_and_grads(x, y, check_values=False, host_losses=False)
    model.predict(x, batch_size=n)
    evaluate(model, (x[..., 0] * 255).astype(np.uint8), y, batch_size=n)
    assert stand_in.made[np.dtype(np.float32)] > 100
    wide = {dtype: count for dtype, count in stand_in.made.items()
            if dtype in (np.float64, np.complex128)}
    assert wide == {}, wide


BLAS_TIMEOUT = """
import os, sys
if sys.argv[1] == "numpy-first":
    import numpy
import minicaps
print(os.environ.get("OPENBLAS_THREAD_TIMEOUT"), minicaps.backend.blas_thread_timeout())
"""


@pytest.mark.parametrize("order, preset, expected", [
    ("minicaps-first", None, "10 10"),        # set before NumPy loads OpenBLAS
    ("minicaps-first", "20", "20 20"),        # the user's own setting wins
    ("numpy-first", None, "None None"),       # too late: OpenBLAS read its default already
    ("minicaps-first", "soon", "soon None"),  # not a number: kept, reported as unknown
])
def test_openblas_idle_threads_sleep_soon_when_minicaps_is_imported_first(order, preset, expected):
    # A fresh interpreter each: OpenBLAS reads the variable once, when NumPy loads it.
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    if preset is not None:
        env["OPENBLAS_THREAD_TIMEOUT"] = preset
    out = subprocess.run([sys.executable, "-c", BLAS_TIMEOUT, order], env=env,
                         capture_output=True, text=True, check=True).stdout.split()
    assert " ".join(out) == expected


# ---- TF32: float32 stays float32 unless asked -----------------------------------------------------
def test_tf32_without_a_gpu_is_a_clear_error():
    if backend.gpu_available():
        pytest.skip("a GPU is present")
    with pytest.raises(RuntimeError, match="math mode of the GPU"):
        backend.set_tf32(True)
    assert backend.tf32_enabled() is False


@pytest.mark.gpu
def test_tf32_is_off_until_asked_and_switches_back():
    if os.environ.get("CUPY_TF32", "0") not in ("", "0"):
        pytest.skip("CUPY_TF32 is set in this environment")
    cuda = backend.loaded_cupy().cuda
    math_mode = lambda: cuda.cublas.getMathMode(cuda.device.get_cublas_handle())
    try:
        assert backend.tf32_enabled() is False and math_mode() == backend.CUBLAS_DEFAULT_MATH
        assert backend.set_tf32(True) is False and backend.tf32_enabled() is True
        assert math_mode() == backend.CUBLAS_TF32_TENSOR_OP_MATH    # batched products too
        assert backend.set_tf32(False) is True and backend.tf32_enabled() is False
        assert math_mode() == backend.CUBLAS_DEFAULT_MATH
    finally:
        backend.set_tf32(False)


@pytest.mark.gpu
def test_tf32_rounds_the_inputs_of_float32_products_on_a_real_gpu():
    cupy = backend.loaded_cupy()
    if cupy.__name__ != "cupy":
        pytest.skip("needs CuPy on a GPU: the stand-in multiplies with NumPy")
    if int(cupy.cuda.Device().compute_capability) < 80:
        pytest.skip("TF32 needs an Ampere or later GPU")
    n = 1024
    a = cupy.full((n, n), 1 + 2.0 ** -12, dtype=cupy.float32)   # 12 bits of mantissa: TF32 has 10
    b = cupy.ones((n, n), dtype=cupy.float32)

    def products():     # CuPy sends 2-D products and batched ones down different cuBLAS calls
        return (float((a @ b)[0, 0]),                                  # 2-D
                float(cupy.matmul(a[None], b[None])[0, 0, 0]),         # batched
                float(cupy.matmul(a, cupy.stack([b, b]))[1, 0, 0]))    # broadcast over a batch
    try:
        backend.set_tf32(False)
        strict = products()
        backend.set_tf32(True)
        fast = products()
    finally:
        backend.set_tf32(False)
    assert strict == (n * (1 + 2.0 ** -12),) * 3   # 1024.25: every partial sum exact in float32
    assert fast == (n,) * 3                        # each input read as 1
