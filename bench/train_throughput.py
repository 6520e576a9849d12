"""Training throughput (images/s) of a backbone with the project's own training step (training.train.train_step).

Synthetic data of the real size: 128-px uint8 patches -> the input size; by default the batch is made once
and kept on the device (the model's step alone: forward, backward, AdamW, EMA update); --loader also runs
the real data path on synthetic patches decoded once: `--loader cpu` (or bare --loader) the CPU path
(augment.Augment, amf.preprocess resize + normalise, DataLoader workers), `--loader device` the device path
(training/train/gpu_augment.py: patches on the device, batched augmentation, as data.device_augment=true).
On CUDA: bf16 autocast and channels_last, as training uses them; --compile adds torch.compile.
Recipes: plain (no MixStyle, no alignment, no EMA teacher) and full (all of them on; the teacher's forward
and update cost extra). --parts also times the full recipe's parts one by one (ms per step).
Run:  python -m bench.train_throughput [--model convnext_small] [--size 224] [--batch 64] [--steps 20]
                                        [--recipe plain full] [--loader [cpu|device]] [--compile] [--parts]
                                        [--device auto|cuda|cpu] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from amf.cli import first_sentence
from amf.preprocess import IMAGENET_MEAN, IMAGENET_STD
from training import config
from training.train.kfold import train_step
from training.train.models import create_classifier
from training.train.recipe import attach_mixstyle, make_teacher


def recipe_config(model: str, size: int, recipe: str, base: str = "smoke") -> dict:
    """BASE (a config name) with MODEL at SIZE px and the recipe's parts all on (full) or all off (plain)."""
    on = recipe == "full"
    return config.load(
        base,
        [
            f"model.backbone={model}",
            f"data.input_size={size}",
            f"mixstyle.enabled={on}",
            f"align.enabled={on}",
            f"ema.enabled={on}",
        ],
    )


def synthetic_loader(cfg: dict, batch: int, workers: int, n: int = 512, kind: str = "cpu", device=None):
    """The training data path on synthetic 128-px patches (decoded once, as data.preload does)."""
    device = torch.device("cpu") if device is None else device
    import pandas as pd

    from training.augment import Augment
    from training.data import PatchDataset
    from training.train.gpu_augment import DeviceBatches
    from training.train.kfold import EpochSampler

    rng = np.random.default_rng(0)
    patches = [rng.integers(0, 256, (128, 128, 3), dtype=np.uint8) for _ in range(n)]
    df = pd.DataFrame({"path": ["-"] * n, "label": rng.integers(0, 2, n), "soft": 0.0})
    ds = PatchDataset(
        df,
        np.arange(n),
        cfg["data"]["input_size"],
        IMAGENET_MEAN,
        IMAGENET_STD,
        "bilinear",
        Augment(cfg["augment"]),
        patches,
    )
    if kind == "device":
        return DeviceBatches(ds, EpochSampler(n), batch, cfg["augment"], device)
    return torch.utils.data.DataLoader(
        ds,
        batch_size=batch,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
    )


