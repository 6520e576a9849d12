"""One platform-style run of the ONNX container path in a fresh process, timed stage by stage.

Does what inference.py's handler does, with the same functions (amf.jobs, amf.ensemble,
amf.results), and prints one JSON line of seconds: imports, load (the ensemble's sessions),
infer (read the stack, preprocess, run, build the results), write (the atomic result file).
Interpreter start-up is what the caller's wall clock has on top of these. --graph FILE runs the model
folder's merged graph FILE (bench/single_graph.py) in place of the members, the container's way otherwise.
Run:  python -m bench.stages --input test/input --output /tmp/out [--model model] [--graph merged.onnx]
"""

import time

T0 = time.perf_counter()

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy  # noqa: E402,F401  the heavy imports land in "imports", as in inference.py's run
import onnxruntime  # noqa: E402,F401
import SimpleITK  # noqa: E402,F401

import inference  # noqa: E402
from amf import jobs  # noqa: E402
from amf.ensemble import Ensemble  # noqa: E402
from amf.results import to_results  # noqa: E402
from bench.timing import job_parser, print_stages  # noqa: E402


def main() -> None:
    ap = job_parser(__doc__)
    ap.add_argument("--model", default=None)
    ap.add_argument("--graph", default=None, help="a merged graph in the model folder, run in place of the members")
    a = ap.parse_args()
    t1 = time.perf_counter()
    if a.graph:
        from bench.single_graph import Merged

        ensemble = Merged(inference.resolve_model_dir(a.model), a.graph)
    else:
        ensemble = Ensemble(inference.resolve_model_dir(a.model))
    t2 = time.perf_counter()
    patches = jobs.read_stack(jobs.find_stack(a.input))
    results = to_results(ensemble.predict_proba(patches), ensemble.manifest.threshold)
    t3 = time.perf_counter()
    jobs.write_results(a.output, results)
    t4 = time.perf_counter()
    print_stages(T0, t1, t2, t3, t4, len(results), ensemble.device, ensemble.kind if a.graph else None)


if __name__ == "__main__":
    main()
