"""Compare a result file with test/expected_output.json, or regenerate that file.

Compare (standard library only, so do_test_run.sh can call it with any python3 on the host):
    python3 test/compare_output.py test/output/multiple-mitotic-figure-classification.json
  passes (exit 0) when both are valid result lists of the same length with the same classes and
  confidences within 1e-3 (--atol); otherwise prints each difference and exits 1.
Regenerate (needs the runtime: amf, onnxruntime), after the model in model/ changes:
    python test/compare_output.py --write     (or: make expected)
  runs inference.py's run() on test/input with model/ and writes test/expected_output.json.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
EXPECTED = HERE / "expected_output.json"
SAMPLE_INPUT = HERE / "input"
CLASSES = ("normal", "atypical")


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


def write_expected(input_dir=SAMPLE_INPUT, model_dir=None, out=EXPECTED) -> Path:
    """Run the entrypoint's run() on the sample job and store its result as the expected output."""
    sys.path.insert(0, str(HERE.parent))
    import inference
    from amf.fileio import write_text_atomic

    with tempfile.TemporaryDirectory() as tmp:
        results = inference.run(input_dir, tmp, model_dir or inference.resolve_model_dir(None))
    write_text_atomic(out, json.dumps(results, indent=2) + "\n")
    return Path(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("output", nargs="?", help="the result file to check")
    ap.add_argument("expected", nargs="?", default=str(EXPECTED))
    ap.add_argument("--atol", type=float, default=1e-3)
    ap.add_argument("--write", action="store_true", help="regenerate test/expected_output.json")
    ap.add_argument("--model", default=None, help="with --write: model folder (default as inference.py)")
    a = ap.parse_args(argv)
    if a.write:
        print(f"wrote {write_expected(model_dir=a.model)}")
        return 0
    if not a.output:
        ap.error("give the result file to compare (or --write)")
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
        print(f"FAIL: {a.output} differs from {a.expected} ({len(diffs)} difference(s))", file=sys.stderr)
        return 1
    print(f"OK: {len(actual)} results match {a.expected} (same classes, confidences within {a.atol})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
