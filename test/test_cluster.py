"""training/cluster.py: folds as tasks of a SLURM job array through submitit. The sbatch script of a 5-fold plan
(no scheduler needed), the options' refusals, and the local executor end to end: a fold task killed mid-fold is
requeued and resumes, and the model equals the in-process pipeline's."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from amf import AmfError
from training import cluster, config, pipeline

pytest.importorskip("submitit", reason="requirements-dev.txt installs it")


def script(tmp_path, gpus=1, options=None, sbatch=None):
    resources = cluster.fold_resources(config.load("smoke", []), gpus)
    return cluster.sbatch_script(tmp_path / "run" / "submitit", 5, resources, options or {}, sbatch or {})


def test_the_sbatch_script_of_a_five_fold_plan(tmp_path):
    text = script(tmp_path, 1, {"array_parallelism": 2, "partition": "gpu", "time": 90, "account": "lab"}, {"x": "1"})
    lines = set(text.splitlines())
    for line in (
        "#SBATCH --array=0-4%2",  # five folds, two at a time
        "#SBATCH --gpus-per-node=1",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --time=90",
        "#SBATCH --partition=gpu",
        "#SBATCH --account=lab",
        "#SBATCH --signal=USR2@90",  # the requeue signal: the fold resumes from its last epoch
        "#SBATCH --x=1",
        "#SBATCH --cpus-per-task=2",  # smoke's data.num_workers 0 + 2
    ):
        assert line in lines, line
    assert f"--output={tmp_path}/run/submitit/%A_%a/%A_%a_0_log.out" in text  # logs beside the fold's run
    assert "-m submitit.core._submit" in text
    two = set(script(tmp_path, 2).splitlines())
    assert {"#SBATCH --gpus-per-node=2", "#SBATCH --ntasks-per-node=2", "#SBATCH --time=240"} <= two


def test_the_resources_follow_the_backbone():
    small = cluster.fold_resources(config.load("smoke", []), 1)
    big = cluster.fold_resources(config.load("smoke", ["model.backbone=vit_large_patch16_224"]), 1)
    assert big["params"] > 100 * small["params"] and big["mem_gb"] == 16 + -(-16 * big["params"] // 10**9)
    assert cluster.fold_resources(config.load("smoke", []), 4)["mem_gb"] >= small["mem_gb"]


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--cluster", "partiton=gpu"], "partition"),
        (["--cluster", "time=2h"], "whole number"),
        (["--sbatch", "novalue"], "KEY=VALUE"),
        (["--gpus-per-fold", "-1"], "0 (CPU) or more"),
    ],
)
def test_a_bad_cluster_option_is_one_error(tmp_path, capsys, argv, words):
    code = pipeline.main(
        ["smoke", "--data", str(tmp_path), "--runs", str(tmp_path), "--model-out", str(tmp_path), *argv]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error:") and words in err[0]


def test_slurm_where_there_is_none_is_one_error(tmp_path):
    with pytest.raises(AmfError, match="--executor slurm: .*srun"):
        cluster.executor("slurm", tmp_path, cluster.fold_resources(config.load("smoke", []), 1), {}, {})


def kill_mid_fold(fold_dir: Path, seen: dict) -> None:
    """Preempt fold 0's task once it has saved an epoch and not finished: SIGUSR2 to the pid its lock names (what
    SLURM sends before preempting; submitit's handler checkpoints and requeues)."""
    deadline = time.time() + 600
    while time.time() < deadline and not (fold_dir / "done.json").exists():
        lock = fold_dir / "train.lock"
        if (fold_dir / "last.pt").exists() and lock.exists():
            words = lock.read_text().split()
            if len(words) > 1 and words[0] == "pid":
                os.kill(int(words[1]), signal.SIGUSR2)
                seen["pid"] = int(words[1])
                return
        time.sleep(0.02)


