"""What changes with the number of training processes (torchrun's world size, G), made explicit.

  learning rate   train.lr_scaling none: train.lr whatever G (the global batch is train.batch_size x G);
                  linear: train.lr x G (the linear scaling rule for a G x larger global batch)
  EMA teacher     ema.decay_scaling none: ema.decay per optimiser step; an epoch has G x fewer steps, so the
                  teacher's horizon, 1 / (1 - decay) steps, lasts G x more epochs; world: decay ** G per step,
                  the horizon in epochs of one process (the warm-up, ema.warmup_epochs, is in epochs already);
                  ema.horizon_epochs H (set): the decay follows the steps per epoch of each process, so the
                  horizon is H epochs whatever G (ema.decay and ema.decay_scaling then do not act)
  seeds           every rank builds the same model from the fold's seed; from the first epoch on, ranks other
                  than 0 reseed torch's generators (drop path, MixStyle's lambda) and MixStyle's own
                  (whether to mix, the partner) with rank_seed(seed, rank, epoch), so that those draws differ
                  across ranks; rank 0 keeps the seed's stream, so one process trains exactly as before
  augmentation    drawn per global draw position on both data paths (training/data.py, training/train/gpu_augment.py):
                  the same views whatever G, each rank taking its own positions
world_line() is the line training.train prints at the start of a fold.
Look:  python -m training.inspect ddp CONFIG [--world G] [--steps S]   (that line for G processes)
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from training.train.recipe import teacher_decay


def effective_lr(cfg: dict, world: int) -> float:
    """The base learning rate the optimiser uses with WORLD processes (train.lr_scaling)."""
    lr = float(cfg["train"]["lr"])
    return lr * world if cfg["train"].get("lr_scaling", "none") == "linear" else lr


def effective_ema_decay(cfg: dict, world: int, steps_per_epoch: int = 1) -> float:
    """The EMA teacher's decay per optimiser step with WORLD processes, each STEPS_PER_EPOCH steps an epoch
    (ema.horizon_epochs, else ema.decay and ema.decay_scaling)."""
    if cfg["ema"].get("horizon_epochs") is not None:
        return teacher_decay(cfg["ema"], steps_per_epoch)
    decay = float(cfg["ema"]["decay"])
    return decay**world if cfg["ema"].get("decay_scaling", "none") == "world" else decay


def for_world(cfg: dict, world: int, steps_per_epoch: int = 1) -> dict:
    """A copy of CFG with train.lr and ema.decay as the optimiser and the teacher use them with WORLD processes
    of STEPS_PER_EPOCH steps an epoch (config.yaml keeps the configured values)."""
    out = copy.deepcopy(cfg)
    out["train"]["lr"] = effective_lr(cfg, world)
    out["ema"]["decay"] = effective_ema_decay(cfg, world, steps_per_epoch)
    return out


def horizon_epochs(decay: float, steps_per_epoch: int) -> float:
    """The EMA teacher's horizon, 1 / (1 - decay) optimiser steps, in epochs."""
    return float("inf") if decay >= 1 else 1.0 / (1.0 - decay) / max(1, steps_per_epoch)


def world_line(cfg: dict, world: int, steps_per_epoch: int) -> str:
    """What the world size does to this fold's training, in one line."""
    t, e = cfg["train"], cfg["ema"]
    batch = int(t["batch_size"])
    lr = effective_lr(cfg, world)
    text = f"{world} process(es), global batch {batch * world} ({batch} x {world}); lr {lr:g}"
    if world > 1:
        text += f" (train.lr_scaling {t.get('lr_scaling', 'none')}: train.lr {float(t['lr']):g}"
        text += f", linear would be {float(t['lr']) * world:g})" if t.get("lr_scaling", "none") == "none" else ")"
    if e["enabled"]:
        decay = effective_ema_decay(cfg, world, steps_per_epoch)
        text += (
            f"; EMA decay {decay:.6g} per step, horizon {1 / max(1e-12, 1 - decay):.0f} steps = "
            f"{horizon_epochs(decay, steps_per_epoch):.3g} epochs"
        )
        if e.get("horizon_epochs") is not None:
            text += f" (ema.horizon_epochs {float(e['horizon_epochs']):g}: the same with any number of processes)"
        elif world > 1:
            one = horizon_epochs(float(e["decay"]), steps_per_epoch * world)
            text += f" (ema.decay_scaling {e.get('decay_scaling', 'none')}; one process: {one:.3g} epochs)"
    return text


def rank_seed(seed: int, rank: int, epoch: int) -> int:
    """The seed of rank RANK (> 0) in epoch EPOCH: a function of the three only, so a resumed fold reseeds as
    an uninterrupted one does."""
    return int(np.random.SeedSequence([int(seed), int(rank), int(epoch)]).generate_state(1)[0])


def reseed_rank(seed: int, rank: int, epoch: int, mixer=None) -> None:
    """At the start of EPOCH on a rank other than 0: its own drop-path and MixStyle draws. Rank 0 (and a single
    process) is left alone: its stream is the seed's, saved in and resumed from last.pt."""
    if rank == 0:
        return
    s = rank_seed(seed, rank, epoch)
    torch.manual_seed(s)
    if mixer is not None and mixer.generator is not None:
        mixer.generator.manual_seed(s)
