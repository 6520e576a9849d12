"""Folds on a cluster: every fold a task of a SLURM job array, through submitit (or its local executor, the same path).

  python -m training.pipeline ... --executor slurm [--gpus-per-fold G] [--cluster KEY=VALUE ...]
                                  [--sbatch KEY=VALUE ...]
  python -m training.ablate   ... --executor slurm   (the same options)

Each run's folds that are not done go out as one job array (one task per fold; `--cluster array_parallelism=N`
caps how many run at once). A task runs `training.train ... --fold k` in its own process on the node (FoldTask); with
--gpus-per-fold G it is G tasks of one node, one per GPU, and the fold trains under DDP (submitit exports torchrun's
variables: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT). A task is Checkpointable: when SLURM preempts it or its
time runs out, submitit requeues it and the fold resumes from its last finished epoch (fold{k}/last.pt); a fold that
finished (fold{k}/done.json) is never sent again. The caller waits with a live view (tasks pending / running / done /
failed, the slowest fold's epoch) and goes on where it runs (the login node: pooling, test-time re-prediction, export
and card run on its CPU; they run the members in eval mode only, minutes for a small network on a CPU; for a
foundation model, run the pipeline again on a GPU node once the folds are done: it skips the training).
The job ids are kept in RUN/submitit/jobs.json: a caller killed while it waits attaches to the same jobs when run
again (those still pending or running), and submits only what is neither done nor running. Every task's stdout,
stderr and submitit's files are in RUN/submitit/ (%A_%a: array and task ids); a failed task's log and its last
lines are printed.
Options (--cluster KEY=VALUE; OPTIONS below): partition, account, qos, constraint, time (minutes per task, default 240:
a longer fold is requeued and resumes, up to 20 times), mem_gb, cpus (per GPU), array_parallelism. Extra sbatch lines:
--sbatch KEY=VALUE (e.g. --sbatch mail-type=END). Defaults of a fold (resources): 1 GPU (--gpus-per-fold); per
GPU data.num_workers + 2 CPUs; host memory 16 GB + 16 bytes per backbone parameter (weights, gradients and AdamW's
two moments in fp32) x G, rounded up to whole GB.
--executor local runs the same tasks through submitit's local executor, on this machine (what the tests use).
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

from amf import AmfError
from amf.fileio import read_json, write_text_atomic
from training import config
from training.rundir import RunDir

EXECUTORS = ("inline", "local", "slurm")
OPTIONS = {  # --cluster KEY -> submitit's parameter (AutoExecutor names)
    "partition": "slurm_partition",
    "account": "slurm_account",
    "qos": "slurm_qos",
    "constraint": "slurm_constraint",
    "time": "timeout_min",
    "mem_gb": "mem_gb",
    "cpus": "cpus_per_task",
    "array_parallelism": "slurm_array_parallelism",
}
INTEGER_OPTIONS = {"time", "mem_gb", "cpus", "array_parallelism"}
TIME_MIN = 240  # a task's default time: a longer fold is requeued and resumes from its last epoch
REQUEUES = 20  # submitit's max_num_timeout: how often a timed-out task is requeued
ACTIVE = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING", "SUSPENDED", "UNKNOWN"}
JOBS = "jobs.json"
POLL_S = 30.0  # seconds between looks at the tasks' states


def submitit():
    try:
        import submitit
    except ImportError:
        raise AmfError("--executor slurm/local needs submitit (pip install -r requirements-dev.txt)") from None
    return submitit


@dataclass
class FoldJob:
    """One fold to train: its name in the live view, training.train's arguments (with --fold), its run and fold."""

    name: str
    argv: list
    run: Path
    fold: int


class FoldTask:
    """What a task runs: training.train ARGV in this process; under several tasks (GPUs) the DDP variables first.
    Checkpointable (submitit.helpers): a preempted or timed-out task is requeued as it is, and the fold resumes."""

    def __init__(self, argv: list):
        self.argv = list(argv)

    def __call__(self) -> int:
        sub = submitit()
        if sub.JobEnvironment().num_tasks > 1:
            sub.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        from training.train.__main__ import main

        code = main(self.argv)
        if code:
            raise RuntimeError(f"training.train {' '.join(self.argv)} exited with status {code}")
        return code

    def checkpoint(self, *args, **kwargs):
        return submitit().helpers.DelayedSubmission(FoldTask(self.argv))


def parse_options(words: list) -> dict:
    """--cluster KEY=VALUE words -> {KEY: value}; an unknown key or a non-integer where one is needed: one error."""
    out = {}
    for word in words:
        key, sep, value = word.partition("=")
        if not sep or key not in OPTIONS:
            raise AmfError(f"--cluster {word!r}: use KEY=VALUE with KEY one of {', '.join(OPTIONS)}")
        if key in INTEGER_OPTIONS:
            try:
                value = int(value)
            except ValueError:
                raise AmfError(f"--cluster {word!r}: {key} is a whole number") from None
        out[key] = value
    return out


