"""The run folder of training.train: every name in it, the one reader of each of its files, its atomic writers.

RUN_DIR/                 (RunDir(RUN_DIR); training.train writes it, oof/export/compare/card read it)
  config.yaml            the resolved config, written once (RunDir.read_config)
  splits.csv             the folds, written once and reused by every --fold job (RunDir.read_splits)
  fold{k}/               one per fold (RunDir.fold(k) -> FoldDir):
    last.pt                the training state after the last epoch (resuming reads it)
    best.pt                the kept epoch's weights, LoRA merged (the export reads it)
    epochs.csv             one row per epoch: losses, held-out (val_*) and inner (inner_*) metrics
    oof.csv                the kept epoch's held-out predictions
    done.json              the fold is finished (its best epoch, selection, EMA decay; training.results.tta_oof adds
                           "tta" and "from_run": the held-out figures re-predicted under test-time augmentation)
    events.out.tfevents.*  TensorBoard's event files (log.tensorboard; training/train/tracking.py), wandb/ (log.wandb)
    train.lock             held (flock) by the one process training the fold; names it (pid, host)
  train.lock             held while a job writes or checks config.yaml and splits.csv
  oof.csv                pooled out-of-fold predictions, when every fold is done (training.results.oof; RunDir.read_oof)
  oof_metrics.json       their metrics and threshold (RunDir.read_oof_metrics)
  curves.png             loss, held-out balanced accuracy and ROC AUC per epoch, a line per fold (train/curves.py)
RUN_DIR_tta_<mode>/      the same figures re-predicted under test-time augmentation (results/tta_oof.py; RunDir.tta_dir)
RUNS_DIR/NAME_<role>/    the runs of training.pipeline (pipeline_run): recipe, plain, and the shift run, named for its
                         split kind (leave_scanner_out: loso; any other kind: the kind itself)
A file that a reader needs and the folder lacks is one AmfError naming its path. read_predictions is the one
reader of an out-of-fold table (a fold's, the pooled one, the model card's copy): image_id and slide stay
strings as written ("007.png" stays "007.png", "NA" stays "NA").
Run folders are shared between people and machines, so every file in one is read as untrusted input: the
checkpoints with torch's safe unpickler (weights_only=True: tensors and plain values; nothing in them can run
code), config.yaml through training.config.read (its bounds and checks), splits.csv through training.splits.read
(what writing it guarantees), done.json as a JSON object of plain values, the CSV tables through
training.data.read_csv; each fault is one AmfError line naming the file and what to do.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import json
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

import training.splits
from amf import AmfError, one_line
from amf.fileio import read_json, temporaries, write_atomic, write_text_atomic
from training import config
from training.data import MAX_RUN_TABLE_BYTES, read_csv

CONFIG, SPLITS, OOF, OOF_METRICS, CURVES = "config.yaml", "splits.csv", "oof.csv", "oof_metrics.json", "curves.png"
UNCOMPARED = ("log",)  # config sections a resumed run may change (a fold may turn W&B on): they change no result
SHIFT_ROLES = {"leave_scanner_out": "loso"}  # the pipeline's shift run by split kind (others: the kind's own name)
PLAIN_SETS = ("mixstyle.enabled=false", "align.enabled=false", "ema.enabled=false")  # the pipeline's plain control


def plain_sets(cfg: dict) -> list[str]:
    """The plain control's --set words for the recipe config CFG: PLAIN_SETS, and the attention gate pinned where
    the recipe's model.attention is "auto" (which follows align.enabled): the control differs in the recipe only,
    not in the network."""
    attention = cfg["model"].get("attention", "auto")
    pin = cfg["align"]["enabled"] if attention == "auto" else None
    return [*PLAIN_SETS, *([f"model.attention={str(bool(pin)).lower()}"] if pin is not None else [])]


LAST, BEST, EPOCHS, DONE = "last.pt", "best.pt", "epochs.csv", "done.json"  # in each fold{k}/
EVENTS = "events.out.tfevents.*"  # TensorBoard's event files in fold{k}/, named by time, host and process
LOCK = "train.lock"  # in the run folder and in each fold{k}/
# the keys each checkpoint must hold (training.train.save_epoch writes them)
LAST_KEYS = ("model", "optimizer", "scheduler", "epoch", "best", "history", "step", "rng")
BEST_KEYS = ("state_dict",)
PREDICTION_COLUMNS = ("image_id", "slide", "fold", "probability", "label")  # what training writes and pooling needs
PREDICTION_RULES = {  # column -> (which values fit, what they must be)
    "probability": (lambda v: v.between(0, 1), "a number in [0, 1]"),
    "fold": (lambda v: v.notna() & (v == v.round()), "a whole number"),
    "label": (lambda v: v.isin([0, 1]), "0 or 1"),
}


# ---- writers (a reader, or a job resuming, never sees half a file) --------------------------------------


def write_csv_atomic(df: pd.DataFrame, path) -> None:
    buf = io.StringIO()
    df.to_csv(buf, index=False)
    write_text_atomic(path, buf.getvalue())


def write_json_atomic(obj, path) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2) + "\n")


def save_atomic(obj, path) -> None:
    """torch.save of OBJ's plain form (plain()) to a temporary file beside PATH, then rename (amf.fileio.write_atomic:
    a name of its own per process): an interrupted save leaves the old checkpoint."""
    import torch  # the readers (compare, card) stay torch-free

    write_atomic(path, lambda f: torch.save(plain(obj), f), binary=True)


def plain(obj):
    """OBJ with numpy scalars as Python numbers (np.float64 -> float, -np.inf -> float('-inf')), inside dicts, lists
    and tuples: a checkpoint then holds only what torch's safe unpickler rebuilds (tensors, plain values)."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(plain(v) for v in obj)
    return obj


