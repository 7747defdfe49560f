"""Smoke test of bench/bench.py: the --quick run finishes and writes the JSON it promises.

Only the shape of the report is checked (keys, positive timings, consistent FLOP counts);
the numbers themselves depend on the machine. The torch rows are expected only when torch
imports.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import time

import pytest


from conftest import load_bench_module

bench = load_bench_module("bench.py", "minicaps_bench")


def test_flop_counts_of_the_paper_network_match_a_hand_count():
    from minicaps.nn.capsnet import CapsNetConfig
    f = bench.flops_per_image(CapsNetConfig())
    conv1 = 2 * 20 * 20 * 81 * 256                  # 16.6 M
    primary = 2 * 6 * 6 * 81 * 256 * 256            # 382.2 M
    u_hat = 2 * 1152 * 10 * 16 * 8
    routing = 5 * 2 * 1152 * 10 * 16                # 3 weighted sums + 2 agreements
    decoder = 2 * (160 * 512 + 512 * 1024 + 1024 * 784)
    assert f["forward"] == conv1 + primary + u_hat + routing + decoder
    assert f["train"] == f["forward"] + f["backward"]
    assert 1.19e9 < f["train"] < 1.22e9


def test_quick_run_writes_the_expected_json(tmp_path, capsys):
    path = tmp_path / "bench.json"
    assert bench.bench_main(["--quick", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "| library |" in out and "per layer" in out
    assert re.search(r"^CPU: .+, \d+ cores", out, re.M)
    result = json.loads(path.read_text())
    plans = next(r for r in result["results"] if r["library"] == "minicaps")["plans"]
    assert set(plans) == {"training, batch 8", "inference, batch 8"}
    for name, plan in plans.items():          # each route, and the routes table says it
        assert plan["primary"] in ("gemm", "fft") and plan["capsule_chunk"] >= 1
        assert f"| cpu | 8 | {name} | {plan['primary']} | {plan['capsule_chunk']} |" in out
    for key in ("device", "machine", "gemm_peak_gflops", "flops_per_image", "results", "ratios",
                "memory_method"):
        assert key in result
    assert result["gemm_peak_gflops"]["cpu"] > 0
    libraries = {r["library"] for r in result["results"]}
    assert "minicaps" in libraries
    if bench.torch_available():
        assert "torch" in libraries and result["ratios"]
        for q in result["ratios"]:
            assert q["train_speed"] > 0 and q["infer_speed"] > 0
    for r in result["results"]:
        for key in ("train_img_s", "infer_img_s", "train_gflops", "train_peak_fraction"):
            assert r[key] > 0, (r["library"], key)
        assert r["train_peak_delta_mb"] >= 0 and r["infer_peak_delta_mb"] >= 0
        if r["library"] == "minicaps":
            layers = r["layers"]
            assert set(bench.LAYERS) | {"total"} == set(layers)
            assert layers["total"]["forward_ms"] > 0 and layers["total"]["backward_ms"] > 0


def test_flop_counts_of_the_cnn_baselines_match_a_hand_count():
    from minicaps.nn.cnn import CNNConfig
    f = bench.flops_per_image(CNNConfig.pooled())             # 40x40, pools after conv1, conv2
    conv = [2 * 40 * 40 * 25 * 1 * 256, 2 * 20 * 20 * 25 * 256 * 256, 2 * 10 * 10 * 25 * 256 * 128]
    dense = [2 * 12800 * 847, 2 * 847 * 192, 2 * 192 * 10]
    assert f["forward"] == sum(conv) + sum(dense) == f["inference"]
    assert f["backward"] == conv[0] + 2 * (conv[1] + conv[2]) + 2 * sum(dense)   # conv1: no dx
    released = bench.flops_per_image(CNNConfig.released())    # 36x36 -> 18 -> 9
    assert released["forward"] == (2 * 36 * 36 * 25 * 512 + 2 * 18 * 18 * 25 * 512 * 256
                                   + 2 * 9 * 9 * 256 * 1024 + 2 * 1024 * 10)


def test_the_cnn_baseline_is_timed_against_the_same_network_in_pytorch(tmp_path, capsys):
    path = tmp_path / "bench.json"
    assert bench.bench_main(["--quick", "--cnn", "pooled", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("network: CNN baseline --preset pooled") and "per layer" not in out
    result = json.loads(path.read_text())
    assert result["network"] == "CNN baseline --preset pooled"
    assert result["config"]["conv_channels"] == [8, 8]
    libraries = {r["library"] for r in result["results"]}
    assert libraries == ({"minicaps", "torch"} if bench.torch_available() else {"minicaps"})
    for r in result["results"]:
        assert r["train_img_s"] > 0 and r["infer_img_s"] > 0 and "layers" not in r
    with pytest.raises(SystemExit):
        bench.parse_args(["--cnn", "pooled", "--scaling"])


def test_scaling_table(tmp_path):
    args = bench.parse_args(["--quick", "--no-torch"])
    rows = bench.scaling(bench.CapsNetConfig(**bench.QUICK_CONFIG), args)
    assert [r["batch"] for r in rows if r["kind"] == "batch"] == [2, 4, 8]
    assert [r["routing_iters"] for r in rows if r["kind"] == "routing"] == [1, 2, 3]
    assert all(r["train_sec"] > 0 for r in rows)
    assert "| batch | routing iterations |" in bench.format_report(
        dict(gemm_peak_gflops={"cpu": 1.0}, flops_per_image=bench.flops_per_image(
            bench.CapsNetConfig(**bench.QUICK_CONFIG)), results=[], ratios=[], scaling=rows))


def test_minicaps_bench_command_runs_the_benchmark(tmp_path, capsys):
    from minicaps.cli import main
    path = tmp_path / "cli.json"
    assert main(["bench", "--quick", "--no-torch", "--json", str(path)]) == 0
    report = json.loads(path.read_text())
    assert report["config"] and "minicaps" in capsys.readouterr().out


def test_gpu_only_runs_are_refused_where_they_can_time_nothing(monkeypatch, capsys):
    for argv, why in ((["--no-cpu", "--no-gpu"], "leave nothing to time"),
                      (["--no-cpu", "--scaling"], "times the CPU only")):
        with pytest.raises(SystemExit):
            bench.parse_args(argv)
        assert why in capsys.readouterr().err
    assert bench.parse_args(["--no-cpu"]).no_cpu
    monkeypatch.setattr(bench.backend, "gpu_available", lambda: False)
    with pytest.raises(SystemExit, match="sees no GPU"):
        bench.run(bench.parse_args(["--quick", "--no-cpu"]))
    with pytest.raises(SystemExit, match="--tf32 is a math mode of the GPU"):
        bench.run(bench.parse_args(["--quick", "--tf32"]))


def test_torch_peer_runs_on_cuda_only_where_torch_sees_a_gpu():
    if not bench.torch_available():
        assert bench.torch_available("gpu") is False
    else:
        import torch
        assert bench.torch_available("gpu") == torch.cuda.is_available()


def test_inference_is_timed_per_batch_of_a_stream_and_bad_counts_are_refused(capsys):
    args = bench.parse_args(["--quick", "--no-torch"])
    assert args.infer_batches == 2 and bench.parse_args(["--infer-batches", "5"]).infer_batches == 5
    for bad in (["--infer-batches", "0"], ["--batches", "0"], ["--repeats", "0"],
                ["--rounds", "0"], ["--threads", "0"], ["--batches", "32", "-1"]):
        with pytest.raises(SystemExit):
            bench.parse_args(bad)
        assert "at least 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.parse_args(["--warmup", "-1"])
    assert "--warmup" in capsys.readouterr().err
    # None means the default; an explicit 0 warm-up runs is allowed and kept.
    assert bench.parse_args(["--warmup", "0"]).warmup == 0
    assert bench.parse_args([]).repeats == 7 and bench.parse_args(["--rounds", "2"]).rounds == 2
    assert bench.parse_args([]).warmup == 3 and bench.parse_args(["--quick"]).warmup == 1


@pytest.mark.gpu
def test_the_gpu_worker_times_every_phase_and_layer():
    # The worker a benchmark child runs for minicaps on the GPU, here in this process.
    from minicaps import backend
    cfg = bench.CapsNetConfig(**bench.QUICK_CONFIG)
    spec = dict(library="minicaps", device="gpu", batch=4, config=bench._config_dict(cfg),
                repeats=2, warmup=1, threads=1, conv="auto", infer_batches=2,
                phases=["infer", "train", "layers"])
    out = bench._run_minicaps(spec)
    for phase in ("infer", "train"):
        assert out[phase]["sec"] > 0 and out[phase]["peak_delta_mb"] >= 0
    assert set(out["layers"]) == set(bench.LAYERS)
    assert all(f > 0 and b > 0 for f, b in out["layers"].values())
    assert bench.gemm_peak("gpu", n=64, repeats=1) > 0
    assert backend.gpu_available()
    try:                                      # --tf32: the worker switches the GPU's mode
        assert not backend.tf32_enabled()
        bench._run_minicaps(dict(spec, phases=["train"], tf32=True))
        assert backend.tf32_enabled()
    finally:
        backend.set_tf32(False)


def test_every_number_is_written_as_soon_as_it_is_measured(tmp_path, monkeypatch):
    # --json-lines appends each record when it exists: a run stopped midway (the GPU
    # script's time limit) keeps what it measured before.
    path = tmp_path / "bench.jsonl"
    argv = ["--quick", "--no-gpu", "--no-torch", "--json-lines", str(path),
            "--json", str(tmp_path / "bench.json")]
    assert bench.bench_main(argv + ["--batches", "4"]) == 0
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["kind"] for r in lines] == ["start", "gemm_peak", "measurement", "gemm_peak",
                                          "result"]
    assert lines[2]["batch"] == 4 and lines[2]["train_sec"] > 0 and lines[2]["round"] == 1
    assert lines[-1]["results"][0]["train_sec"] == lines[2]["train_sec"]    # one round
    measured, measure = [], bench.measure

    def stopped_at_the_second(*args):
        if measured:
            raise KeyboardInterrupt("stopped at its time limit")
        measured.append(measure(*args))
        return measured[-1]

    monkeypatch.setattr(bench, "measure", stopped_at_the_second)
    path.unlink()
    with pytest.raises(KeyboardInterrupt):
        bench.bench_main(argv + ["--batches", "4", "8"])
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["kind"] for r in lines] == ["start", "gemm_peak", "measurement"]
    assert lines[2]["batch"] == 4 and lines[2]["tf32"] is False


GPU_CHECK = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                         "bench", "gpu_check.sh")


def test_the_gpu_script_fits_in_nine_minutes():
    # Each step's default limit, and the 5 s between timeout's TERM and KILL.
    with open(GPU_CHECK) as f:
        limits = [int(m) for m in re.findall(r"\bstep [\w-]+ [\w.]+ (\d+) ", f.read())]
    assert len(limits) == 5 and sum(limits) + 5 * len(limits) <= 9 * 60


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                    reason="runs the script with bash and coreutils' timeout")
def test_the_gpu_script_stops_at_once_and_says_why_without_a_gpu(tmp_path):
    from minicaps import backend
    if backend.gpu_available():
        pytest.skip("a GPU is here: the script would run all of its 9 minutes")
    env = {k: v for k, v in os.environ.items() if k not in ("OUT", "MINICAPS_DATA", "STEPS")}
    start = time.monotonic()
    done = subprocess.run(["bash", GPU_CHECK, str(tmp_path / "out")], env=dict(
        env, PYTHON=sys.executable), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and time.monotonic() - start < 60
    assert sorted(os.listdir(tmp_path / "out")) == ["smoke.txt", "summary.txt"]
    smoke = (tmp_path / "out" / "smoke.txt").read_text()
    assert "GPU CHECK FAILED" in smoke and "device='cpu'" in smoke and "numpy" in smoke
    assert "stopping: the GPU cannot be used" in (tmp_path / "out" / "summary.txt").read_text()


@pytest.mark.skipif(not bench.torch_available(), reason="the PyTorch peer is not installed")
def test_the_compiled_peer_is_a_third_library_with_its_own_ratios(tmp_path, capsys):
    path = tmp_path / "bench.json"
    assert bench.bench_main(["--quick", "--compile", "--json", str(path)]) == 0
    result = json.loads(path.read_text())
    rows = {r["library"]: r for r in result["results"]}
    assert set(rows) == {"minicaps", "torch", "torch-compile"}
    q, = result["ratios"]
    assert q["train_speed_compiled"] == pytest.approx(
        rows["minicaps"]["train_img_s"] / rows["torch-compile"]["train_img_s"])
    assert "train vs torch.compile" in capsys.readouterr().out
