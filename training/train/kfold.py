"""K-fold training of timm classifiers, atypical vs normal mitotic figures: one fold per call, resumable.

The command line is training/train/__main__.py (python -m training.train); this module is what it runs for each
fold: the run folder checked or started (prepare_run), the fold's data, model, optimiser and recipe (build_model,
build_loaders, loss_inputs), the epochs (train_epoch, validate_and_select: which epoch is kept follows
train.selection), checkpoints and resumption (save_epoch, resume), and the fold lock (train_locked_fold).
Distributed (DDP) and single-process runs share it (Dist).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

import training.splits
from amf import AmfError, one_line
from amf.ensemble import sigmoid
from training import metrics
from training.augment import Augment
from training.data import PatchDataset
from training.domains import DOMAIN_COLUMNS
from training.rundir import FoldDir, RunDir, save_atomic, write_csv_atomic, write_json_atomic
from training.splits import inner_split, make_splits, matching
from training.train import ddp, gpu_augment, tracking
from training.train.device import choose as choose_device
from training.train.models import (
    create_backbone,
    create_classifier,
    head_parameters,
    lora_folded_state_dict,
    normalisation,
)
from training.train.progress import Progress
from training.train.recipe import alignment_control, alignment_loss, attach_mixstyle, kd_loss, make_teacher

ALIGN_COLUMNS = (*DOMAIN_COLUMNS, "source")  # the weak domain labels the alignment can pull together

# ---- distributed ------------------------------------------------------------------------------


class Dist:
    """torchrun's environment, or a single process."""

    def __init__(self, device_arg: str = "auto"):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local = int(os.environ.get("LOCAL_RANK", "0"))
        self.device, self.why = choose_device(device_arg, self.local)  # a GPU asked for and absent: AmfError
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.set_device(self.device)
        if self.world > 1:
            torch.distributed.init_process_group("nccl" if cuda else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self):
        if self.world > 1:
            torch.distributed.barrier()

    def close(self):
        if self.world > 1:
            torch.distributed.destroy_process_group()


class EpochSampler(torch.utils.data.Sampler):
    """A seeded permutation (or class-weighted draw with replacement) per epoch, sharded across ranks.

    Yields (index, draw): draw is the position in the epoch's whole draw order (before sharding), which
    seeds the augmentation (PatchDataset), so two draws of one figure get two views, and the same seed
    gives the same batches whatever the rank or worker layout.
    """

    def __init__(self, n: int, weights=None, seed: int = 0, rank: int = 0, world: int = 1, limit: int | None = None):
        self.n, self.seed, self.rank, self.world, self.epoch = n, seed, rank, world, 0
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.double)
        self.per_rank = n // world
        if limit is not None:
            self.per_rank = min(self.per_rank, limit)

    def set_epoch(self, epoch: int):
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        if self.weights is not None:
            order = torch.multinomial(self.weights, self.n, replacement=True, generator=g)
        else:
            order = torch.randperm(self.n, generator=g)
        mine = order[self.rank :: self.world][: self.per_rank]
        draws = torch.arange(self.n)[self.rank :: self.world][: self.per_rank]
        return iter(zip(mine.tolist(), draws.tolist()))

    def __len__(self):
        return self.per_rank


# ---- helpers ----------------------------------------------------------------------------------


def seed_everything(seed: int):
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def resolve_normalisation(cfg: dict) -> dict:
    """Fill in data.mean/data.std "auto" with this backbone's (its pretrained_cfg, else ImageNet's), so that
    config.yaml says what the model was trained and is exported with. The other "auto" settings (train.amp,
    train.channels_last, data.device_augment, mixstyle.where) stay "auto" there: they depend on the device."""
    if cfg["data"]["mean"] == "auto" or cfg["data"]["std"] == "auto":
        mcfg = {**cfg["model"], "weights": None}  # no weights: only the pretrained_cfg is needed
        try:
            with torch.device("meta"):  # no memory either
                bb = create_backbone(mcfg, pretrained=False, img_size=int(cfg["data"]["input_size"]))
        except (NotImplementedError, RuntimeError):
            bb = create_backbone(mcfg, pretrained=False, img_size=int(cfg["data"]["input_size"]))
        cfg["data"]["mean"], cfg["data"]["std"] = normalisation(cfg, bb)
    return cfg