@contextlib.contextmanager
def exclusive(path, what: str, wait: bool = False):
    """Hold the lock file PATH (an OS lock, flock: released when the process ends, however it ends) while the block
    runs, with this process's pid, host and start time written in it. Taken: one AmfError line naming the holder,
    or with WAIT block until it is free (for short holds)."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise AmfError(f"cannot lock {what}: {path}: {one_line(e.strerror or e)}") from None
    try:
        held = take_lock(fd, path, what, wait)
        if held:
            since = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {since}\n".encode(), 0)
        try:
            yield
        finally:
            if held:
                os.ftruncate(fd, 0)  # held by nobody: it names no one
    finally:
        os.close(fd)


def take_lock(fd: int, path: Path, what: str, wait: bool) -> bool:
    """flock FD: True when held; False, with a warning, on a filesystem without flock (some Lustre and FUSE mounts:
    training goes on there, unguarded, rather than not at all); taken by another process: one AmfError naming it."""
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        holder = one_line(os.pread(fd, 300, 0).decode("utf-8", "replace")) or "another process (starting)"
        raise AmfError(
            f"{what} is in use by {holder} (lock {path}): one process per fold; wait for it to end"
        ) from None
    except OSError as e:
        print(f"warning: cannot lock {path} ({one_line(e.strerror or e)}): nothing stops a second job", file=sys.stderr)
        return False
    return True


def same_path(a, b) -> bool:
    """Whether two paths (Paths, or text from card.json and done.json; None or "" for none) name one folder."""
    return bool(a) and bool(b) and Path(a).resolve() == Path(b).resolve()


def pipeline_run(runs_dir, name: str, role: str) -> Path:
    """RUNS_DIR/NAME_ROLE, a run of training.pipeline: ROLE recipe, plain, or a split kind (its shift run)."""
    return Path(runs_dir) / f"{name}_{SHIFT_ROLES.get(role, role)}"


# ---- readers --------------------------------------------------------------------------------------------


def need(path: Path, what: str) -> Path:
    if not path.is_file():
        raise AmfError(f"{path.parent} has no {what}: {path} does not exist")
    return path


def read_predictions(path, columns=("image_id", "slide", "fold", "probability")) -> pd.DataFrame:
    """An out-of-fold table (image_id, slide, fold, probability, ...), ids and slides as the strings written; one
    AmfError line if it lacks one of COLUMNS, or a probability is not a number in [0, 1], a fold not a whole
    number, a label not 0 or 1."""
    what = "out-of-fold predictions"
    dtypes = {c: str for c in ("image_id", "slide")}
    table = read_csv(need(Path(path), what), what, dtype=dtypes, keep_default_na=False, limit=MAX_RUN_TABLE_BYTES)
    absent = [c for c in columns if c not in table.columns]
    if absent:
        raise AmfError(f"{what} {path}: no column(s) {', '.join(absent)}")
    for col, (fits, rule) in PREDICTION_RULES.items():
        if col in table.columns:
            values = pd.to_numeric(table[col], errors="coerce")
            if not fits(values).all():
                raise AmfError(f"{what} {path}: {col} must be {rule} in every row")
            table[col] = values if col == "probability" else values.astype(int)
    return table


def load_checkpoint(path, what: str, keys: tuple, fix: str) -> dict:
    """A checkpoint of the run folder, by torch's safe unpickler (weights_only=True: tensors, numbers, text, lists,
    dicts; a pickle that would call code is refused, and nothing in it runs), holding KEYS. Each fault is one
    AmfError line naming PATH and FIX (what to do). Checkpoints written before they were saved plain() hold numpy
    scalars: torch's documented allowlist for those (legacy_numpy()) is the only addition to the safe set."""
    import pickle

    import torch

    path = need(Path(path), what)
    try:
        with torch.serialization.safe_globals(legacy_numpy()):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        refused = one_line(e).rsplit("WeightsUnpickler error:", 1)[-1].strip()[:160]
        raise AmfError(
            f"{path}: refused: the {what} holds more than tensors and plain values ({refused}), so it was not "
            f"written by training.train and unpickling it could run code; {fix}"
        ) from None
    except Exception as e:  # a truncated or damaged file: torch raises RuntimeError (zip reader), EOFError, ...
        raise AmfError(f"{path}: not a readable {what} ({one_line(e)[:160]}); {fix}") from None
    absent = [k for k in keys if not isinstance(obj, dict) or k not in obj]
    if absent:
        raise AmfError(f"{path}: not a {what} of training.train (no {', '.join(absent)}); {fix}")
    return obj


