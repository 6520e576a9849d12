"""What training meets before it trains: the device (never a silent CPU) and the Hugging Face hub (bounded when it
cannot be reached); a run that fails before its first epoch leaves nothing that blocks the corrected command."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT
from training_layout import make_layout

from amf import AmfError
from training.train import device as device_io


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_layout(tmp_path_factory.mktemp("data") / "d", n_slides=8, per_slide=8)


def train(*args, env=None) -> subprocess.CompletedProcess:
    """python -m training.train in a fresh process (the hub client and torch's CUDA state are its own)."""
    return subprocess.run(
        [sys.executable, "-m", "training.train", "--no-progress", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=600,  # a hang guard, not a measure
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="torch sees a GPU here")
def test_cuda_asked_for_and_absent_is_one_error_and_no_run_folder(data, tmp_path):
    p = train("--config", "smoke", "--data", data, "--out", tmp_path / "run", "--device", "cuda")
    err = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(err) == 1, p.stderr
    assert err[0].startswith("error: --device cuda needs a GPU")
    assert f"torch.version.cuda {torch.version.cuda}" in err[0] and "sees 0 GPU(s)" in err[0]
    assert "--device cpu" in err[0] and not (tmp_path / "run").exists()


def test_auto_says_which_device_and_why(monkeypatch):
    cpu, why = device_io.choose("auto")
    assert cpu.type == ("cuda" if torch.cuda.is_available() else "cpu") and "torch.version.cuda" in why
    assert device_io.choose("cpu")[1] == "--device cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda k: "Made-up GPU")
    gpu, why = device_io.choose("auto")
    assert str(gpu) == "cuda:0" and why.startswith("Made-up GPU; ") and "sees 1 GPU(s)" in why
    for asked in ("cuda", "auto"):  # more torchrun processes than GPUs: not a CPU for the rest
        with pytest.raises(
            AmfError, match=rf"--device {asked}: no GPU 1 for torchrun's LOCAL_RANK 1, torch .* sees 1 GPU"
        ):
            device_io.choose(asked, local_rank=1)


@pytest.mark.slow
def test_an_unreachable_hub_fails_in_one_whole_line_and_the_corrected_command_starts(data, tmp_path):
    out = tmp_path / "run"
    offline = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": ""}
    hub = ["--set", "model.backbone=test_convnext.r160_in1k", "model.pretrained=true"]
    p = train("--config", "smoke", "--data", data, "--out", out, *hub, env=offline)
    err = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(err) == 1, p.stderr
    assert err[0].startswith("error: model test_convnext.r160_in1k needs files from the Hugging Face hub")
    assert "http://127.0.0.1:9" in err[0] and "model.weights" in err[0] and err[0].endswith("bring the cache along")
    assert "Retrying" not in p.stdout + p.stderr  # the hub client went offline at once: no retries
    assert p.stdout.splitlines()[0].startswith("device cpu: ")  # auto said what it chose, first
    assert not out.exists()  # config.yaml, splits.csv and fold0/ went with the failure
    p = train("--config", "smoke", "--data", data, "--out", out, "--fold", "0", env=offline)
    assert p.returncode == 0, p.stderr
    assert (out / "fold0" / "done.json").is_file()