def fold_resources(cfg: dict, gpus: int) -> dict:
    """The defaults of one fold's task for the config's backbone (the module's docstring says how)."""
    import torch

    from training.train.models import create_backbone

    with torch.device("meta"):  # no memory, no weights: the count only
        backbone = create_backbone({**cfg["model"], "weights": None}, pretrained=False)
    params = sum(p.numel() for p in backbone.parameters())
    per = max(1, gpus)
    return {
        "gpus": gpus,
        "cpus": int(cfg["data"]["num_workers"]) + 2,
        "mem_gb": 16 + math.ceil(16 * params * per / 1e9),
        "time": TIME_MIN,
        "params": params,
    }


def executor(kind: str, folder: Path, resources: dict, options: dict, sbatch: dict):
    """submitit's executor for one run's array: the fold's resources, the user's --cluster options over them."""
    sub = submitit()
    values = {**{k: v for k, v in resources.items() if k in OPTIONS}, **options}
    gpus = int(resources["gpus"])
    try:
        folder_text = str(folder / "%A_%a" if kind == "slurm" else folder)
        ex = sub.AutoExecutor(folder=folder_text, cluster=kind, slurm_max_num_timeout=REQUEUES)
    except RuntimeError as e:  # submitit's own words: no srun here
        raise AmfError(f"--executor {kind}: {e} (on this machine: --executor local, or no --executor)") from None
    ex.update_parameters(**{OPTIONS[k]: v for k, v in values.items()})
    ex.update_parameters(nodes=1, tasks_per_node=max(1, gpus), gpus_per_node=gpus, name="amf-fold")
    if kind == "slurm":
        ex.update_parameters(slurm_additional_parameters=dict(sbatch))
    return ex


def sbatch_script(folder: Path, n_tasks: int, resources: dict, options: dict, sbatch: dict) -> str:
    """The sbatch script submitit would submit for an array of N_TASKS folds (no scheduler needed)."""
    from unittest import mock

    from submitit.slurm.slurm import SlurmExecutor

    with mock.patch.object(SlurmExecutor, "affinity", return_value=1):  # built where no srun exists, sent nowhere
        ex = executor("slurm", folder, resources, options, sbatch)._executor
        array = SlurmExecutor(ex.folder, ex.max_num_timeout)  # as submitit's array submission makes it
    array.update_parameters(**ex.parameters)
    array.parameters["map_count"] = n_tasks
    return array._make_submission_file_text(array._submitit_command_str, "array")


def recorded_jobs(folder: Path) -> dict:
    """FOLDER/jobs.json: {fold: job id} of the tasks sent before ({} where there is none); anything else in it is one
    error naming the file (a run folder is read as untrusted input)."""
    path = folder / JOBS
    if not path.is_file():
        return {}
    jobs = read_json(path, "the cluster job list")
    if not isinstance(jobs, dict) or not all(k.isdigit() and isinstance(v, str) for k, v in jobs.items()):
        raise AmfError(f"the cluster job list {path} is not a mapping of fold numbers to job ids; delete it")
    return jobs


def attached(kind: str, run: Path) -> dict:
    """{fold: job} of RUN's recorded jobs that are still pending or running (SLURM; the local executor's jobs end
    with the process that started them)."""
    if kind != "slurm":
        return {}
    from submitit.slurm.slurm import SlurmJob

    out = {}
    for k, job_id in recorded_jobs(run / "submitit").items():
        job = SlurmJob(folder=run / "submitit" / "%A_%a", job_id=str(job_id))
        if job.state in ACTIVE:
            out[int(k)] = job
    return out


def train_folds(
    jobs: list,
    kind: str,
    cfg_of,
    options: dict,
    sbatch: dict,
    gpus_per_fold: int = 1,
    log=print,
    poll_s: float | None = None,
) -> None:
    """Train JOBS ([FoldJob]) as job arrays of executor KIND (one per run), attaching to the recorded ones that still
    run; wait for all with a live view; one error naming each failed task's log and its last lines.
    CFG_OF(run) is the run's resolved config (the task's resources)."""
    todo = [j for j in jobs if not RunDir(j.run).fold(j.fold).is_done()]
    running = []
    by_run = {}
    for j in todo:
        by_run.setdefault(j.run, []).append(j)
    for run, run_jobs in by_run.items():
        folder = run / "submitit"
        folder.mkdir(parents=True, exist_ok=True)
        live = attached(kind, run)
        fresh = [j for j in run_jobs if j.fold not in live]
        running += [(j, live[j.fold]) for j in run_jobs if j.fold in live]
        if live:
            log(f"cluster: {run}: attached to the running job(s) of fold(s) {sorted(live)}")
        if not fresh:
            continue
        resources = fold_resources(cfg_of(run), gpus_per_fold)
        ex = executor(kind, folder, resources, options, sbatch)
        with ex.batch():
            submitted = [ex.submit(FoldTask(j.argv)) for j in fresh]
        running += list(zip(fresh, submitted, strict=True))
        recorded = recorded_jobs(folder) | {str(j.fold): job.job_id for j, job in zip(fresh, submitted, strict=True)}
        write_text_atomic(folder / JOBS, json.dumps(recorded, indent=2) + "\n")
        log(f"cluster: {run}: {len(fresh)} fold(s) submitted ({kind}; logs in {folder})")
    wait(running, log, POLL_S if poll_s is None else poll_s)