def prepare_run(cfg: dict, df: pd.DataFrame, run: RunDir, dist: Dist) -> pd.DataFrame:
    """Write (or check) config.yaml and splits.csv, one job at a time (RunDir.exclusive); returns the splits aligned
    to the table's rows."""
    run.path.mkdir(parents=True, exist_ok=True)
    with run.exclusive() if dist.main else contextlib.nullcontext():
        splits = check_or_write_run(cfg, df, run, dist)
    dist.barrier()
    return splits


def check_or_write_run(cfg: dict, df: pd.DataFrame, run: RunDir, dist: Dist) -> pd.DataFrame:
    if run.config.is_file():
        diff = run.config_differences(cfg)
        if diff:
            raise AmfError(
                f"{run} was started with another config (differs in {', '.join(diff[:6])}); "
                f"use a new --out folder or the same config"
            )
    elif dist.main:
        run.write_config(cfg)
    if run.splits.is_file():
        return matching(run.read_splits(), df)
    s = cfg["splits"]
    splits = make_splits(df, s["kind"], int(s["folds"]), int(s["seed"]), int(s.get("tries", 16)))
    if dist.main:
        run.write_splits(splits)
    return splits


def cosine_with_warmup(total: int, warmup: int):
    def f(step):
        if step < warmup:
            return (step + 1) / max(1, warmup)
        t = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return f


def param_groups(model, cfg):
    """AdamW groups: no weight decay on biases and norms; the new head/attention at lr * head_lr_scale."""
    t = cfg["train"]
    head_ids = head_parameters(model)
    groups = {}
    for p in model.parameters():
        if not p.requires_grad:
            continue
        is_head = id(p) in head_ids
        decay = p.ndim > 1
        key = (is_head, decay)
        groups.setdefault(key, []).append(p)
    return [
        {
            "params": ps,
            "lr": t["lr"] * (t["head_lr_scale"] if h else 1.0),
            "weight_decay": t["weight_decay"] if d else 0.0,
        }
        for (h, d), ps in groups.items()
    ]


@torch.no_grad()
def predict(model, loader, device, amp: bool, channels_last: bool, progress: bool = False) -> tuple:
    """(rows, logits) of a loader, in eval mode, fp32 outputs."""
    model.eval()
    rows, logits = [], []
    from tqdm import tqdm

    for x, _, r in tqdm(loader, desc="  validate", leave=False, disable=not progress, mininterval=2):
        x = x.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out = model(x)
        logits.append(out.float().view(-1).cpu())
        rows.append(r)
    return torch.cat(rows).numpy(), torch.cat(logits).numpy().astype(np.float64)


def oof_table(df: pd.DataFrame, rows: np.ndarray, logits: np.ndarray, k: int) -> pd.DataFrame:

    sub = df.iloc[rows]
    out = pd.DataFrame(
        {
            "image_id": sub["image_id"].values,
            "fold": k,
            "probability": sigmoid(logits),
            "logit": logits,
            "label": sub["label"].values,
            "soft": sub["soft"].values,
            "slide": sub["slide"].values,
            "source": sub["source"].values,
            "extra": sub["extra"].values if "extra" in sub else False,
        }
    )
    for col in DOMAIN_COLUMNS:
        out[col] = sub[col].values
        out[f"raw_{col}"] = sub[f"raw_{col}"].values
    return out


