"""MIDOG 2025 Track 2 container entrypoint: /input -> ONNX ensemble -> /output.

With no arguments it does what Grand Challenge expects. --input/--output/--model override the
platform paths for local use. Any problem: one line on stderr, exit 2, and no output file (a result
left by an earlier run is removed before anything else).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from amf import AmfError, jobs, report_error
from amf.cli import ArgumentParser
from amf.manifest import MANIFEST_NAME

HERE = Path(__file__).resolve().parent
PLATFORM_MODEL_DIR = Path("/opt/ml/model")  # where the platform unpacks a model tarball


def resolve_model_dir(cli: str | None) -> Path:
    """--model, then $AMF_MODEL_DIR (unset or empty: not given), then /opt/ml/model if it holds a
    manifest, then ./model."""
    if cli:
        return Path(cli)
    env = os.environ.get("AMF_MODEL_DIR", "")
    if env:
        if not (Path(env) / MANIFEST_NAME).is_file():
            raise AmfError(f"AMF_MODEL_DIR={env!r} must be a folder holding {MANIFEST_NAME}")
        return Path(env)
    if (PLATFORM_MODEL_DIR / MANIFEST_NAME).is_file():
        return PLATFORM_MODEL_DIR
    return HERE / "model"


def classify_stack(input_dir: Path, output_dir: Path, model_dir: Path) -> list[dict]:
    """The handler of the one Track 2 interface."""
    from amf.ensemble import Ensemble
    from amf.results import to_results

    patches = jobs.read_stack(jobs.find_stack(input_dir))
    ensemble = Ensemble(model_dir)
    results = to_results(ensemble.predict_proba(patches), ensemble.manifest.threshold)
    jobs.write_results(output_dir, results)
    return results


# Grand Challenge convention: handlers keyed by the sorted tuple of input socket slugs.
HANDLERS = {(jobs.INPUT_SLUG,): classify_stack}


def run(input_dir, output_dir, model_dir=None) -> list[dict]:
    """One job: INPUT_DIR -> OUTPUT_DIR's result file; MODEL_DIR None: resolve_model_dir's order."""
    jobs.remove_result(output_dir)  # first: a run that fails must not leave an earlier run's result
    model_dir = resolve_model_dir(model_dir)
    inputs = jobs.read_inputs(input_dir)
    key = jobs.interface_key(inputs)
    if key not in HANDLERS:
        raise AmfError(f"unknown interface {list(key)}; this algorithm takes {[list(k) for k in HANDLERS]}")
    return HANDLERS[key](Path(input_dir), Path(output_dir), Path(model_dir))


def main(argv=None) -> int:
    ap = ArgumentParser(prog="inference.py", description=__doc__.splitlines()[0])
    ap.add_argument("--input", default="/input", help="job input folder (default /input)")
    ap.add_argument("--output", default="/output", help="job output folder (default /output)")
    ap.add_argument("--model", default=None, help="model folder with ensemble.json")
    ap.add_argument("--quiet", action="store_true", help="do not print the result")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        results = run(args.input, args.output, args.model)
    except AmfError as e:
        return report_error(e)
    if not args.quiet:
        n_atyp = sum(r["class"] == "atypical" for r in results)
        print(
            f"{len(results)} patches: {n_atyp} atypical, {len(results) - n_atyp} normal "
            f"-> {Path(args.output) / jobs.OUTPUT_FILE}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
