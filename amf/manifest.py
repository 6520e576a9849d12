"""The ensemble manifest, model/ensemble.json: the only reader and writer.

Schema (version 1), documented in docs/container.md, "The manifest":
{
  "schema": "amf-ensemble", "version": 1,
  "threshold": 0.5,                  # on the ensemble's mean P(atypical); >= threshold -> "atypical"
  "tta": "none" | "flips" | "d4",    # test-time augmentation views, averaged per member
  "trained": true,                   # false marks a placeholder model
  "members": [{
      "file": "fold0.onnx",          # relative to the manifest; input float32 NCHW
      "input_size": 128,             # already normalised; output: one float32 logit for "atypical"
      "mean": [r, g, b], "std": [r, g, b],   # on the 0..1 scale
      "resize": "bilinear",          # amf.preprocess.RESAMPLE
      "backbone": "convnext_small",
      "fold": 0,                     # the fold it held out; null: a member trained on every figure (no fold)
      "precision": "fp32"}],         # its weights and compute: fp32, or fp16 (float32 input and output all the same)
  "variants": [],                   # written empty; a non-empty list is refused (see below)
  "provenance": {...}                # backbone, run, folds, out-of-fold metrics, ...
}
The container runs the members and nothing else, each through the same path whatever its precision: an fp16 member
keeps float32 input and output (training/export/members.py), and onnxruntime's CPU provider runs it by casting to
float32 around the operators it has no float16 kernel for (docs/training.md, "Shipping a foundation model").
Version 1 once let a manifest declare derived graphs of the
members ("variants": one merged graph, or its fp16 copy) to run in their place where a benchmark found them
faster; none was found faster (BENCHMARKS.md, run D), so the merged graph is a benchmark's alone
(bench/single_graph.py), and a manifest that still declares one is refused in one line rather than run otherwise
than it says.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath

from amf import AmfError
from amf.fileio import read_json, write_text_atomic
from amf.preprocess import RESAMPLE, TTA_MODES, prepare

MANIFEST_NAME = "ensemble.json"
PRECISIONS = ("fp32", "fp16")  # a member's weights and compute; absent: fp32 (every manifest before fp16 members)
SCHEMA = "amf-ensemble"
VERSION = 1


@dataclass
class Member:
    file: str
    input_size: int
    mean: list[float]
    std: list[float]
    resize: str = "bilinear"
    backbone: str = ""
    fold: int | None = None
    precision: str = "fp32"

    @property
    def preprocessing(self) -> tuple:
        """(input_size, mean, std, resize), amf.preprocess.prepare's arguments: a hashable key, equal for
        members that can share one prepared batch."""
        return (self.input_size, tuple(self.mean), tuple(self.std), self.resize)

    def prepare(self, patches):
        """Patches (one stack for rule 1) -> this member's float32 Nx3xSxS input."""
        return prepare(patches, *self.preprocessing)


@dataclass
class Manifest:
    members: list[Member]
    threshold: float = 0.5
    tta: str = "none"
    trained: bool = True
    provenance: dict = field(default_factory=dict)
    root: Path | None = None  # the folder the manifest was read from; not serialised

    def path(self, file: str) -> Path:
        return Path(self.root or ".") / file

    def to_dict(self) -> dict:
        body = asdict(self)
        body.pop("root")
        provenance = body.pop("provenance")
        # "variants" stays in the file, empty, where version 1 always wrote it
        return {"schema": SCHEMA, "version": VERSION, **body, "variants": [], "provenance": provenance}


def _fail(where: str, problem: str):
    raise AmfError(f"manifest {where}: {problem}")


def _model_file(value, where: str) -> str:
    """A model file's name: a path inside the model folder (relative, no '..'), by its text alone."""
    if not isinstance(value, str) or not value:
        _fail(where, "'file' must be a path")
    parts = PurePosixPath(value.replace("\\", "/")).parts
    if value.startswith(("/", "\\")) or PureWindowsPath(value).drive or ".." in parts:
        _fail(where, f"'file' {value!r} must be a path inside the model folder (relative, no '..')")
    return value


