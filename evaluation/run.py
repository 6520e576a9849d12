"""Run the container's entrypoint over a folder of packed jobs, as the platform does.

Each JOBS/<job>/input/ is one job's /input; its results go to JOBS/<job>/output/ (the job's /output),
JOBS/<job>/run.json records how long it took, whether it failed, and the model folder and its manifest's
SHA-256 (score names the model by them), and JOBS/<job>/run.log holds
what the job printed (so the progress bar stays readable). By default every job is a
fresh process (`python inference.py --input ... --output ... --model ...`), as on Grand Challenge,
run by the interpreter of the runtime environment built from requirements.txt (.venv-runtime, made
by `make runtime`) when it exists, else by this interpreter. --in-process calls inference.run in
this process instead: the same code on the same inputs, without a process start per job.
A failed job is reported by name and the rest still run; so is a job that cannot start (an
interpreter that does not exist or cannot run, a log that cannot be written): its run.json holds
that error. Nothing here imports torch.
Run:  python -m evaluation run JOBS [--model DIR] [--in-process] [--python PATH]
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from amf import AmfError, jobs, manifest, one_line
from amf.cli import as_error
from amf.fileio import write_text_atomic
from evaluation.identity import manifest_digest

ROOT = Path(__file__).resolve().parents[1]  # the repository root (evaluation/run.py)
RUNTIME_PYTHON = ROOT / ".venv-runtime" / "bin" / "python"
RUN_RECORD = "run.json"
RUN_LOG = "run.log"
if str(ROOT) not in sys.path:  # inference.py is a script at the repository root, not in a package
    sys.path.insert(0, str(ROOT))


def list_jobs(jobs_dir) -> list[Path]:
    """The job folders under JOBS (those with input/inputs.json), in name order."""
    jobs_dir = Path(jobs_dir)
    if not jobs_dir.is_dir():
        raise AmfError(f"no jobs folder {jobs_dir}")
    found = sorted(p for p in jobs_dir.iterdir() if (p / "input" / "inputs.json").is_file())
    if not found:
        raise AmfError(f"no jobs in {jobs_dir} (expected <job>/input/inputs.json)")
    return found


def default_python() -> str:
    return str(RUNTIME_PYTHON) if RUNTIME_PYTHON.is_file() else sys.executable


@contextlib.contextmanager
def stderr_to(path: Path):
    """Send file descriptor 2 (Python's and onnxruntime's C++ messages alike) to PATH for a while."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "w") as log:
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def run_in_process(job: Path, model_dir: Path) -> str | None:
    """One job through inference.run in this process; the error line, or None."""
    import inference

    with stderr_to(job / RUN_LOG):
        try:
            inference.run(job / "input", job / "output", model_dir)
        except AmfError as e:
            return one_line(e)
        except Exception as e:  # a bug in the entrypoint must not stop the other jobs either
            return f"{type(e).__name__}: {one_line(e)}"
    return None


def run_process(job: Path, model_dir: Path, python: str, timeout: float) -> str | None:
    """One job as a fresh process of the entrypoint; the error line, or None."""
    cmd = [
        python,
        str(ROOT / "inference.py"),
        "--input",
        str(job / "input"),
        "--output",
        str(job / "output"),
        "--model",
        str(model_dir),
        "--quiet",
    ]
    with open(job / RUN_LOG, "w") as log:
        try:
            done = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.PIPE, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return f"timed out after {timeout:g} s"
        log.write(done.stderr)
    if done.returncode != 0:
        lines = [ln for ln in done.stderr.strip().splitlines() if ln.strip()]
        return f"exit {done.returncode}: {lines[-1].strip() if lines else 'no message'}"
    return None


def run_jobs(
    jobs_dir,
    model_dir=None,
    in_process: bool = False,
    python: str | None = None,
    timeout: float = 600.0,
    progress: bool = True,
) -> list[dict]:
    """Run every job; returns one record per job {job, ok, seconds, error, mode}."""
    from tqdm import tqdm

    import inference

    model_dir = inference.resolve_model_dir(str(model_dir) if model_dir else None).resolve()
    manifest.load(model_dir)  # a missing or broken model is one error now, not one per job
    digest = manifest_digest(model_dir)  # score names the model by it, and refuses one changed since
    python = python or default_python()
    records = []
    bar = tqdm(list_jobs(jobs_dir), desc="run", unit="job", disable=not progress)
    for job in bar:
        stale = job / "output" / jobs.OUTPUT_FILE
        if stale.exists():
            stale.unlink()  # a job that fails now must not leave an earlier run's result behind
        start = time.perf_counter()
        try:
            error = run_in_process(job, model_dir) if in_process else run_process(job, model_dir, python, timeout)
        except OSError as e:  # the job could not start (no such interpreter, no log file): this job's error
            error = f"cannot start: {one_line(as_error(e))}"
        seconds = time.perf_counter() - start
        record = {
            "job": job.name,
            "ok": error is None,
            "seconds": round(seconds, 4),
            "error": error,
            "mode": "in-process" if in_process else "process",
            "python": sys.executable if in_process else python,
            "model": str(model_dir),
            "manifest_sha256": digest,
        }
        write_text_atomic(job / RUN_RECORD, json.dumps(record, indent=2) + "\n")
        records.append(record)
        bar.set_postfix_str(f"{job.name} {seconds:.2f}s")
        if error:
            bar.write(f"failed: {job.name}: {error}")
    return records


def summarise(records: list[dict]) -> str:
    import numpy as np

    secs = np.array([r["seconds"] for r in records])
    failed = [r["job"] for r in records if not r["ok"]]
    line = (
        f"{len(records)} jobs ({records[0]['mode']}): {len(records) - len(failed)} ok, "
        f"{len(failed)} failed; seconds per job: mean {secs.mean():.2f}, median "
        f"{np.median(secs):.2f}, max {secs.max():.2f}"
    )
    return line + (f"\nfailed: {', '.join(failed)}" if failed else "")
