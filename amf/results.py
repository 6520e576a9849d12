"""The Track 2 result schema: multiple-mitotic-figure-classification.json.

A list in stack order of {"class": "normal"|"atypical", "confidence": P(atypical)}.
The organisers' evaluator rejects a confidence that is not a JSON float (an integer 1 fails),
a class other than normal/atypical, and a list whose length differs from the stack. A confidence
is a probability: validate also refuses one that is not finite or lies outside [0, 1].
"""

from __future__ import annotations

import math

import numpy as np

from amf import AmfError

CLASSES = ("normal", "atypical")  # the label vocabulary: a class's index is its label (atypical = 1, positive)
NORMAL, ATYPICAL = CLASSES
CLASS_ID = {name: i for i, name in enumerate(CLASSES)}


def to_results(probabilities, threshold: float) -> list[dict]:
    """Ensemble P(atypical) per patch -> the result list; every confidence a finite Python float."""
    p = np.asarray(probabilities, dtype=np.float64).reshape(-1)
    if not np.isfinite(p).all():
        raise AmfError("the model produced NaN or infinite probabilities")
    p = np.clip(p, 0.0, 1.0)
    return [{"class": ATYPICAL if v >= threshold else NORMAL, "confidence": float(v)} for v in p]


def validate(results, expected_len: int, stack: str = "") -> None:
    """The organisers' checks on one result file; raises AmfError naming the stack."""
    where = f"result for {stack}" if stack else "result"
    if not isinstance(results, list):
        raise AmfError(f"{where}: must be a list of dictionaries, got {type(results).__name__}")
    if len(results) != expected_len:
        raise AmfError(f"{where}: length {len(results)} does not match the stack's {expected_len} labels")
    for i, r in enumerate(results):
        if not isinstance(r, dict):
            raise AmfError(f"{where}: entry {i} is not a dictionary")
        if "class" not in r or "confidence" not in r:
            raise AmfError(f"{where}: entry {i} needs 'class' and 'confidence'")
        if r["class"] not in CLASSES:
            raise AmfError(f"{where}: entry {i} class {r['class']!r} is not 'normal' or 'atypical'")
        if not isinstance(r["confidence"], float):
            raise AmfError(f"{where}: entry {i} confidence {r['confidence']!r} is not a float")
        if not math.isfinite(r["confidence"]):
            raise AmfError(f"{where}: entry {i} confidence is not finite")
        if not 0.0 <= r["confidence"] <= 1.0:
            raise AmfError(f"{where}: entry {i} confidence {r['confidence']!r} is outside [0, 1]")
