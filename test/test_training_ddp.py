"""One fold on two processes through torchrun (DDP, gloo backend on the CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest
import torch
from training_layout import make_layout

pytestmark = pytest.mark.slow  # trains with torchrun, two processes (make test-fast leaves it out)

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def test_torchrun_two_processes_gloo(tmp_path):
    data = make_layout(tmp_path / "data", n_slides=8, per_slide=8)
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "training.train",
        "--config",
        "smoke",
        "--data",
        str(data),
        "--out",
        str(run),
        "--fold",
        "0",
        "--device",
        "cpu",
        "--no-progress",
        "--set",
        "data.input_size=32",
        "train.batch_size=4",
    ]
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "batch 4 x 2 process(es)" in p.stdout
    assert p.stdout.count("fold 0 epoch 1/1:") == 1  # rank 0 reports; rank 1 stays quiet
    done = json.loads((run / "fold0" / "done.json").read_text())
    assert done["fold"] == 0 and done["best_epoch"] == 1
    state = torch.load(run / "fold0" / "last.pt", weights_only=True)
    train_n = (pd.read_csv(run / "splits.csv")["fold"] != 0).sum()
    assert state["step"] == train_n // (4 * 2)  # each rank takes its own shard: half the steps of one process
    assert not any(k.startswith("module.") for k in state["model"])  # saved without the DDP wrapper
    oof = pd.read_csv(run / "fold0" / "oof.csv")
    assert len(oof) == (pd.read_csv(run / "splits.csv")["fold"] == 0).sum()
