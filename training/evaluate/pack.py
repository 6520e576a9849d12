"""Pack a labelled set of patches as Grand Challenge Track 2 jobs, with the organisers' ground truth.

In:  a CSV in the official columns (image_id, ..., Tumor, ..., majority) or a plain one
     (image,label[,domain]); labels AMF/NMF, atypical/normal or 1/0; domain a tumour type (any
     alias in training.domains) or its integer; and the folder holding the images it names.
Out: OUT/jobs/<stack>/input/        inputs.json + images/stacked-histopathology-roi-cropouts/<stack>.<ext>
                                    (what the platform mounts as /input for one job; amf.jobs.write_job)
     OUT/ground_truth.json          [{"image": NAME, "labels": [...], "tumordomains": [...]}]
     OUT/figures.csv                which figure sits where (stack, index, figure, label, tumour)
Stacks hold up to 16 figures of one tumour type (as in the organisers' sample), drawn in a seeded
random order; every figure goes into exactly one stack. Tumour types are numbered by
training.domains.TUMOR_DOMAINS. --format mixed alternates .tiff and .mha from one stack to the next.
Each image is read by training's reader (training.data.decode: the README's input rule, centre crop
included), so a stack holds exactly the patches training sees. Image names are paths inside
IMAGE_DIR: an absolute name, a `..` part, or a name that resolves (through a link) outside IMAGE_DIR
is refused (training.data.inside: training's own rule). Everything is built in a scratch folder inside OUT
and moved into place at the end: a failed pack leaves no jobs, ground truth or figure table.
Run:  python -m training.evaluate pack CSV IMAGE_DIR OUT [--format tiff|mha|mixed] [--seed N]
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from amf import AmfError, jobs
from amf.fileio import write_text_atomic
from amf.results import ATYPICAL, CLASSES
from training.data import LABEL_CODES, decode, inside, read_csv
from training.domains import TUMOR_DOMAINS, tumor_domain, tumor_name

STACK_SIZE = 16  # the organisers' stacks hold up to 16 cut-outs
FORMATS = ("tiff", "mha", "mixed")
# every accepted spelling of a label (lower case) -> its class: the official codes (AMF/NMF), the class
# names and the class ids
LABEL_SPELLINGS = {
    **{code.lower(): CLASSES[i] for code, i in LABEL_CODES.items()},
    **{name: name for name in CLASSES},
    **{str(i): name for i, name in enumerate(CLASSES)},
}


def _domain(value, row: int) -> int:
    text = str(value).strip()
    if text.lstrip("-").isdigit():
        if int(text) not in TUMOR_DOMAINS.values():
            raise AmfError(f"row {row}: tumour domain {text} is not one of {sorted(TUMOR_DOMAINS.values())}")
        return int(text)
    try:
        return tumor_domain(text)
    except KeyError as e:
        raise AmfError(f"row {row}: {e.args[0]}") from None


def read_labels(csv_path, tumor: str | None = None):
    """The CSV -> a table with columns figure, label ('atypical'/'normal'), tumordomain (int)."""
    import pandas as pd

    raw = read_csv(csv_path, dtype=str, keep_default_na=False)
    if {"image_id", "majority"} <= set(raw.columns):
        figure, label, domain = "image_id", "majority", "Tumor"
    elif {"image", "label"} <= set(raw.columns):
        figure, label, domain = "image", "label", "domain"
    else:
        raise AmfError(
            f"{csv_path}: need the official columns (image_id, majority, Tumor) or "
            f"image,label[,domain]; found {', '.join(raw.columns)}"
        )
    if domain not in raw.columns and tumor is None:
        raise AmfError(f"{csv_path} has no {domain} column: name the tumour type with --tumor")
    rows = []
    for i, r in enumerate(raw.to_dict("records"), start=2):  # row 1 is the header
        name = r[figure].strip()
        lab = LABEL_SPELLINGS.get(r[label].strip().lower())
        if not name or lab is None:
            raise AmfError(
                f"row {i}: need an image name and a label in {sorted(LABEL_SPELLINGS)}, got {r[figure]!r}, {r[label]!r}"
            )
        rows.append(
            {"figure": name, "label": lab, "tumordomain": _domain(r[domain] if domain in raw.columns else tumor, i)}
        )
    table = pd.DataFrame(rows)
    dup = table.figure[table.figure.duplicated()]
    if len(dup):
        raise AmfError(f"{csv_path}: {len(dup)} images listed twice, e.g. {dup.iloc[0]}")
    return table


def make_stacks(table, seed: int = 0, stack_size: int = STACK_SIZE) -> list:
    """Seeded: per tumour domain, shuffle the figures and cut them into stacks of up to stack_size."""
    rng = np.random.default_rng(seed)
    stacks = []
    for _, group in table.groupby("tumordomain", sort=True):
        group = group.iloc[rng.permutation(len(group))]
        stacks += [group.iloc[i : i + stack_size] for i in range(0, len(group), stack_size)]
    return stacks


def pack(
    csv_path, image_dir, out_dir, fmt: str = "tiff", seed: int = 0, tumor: str | None = None, progress: bool = True
) -> dict:
    """Write OUT/jobs, OUT/ground_truth.json and OUT/figures.csv; returns a summary."""
    if fmt not in FORMATS:
        raise AmfError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    image_dir, out_dir = Path(image_dir), Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise AmfError(f"{out_dir} is a file; pack needs a folder (new or existing) for OUT")
    table = read_labels(csv_path, tumor)
    missing = [f for f in table.figure if not inside(image_dir, f).is_file()]
    if missing:
        raise AmfError(f"{len(missing)} of {len(table)} images are not in {image_dir}, e.g. {missing[0]}")
    if (out_dir / "jobs").exists():
        raise AmfError(f"{out_dir / 'jobs'} exists; remove it or pack into another folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    stacks = make_stacks(table, seed)
    width = max(4, len(str(len(stacks))))
    truth, placed = [], []
    # build everything in a scratch folder beside OUT/jobs and rename it at the end: a failed pack
    # leaves no half-written jobs, ground truth or figure table behind
    scratch = Path(tempfile.mkdtemp(dir=out_dir, prefix=".pack-"))
    try:
        from tqdm import tqdm

        for k, stack in enumerate(tqdm(stacks, desc="pack", unit="stack", disable=not progress), start=1):
            ext = {"tiff": "tiff", "mha": "mha", "mixed": ("tiff", "mha")[(k - 1) % 2]}[fmt]
            job = f"stack_{k:0{width}d}"
            name = f"{job}.{ext}"
            patches = [decode(image_dir / f) for f in stack.figure]  # as training reads them
            if len({p.shape for p in patches}) > 1:
                raise AmfError(
                    f"{name}: the figures {', '.join(stack.figure)} differ in size; a stack needs one patch size"
                )
            jobs.write_job(scratch / "jobs" / job / "input", patches, name)
            truth.append(
                {"image": name, "labels": stack.label.tolist(), "tumordomains": [int(d) for d in stack.tumordomain]}
            )
            placed += [
                {"image": name, "index": i, "figure": f, "label": lab, "tumordomain": int(d), "tumor": tumor_name(d)}
                for i, (f, lab, d) in enumerate(zip(stack.figure, stack.label, stack.tumordomain))
            ]
        import pandas as pd

        write_text_atomic(scratch / "ground_truth.json", json.dumps(truth, indent=1) + "\n")
        write_text_atomic(scratch / "figures.csv", pd.DataFrame(placed).to_csv(index=False))
        for name in ("ground_truth.json", "figures.csv", "jobs"):  # jobs last: its presence means done
            os.replace(scratch / name, out_dir / name)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    n_atyp = int((table.label == ATYPICAL).sum())
    return {
        "stacks": len(stacks),
        "figures": len(table),
        "atypical": n_atyp,
        "domains": sorted(int(d) for d in table.tumordomain.unique()),
        "format": fmt,
        "seed": seed,
        "jobs": str(out_dir / "jobs"),
        "ground_truth": str(out_dir / "ground_truth.json"),
    }