def train_step(
    model,
    train_model,
    teacher,
    optimizer,
    x,
    target,
    cfg: dict,
    amp: bool,
    pos_weight=None,
    align_batch=None,
    control_generator: torch.Generator | None = None,
) -> dict:
    """One optimiser step of the configured recipe; returns the detached losses (device tensors).

    loss = BCE(logit, target) [+ kd_weight * T^2 KL(teacher || student)] [+ align.weight * max(0, alignment)].
    MixStyle acts inside the forward pass (hooks); the EMA update and the schedule step are the caller's.
    ALIGN_BATCH (the batch's labels, domain codes, number of values): the alignment is measured on it, and joins
    the loss with align.enabled; with CONTROL_GENERATOR also its shuffled-domain control (alignment_control).
    Besides each loss, the returned w_* are the terms as weighted in the loss (their sum is the loss).
    """
    smoothing = float(cfg["train"]["label_smoothing"])
    if smoothing:
        target = target * (1 - smoothing) + 0.5 * smoothing
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
        logit, feats = train_model(x, return_features=True)
        teacher_logit = None
        if teacher is not None and cfg["ema"]["kd_weight"] > 0:
            with torch.no_grad():
                teacher_logit = teacher.module(x)
    logit = logit.float().view(-1)
    loss_cls = F.binary_cross_entropy_with_logits(logit, target.float(), pos_weight=pos_weight)
    zero = torch.zeros((), device=x.device)
    out = {"cls": loss_cls, "kd": zero, "align": zero, "w_kd": zero, "w_align": zero}
    if teacher_logit is not None:
        out["kd"] = kd_loss(logit, teacher_logit, cfg["ema"]["temperature"])
        out["w_kd"] = cfg["ema"]["kd_weight"] * out["kd"]
    if align_batch is not None:
        a_cfg = cfg["align"]
        acts = bool(a_cfg["enabled"] and a_cfg["weight"] > 0)
        with contextlib.nullcontext() if acts else torch.no_grad():
            out["align"] = alignment_loss(feats, *align_batch, estimator=a_cfg["estimator"])
        if acts:  # an unbiased estimate below 0 is noise: minimising it further spreads each domain apart (clamped)
            out["w_align"] = a_cfg["weight"] * out["align"].clamp_min(0.0)
        if control_generator is not None:
            out["align_control"] = alignment_control(feats, *align_batch, a_cfg["estimator"], control_generator)
    loss = loss_cls + out["w_kd"] + out["w_align"]
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if cfg["train"]["grad_clip"]:
        torch.nn.utils.clip_grad_norm_(model.parameters(), float(cfg["train"]["grad_clip"]))
    optimizer.step()
    return {"loss": loss.detach()} | {key: v.detach() for key, v in out.items()}


# ---- one fold, step by step -------------------------------------------------------------------


@dataclass
class FoldData:
    """A fold's rows and loaders. train_rows train (an epoch is STEPS batches of them); val_rows are the held-out
    fold (reported; they choose the epoch only with train.selection validation); inner_rows, with train.selection
    inner, choose the epoch and do not train (else None)."""

    train_rows: np.ndarray
    val_rows: np.ndarray
    inner_rows: np.ndarray | None
    steps: int
    train_ds: PatchDataset
    sampler: EpochSampler
    train: object  # a DataLoader of (x, target, rows), or gpu_augment.DeviceBatches (the same batches)
    val: torch.utils.data.DataLoader
    inner: torch.utils.data.DataLoader | None


@dataclass
class LossInputs:
    """What train_step needs besides the batch, on the device once (no copy and no host sync per step): the
    positive-class weight (imbalance.mode loss) and, for the domain alignment, every figure's label and domain
    codes. The alignment is measured whenever align.columns name a label, in every run (a run without alignment
    shows how far apart its domains are left), with its shuffled-domain control."""

    pos_weight: torch.Tensor | None
    labels: torch.Tensor
    domains: torch.Tensor
    n_domain_values: int
    measure: bool  # align.columns name a label: the alignment is measured (and joins the loss with align.enabled)
    control: torch.Generator | None = None  # draws the shuffled-domain control's permutations

    def align_batch(self, rows: torch.Tensor):
        if not self.measure:
            return None
        on_device = rows.to(self.labels.device, non_blocking=True)
        return self.labels[on_device], self.domains[on_device], self.n_domain_values


