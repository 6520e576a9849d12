"""Compare a result file with the model's expected output (model/expected_output.json), or regenerate it.

The expected output belongs to the model: training.export writes it beside the manifest (the container's result
on the project's sample job, test/input), so the checks follow whatever model is in model/.
Compare (standard library only, so do_test_run.sh can call it with any python3 on the host):
    python3 test/compare_output.py out/test-run/multiple-mitotic-figure-classification.json [EXPECTED]
  passes (exit 0) when both are valid result lists of the same length with the same classes and
  confidences within 1e-3 (--atol); otherwise prints each difference and exits 1, saying how to refresh.
Regenerate (the development environment: training.export's writer, inference.run), after model/ changed by hand:
    python test/compare_output.py --write [--model DIR]     (or: make expected)
  runs inference.py's run() on test/input with model/ (or DIR) and writes its expected_output.json.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODEL = HERE.parent / "model"
EXPECTED = MODEL / "expected_output.json"  # training.export's EXPECTED_OUTPUT, beside the manifest
CLASSES = ("normal", "atypical")
REFRESH = (
    "if the model in {model} changed on purpose, rewrite its expected output: make expected "
    "(python test/compare_output.py --write); otherwise the container's result changed"
)


def problems_in(results, label: str) -> list[str]:
    """Schema problems of one result list (the organisers' checks plus confidence in [0, 1])."""
    if not isinstance(results, list):
        return [f"{label}: not a list"]
    out = []
    for i, r in enumerate(results):
        if not isinstance(r, dict) or r.get("class") not in CLASSES:
            out.append(f"{label}[{i}]: class must be 'normal' or 'atypical', got {r!r}")
        elif (
            not isinstance(r.get("confidence"), float)
            or not math.isfinite(r["confidence"])
            or not 0.0 <= r["confidence"] <= 1.0
        ):
            out.append(f"{label}[{i}]: confidence must be a float in [0, 1], got {r.get('confidence')!r}")
    return out


def compare(actual, expected, atol: float = 1e-3) -> list[str]:
    """Every difference between two result lists, as lines; empty when they match."""
    out = problems_in(actual, "output") + problems_in(expected, "expected")
    if out:
        return out
    if len(actual) != len(expected):
        return [f"output has {len(actual)} entries, expected {len(expected)}"]
    for i, (a, e) in enumerate(zip(actual, expected)):
        if a["class"] != e["class"]:
            out.append(f"[{i}] class {a['class']!r} != expected {e['class']!r}")
        if abs(a["confidence"] - e["confidence"]) > atol:
            out.append(f"[{i}] confidence {a['confidence']:.6f} != expected {e['confidence']:.6f} (atol {atol})")
    return out


def write_expected(model_dir=MODEL) -> Path:
    """The container's result on the sample job with MODEL_DIR, stored as its expected output (training.export's
    writer: the same file an export writes)."""
    sys.path.insert(0, str(HERE.parent))
    from training.export.folder import write_expected_output

    return write_expected_output(model_dir)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("output", nargs="?", help="the result file to check")
    ap.add_argument("expected", nargs="?", default=str(EXPECTED))
    ap.add_argument("--atol", type=float, default=1e-3)
    ap.add_argument("--write", action="store_true", help="regenerate the model's expected_output.json")
    ap.add_argument("--model", default=str(MODEL), help="with --write: the model folder (default model/)")
    a = ap.parse_args(argv)
    if a.write:
        print(f"wrote {write_expected(a.model)}")
        return 0
    if not a.output:
        ap.error("give the result file to compare (or --write)")
    refresh = REFRESH.format(model=Path(a.expected).parent)
    if not Path(a.expected).is_file():
        print(f"error: no expected output {a.expected}: {refresh}", file=sys.stderr)
        return 1
    try:
        actual = json.loads(Path(a.output).read_text())
        expected = json.loads(Path(a.expected).read_text())
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    diffs = compare(actual, expected, a.atol)
    for d in diffs:
        print(d, file=sys.stderr)
    if diffs:
        print(f"FAIL: {a.output} differs from {a.expected} ({len(diffs)} difference(s)); {refresh}", file=sys.stderr)
        return 1
    print(f"OK: {len(actual)} results match {a.expected} (same classes, confidences within {a.atol})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