def legacy_numpy() -> list:
    """The numpy scalar types (float, int, bool) torch's safe unpickler may rebuild: its documented allowlist for
    numpy scalars (a scalar of object dtype is refused by numpy itself)."""
    core = getattr(np, "_core", None) or np.core
    return [core.multiarray.scalar, np.dtype] + [
        type(np.dtype(t)) for t in ("float64", "float32", "int64", "int32", "bool")
    ]


def file_in_folder(name: str) -> property:
    """A read-only property: the path of NAME in the object's folder (self.path / NAME)."""
    return property(lambda self: self.path / name, doc=f"the folder's {name}")


@dataclass(frozen=True)
class FoldDir:
    """RUN_DIR/fold{k}: the files of one fold."""

    path: Path
    k: int

    last = file_in_folder(LAST)
    best = file_in_folder(BEST)
    epochs = file_in_folder(EPOCHS)
    oof = file_in_folder(OOF)
    done = file_in_folder(DONE)
    lock = file_in_folder(LOCK)

    def is_done(self) -> bool:
        return self.done.is_file()

    def event_files(self) -> list[Path]:
        """TensorBoard's event files of the fold (training/train/tracking.py; one per training process that ran it)."""
        return sorted(self.path.glob(EVENTS))

    def read_done(self) -> dict:
        """done.json ({} if it is empty: hand-made folders mark a fold done with an empty file): a JSON object of
        plain values (one AmfError line naming the file otherwise)."""
        what = f"fold {self.k} marker ({DONE})"
        if need(self.done, what).stat().st_size == 0:
            return {}
        fix = f"delete it to train fold {self.k} again (python -m training.train ... --fold {self.k})"
        try:
            done = read_json(self.done, what)
        except AmfError as e:
            raise AmfError(f"{e}; {fix}") from None
        plain_values = isinstance(done, dict) and all(
            v is None or isinstance(v, (str, int, float, bool)) for v in done.values()
        )
        if not plain_values or not all(isinstance(done.get(k, 0), int) for k in ("fold", "epochs", "best_epoch")):
            raise AmfError(f"{what} {self.done} is not what training writes (an object of plain values); {fix}")
        return done

    def read_oof(self) -> pd.DataFrame:
        return read_predictions(self.oof, PREDICTION_COLUMNS)

    def read_epochs(self) -> pd.DataFrame:
        what = f"fold {self.k} epoch log ({EPOCHS})"
        return read_csv(need(self.epochs, what), what)

    def load_best(self) -> dict:
        fix = f"train fold {self.k} again: python -m training.train ... --fold {self.k} --restart"
        return load_checkpoint(self.best, f"fold {self.k} weights ({BEST})", BEST_KEYS, fix)

    def load_last(self) -> dict:
        fix = f"delete it to train fold {self.k} from its first epoch (or train with --restart)"
        return load_checkpoint(self.last, f"fold {self.k} training state ({LAST})", LAST_KEYS, fix)

    def exclusive(self):
        """This fold for one process (exclusive): a second refuses, naming the first."""
        return exclusive(self.lock, f"fold {self.k} of {self.path.parent}")

    def remove_temporaries(self) -> None:
        """The temporary files of writes cut short by a killed process (only while exclusive)."""
        for name in (LAST, BEST, EPOCHS, OOF, DONE):
            for tmp in temporaries(self.path, name):
                tmp.unlink(missing_ok=True)