def _rgb_triplet(value, where, name, positive=False):
    if not (
        isinstance(value, list)
        and len(value) == 3
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    ):
        _fail(where, f"'{name}' must be a list of 3 numbers")
    if positive and min(value) <= 0:
        _fail(where, f"'{name}' must be positive")
    return [float(v) for v in value]


def from_dict(d: dict, where: str = "") -> Manifest:
    """Validate a parsed manifest; every problem is one AmfError line naming the field."""
    if not isinstance(d, dict):
        _fail(where, "top level must be a JSON object")
    if d.get("schema") != SCHEMA:
        _fail(where, f"'schema' must be {SCHEMA!r}")
    if d.get("version") != VERSION:
        _fail(where, f"unsupported version {d.get('version')!r} (this reader knows {VERSION})")
    threshold = d.get("threshold", 0.5)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
        _fail(where, "'threshold' must be a number in [0, 1]")
    tta = d.get("tta", "none")
    if tta not in TTA_MODES:
        _fail(where, f"'tta' must be one of {TTA_MODES}")
    members_raw = d.get("members")
    if not isinstance(members_raw, list) or not members_raw:
        _fail(where, "'members' must be a non-empty list")
    members = []
    for i, m in enumerate(members_raw):
        at = f"{where} member {i}".strip()
        if not isinstance(m, dict):
            _fail(at, "must be an object")
        _model_file(m.get("file"), at)
        size = m.get("input_size")
        if isinstance(size, bool) or not isinstance(size, int) or size < 8:
            _fail(at, "'input_size' must be an integer >= 8")
        resize = m.get("resize", "bilinear")
        if resize not in RESAMPLE:
            _fail(at, f"'resize' must be one of {sorted(RESAMPLE)}")
        fold = m.get("fold")
        if fold is not None and (isinstance(fold, bool) or not isinstance(fold, int)):
            _fail(at, "'fold' must be an integer or null")
        precision = m.get("precision", "fp32")
        if precision not in PRECISIONS:
            _fail(at, f"'precision' must be one of {list(PRECISIONS)}")
        members.append(
            Member(
                file=m["file"],
                input_size=size,
                mean=_rgb_triplet(m.get("mean"), at, "mean"),
                std=_rgb_triplet(m.get("std"), at, "std", positive=True),
                resize=resize,
                backbone=str(m.get("backbone", "")),
                fold=fold,
                precision=precision,
            )
        )
    if d.get("variants") not in (None, []):
        _fail(
            where,
            "'variants' must be empty: this container runs the members only (a merged graph of them, or its fp16 "
            "copy, is bench/single_graph.py's, for benchmarks); remove the entry and its files",
        )
    provenance = d.get("provenance", {})
    if not isinstance(provenance, dict):
        _fail(where, "'provenance' must be an object")
    trained = d.get("trained", True)
    if not isinstance(trained, bool):
        _fail(where, "'trained' must be true or false")
    return Manifest(members=members, threshold=float(threshold), tta=tta, trained=trained, provenance=provenance)


def load(model_dir) -> Manifest:
    """Read and validate MODEL_DIR/ensemble.json; check that every file it names exists and, symbolic
    links followed, lies inside MODEL_DIR."""
    path = Path(model_dir) / MANIFEST_NAME
    m = from_dict(read_json(path, "manifest"), where=str(path))
    m.root = path.parent
    root = m.root.resolve()
    for f in [mb.file for mb in m.members]:
        if not m.path(f).is_file():
            raise AmfError(f"manifest {path}: model file {f} is missing")
        if not m.path(f).resolve().is_relative_to(root):
            raise AmfError(f"manifest {path}: model file {f} leads outside the model folder")
    return m


def save(manifest: Manifest, model_dir) -> Path:
    """Validate, then write MODEL_DIR/ensemble.json atomically."""
    d = manifest.to_dict()
    from_dict(json.loads(json.dumps(d)), where="(to write)")  # same rules both ways
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    path = model_dir / MANIFEST_NAME
    write_text_atomic(path, json.dumps(d, indent=2) + "\n")
    return path
