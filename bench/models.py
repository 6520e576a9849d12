"""Benchmark models, made once into a cache folder outside git (bench/.cache, or $AMF_BENCH_CACHE).

- the baseline's weights: timm efficientnetv2_m (EfficientNetV2-M), random init, saved as a state dict
- 5 x timm convnext_small, random init (seeds 0-4), each exported to fp32 ONNX (dynamic batch,
  one logit), and ensemble folders for 128 and 224 px: members only, and the same members with a
  single graph of all members beside them (bench/single_graph.py; bench/stages.py --graph runs it).
Pretrained weights cannot be downloaded here; speed does not depend on the weights' values.
Run:  python -m bench.models      (prints the folders it made or found)
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("AMF_BENCH_CACHE", ROOT / "bench" / ".cache"))
BASELINE_ARCH = "efficientnetv2_m"  # timm's EfficientNetV2-M
CONVNEXT_ARCH = "convnext_small"
CONVNEXT_MEMBERS = 5
GRAPHS = {"merged": "merged.onnx", "fp16": "merged-fp16.onnx"}  # bench.single_graph's files, by case suffix


def cache_dir() -> Path:
    CACHE.mkdir(parents=True, exist_ok=True)
    ignore = CACHE / ".gitignore"
    if not ignore.exists():
        ignore.write_text("*\n")  # the cache ignores itself: nothing here reaches git
    return CACHE


def baseline_weights() -> Path:
    """Random EfficientNetV2-M weights (2 classes, like the reference), saved once."""
    path = cache_dir() / f"{BASELINE_ARCH}.pth"
    if not path.exists():
        import timm
        import torch

        torch.manual_seed(0)
        model = timm.create_model(BASELINE_ARCH, pretrained=False, num_classes=2)
        torch.save(model.state_dict(), path.with_suffix(".tmp"))
        path.with_suffix(".tmp").replace(path)
    return path


def export_convnext(path: Path, seed: int, size: int) -> Path:
    """timm convnext_small, random init, one logit -> fp32 ONNX with a dynamic batch axis (training.export's
    exporter, as for a trained member)."""
    import timm
    import torch

    from training.export.members import export_onnx

    torch.manual_seed(seed)
    model = timm.create_model(CONVNEXT_ARCH, pretrained=False, num_classes=1).eval()
    tmp = path.with_suffix(".tmp.onnx")
    export_onnx(model, tmp, size)
    tmp.replace(path)
    return path


def convnext_ensemble(size: int, merged: bool = False) -> Path:
    """The 5 x ConvNeXt-Small folder at SIZE px; with MERGED, a folder that also holds their merged graph."""
    from amf.manifest import Manifest, Member, save
    from amf.preprocess import IMAGENET_MEAN, IMAGENET_STD

    folder = cache_dir() / f"convnext5_{size}"
    if not (folder / "ensemble.json").exists():
        folder.mkdir(parents=True, exist_ok=True)
        members = []
        for seed in range(CONVNEXT_MEMBERS):
            name = f"{CONVNEXT_ARCH}_s{seed}.onnx"
            if not (folder / name).exists():
                export_convnext(folder / name, seed, size)
            members.append(
                Member(
                    file=name,
                    input_size=size,
                    mean=list(IMAGENET_MEAN),
                    std=list(IMAGENET_STD),
                    resize="bilinear",
                    backbone=CONVNEXT_ARCH,
                    fold=seed,
                )
            )
        save(
            Manifest(
                members=members,
                trained=False,
                provenance={"note": f"benchmark: {CONVNEXT_MEMBERS} x random-init {CONVNEXT_ARCH}"},
            ),
            folder,
        )
    return derived_folder(folder, f"{folder.name}_merged", "merged") if merged else folder


def derived_folder(src: Path, name: str, runs_as: str, tta: str | None = None) -> Path:
    """A model folder CACHE/NAME holding SRC's members (hard links where the file system allows, else
    copies: a manifest names only files inside its own folder) for the case RUNS_AS: "members" (one session per
    member), "merged" (also their merged graph, merged.onnx) or "fp16" (also its fp16 copy, merged-fp16.onnx);
    bench/stages.py --graph runs a graph in place of the members (GRAPHS). TTA replaces the manifest's test-time
    augmentation (none, flips, d4). Derived graphs are made once and kept."""
    import onnx

    from amf.manifest import load, save
    from bench.single_graph import FP16_FILE, MERGED_FILE, build_single_graph
    from training.export.onnxfile import save_onnx, to_fp16

    dst = cache_dir() / name
    if (dst / "ensemble.json").exists():
        return dst
    mf = load(src)
    dst.mkdir(parents=True, exist_ok=True)
    if runs_as in GRAPHS and not (dst / MERGED_FILE).exists():
        save_onnx(build_single_graph([onnx.load(str(mf.path(m.file))) for m in mf.members]), dst / MERGED_FILE)
    if runs_as == "fp16" and not (dst / FP16_FILE).exists():
        save_onnx(to_fp16(onnx.load(str(dst / MERGED_FILE))), dst / FP16_FILE)
    for m in mf.members:
        link = dst / m.file
        if not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(mf.path(m.file), link)
            except OSError:  # another file system, or no hard links there
                shutil.copyfile(mf.path(m.file), link)
    mf.tta = tta or mf.tta
    save(mf, dst)
    return dst


def shipped_folder(runs_as: str, tta: str | None = None) -> Path:
    """The shipped model/ run as RUNS_AS, with test-time augmentation TTA if given (see derived_folder); keyed by
    the manifest's content, so a new model gets new folders."""
    import hashlib

    src = ROOT / "model"
    key = hashlib.sha1((src / "ensemble.json").read_bytes()).hexdigest()[:10]
    return derived_folder(src, f"shipped_{key}_{runs_as}" + (f"_tta_{tta}" if tta else ""), runs_as, tta)


if __name__ == "__main__":
    print(baseline_weights())
    for s in (128, 224):
        print(convnext_ensemble(s), convnext_ensemble(s, merged=True))
    print(shipped_folder("members"), shipped_folder("merged"))