def measure(
    model_name: str,
    size: int,
    batch: int,
    steps: int,
    warmup: int,
    recipe: str,
    device: torch.device,
    loader: str | None,
    workers: int,
    compile_: bool,
    base: str = "smoke",
) -> dict:
    """images/s of STEPS training steps (after WARMUP) of MODEL_NAME with BASE's config (its augmentation)."""
    cuda = device.type == "cuda"
    cfg = recipe_config(model_name, size, recipe, base)
    torch.manual_seed(0)
    model = create_classifier(cfg, pretrained=False)
    if cfg["mixstyle"]["enabled"]:
        attach_mixstyle(model.timm_model, cfg["mixstyle"])
    model.to(device)
    if cuda:
        model.to(memory_format=torch.channels_last)
    teacher = make_teacher(model, cfg["ema"]) if cfg["ema"]["enabled"] else None
    train_model = torch.compile(model) if compile_ else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=cuda)
    gen = torch.Generator().manual_seed(0)
    align = (
        (
            torch.randint(0, 2, (batch,), generator=gen).to(device),
            torch.randint(0, 3, (batch, 4), generator=gen).to(device),
            3,
        )
        if cfg["align"]["enabled"]
        else None
    )

    def batches():
        if loader:
            data = synthetic_loader(cfg, batch, workers, kind=loader, device=device)
            epoch = 0
            while True:
                if hasattr(data, "sampler") and hasattr(data.sampler, "set_epoch"):
                    data.sampler.set_epoch(epoch)
                for x, y, _ in data:
                    yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                epoch += 1
        x = torch.randn(batch, 3, size, size, generator=gen).to(device)
        y = torch.randint(0, 2, (batch,), generator=gen).float().to(device)
        while True:
            yield x, y

    it = batches()

    def step():
        x, y = next(it)
        if cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        losses = train_step(model, train_model, teacher, optimizer, x, y, cfg, amp=cuda, align_batch=align)
        if teacher is not None:
            teacher.update(model, step=100)
        return losses

    model.train()
    for _ in range(warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        losses = step()
    float(losses["loss"])  # waits for the device
    seconds = time.perf_counter() - t0
    return {
        "model": model_name,
        "size": size,
        "batch": batch,
        "recipe": recipe,
        "config": base,
        "device": device_name(device),
        "bf16": cuda,
        "channels_last": cuda,
        "compile": compile_,
        "data": f"{loader} loader" if loader else "on-device (made once)",
        "steps": steps,
        "images_per_s": round(batch * steps / seconds, 2),
        "threads": torch.get_num_threads(),
    }


def time_parts(model_name: str, size: int, batch: int, steps: int, device: torch.device) -> list[tuple[str, float]]:
    """ms per step of the full recipe's parts, one at a time, on a batch kept on the device."""
    from training.train.recipe import alignment_loss, alignment_loss_loops

    cuda = device.type == "cuda"
    cfg = recipe_config(model_name, size, "full")
    torch.manual_seed(0)
    model = create_classifier(cfg, pretrained=False)
    mixer, _ = attach_mixstyle(model.timm_model, {**cfg["mixstyle"], "p": 1.0})  # always mixes: its whole cost
    model.to(device)
    if cuda:
        model.to(memory_format=torch.channels_last)
    model.train()
    teacher = make_teacher(model, cfg["ema"])
    x = torch.randn(batch, 3, size, size).to(device)
    if cuda:
        x = x.contiguous(memory_format=torch.channels_last)
    labels, domains = torch.randint(0, 2, (batch,)).to(device), torch.randint(0, 3, (batch, 4)).to(device)

    def timed(fn) -> float:
        fn()
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(steps):
            fn()
        if cuda:
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) / steps * 1e3

    def student(mix: bool):
        def fn():
            mixer.active = mix
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                logit, feats = model(x, return_features=True)
            (logit.float().sum() + feats.float().sum() * 0).backward()

        return fn

    def teacher_forward():
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            teacher.module(x)

    with torch.no_grad():
        feats = model(x, return_features=True)[1].float()

    def align(fn, *extra):
        def run():
            f = feats.detach().requires_grad_(True)
            fn(f, labels, domains, *extra).backward()

        return run

    rows = [
        ("student forward+backward (no MixStyle)", timed(student(False))),
        ("student forward+backward (MixStyle at p=1)", timed(student(True))),
        ("teacher forward (no grad)", timed(teacher_forward)),
        ("EMA teacher update (timm ModelEmaV3, foreach lerp)", timed(lambda: teacher.update(model, step=100))),
        ("alignment loss + backward, vectorised (recipe.alignment_loss)", timed(align(alignment_loss, 3))),
        ("alignment loss + backward, loops (recipe.alignment_loss_loops)", timed(align(alignment_loss_loops))),
    ]
    mixer.active = False
    return rows


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"CPU {platform.processor() or platform.machine()} x{torch.get_num_threads()} threads"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=first_sentence(__doc__))
    ap.add_argument("--model", default="convnext_small")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=None, help="default: 128 on CUDA, 16 on the CPU")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default: 30 on CUDA, 3 on the CPU)")
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--recipe", nargs="+", default=["plain", "full"], choices=["plain", "full"])
    ap.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    ap.add_argument(
        "--loader",
        nargs="?",
        const="cpu",
        default=None,
        choices=["cpu", "device"],
        help="include the real data path: cpu (DataLoader workers, the default) or device "
        "(training/train/gpu_augment.py)",
    )
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--parts", action="store_true", help="also time the full recipe's parts (ms per step)")
    ap.add_argument("--json", default=None, help="also write the rows here")
    a = ap.parse_args(argv)
    cuda = torch.cuda.is_available() and a.device != "cpu"
    device = torch.device("cuda" if cuda else "cpu")
    if cuda:
        torch.backends.cudnn.benchmark = True
    batch = a.batch or (128 if cuda else 16)
    steps = a.steps or (30 if cuda else 3)
    warmup = a.warmup if a.warmup is not None else (10 if cuda else 1)
    rows = []
    print("| model | px | batch | recipe | device | bf16+channels_last | data | img/s |")
    print("|---|---|---|---|---|---|---|---|")
    for recipe in a.recipe:
        r = measure(a.model, a.size, batch, steps, warmup, recipe, device, a.loader, a.workers, a.compile)
        rows.append(r)
        print(
            f"| {r['model']} | {r['size']} | {r['batch']} | {r['recipe']} | {r['device']} | "
            f"{'yes' if r['bf16'] else 'no'}{' +compile' if r['compile'] else ''} | {r['data']} | "
            f"{r['images_per_s']:.1f} |",
            flush=True,
        )
    if a.parts:
        print(f"\n{a.model} at {a.size} px, batch {batch}, {device_name(device)}:\n| part | ms/step |\n|---|---|")
        for name, ms in time_parts(a.model, a.size, batch, steps, device):
            print(f"| {name} | {ms:.1f} |", flush=True)
            rows.append({"part": name, "ms_per_step": round(ms, 2)})
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