@dataclass
class FoldState:
    """What one epoch hands to the next, and last.pt keeps of it. EPOCH: the next epoch to train (0-based);
    BEST: the selection score of the epoch kept so far; STEP: optimiser steps so far (the EMA warm-up's clock)."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    teacher: object | None
    mixer: object | None
    epoch: int = 0
    best: float = -np.inf
    history: list = field(default_factory=list)
    step: int = 0


def already_done(fold: FoldDir, restart: bool, dist: Dist, log) -> dict | None:
    """The fold's done.json if it is finished, so that rerunning a command trains only what is missing. With
    --restart the marker goes first (None is returned): a restarted fold is not done until it ends again."""
    if not fold.is_done():
        return None
    if not restart:
        log(f"fold {fold.k}: already done ({fold.done}); skipped")
        return fold.read_done()
    dist.barrier()
    if dist.main:
        fold.done.unlink()
    return None


def fold_rows(cfg: dict, splits: pd.DataFrame, k: int, seed: int) -> tuple:
    """(training, held-out, inner) rows of fold K. The inner rows (train.selection inner) are slides of the
    training folds taken out of training: what chooses the epoch never includes the held-out fold."""
    train_rows, val_rows = training.splits.fold_rows(splits, k)
    inner_rows = None
    if cfg["train"]["selection"] == "inner":
        train_rows, inner_rows = inner_split(splits, train_rows, int(cfg["train"]["inner_folds"]), seed)
    return train_rows, val_rows, inner_rows


def build_model(cfg: dict, device, channels_last: bool, seed: int, k: int, log):
    """(classifier on DEVICE, MixStyle mixer or None). The mixer draws from its own seeded generator, which
    last.pt saves, so that a resumed fold mixes as an uninterrupted one."""
    model = create_classifier(cfg, log=lambda line: log(f"fold {k}: {line}"))
    mixer = None
    if cfg["mixstyle"]["enabled"]:
        mixer, where = attach_mixstyle(model.timm_model, cfg["mixstyle"], torch.Generator().manual_seed(seed))
        log(f"fold {k}: MixStyle after {', '.join(where)}")
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model, mixer


def build_loaders(cfg: dict, df: pd.DataFrame, cache, rows: tuple, dist: Dist, seed: int, k: int, log) -> FoldData:
    """The fold's datasets and loaders. The epoch length (steps) is fixed here, once, for the sampler, the
    learning-rate schedule and the EMA warm-up alike. Training batches are EpochSampler's draws (seeded per epoch,
    sharded across ranks, class-weighted with imbalance.mode sampler); with data.device_augment they are gathered
    and augmented on the device from the same draws."""
    t_cfg, d_cfg = cfg["train"], cfg["data"]
    train_rows, val_rows, inner_rows = rows
    device = dist.device
    mean, std = d_cfg["mean"], d_cfg["std"]
    train_ds = PatchDataset(
        df,
        train_rows,
        d_cfg["input_size"],
        mean,
        std,
        d_cfg["resize"],
        Augment(cfg["augment"]),
        cache,
        d_cfg["soft_labels"],
        seed,
    )
    val_ds = PatchDataset(df, val_rows, d_cfg["input_size"], mean, std, d_cfg["resize"], None, cache)
    inner_ds = (
        None
        if inner_rows is None
        else PatchDataset(df, inner_rows, d_cfg["input_size"], mean, std, d_cfg["resize"], None, cache)
    )
    batch = int(t_cfg["batch_size"])
    steps = len(train_rows) // (batch * dist.world)
    if t_cfg["max_steps_per_epoch"]:
        steps = min(steps, int(t_cfg["max_steps_per_epoch"]))
    if steps < 1:
        raise AmfError(f"fold {k}: {len(train_rows)} training figures are fewer than one batch of {batch}")
    weights = None
    y_train = df["label"].to_numpy()[train_rows]
    if cfg["imbalance"]["mode"] == "sampler":
        counts = np.bincount(y_train, minlength=2).astype(float)
        weights = 1.0 / counts[y_train]
    sampler = EpochSampler(len(train_rows), weights, seed, dist.rank, dist.world, limit=steps * batch)
    workers = int(d_cfg["num_workers"])
    loader_kw = dict(num_workers=workers, pin_memory=device.type == "cuda", persistent_workers=False)
    if workers > 0:
        loader_kw["prefetch_factor"] = 4
    train_dl = torch.utils.data.DataLoader(train_ds, batch_size=batch, sampler=sampler, drop_last=True, **loader_kw)
    val_dl = torch.utils.data.DataLoader(val_ds, batch_size=int(t_cfg["eval_batch_size"]), shuffle=False, **loader_kw)
    inner_dl = (
        None
        if inner_ds is None
        else torch.utils.data.DataLoader(inner_ds, batch_size=int(t_cfg["eval_batch_size"]), shuffle=False, **loader_kw)
    )
    if gpu_augment.wanted(d_cfg["device_augment"], device, cache, d_cfg["resize"]):  # same sampler, batches made there
        train_dl = gpu_augment.DeviceBatches(
            train_ds, sampler, batch, cfg["augment"], device, d_cfg["device_memory_gb"]
        )
        log(
            f"fold {k}: training batches augmented on {device} (data.device_augment; "
            f"patches {'on the device' if train_dl.resident else 'in pinned host memory'})"
        )
    return FoldData(train_rows, val_rows, inner_rows, steps, train_ds, sampler, train_dl, val_dl, inner_dl)


def loss_inputs(cfg: dict, df: pd.DataFrame, y_train: np.ndarray, device, seed: int = 0) -> LossInputs:
    """LossInputs of the fold: the positive-class weight from its training labels, the domain codes of every
    figure (align.columns, factorised over the whole table)."""
    pos_weight = None
    if cfg["imbalance"]["mode"] == "loss":
        pos_weight = torch.tensor(float((y_train == 0).sum()) / max(1, (y_train == 1).sum()), device=device)
    hard_labels = torch.from_numpy(df["label"].to_numpy().astype(np.int64)).to(device)
    align_cols = list(cfg["align"]["columns"])
    unknown = [c for c in align_cols if c not in ALIGN_COLUMNS]
    if unknown:
        raise AmfError(f"config: align.columns {unknown} are not among {list(ALIGN_COLUMNS)}")
    domain_codes = torch.tensor(
        np.stack([pd.factorize(df[c])[0] for c in align_cols], 1) if align_cols else np.zeros((len(df), 0)),
        dtype=torch.long,
    ).to(device)
    n_domain_values = int(domain_codes.max()) + 1 if domain_codes.numel() else 1
    control = torch.Generator().manual_seed(int(seed)) if align_cols else None
    return LossInputs(pos_weight, hard_labels, domain_codes, n_domain_values, bool(align_cols), control)


def make_optimiser(cfg: dict, model, steps: int):
    """(AdamW over param_groups, its schedule: linear warm-up over train.warmup_epochs, then cosine decay over
    all of train.epochs; stepped once per optimiser step)."""
    t_cfg = cfg["train"]
    optimizer = torch.optim.AdamW(param_groups(model, cfg), lr=t_cfg["lr"])
    total_steps = int(t_cfg["epochs"]) * steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, cosine_with_warmup(total_steps, int(round(float(t_cfg["warmup_epochs"]) * steps)))
    )
    return optimizer, scheduler


def resume(state: FoldState, fold: FoldDir, cuda: bool, log) -> None:
    """Continue after the last epoch in last.pt: weights, optimiser, schedule, EMA teacher, history, step count
    and the random generators (dropout, drop-path, MixStyle's lambda), so that a resumed fold ends where an
    uninterrupted one ends. A last.pt that does not fit this fold's model is one error naming it."""
    saved = fold.load_last()
    try:
        state.model.load_state_dict(saved["model"])
        state.optimizer.load_state_dict(saved["optimizer"])
        state.scheduler.load_state_dict(saved["scheduler"])
        if state.teacher is not None and saved.get("teacher") is not None:
            state.teacher.module.load_state_dict(saved["teacher"])
        state.epoch, state.best, state.history = int(saved["epoch"]) + 1, float(saved["best"]), list(saved["history"])
        state.step = int(saved["step"])
        torch.set_rng_state(saved["rng"]["torch"])
        if state.mixer is not None and saved["rng"].get("mixstyle") is not None:
            state.mixer.generator.set_state(saved["rng"]["mixstyle"])
        if cuda and saved["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(saved["rng"]["cuda"])
    except (RuntimeError, KeyError, TypeError, ValueError, AttributeError, IndexError) as e:  # torch's loaders
        raise AmfError(
            f"{fold.last} does not fit fold {fold.k}'s model and optimiser ({one_line(e)[:200]}); delete it to train "
            f"the fold from its first epoch (or train with --restart)"
        ) from None
    if not 0 <= state.epoch <= int(1e6) or not all(isinstance(row, dict) for row in state.history):
        raise AmfError(f"{fold.last} holds no epoch count and history of training.train; delete it or --restart")
    log(f"fold {fold.k}: resumed from {fold.last} after epoch {saved['epoch']}")


def for_training(model, cfg: dict, dist: Dist):
    """The module the training forward runs through: DDP across ranks, compiled with train.compile. Evaluation,
    selection and export use MODEL itself (eager, one process)."""
    train_model = model
    if dist.world > 1:
        cuda = dist.device.type == "cuda"
        train_model = torch.nn.parallel.DistributedDataParallel(
            model,
            device_ids=[dist.device.index] if cuda else None,
            find_unused_parameters=cfg["model"]["finetune"] == "frozen",
        )
    if cfg["train"]["compile"]:
        train_model = torch.compile(train_model, dynamic=False)
    return train_model


def train_epoch(
    state: FoldState,
    data: FoldData,
    loss_in: LossInputs,
    train_model,
    cfg: dict,
    dist: Dist,
    epoch: int,
    amp: bool,
    channels_last: bool,
    progress: Progress,
    tracker: tracking.FoldTracker,
) -> dict:
    """One epoch of optimiser steps (each followed by the schedule's and the EMA teacher's update); returns the
    start of its epochs.csv row: learning rate at its start, throughput, mean losses, the EMA decay in effect at
    its end. The losses are summed on the device: no host synchronisation per step (but when PROGRESS shows the
    mean loss). TRACKER gets the first batch, once per fold."""
    device = dist.device
    data.sampler.set_epoch(epoch)
    data.train_ds.set_epoch(epoch)
    train_model.train()
    sums = {}
    lr_start = state.optimizer.param_groups[0]["lr"]
    seen, t0 = 0, time.perf_counter()
    progress.start_epoch(epoch)
    for x, target, rows in data.train:
        x = x.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if tracker.wants_images:
            tracker.images(x, epoch)
        target = target.to(device, non_blocking=True)
        losses = train_step(
            state.model,
            train_model,
            state.teacher,
            state.optimizer,
            x,
            target,
            cfg,
            amp,
            loss_in.pos_weight,
            loss_in.align_batch(rows),
            loss_in.control,
        )
        state.scheduler.step()
        state.step += 1
        if state.teacher is not None:
            state.teacher.update(state.model, step=state.step)
        n = len(x)
        seen += n
        for key, v in losses.items():
            sums[key] = sums.get(key, 0.0) + v * n
        if progress.step(n):
            progress.loss_so_far(float(sums["loss"]) / seen)
    train_s = time.perf_counter() - t0
    means = {key: float(v) / max(1, seen) for key, v in sums.items()}
    return {
        "epoch": epoch + 1,
        "lr": lr_start,
        "images_per_s": seen * dist.world / train_s,
        **{f"train_{key}": means.get(key) for key in ("loss", "cls", "kd", "align", "align_control")},
        **loss_shares(means),
        "ema_decay": state.teacher.last_decay if state.teacher is not None else None,
    }


SHARES = {"cls": "cls", "kd": "w_kd", "align": "w_align"}  # epochs.csv train_share_<key>: the weighted term


def loss_shares(means: dict) -> dict:
    """Each term's share of the epoch's mean loss, as weighted in it (train_share_cls, _kd, _align: they add up to
    1; a term the recipe leaves out has share 0)."""
    total = means.get("loss") or float("nan")
    return {f"train_share_{key}": means.get(w, 0.0) / total for key, w in SHARES.items()}


def validate_and_select(
    row: dict,
    state: FoldState,
    data: FoldData,
    labels: np.ndarray,
    cfg: dict,
    device,
    channels_last: bool,
    progress: bool,
) -> tuple:
    """Adds the epoch's held-out metrics (val_*: monitoring), the inner ones (inner_*) and row["best"]: whether
    train.selection keeps this epoch so far (last: every epoch in turn, so the last one; inner / validation: the
    best train.select on the inner or held-out figures). The evaluated model is the EMA teacher with
    ema.evaluate, run in fp32: the out-of-fold probabilities are those of the exported fp32 model.
    Returns (evaluated model, held-out rows, their logits)."""
    t_cfg = cfg["train"]
    evaluated = state.teacher.module if state.teacher is not None and cfg["ema"]["evaluate"] else state.model
    rows_v, logits_v = np.zeros(0, int), np.zeros(0)
    row.update(dict.fromkeys(("val_balanced_accuracy", "val_roc_auc", "val_sensitivity", "val_specificity")))
    row["val_loss"] = None
    if len(data.val_rows):  # splits.kind all holds none out: nothing to report
        rows_v, logits_v = predict(evaluated, data.val, device, False, channels_last, progress)
        y_val = labels[rows_v]
        s = metrics.summary(y_val, sigmoid(logits_v), threshold=0.5)
        row.update({f"val_{key}": s[key] for key in ("balanced_accuracy", "roc_auc", "sensitivity", "specificity")})
        row["val_loss"] = float(
            F.binary_cross_entropy_with_logits(torch.from_numpy(logits_v), torch.from_numpy(y_val.astype(np.float64)))
        )
    if data.inner is not None:
        rows_i, logits_i = predict(evaluated, data.inner, device, False, channels_last, progress)
        s = metrics.summary(labels[rows_i], sigmoid(logits_i), threshold=0.5)
        row.update({f"inner_{key}": s[key] for key in ("balanced_accuracy", "roc_auc")})
    selection = t_cfg["selection"]
    if selection == "last":  # nothing selected: the last epoch is kept
        score = float(row["epoch"])
    else:
        score = row[f"{'inner' if selection == 'inner' else 'val'}_{t_cfg['select']}"]
        score = -np.inf if score is None else score
    row["best"] = bool(score > state.best)
    if row["best"]:
        state.best = score
    return evaluated, rows_v, logits_v


def save_epoch(
    fold: FoldDir,
    state: FoldState,
    row: dict,
    evaluated,
    rows_v,
    logits_v,
    df: pd.DataFrame,
    cfg: dict,
    cuda: bool,
    t0: float,
) -> None:
    """The epoch's files, each written atomically: the kept epoch's best.pt and oof.csv (when this epoch is
    kept), epochs.csv, and last.pt last: a fold stopped before last.pt is written redoes the epoch."""
    selection = cfg["train"]["selection"]
    if row["best"]:
        save_atomic(
            {
                "state_dict": lora_folded_state_dict(evaluated),
                "epoch": row["epoch"],
                "selection": selection,
                "metric": cfg["train"]["select"] if selection != "last" else "epoch",
                "value": float(state.best),
                "evaluated": "ema" if evaluated is not state.model else "student",
                "backbone": cfg["model"]["backbone"],
                "fold": fold.k,
            },
            fold.best,
        )
        if len(rows_v):  # splits.kind all: no held-out figure, no oof.csv
            write_csv_atomic(oof_table(df, rows_v, logits_v, fold.k), fold.oof)
    row["seconds"] = time.perf_counter() - t0
    state.history.append(row)
    write_csv_atomic(pd.DataFrame(state.history), fold.epochs)
    teacher, mixer = state.teacher, state.mixer
    save_atomic(
        {
            "model": state.model.state_dict(),
            "optimizer": state.optimizer.state_dict(),
            "scheduler": state.scheduler.state_dict(),
            "teacher": teacher.module.state_dict() if teacher is not None else None,
            "epoch": row["epoch"] - 1,
            "best": state.best,
            "history": state.history,
            "step": state.step,
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state() if cuda else None,
                "mixstyle": mixer.generator.get_state() if mixer is not None else None,
            },
        },
        fold.last,
    )


def fold_line(cfg: dict, data: FoldData, labels: np.ndarray, dist: Dist, k: int, amp: bool, channels_last: bool) -> str:
    t_cfg, inner = cfg["train"], data.inner_rows
    selection, epochs, batch = t_cfg["selection"], int(t_cfg["epochs"]), int(t_cfg["batch_size"])
    return (
        f"fold {k}: {len(data.train_rows)} train ({int(labels[data.train_rows].sum())} atypical), "
        f"{len(data.val_rows)} held out; "
        f"selection {selection}{f' on {len(inner)} inner figures' if inner is not None else ''}"
        f"{' (optimistic: on the held-out fold)' if selection == 'validation' else ''}; "
        f"{data.steps} steps/epoch x {epochs} epochs, batch {batch} x {dist.world} process(es) on {dist.device}"
        f"{', bf16' if amp else ''}{', channels_last' if channels_last else ''}"
    )


def epoch_line(row: dict, where: str) -> str:
    """WHERE ("fold 2 (3 of 5), epoch 4 of 60"): the epoch's losses, throughput and held-out metrics."""
    val_txt = " ".join(
        f"{key[4:]} {row[key]:.3f}" for key in ("val_balanced_accuracy", "val_roc_auc") if row[key] is not None
    )
    control = row.get("train_align_control")
    shares = "/".join(f"{100 * row[f'train_share_{key}']:.0f}" for key in SHARES)
    return (
        f"{where}: loss {row['train_loss']:.4f} (cls {row['train_cls']:.4f} "
        f"kd {row['train_kd']:.4f} align {row['train_align']:.4f}"
        f"{f' vs shuffled {control:.4f}' if control is not None else ''}; % cls/kd/align {shares}), "
        f"{row['images_per_s']:.0f} img/s; {f'val {val_txt}' if val_txt else 'no held-out figures'}"
        f"{'; kept so far (best.pt)' if row['best'] else ''}"
    )


def write_done(fold: FoldDir, state: FoldState, data: FoldData, cfg: dict) -> dict:
    """done.json: the fold is finished (a rerun skips it, training.results.oof pools it), with the kept epoch, how it
    was chosen, and the EMA decay that acted."""
    t_cfg, teacher = cfg["train"], state.teacher
    selection = t_cfg["selection"]
    hist = pd.DataFrame(state.history)
    best_row = hist.loc[hist["best"]].iloc[-1].to_dict() if len(hist) else {}
    done = {
        "fold": fold.k,
        "epochs": int(t_cfg["epochs"]),
        "best_epoch": int(best_row.get("epoch", 0)),
        "selection": selection,
        "select": t_cfg["select"] if selection != "last" else None,
        "best_value": float(state.best) if selection != "last" else None,
        "n_inner": len(data.inner_rows) if data.inner_rows is not None else 0,
        "val_balanced_accuracy": best_row.get("val_balanced_accuracy"),
        "val_roc_auc": best_row.get("val_roc_auc"),
        "ema_decay": teacher.last_decay if teacher is not None else None,  # the decay of the last update
        "ema_decay_configured": float(cfg["ema"]["decay"]) if teacher is not None else None,
        "ema_warmup_steps": teacher.warmup_steps if teacher is not None else None,
    }
    write_json_atomic(done, fold.done)
    return done


def train_fold(
    cfg: dict,
    df: pd.DataFrame,
    cache,
    splits: pd.DataFrame,
    k: int,
    run_dir,
    dist: Dist,
    restart: bool = False,
    progress: Progress | None = None,
    log=print,
) -> dict | None:
    """Train fold K into RUN_DIR/fold{k} (resuming from its last.pt unless RESTART; a finished fold is skipped)
    and return its done.json (None on ranks other than the main one). PROGRESS shows where the work is (on the
    main rank; None: epoch lines only); the fold's trackers (training/train/tracking.py) log each epoch."""
    progress = progress or Progress([k], int(cfg["train"]["epochs"]), f"fold {k}", show=False, write=log)
    fold = RunDir(run_dir).fold(k)
    fold.path.mkdir(parents=True, exist_ok=True)
    with fold.exclusive() if dist.main else contextlib.nullcontext():  # one process per fold (its DDP ranks: one)
        if dist.main:
            fold.remove_temporaries()
        return train_locked_fold(fold, cfg, df, cache, splits, dist, restart, progress, log)


def train_locked_fold(
    fold: FoldDir, cfg: dict, df: pd.DataFrame, cache, splits: pd.DataFrame, dist: Dist, restart, progress, log
) -> dict | None:
    t_cfg, k = cfg["train"], fold.k
    done = already_done(fold, restart, dist, log)
    if done is not None:
        progress.skip(k)
        return done
    device = dist.device
    cuda = device.type == "cuda"
    amp = t_cfg["amp"] == "bf16" or (t_cfg["amp"] == "auto" and cuda)
    channels_last = t_cfg["channels_last"] is True or (t_cfg["channels_last"] == "auto" and cuda)
    seed = int(t_cfg["seed"]) * 1000 + k
    seed_everything(seed)

    rows = fold_rows(cfg, splits, k, seed)
    model, mixer = build_model(cfg, device, channels_last, seed, k, log)
    data = build_loaders(cfg, df, cache, rows, dist, seed, k, log)
    world_cfg = ddp.for_world(cfg, dist.world, data.steps)  # train.lr and ema.decay as they act with G processes
    teacher = make_teacher(model, world_cfg["ema"], data.steps) if cfg["ema"]["enabled"] else None
    labels = df["label"].to_numpy()
    loss_in = loss_inputs(cfg, df, labels[data.train_rows], device, seed)
    state = FoldState(model, *make_optimiser(world_cfg, model, data.steps), teacher, mixer)
    if fold.last.is_file() and not restart:
        resume(state, fold, cuda, log)
    train_model = for_training(model, cfg, dist)
    log(fold_line(cfg, data, labels, dist, k, amp, channels_last))
    log(f"fold {k}: {ddp.world_line(cfg, dist.world, data.steps)}")
    tracker = tracking.FoldTracker(cfg, fold.path, k, fold.path.parent.name, state.epoch, enabled=dist.main)
    progress.start_fold(k, state.epoch, data.steps)

    try:
        for epoch in range(state.epoch, int(t_cfg["epochs"])):
            t0 = time.perf_counter()
            ddp.reseed_rank(seed, dist.rank, epoch, mixer)  # ranks > 0: their own drop path and MixStyle
            row = train_epoch(
                state, data, loss_in, train_model, cfg, dist, epoch, amp, channels_last, progress, tracker
            )
            if dist.main:
                evaluated, rows_v, logits_v = validate_and_select(
                    row, state, data, labels, cfg, device, channels_last, progress.show and progress.tty
                )
                save_epoch(fold, state, row, evaluated, rows_v, logits_v, df, cfg, cuda, t0)
                tracker.epoch(row)
                progress.epoch_done(epoch_line(row, progress.where()))
            dist.barrier()
    finally:
        tracker.close()
    done = write_done(fold, state, data, cfg) if dist.main else None
    if mixer is not None:
        mixer.active = False
    dist.barrier()
    return done