@pytest.mark.slow
def test_the_local_executor_resumes_a_killed_fold_and_makes_the_inline_model(tmp_path, monkeypatch, capsys):
    from training_layout import make_layout

    monkeypatch.setattr(cluster, "POLL_S", 0.5)
    data = make_layout(tmp_path / "data", n_slides=8, per_slide=8)
    common = ["smoke", "--data", str(data), "--set", "train.epochs=6", "--no-progress"]
    assert pipeline.main([*common, "--runs", str(tmp_path / "a"), "--model-out", str(tmp_path / "model_a")]) == 0
    seen = {}
    fold0 = tmp_path / "b" / "smoke_recipe" / "fold0"
    watcher = threading.Thread(target=kill_mid_fold, args=(fold0, seen), daemon=True)
    watcher.start()
    argv = [*common, "--runs", str(tmp_path / "b"), "--model-out", str(tmp_path / "model_b")]
    assert pipeline.main([*argv, "--executor", "local", "--gpus-per-fold", "0"]) == 0
    watcher.join(1)
    out = capsys.readouterr().out
    assert "2 fold(s) submitted (local" in out and "0 pending, 0 running, 2 done, 0 failed" in out
    assert seen, "fold 0 was not interrupted mid-fold"
    logs = "".join(p.read_text() for p in (tmp_path / "b" / "smoke_recipe" / "submitit").glob("*_log.*"))
    assert "Requeued job" in logs and "fold 0: resumed from" in logs
    jobs = json.loads((tmp_path / "b" / "smoke_recipe" / "submitit" / "jobs.json").read_text())
    assert set(jobs) == {"0", "1"}
    a = pd.read_csv(tmp_path / "a" / "smoke_recipe" / "oof.csv", dtype={"image_id": str}).sort_values("image_id")
    b = pd.read_csv(tmp_path / "b" / "smoke_recipe" / "oof.csv", dtype={"image_id": str}).sort_values("image_id")
    assert (a["image_id"].to_numpy() == b["image_id"].to_numpy()).all()
    assert abs(a["probability"].to_numpy() - b["probability"].to_numpy()).max() < 1e-5
    ea = json.loads((tmp_path / "model_a" / "expected_output.json").read_text())
    eb = json.loads((tmp_path / "model_b" / "expected_output.json").read_text())
    assert [r["class"] for r in ea] == [r["class"] for r in eb]
    assert max(abs(x["confidence"] - y["confidence"]) for x, y in zip(ea, eb, strict=True)) < 1e-5
    # a second run trains nothing and submits nothing
    assert pipeline.main([*argv, "--executor", "local", "--gpus-per-fold", "0"]) == 0
    assert "submitted" not in capsys.readouterr().out


def test_a_failed_task_is_named_with_its_log_and_last_lines(tmp_path, monkeypatch):
    monkeypatch.setattr(cluster, "POLL_S", 0.2)
    run = tmp_path / "run"
    argv = ["--config", "smoke", "--data", str(tmp_path / "no-data"), "--out", str(run), "--fold", "0"]
    job = cluster.FoldJob("run fold 0", argv, run, 0)
    with pytest.raises(AmfError) as e:
        cluster.train_folds([job], "local", lambda r: config.load("smoke", []), {}, {}, gpus_per_fold=0, log=print)
    text = str(e.value)
    assert text.startswith("fold task(s) failed: run fold 0 (log ") and str(run / "submitit") in text
    assert "no-data" in text  # training.train's own error line, from the task's log


def test_a_rerun_attaches_to_the_jobs_still_queued_or_running(tmp_path, monkeypatch):
    from submitit.slurm import slurm

    run = tmp_path / "run"
    (run / "submitit").mkdir(parents=True)
    (run / "submitit" / cluster.JOBS).write_text(json.dumps({"0": "41_0", "1": "41_1", "2": "41_2"}))
    states = {"41_0": "RUNNING", "41_1": "COMPLETED", "41_2": "PENDING"}
    monkeypatch.setattr(slurm.SlurmJob, "state", property(lambda job: states[job.job_id]))
    live = cluster.attached("slurm", run)
    assert sorted(live) == [0, 2] and live[0].job_id == "41_0"
    assert cluster.attached("local", run) == {}  # a local job ends with the process that started it
    (run / "submitit" / cluster.JOBS).write_text('["41_0"]')
    with pytest.raises(AmfError, match="not a mapping of fold numbers to job ids"):
        cluster.attached("slurm", run)