class RunDir:
    """A training run folder (see the module docstring for what it holds)."""

    def __init__(self, path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __str__(self) -> str:
        return str(self.path)

    def __fspath__(self) -> str:  # Path(run), RunDir(run) and os.path functions take a RunDir
        return str(self.path)

    config = file_in_folder(CONFIG)
    splits = file_in_folder(SPLITS)
    oof = file_in_folder(OOF)
    oof_metrics = file_in_folder(OOF_METRICS)
    curves = file_in_folder(CURVES)
    lock = file_in_folder(LOCK)

    def tta_dir(self, mode: str) -> Path:
        """RUN_DIR_tta_MODE beside the run: where training.results.tta_oof re-predicts it under test-time
        augmentation."""
        return self.path.with_name(f"{self.path.name}_tta_{mode}")

    def fold(self, k: int) -> FoldDir:
        return FoldDir(self.path / f"fold{int(k)}", int(k))

    def fold_dirs(self) -> list[FoldDir]:
        """The fold folders present, in name order (fold0, fold1, fold10, ...), finished or not."""
        return [
            FoldDir(p, int(p.name[4:])) for p in sorted(self.path.glob("fold*")) if p.is_dir() and p.name[4:].isdigit()
        ]

    def read_config(self, complete: bool = False) -> dict:
        """config.yaml as written. COMPLETE: keys it lacks (a run from before they existed) take today's
        defaults, and the whole is validated: what a model is built from (the export)."""
        if not self.config.is_file():
            raise AmfError(f"{self.path} is not a training run folder (no {CONFIG})")
        cfg = config.read(self.config, "run config")
        return config.validate(config.merge(config.DEFAULTS, cfg)) if complete else cfg

    def exclusive(self):
        """The run folder's config.yaml and splits.csv for one process at a time: a second job waits (a short
        hold: writing or checking them), so two jobs started together agree on one config and one split."""
        return exclusive(self.lock, f"run folder {self.path}", wait=True)

    def write_config(self, cfg: dict) -> None:
        write_text_atomic(self.config, config.dump(cfg))

    def read_splits(self) -> pd.DataFrame:
        if not self.splits.is_file():
            raise AmfError(f"{self.path} is not a training run folder (no {SPLITS})")
        return training.splits.read(self.splits)

    def write_splits(self, splits: pd.DataFrame) -> None:
        training.splits.write(splits, self.splits)

    def missing_folds(self, splits: pd.DataFrame) -> list[int]:
        """The folds of SPLITS without done.json."""
        return [k for k in training.splits.folds_of(splits) if not self.fold(k).is_done()]

    def config_differences(self, cfg: dict) -> list[str]:
        """The keys (section.key) in which config.yaml, completed with today's defaults, differs from CFG; [] when
        they are the same config (what training.train requires of a folder it continues, and the pipeline of a run
        it skips). A key added since the run started, at its default, is no difference; nor are the sections a
        resumed run may change (UNCOMPARED: they change no result)."""
        old = {s: v for s, v in self.read_config(complete=True).items() if s not in UNCOMPARED}
        new = {s: v for s, v in config.yaml.safe_load(config.dump(cfg)).items() if s not in UNCOMPARED}
        if old == new:
            return []
        keys = [
            f"{s}.{k}"
            for s in new
            if isinstance(new[s], dict)
            for k in new[s]
            if not isinstance(old.get(s), dict) or old[s].get(k) != new[s][k]
        ]
        return keys or ["name"]

    def discard_untrained(self, folds) -> bool:
        """Remove what a run that failed before its first finished epoch wrote (config.yaml, splits.csv, the fold
        folders of FOLDS), so that the corrected command can start in the same folder; only when no fold folder
        holds a finished epoch (last.pt) or fold (done.json) and none but FOLDS exists. True when removed."""
        import shutil

        dirs = self.fold_dirs()
        if any(f.last.is_file() or f.is_done() or f.k not in set(folds) for f in dirs):
            return False
        for f in dirs:
            shutil.rmtree(f.path, ignore_errors=True)
        for path in (self.config, self.splits, self.lock):  # the run's lock is free again: this command held it
            path.unlink(missing_ok=True)
        if self.path.is_dir() and not any(self.path.iterdir()):
            self.path.rmdir()
        return True

    def done_values(self, key: str, default=None, folds=None) -> set:
        """The values of KEY (DEFAULT where absent) in the done.json of its finished folds (of FOLDS if given)."""
        dirs = self.fold_dirs() if folds is None else [self.fold(k) for k in folds]
        return {f.read_done().get(key, default) for f in dirs if f.is_done()}

    def predicted_tta(self) -> str:
        """The test-time augmentation its held-out predictions were made with: training.results.tta_oof's mode, "none"
        for a training run (training.train predicts one view)."""
        modes = self.done_values("tta", "none")
        if len(modes) > 1:
            raise AmfError(f"{self.path}: folds predicted with different test-time augmentations ({sorted(modes)})")
        return modes.pop() if modes else "none"

    def from_run(self) -> Path:
        """The run whose members made these predictions: training.results.tta_oof's source run, else this run itself."""
        sources = self.done_values("from_run")
        if len(sources) > 1:
            raise AmfError(f"{self.path}: folds re-predicted from different runs")
        source = sources.pop() if sources else None
        return Path(source).resolve() if source else self.path.resolve()

    def is_pooled(self) -> bool:
        return self.oof.is_file() and self.oof_metrics.is_file()

    def read_oof(self) -> pd.DataFrame:
        """The pooled out-of-fold predictions (training.results.oof.pool writes them when every fold is done)."""
        self._need_pooled()
        return read_predictions(self.oof, PREDICTION_COLUMNS)

    def read_oof_metrics(self) -> dict:
        self._need_pooled()
        return read_json(self.oof_metrics, "out-of-fold metrics")

    def write_pooled(self, oof: pd.DataFrame, result: dict) -> None:
        write_csv_atomic(oof, self.oof)
        write_json_atomic(result, self.oof_metrics)

    def _need_pooled(self) -> None:
        if not self.is_pooled():
            raise AmfError(
                f"{self.path} has no pooled out-of-fold results ({self.oof}, {self.oof_metrics}): are all folds done?"
            )
