"""Pack a labelled set of patches as Grand Challenge Track 2 jobs, with the organisers' ground truth.

In:  a labelled set as evaluation.labels reads it (a CSV in the official columns or a plain one with its
     image folder, a data folder in a layout training reads, or a training run's held-out fold), narrowed by
     --slides and --limit (labels.on_slides, labels.limit).
Out: OUT/jobs/<stack>/input/        inputs.json + images/stacked-histopathology-roi-cropouts/<stack>.<ext>
                                    (what the platform mounts as /input for one job; amf.jobs.write_job)
     OUT/ground_truth.json          [{"image": NAME, "labels": [...], "tumordomains": [...]}]
     OUT/figures.csv                which figure sits where (image = stack, index, figure, label, tumordomain,
                                    tumor), and the figure's slide, Scanner, Origin, Species and source where the
                                    labels give them (score resamples slides and breaks results down by them)
Stacks hold up to 16 figures of one tumour type (as in the organisers' sample), drawn in a seeded
random order; every figure goes into exactly one stack. Tumour types are numbered by
training.domains.TUMOR_DOMAINS. --format mixed alternates .tiff and .mha from one stack to the next.
Each image is read by training's reader (training.data.decode: docs/container.md, "Input rule", centre crop
included), so a stack holds exactly the patches training sees. Image names are paths inside their image folder
(training.data.inside: training's own rule). OUT follows training.ownership's rule: a new or empty folder
(--beside: beside the files of one), and none of the three there. Everything is built in a scratch folder inside OUT
and moved into place at the end: a failed pack leaves no jobs, ground truth or figure table.
Run:  python -m evaluation pack CSV IMAGE_DIR OUT [--format tiff|mha|mixed] [--seed N] [--limit N] [--beside]
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from amf import AmfError, jobs
from amf.fileio import write_text_atomic
from amf.results import ATYPICAL
from evaluation import labels
from training import ownership
from training.data import decode
from training.domains import tumor_name

STACK_SIZE = 16  # the organisers' stacks hold up to 16 cut-outs
FORMATS = ("tiff", "mha", "mixed")
OUTPUTS = ("ground_truth.json", "figures.csv", "jobs")  # what pack writes into OUT, in the order it moves them


def make_stacks(table, seed: int = 0, stack_size: int = STACK_SIZE) -> list:
    """Seeded: per tumour domain, shuffle the figures and cut them into stacks of up to stack_size."""
    rng = np.random.default_rng(seed)
    stacks = []
    for _, group in table.groupby("tumordomain", sort=True):
        group = group.iloc[rng.permutation(len(group))]
        stacks += [group.iloc[i : i + stack_size] for i in range(0, len(group), stack_size)]
    return stacks


def pack(
    csv_path,
    image_dir,
    out_dir,
    fmt: str = "tiff",
    seed: int = 0,
    tumor: str | None = None,
    progress: bool = True,
    limit: int | None = None,
    slides=None,
) -> dict:
    """A CSV and its image folder (evaluation.labels.csv_table), narrowed by SLIDES and LIMIT -> pack_table."""
    table = select(labels.csv_table(csv_path, image_dir, tumor), limit, slides, seed)
    return pack_table(table, out_dir, fmt, seed, progress)


def select(table, limit: int | None = None, slides=None, seed: int = 0):
    """The figures of TABLE on the slides the file SLIDES lists, then LIMIT of them (stratified by label, SEED)."""
    if slides is not None:
        table = labels.on_slides(table, slides)
    return table if limit is None else labels.limit(table, limit, seed)


def pack_table(table, out_dir, fmt: str = "tiff", seed: int = 0, progress: bool = True, beside: bool = False) -> dict:
    """Write OUT/jobs, OUT/ground_truth.json and OUT/figures.csv for the figures of TABLE (evaluation.labels'
    table), by training.ownership's rule (OUT new or empty, or BESIDE; none of the three there); returns a
    summary."""
    if fmt not in FORMATS:
        raise AmfError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    out_dir = Path(out_dir)
    ownership.claim(out_dir, OUTPUTS, ownership.PACK, beside)
    missing = [f for f, p in zip(table.figure, table.path) if not Path(p).is_file()]
    if missing:
        raise AmfError(f"{len(missing)} of {len(table)} images are missing, e.g. {missing[0]}")
    stacks = make_stacks(table, seed)
    width = max(4, len(str(len(stacks))))
    known = [c for c in labels.OPTIONAL if c in table]
    truth, placed = [], []
    # build everything in a scratch folder inside OUT and rename it at the end: a failed pack
    # leaves no half-written jobs, ground truth or figure table behind
    with ownership.scratch(out_dir, "pack") as scratch:
        from tqdm import tqdm

        for k, stack in enumerate(tqdm(stacks, desc="pack", unit="stack", disable=not progress), start=1):
            ext = {"tiff": "tiff", "mha": "mha", "mixed": ("tiff", "mha")[(k - 1) % 2]}[fmt]
            job = f"stack_{k:0{width}d}"
            name = f"{job}.{ext}"
            patches = [decode(Path(p)) for p in stack.path]  # as training reads them
            if len({p.shape for p in patches}) > 1:
                raise AmfError(
                    f"{name}: the figures {', '.join(stack.figure)} differ in size; a stack needs one patch size"
                )
            jobs.write_job(scratch / "jobs" / job / "input", patches, name)
            truth.append(
                {"image": name, "labels": stack.label.tolist(), "tumordomains": [int(d) for d in stack.tumordomain]}
            )
            placed += [
                {
                    "image": name,
                    "index": i,
                    "figure": r["figure"],
                    "label": r["label"],
                    "tumordomain": int(r["tumordomain"]),
                    "tumor": tumor_name(r["tumordomain"]),
                    **{c: r[c] for c in known},
                }
                for i, r in enumerate(stack.to_dict("records"))
            ]
        import pandas as pd

        write_text_atomic(scratch / "ground_truth.json", json.dumps(truth, indent=1) + "\n")
        write_text_atomic(scratch / "figures.csv", pd.DataFrame(placed).to_csv(index=False))
        for name in OUTPUTS:  # jobs last: its presence means done
            os.replace(scratch / name, out_dir / name)
    n_atyp = int((table.label == ATYPICAL).sum())
    return {
        "stacks": len(stacks),
        "figures": len(table),
        "atypical": n_atyp,
        "domains": sorted(int(d) for d in table.tumordomain.unique()),
        **({"slides": int(table["slide"].nunique())} if "slide" in table else {}),
        "format": fmt,
        "seed": seed,
        "jobs": str(out_dir / "jobs"),
        "ground_truth": str(out_dir / "ground_truth.json"),
    }
