"""What an ensemble weighs on Grand Challenge: members x parameters in fp32 and fp16, and a T4 time per stack
estimated from measured FLOPs.

Each backbone is the exported member of its training config (training.train.models.create_classifier: the timm
backbone, the attention gate, the head), built on torch's meta device (random initialisation, no memory, no
download: the hub names are given as their timm architectures). Parameters are counted; FLOPs per patch are
measured by torch.utils.flop_counter.FlopCounterMode on one patch at the config's input size (a multiply-add counts
2). The T4 time is an estimate, not a measurement: 16 patches x members x TTA views x FLOPs at the T4's peak (8.1
TFLOPS fp32, 65 TFLOPS fp16 on its tensor cores), so a lower bound: real kernels reach a fraction of the peak, and
every job also reads the members from disk and builds their sessions.
The second table is what a team can ship of each backbone (training.export): every fold's member, a subset of the
folds (--folds), or one member (trained on all figures: splits.kind all, or one fold), each in fp32 and fp16
(--precision fp16: 2 bytes a parameter); the file sizes are parameters x bytes (an ONNX file adds kilobytes).
Run:  python -m bench.sizes [--members 5] [--patches 16] [--ship 5,2,1]
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from amf.cli import ArgumentParser, first_sentence, positive_int
from amf.preprocess import TTA_VIEWS
from training import config
from training.train.models import create_classifier

# (label, config, the timm architecture of its backbone: the hub names' own, so that nothing is fetched)
BACKBONES = [
    ("ConvNeXt-S", "convnext_small", "convnext_small"),
    ("ViT-S/8 (Lunit)", "lunit_vit_small", "vit_small_patch8_224"),
    ("ViT-H/14 (UNI2-h)", "foundation_lora", "vit_giant_patch14_224"),
]
T4_PEAK = {"fp32": 8.1e12, "fp16": 65e12}  # FLOP/s, NVIDIA's T4 datasheet
VIEWS = {mode: len(views(np.zeros((1, 3, 2, 2)))) for mode, views in TTA_VIEWS.items()}  # views per patch


def measure(name: str, arch: str) -> dict:
    """Parameters and FLOPs per patch of CONFIG's exported member with backbone ARCH."""
    cfg = config.load(name, [f"model.backbone={arch}", "model.pretrained=false", "model.finetune=full"])
    size = int(cfg["data"]["input_size"])
    with torch.device("meta"):
        model = create_classifier(cfg, pretrained=False).eval()
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model(torch.empty(1, 3, size, size))
    return {"params": sum(p.numel() for p in model.parameters()), "flops": counter.get_total_flops(), "size": size}


def estimate(m: dict, members: int, patches: int) -> dict:
    """T4 seconds per stack of PATCHES for MEMBERS of the measured backbone M, by precision: [none, d4]."""
    return {p: [patches * members * VIEWS[t] * m["flops"] / T4_PEAK[p] for t in ("none", "d4")] for p in T4_PEAK}


def table(members: int, patches: int, measured: dict | None = None) -> list[str]:
    measured = measured or {label: measure(name, arch) for label, name, arch in BACKBONES}
    rows = [
        f"| backbone | px | parameters | {members} members fp32 | fp16 | GFLOPs per patch | T4 estimate per stack "
        f"of {patches}, fp32: none / d4 | fp16: none / d4 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, _, _ in BACKBONES:
        m = measured[label]
        stack = estimate(m, members, patches)
        rows.append(
            f"| {label} | {m['size']} | {m['params'] / 1e6:.1f} M | {members * m['params'] * 4 / 1e9:.2f} GB | "
            f"{members * m['params'] * 2 / 1e9:.2f} GB | {m['flops'] / 1e9:.1f} | "
            + " | ".join(" / ".join(f"{s:.2f} s" for s in stack[p]) for p in T4_PEAK)
            + " |"
        )
    return rows


SHIPPED = {1: "one member (all figures, or one fold)"}  # what a count of members is, besides every fold or a subset


def ship_table(counts: list[int], folds: int, patches: int, measured: dict) -> list[str]:
    """What ships of each backbone: COUNTS members (FOLDS: every fold's; fewer: a subset, or the one member trained on
    all figures), each precision's file size and T4 estimate."""
    rows = [
        f"| backbone | members | fp32 | fp16 | T4 estimate per stack of {patches}, fp32: none / d4 | fp16: none / d4 |",
        "|---|---|---|---|---|---|",
    ]
    for label, _, _ in BACKBONES:
        m = measured[label]
        for n in counts:
            what = f"{n}: every fold" if n == folds else f"{n}: {SHIPPED.get(n, 'a subset of the folds (--folds)')}"
            stack = estimate(m, n, patches)
            rows.append(
                f"| {label} | {what} | {n * m['params'] * 4 / 1e9:.2f} GB | {n * m['params'] * 2 / 1e9:.2f} GB | "
                + " | ".join(" / ".join(f"{s:.2f} s" for s in stack[p]) for p in T4_PEAK)
                + " |"
            )
    return rows


def counts(text: str) -> list[int]:
    """'5,2,1' -> [5, 2, 1]: member counts, each >= 1."""
    import argparse

    try:
        out = [int(n) for n in text.split(",")]
    except ValueError:
        out = []
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of member counts >= 1")
    return out


def main(argv=None) -> int:
    ap = ArgumentParser(prog="python -m bench.sizes", description=first_sentence(__doc__))
    ap.add_argument("--members", type=positive_int, default=5)
    ap.add_argument("--patches", type=positive_int, default=16, help="patches per stack (the platform sends <= 16)")
    ap.add_argument("--ship", type=counts, default=[5, 2, 1], metavar="N,N", help="member counts of the 2nd table")
    a = ap.parse_args(argv)
    measured = {label: measure(name, arch) for label, name, arch in BACKBONES}
    print("\n".join(table(a.members, a.patches, measured)))
    print()
    print("\n".join(ship_table(a.ship, a.members, a.patches, measured)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
