"""How many kernels a training step launches on the GPU, counted on the CuPy stand-in.

On a GPU a step at batch 100 is bound by its kernel launches (each costs microseconds of
the host's time, whatever its size), not by its arithmetic. The stand-in counts what CuPy
would launch (elementwise ops, reductions, matrix products, copies and fills; no views),
and these tests print the count of one step: the model's loss_and_grads, Adam's step and the
parameters' moving average, as train_epoch runs them. Measured here: the paper's network at
batch 100, fast path, 143 + 2 + 1 = 146 kernels a step; reference path 720 + 2 + 1 = 723.
From 202 to 146 by layouts on the GPU: the DFT matrices repeated over the batch
(conv_fft.batched: no pointer arrays of broadcast batched products, 30, nor copies of
transposed ones, 4), u_hat laid out (N, J, I, D) in memory (fast/capsules.py
predictions_gpu: routing's products read it without the 10 copies), matmul_into writing a
C-contiguous out directly, the DFT reading all rows of x (no copy of a slice; no zero
fill, no copy into a slice of dx) and the GEMM route's dW one product on the GPU.
The fast path's count includes what real CuPy launches around its matrix products
(cupy_stand_in._matmul_launches): copies of operands that are not C-contiguous (batched)
or neither C- nor F-contiguous (2-D), now 4 (26 before the layouts), and cupy_mat_ptrs
kernels of broadcast batched products, now none (30); before those were counted the step
was 146 too (elementwise 61, copies 17), by chance.
Before the parameters lived in one flat buffer (backend.FlatArrays) and Adam and the
average became one fused kernel each (optim.ADAM_KERNEL, AVERAGE_KERNEL): 262 + 132 + 33 =
427 and 720 + 132 + 33 = 885 (12 and 3 kernels per parameter array). Before the fast
path's elementwise chains became one kernel each on the GPU (fast/fused.py: squash and its
gradient, the softmax's exponential and gradient, the margin loss through the lengths and
the mask, the reconstruction loss through the sigmoid, the sigmoid, the ReLUs' gradients;
the sums of products one reduction kernel; the first coupling a fill; no gathering of the
one chunk the GPU routes): 262 + 2 + 1 = 265, elementwise 175 -> 61, reductions 23 -> 21,
copies 20 -> 17. FAST_STEP_LAUNCHES is the bound asserted (the target was at most 150).

Only facts of structure are asserted: the count is a property of the step's code, the same
at batch 100 and 128 and at other layer widths (on the GPU the batch is never cut into
chunks, and the primary capsules take the DFT route at both batch sizes), and the
optimizer's and the average's kernels are a constant, whatever the number of parameter
arrays: the gradients gathered into one buffer and one fused update, one fused average.

    python tests/fast/test_gpu_launches.py [fast] [reference]   # the paper's network at batch 100
                                                           # (a minute or so on 2 cores)
"""
import sys

import numpy as np
import pytest

import minicaps as mc
from minicaps import backend
from minicaps.nn.registry import build_model
from minicaps.training.optim import ParameterAverage

# The paper's structure with narrow layers: the same ops, the DFT route for the primary
# capsules at batch 100 as the paper's network takes it, a step in a fraction of a second.
NARROW = dict(conv1_channels=16, primary_maps=4, digit_dims=8, decoder_sizes=(16, 32))
WIDER = dict(conv1_channels=32, primary_maps=8, digit_dims=8, decoder_sizes=(32, 64))
ADAM_KERNELS, AVERAGE_KERNELS = 2, 1      # a step's, whatever the number of parameter arrays
FAST_STEP_LAUNCHES = 146                  # a fast training step's kernels, at most (the target: 150; 202 before the GPU layouts)


def step_launches(stand_in, config, batch, impl="fast", steps=2):
    """Kernels of the last of ``steps`` training steps (the first also makes Adam's moments
    and the DFT plans): {"loss_and_grads", "adam", "average", "total": counts, "kinds":
    {kind: count} and "ops": {operation: count} of the whole step, "params": arrays}."""
    model = build_model(config, impl=impl, seed=0, dtype="float32", device="gpu")
    opt, average = mc.Adam(), ParameterAverage(model.params)
    rng = np.random.default_rng(0)
    x = backend.to_device(rng.uniform(0, 1, (batch,) + tuple(config.input_shape))
                          .astype(np.float32), "gpu")
    y = backend.to_device(rng.integers(0, config.num_classes, batch), "gpu")
    for _ in range(steps):
        stand_in.launches.clear()
        stand_in.launched.clear()
        stand_in.matmul_copies.clear()
        counts = {}
        _, grads, _ = model.loss_and_grads(x, y, check_values=False, host_losses=False)
        counts["loss_and_grads"] = sum(stand_in.launches.values())
        opt.step(model.params, grads)
        counts["adam"] = sum(stand_in.launches.values()) - counts["loss_and_grads"]
        average.update(model.params, opt.t)
        counts["total"] = sum(stand_in.launches.values())
        counts["average"] = counts["total"] - counts["loss_and_grads"] - counts["adam"]
    counts.update(kinds=dict(stand_in.launches), ops=dict(stand_in.launched.most_common()),
                  params=len(model.params), copies=dict(stand_in.matmul_copies))
    return counts


def report(counts, what):
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(counts["kinds"].items(), key=lambda kv: -kv[1]))
    return (f"{what}: {counts['total']} kernels a training step = loss_and_grads "
            f"{counts['loss_and_grads']} + Adam {counts['adam']} + average {counts['average']} "
            f"({counts['params']} parameter arrays); {kinds}")


@pytest.mark.parametrize("impl", ["fast", "reference"])
def test_kernels_launched_by_a_training_step_at_batch_100(stand_in, impl, capsys,
                                                          record_property):
    counts = step_launches(stand_in, mc.CapsNetConfig(**NARROW), 100, impl)
    with capsys.disabled():
        print("\n" + report(counts, f"{impl} path, batch 100"))
    record_property(f"{impl}_launches_per_step", counts["total"])
    P = counts["params"]
    assert counts["loss_and_grads"] > 0 and counts["kinds"]["matmul"] > 0
    assert counts["total"] == counts["loss_and_grads"] + counts["adam"] + counts["average"]
    assert counts["total"] == sum(counts["kinds"].values()) == sum(counts["ops"].values())
    assert P > 2 * ADAM_KERNELS
    assert 0 < counts["adam"] <= ADAM_KERNELS and 0 < counts["average"] <= AVERAGE_KERNELS
    assert counts["ops"]["minicaps_adam"] == counts["ops"]["minicaps_average"] == 1
    if impl == "fast":
        assert counts["total"] <= FAST_STEP_LAUNCHES, counts["ops"]
    # A step on device data moves nothing from the host (train_epoch moves the epoch once).
    assert counts["kinds"].get("transfer", 0) == 0
    # The count is the code's, not the sizes': other batch sizes and widths launch as many.
    for config, batch in ((NARROW, 128), (WIDER, 100)):
        other = step_launches(stand_in, mc.CapsNetConfig(**config), batch, impl)
        assert {k: other[k] for k in ("loss_and_grads", "adam", "average")} == \
               {k: counts[k] for k in ("loss_and_grads", "adam", "average")}, (config, batch)


if __name__ == "__main__":                # the paper's network, once, outside pytest
    import cupy_stand_in                  # beside this file, so on sys.path
    backend.device._cupy = cupy_stand_in
    for impl in sys.argv[1:] or ["fast"]:      # fast, reference
        print(report(step_launches(cupy_stand_in, mc.CapsNetConfig(), 100, impl),
                     f"the paper's network, {impl} path, batch 100"))
