"""Parity of the training data path under DDP: what each of G ranks is fed, against one process.

  python -m bench.ddp_parity --out DIR/single                                       (one process: the reference)
  torchrun --standalone --nproc_per_node 2 -m bench.ddp_parity --out DIR/ranks      (gloo on the CPU, nccl on GPUs)
  python -m bench.ddp_parity --compare DIR/single DIR/ranks                         (prints the comparison, JSON)

Every rank builds its training batches as training.train does (train.Dist, train.build_loaders with the smoke
config; --path device: data.device_augment true, the batched augmentation of training/train/gpu_augment.py; --path cpu:
the DataLoader path) over 64 copies of one generated patch, so that two views differ only by their augmentation,
and writes DIR/rank{r}.pt: the draw positions it took and its views of them (one epoch), and a few draws of
torch's generator and of MixStyle's after training.train.ddp.reseed_rank (what drop path and MixStyle use).
compare() then says whether the union of the ranks' views is the single process's for the same positions, how
many of the k-th views of rank 0 and rank 1 are the same (the bug this guards against: every rank drew the
same augmentation for its k-th figure), and whether the ranks' generators differ while rank 0's is one process's.
bench.gpu_check runs it (two GPUs: nccl; otherwise gloo on the CPU); test/test_training_ddp.py checks it on the CPU.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from amf.cli import first_sentence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

N_FIGURES, BATCH, EPOCH, SEED = 64, 8, 1, 5
STD = 0.25  # the normalisation's std here: one uint8 level is 1 / 255 / STD in the views' units
# a view's ops are per figure, but a kernel may round differently for another batch (a grouped convolution of
# another width): one uint8 level is float rounding; a different augmentation differs by far more
ONE_LEVEL = 1 / 255 / STD + 1e-6


def fed(out: Path, path: str, device: str) -> None:
    """This rank's views of one epoch and its generators' draws -> OUT/rank{r}.pt."""
    import pandas as pd

    from training import config
    from training.train import ddp
    from training.train.kfold import Dist, build_loaders, build_model, seed_everything

    dist = Dist(device)
    seed_everything(SEED)  # as train_fold: every rank builds the same model from the fold's seed
    cfg = config.load(
        "smoke",
        [
            f"data.device_augment={'true' if path == 'device' else 'false'}",
            "data.input_size=64",
            "data.mean=[0.5,0.5,0.5]",
            f"data.std=[{STD},{STD},{STD}]",
            f"train.batch_size={BATCH}",
        ],
    )
    rng = np.random.default_rng(0)
    patch = rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)  # no symmetry: every flip and rotation shows
    cache = [patch] * N_FIGURES
    df = pd.DataFrame({"path": ["-"] * N_FIGURES, "label": np.arange(N_FIGURES) % 3 == 0, "soft": 0.0})
    df["label"] = df["label"].astype(int)
    rows = (np.arange(N_FIGURES), np.arange(4), None)
    data = build_loaders(cfg, df, cache, rows, dist, SEED, 0, lambda *a: None)
    data.sampler.set_epoch(EPOCH)
    data.train_ds.set_epoch(EPOCH)
    draws = [d for _, d in data.sampler][: data.steps * BATCH]
    views = torch.cat([x.cpu() for x, _, _ in data.train])[: len(draws)]
    _, mixer = build_model(cfg, dist.device, False, SEED, 0, lambda *a: None)
    ddp.reseed_rank(SEED, dist.rank, EPOCH, mixer)
    generators = {
        "torch": torch.rand(4).tolist(),
        "device": torch.rand(4, device=dist.device).cpu().tolist(),
        "mixstyle": torch.rand(4, generator=mixer.generator).tolist(),
    }
    out.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "rank": dist.rank,
            "world": dist.world,
            "path": path,
            "draws": draws,
            "views": views,
            "generators": generators,
        },
        out / f"rank{dist.rank}.pt",
    )
    dist.barrier()
    dist.close()


def load(folder) -> list[dict]:
    files = sorted(Path(folder).glob("rank*.pt"), key=lambda p: int(p.stem[4:]))
    if not files:
        raise FileNotFoundError(f"{folder}: no rank*.pt (run bench.ddp_parity --out {folder} first)")
    return [torch.load(f, weights_only=True) for f in files]


def compare(single_dir, ranks_dir) -> dict:
    """The ranks' views and generators against the single process's (see the module docstring)."""
    (one,), ranks = load(single_dir), load(ranks_dir)
    ref = dict(zip(one["draws"], one["views"]))
    diffs = [float((view - ref[d]).abs().max()) for r in ranks for d, view in zip(r["draws"], r["views"])]
    positions = sorted(d for r in ranks for d in r["draws"])
    k = min(len(r["draws"]) for r in ranks)
    same_kth = sum(bool(torch.equal(ranks[0]["views"][i], ranks[1]["views"][i])) for i in range(k)) if ranks[1:] else 0
    gens = [r["generators"] for r in ranks]
    return {
        "ranks": len(ranks),
        "path": ranks[0]["path"],
        "positions": len(positions),
        "positions_distinct": len(positions) == len(set(positions)),
        "positions_in_single": all(d in ref for d in positions),
        "max_abs_diff": max(diffs) if diffs else None,  # normalised units (std 0.25: 1 uint8 level = 0.0157)
        "views_equal": bool(diffs) and max(diffs) == 0.0,
        "views_within_one_level": bool(diffs) and max(diffs) <= ONE_LEVEL,
        "same_kth_view_rank0_rank1": same_kth,
        "kth_views_compared": k if ranks[1:] else 0,
        "rank0_generators_equal_single": gens[0] == one["generators"],
        "rank_generators_differ": all(g[name] != gens[0][name] for g in gens[1:] for name in g),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=first_sentence(__doc__))
    ap.add_argument("--out", help="folder for this rank's rank{r}.pt")
    ap.add_argument("--path", default="device", choices=["device", "cpu"])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--compare", nargs=2, metavar=("SINGLE", "RANKS"))
    a = ap.parse_args(argv)
    if a.compare:
        print(json.dumps(compare(*a.compare), indent=2))
    elif a.out:
        fed(Path(a.out), a.path, a.device)
    else:
        ap.error("give --out or --compare")
    return 0


if __name__ == "__main__":
    sys.exit(main())
