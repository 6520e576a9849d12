"""Several folds at once on one device: one training process per fold, sharing the GPU (or the CPU).

A 128-px mobilenet cannot keep an H100 busy with one fold; N processes side by side can (each has its own
CUDA context, about 0.5 GB; with CUDA MPS, `nvidia-cuda-mps-control -d` before the run, their kernels also
overlap instead of time-slicing). training.train --parallel N uses this after it has written config.yaml and
splits.csv: it starts `python -m training.train <the same arguments> --fold k` for up to N folds at a time,
waits for them, then pools the out-of-fold results as a sequential run does. The run folder is the same as
a sequential run's. `--fold k` stays the way to spread folds over GPUs or nodes.
What a person sees: the run's header once (the parent's), then every line of each child prefixed "[fold k] "
(its stdout on stdout, its stderr on stderr, line by line as they come: the children write unbuffered, plain
progress lines since their output is a pipe); the children neither repeat the header nor name a next step,
which the parent does once every child has ended.
Run:  python -m training.train --config C --data D --out RUN --parallel 3
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from amf import AmfError

ROOT = Path(__file__).resolve().parents[2]


def child_env(parallel: int) -> dict:
    """The children's environment: the project importable; CPU threads shared out unless the user set them."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env["PYTHONUNBUFFERED"] = "1"  # each line reaches the parent when it is printed
    if "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // parallel))
    return env


def forward(stream, to: str, prefix: str) -> None:
    """Copy a child's pipe, line by line, to the parent's sys.stdout or sys.stderr (TO), each line PREFIXed."""
    for line in iter(stream.readline, ""):
        print(prefix + line, end="" if line.endswith("\n") else "\n", file=getattr(sys, to), flush=True)
    stream.close()


def start(cmd: list[str], env: dict, prefix: str) -> tuple:
    """A child and the threads that forward its output; (process, threads)."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
    threads = [
        threading.Thread(target=forward, args=(pipe, to, prefix), daemon=True)
        for pipe, to in ((proc.stdout, "stdout"), (proc.stderr, "stderr"))
    ]
    for t in threads:
        t.start()
    return proc, threads


def run_parallel(argv: list[str], folds: list[int], parallel: int, log=print, poll_s: float = 0.5) -> None:
    """Train FOLDS with `training.train ARGV --fold k`, at most PARALLEL at a time; raises if any fails."""
    log(f"training folds {folds}, {min(parallel, len(folds))} at a time (one process each)")
    jobs = [(f"fold {k}", [*argv, "--fold", str(k)]) for k in folds]
    failed = run_jobs(jobs, parallel, poll_s)
    if failed:
        raise AmfError(
            "fold(s) failed: "
            + ", ".join(f"{name[5:]} (exit status {s})" for name, s in failed.items())
            + "; their messages are above; rerun the same command to train what is missing"
        )


def run_jobs(jobs: list[tuple[str, list[str]]], parallel: int, poll_s: float = 0.5) -> dict:
    """Run `training.train ARGV --parallel-child` for each (NAME, ARGV) of JOBS (ARGV names its --fold), at most
    PARALLEL at a time, each line of a child prefixed "[NAME] "; returns {NAME: exit status} of those that
    failed, in JOBS' order."""
    env = child_env(parallel)
    waiting, running, failed = list(jobs), {}, {}
    while waiting or running:
        while waiting and len(running) < parallel:
            name, argv = waiting.pop(0)
            cmd = [sys.executable, "-m", "training.train", *argv, "--parallel-child"]
            running[name] = start(cmd, env, f"[{name}] ")
        for name, (proc, threads) in list(running.items()):
            status = proc.poll()
            if status is not None:
                for t in threads:
                    t.join()  # its last lines are out before anything is said about it
                del running[name]
                if status != 0:
                    failed[name] = status
        time.sleep(poll_s if running else 0)
    return {name: failed[name] for name, _ in jobs if name in failed}
