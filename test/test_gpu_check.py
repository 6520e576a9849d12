"""The GPU self-check (bench/gpu_check.py): what it runs on what it finds, its table, and its CPU parts on this
machine (the GPU parts are skipped with the reason). Speeds are reported, never asserted."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import ROOT

from bench import gpu_check


@pytest.mark.parametrize(
    "gpus, provider, train, backend, onnx_cuda",
    [
        (0, False, "no CUDA GPU here", "gloo", "no CUDA GPU here"),
        (0, True, "no CUDA GPU here", "gloo", "no CUDA GPU here"),
        (1, False, None, "gloo", "onnxruntime has no CUDA provider here (pip install onnxruntime-gpu)"),
        (1, True, None, "gloo", None),
        (2, True, None, "nccl", None),
    ],
)
def test_plan_runs_what_the_machine_allows(gpus, provider, train, backend, onnx_cuda):
    steps = gpu_check.plan(gpus, provider)
    assert steps == {
        "train": train,
        "ddp": None,
        "ddp_backend": backend,
        "onnx_cpu": None,
        "onnx_cuda": onnx_cuda,
        "fp16_cpu": None,  # the fp16 members run on the CPU too, measured everywhere
        "fp16_cuda": onnx_cuda,  # their GPU speed only where a GPU is
    }


def result(train_rows=None, cuda=None, fp16_cuda=None):
    skipped = {"status": "skipped", "reason": "no CUDA GPU here"}
    onnx = {"status": "measured", "ok": True, "device": "cpu", "patches": 16, "tta": "d4", "members": 5}
    fp16 = {**onnx, "bytes": 16_700_000, "fp32_bytes": 33_100_000, "max_probability_diff_vs_cpu": 9.4e-5}
    return {
        "date": "2026-12-03",
        "device": "NVIDIA H200" if train_rows else "CPU only (x86_64, 2 cores)",
        "torch": "2.x",
        "cuda": "13.0",
        "onnxruntime": "1.22.0",
        "parts": {
            "train": {"status": "measured", "rows": train_rows, "ok": True} if train_rows else skipped,
            "ddp": {
                "status": "measured",
                "ok": True,
                "backend": "gloo",
                "positions": 64,
                "views_equal": True,
                "max_abs_diff": 0.0,
                "same_kth_view_rank0_rank1": 0,
                "kth_views_compared": 32,
                "rank_generators_differ": True,
            },
            "onnx_cpu": {**onnx, "seconds_per_stack": 3.5},
            "onnx_cuda": cuda or skipped,
            "fp16_cpu": {**fp16, "seconds_per_stack": 7.0, "time_vs_fp32": 2.0},
            "fp16_cuda": fp16_cuda or skipped,
        },
    }


def test_table_on_a_cpu_says_not_measured_with_the_reason():
    text = gpu_check.table(result())
    assert "CPU only (x86_64, 2 cores)" in text.splitlines()[0]
    rows = [line for line in text.splitlines() if line.startswith("| train |")]
    assert len(rows) == len(gpu_check.TRAIN_CASES) * len(gpu_check.LOADERS)
    assert all("not measured (no CUDA GPU here)" in r for r in rows)
    assert "| onnx_cuda | the shipped members on CUDA provider, 16-patch stack | not measured (no CUDA GPU" in text
    assert "| 3.500 s per stack |" in text and "k-th views alike on 0 of 32" in text
    assert (
        "| fp16_cpu | the shipped 5 members in fp16 (d4 TTA) on CPU, 16-patch stack, 16.7 MB (fp32 33.1 MB) | 7.000 s "
        "per stack; largest probability difference from the fp32 members on the CPU 9.4e-05; 2.00x the fp32 members' "
        "time there | <= 0.001 |"
    ) in text
    assert "| fp16_cuda | the shipped members in fp16 on CUDA provider, 16-patch stack | not measured (no CUDA" in text


def test_table_with_a_gpu_compares_with_the_targets():
    rows = [
        {
            "model": model,
            "size": size,
            "recipe": recipe,
            "config": base,
            "data": f"{loader} loader",
            "images_per_s": 1400.0,
        }
        for model, size, _, recipe, base, _ in gpu_check.TRAIN_CASES
        for loader in gpu_check.LOADERS
    ]
    cuda = {**result()["parts"]["onnx_cpu"], "device": "cuda", "seconds_per_stack": 0.05}
    cuda["max_probability_diff_vs_cpu"] = 2e-6
    fp16_cuda = {**result()["parts"]["fp16_cpu"], "device": "cuda", "seconds_per_stack": 0.02, "time_vs_fp32": 0.4}
    text = gpu_check.table(result(rows, cuda, fp16_cuda))
    assert "| convnext_small 224 px, batch 128, plain recipe, device data path | 1,400 img/s (not met) |" in text
    assert "| convnext_small 224 px, batch 128, full recipe, cpu data path | 1,400 img/s (met) |" in text
    assert "full recipe (default_model.yaml), device data path | 1,400 img/s |" in text  # no target
    assert "0.050 s per stack; largest probability difference from the CPU 2.0e-06 | <= 0.001 |" in text
    assert "in fp16 (d4 TTA) on CUDA provider, 16-patch stack, 16.7 MB (fp32 33.1 MB) | 0.020 s per stack;" in text
    assert "0.40x the fp32 members' time there | <= 0.001 |" in text


@pytest.mark.slow  # two torchrun starts and the shipped ensemble: about a minute on 2 cores
def test_on_this_cpu_the_cpu_parts_run_and_the_rest_is_skipped(tmp_path):
    out = tmp_path / "gpu-cpu.json"
    cmd = [sys.executable, "-m", "bench.gpu_check", "--device", "cpu", "--quick", "--out", str(out)]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-2000:]
    got = json.loads(out.read_text())
    parts = got["parts"]
    assert got["ok"] and got["gpus"] == [] and got["device"].startswith("CPU only")
    assert parts["train"] == {"status": "skipped", "reason": "no CUDA GPU here"}
    assert parts["onnx_cuda"]["status"] == "skipped" and parts["fp16_cuda"]["status"] == "skipped"
    assert parts["ddp"]["status"] == "measured" and parts["ddp"]["backend"] == "gloo" and parts["ddp"]["ok"]
    assert parts["ddp"]["views_within_one_level"] and parts["ddp"]["same_kth_view_rank0_rank1"] == 0
    cpu = parts["onnx_cpu"]
    assert cpu["ok"] and cpu["patches"] == 16 and cpu["seconds_per_stack"] > 0
    expected = json.loads((ROOT / "model" / "expected_output.json").read_text())  # the shipped model's own
    assert max(abs(p - e["confidence"]) for p, e in zip(cpu["probabilities"], expected)) <= 1e-3
    half = parts["fp16_cpu"]  # the fp16 members run on the CPU, near the fp32 ones, in half the bytes
    assert half["ok"] and half["max_probability_diff_vs_cpu"] <= 1e-3 and half["time_vs_fp32"] > 0
    assert half["bytes"] < 0.6 * half["fp32_bytes"]
    assert "train: skipped (no CUDA GPU here)" in p.stdout and "not measured (no CUDA GPU here)" in p.stdout