def slowest(running) -> str:
    """The fold furthest behind among the unfinished: 'NAME epoch E of N'."""
    worst = None
    for j, _ in running:
        fold = RunDir(j.run).fold(j.fold)
        if fold.is_done():
            continue
        epochs = len(fold.read_epochs()) if fold.epochs.is_file() else 0
        if worst is None or epochs < worst[1]:
            worst = (j.name, epochs)
    return "" if worst is None else f"; slowest {worst[0]}: {worst[1]} epoch(s) done"


def wait(running: list, log, poll_s: float) -> None:
    last = None
    while True:
        states = {"pending": 0, "running": 0, "done": 0, "failed": 0}
        failed = []
        for j, job in running:
            if RunDir(j.run).fold(j.fold).is_done() and job.done():
                states["done"] += 1
            elif job.done():
                states["failed"] += 1
                failed.append((j, job))
            elif job.state in ("PENDING", "REQUEUED", "CONFIGURING"):
                states["pending"] += 1
            else:
                states["running"] += 1
        line = "cluster: " + ", ".join(f"{n} {s}" for s, n in states.items()) + slowest(running)
        if line != last:
            log(line)
            last = line
        if states["pending"] + states["running"] == 0:
            break
        time.sleep(poll_s)
    if failed:
        raise AmfError("fold task(s) failed: " + "; ".join(failure(j, job) for j, job in failed))


def failure(j: FoldJob, job) -> str:
    """A failed task in one line: its fold, its log file and the log's last lines."""
    path = Path(job.paths.stderr)
    tail = ""
    if path.is_file():
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
        tail = " | ".join(lines[-3:])
    return f"{j.name} (log {path}{': ' + tail if tail else ''})"


def run_config(run: Path) -> dict:
    """A prepared run's config (config.yaml, completed): what its tasks need."""
    return RunDir(run).read_config(complete=True)


def table_config(cfg: dict) -> dict:
    """CFG for reading the figures' table only: no patch decoded (the splits need the table)."""
    out = copy.deepcopy(cfg)
    out["data"]["preload"] = False
    return out


def prepare(config_name: str, data: Path, run: Path, sets: list, tables: dict | None = None) -> list[int]:
    """RUN's config.yaml and splits.csv written (or checked: a folder started with another config is one error)
    before anything trains; returns its folds. TABLES caches the figures' table by data section."""
    from training.data import load_dataset
    from training.splits import folds_of
    from training.train.kfold import Dist, prepare_run, resolve_normalisation

    cfg = resolve_normalisation(config.load(config_name, sets))
    tables = {} if tables is None else tables
    key = json.dumps(cfg["data"], sort_keys=True, default=str)
    if key not in tables:
        tables[key] = load_dataset(data, table_config(cfg), log=lambda *a: None)[0]
    return folds_of(prepare_run(cfg, tables[key], RunDir(run), Dist("cpu")))


def add_arguments(ap) -> None:
    """The options of training/cluster.py (the pipeline's and training.ablate's)."""
    ap.add_argument("--executor", default="inline", choices=EXECUTORS, help="where folds train")
    ap.add_argument("--gpus-per-fold", type=int, default=1, metavar="G", help="GPUs of one node per fold (DDP)")
    ap.add_argument("--cluster", nargs="*", default=[], metavar="KEY=VALUE", help=f"{', '.join(OPTIONS)}")
    ap.add_argument("--sbatch", nargs="*", default=[], metavar="KEY=VALUE", help="extra sbatch lines (--KEY=VALUE)")


def options_of(a) -> dict:
    """The executor's fields (executor, gpus_per_fold, cluster, sbatch) from the parsed arguments."""
    if a.gpus_per_fold < 0:
        raise AmfError(f"--gpus-per-fold {a.gpus_per_fold}: 0 (CPU) or more")
    sbatch = {}
    for word in a.sbatch:
        key, sep, value = word.partition("=")
        if not sep or not key:
            raise AmfError(f"--sbatch {word!r}: use KEY=VALUE (written as #SBATCH --KEY=VALUE)")
        sbatch[key.lstrip("-")] = value
    return {
        "executor": a.executor,
        "gpus_per_fold": a.gpus_per_fold,
        "cluster": parse_options(a.cluster),
        "sbatch": sbatch,
    }
