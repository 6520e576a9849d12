"""Container benchmark: wall time per stack as the platform runs it, each run a fresh process.

Cases (on the project's 16-patch sample job, test/input, unless --input says otherwise):
  baseline           torch + timm EfficientNetV2-M, 224 px, one image at a time (bench/baseline.py)
  shipped            the ensemble in model/, as its manifest declares it (bench/stages.py)
  shipped-members / shipped-merged    the same members as one session each / as one merged graph
  shipped-tta-none / -flips / -d4     the shipped members with that test-time augmentation (its cost)
  convnext5-128 / convnext5-224       5 x ConvNeXt-Small, one session per member (submission-sized)
  convnext5-128-merged / -224-merged  the same as one merged ONNX graph, one session, one run
  *-fp16             the merged graph in fp16, only where onnxruntime's CUDA provider loads
Each run is split into start-up (the interpreter), imports, load (model), infer (read the stack,
preprocess, run, results) and write. Rounds interleave the baseline with every case (B c1 B c2 ...),
so that load from other processes on a shared machine falls on both over the same period; each case
has its median and its best (least disturbed) run, and × baseline compares like with like.
CPU seconds (user + system of the process, all threads) are reported too.
Run:  python -m bench.container [--repeats 3] [--cases shipped convnext5-128 ...] [--input DIR] [--json F]
      (make bench); prints a markdown table for BENCHMARKS.md. Models are made once in bench/.cache.
      python -m bench.container --from-json F   prints the table of a saved run again.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from amf.cli import first_sentence
from bench import models

ROOT = models.ROOT
STAGES = ("startup", "imports", "load", "infer", "write")
CPU_CASES = [
    "shipped",
    "shipped-members",
    "shipped-merged",
    "shipped-tta-none",
    "shipped-tta-d4",
    "convnext5-128",
    "convnext5-128-merged",
    "convnext5-224",
    "convnext5-224-merged",
]
GPU_CASES = ["convnext5-128-fp16", "convnext5-224-fp16"]


def model_for(case: str) -> Path:
    if case == "shipped":
        return ROOT / "model"
    if case.startswith("shipped-tta-"):
        return models.shipped_folder("members", tta=case.rsplit("-", 1)[1])
    if case.startswith("shipped-"):
        return models.shipped_folder(case.split("-", 1)[1])
    _, size, *runs_as = case.split("-")  # convnext5-224[-merged|-fp16]
    src = models.convnext_ensemble(int(size))
    return models.derived_folder(src, f"{src.name}_{runs_as[0]}", runs_as[0]) if runs_as else src


def cuda_works() -> bool:
    """Whether onnxruntime's CUDA provider really loads here (not only whether it is installed)."""
    code = (
        "import onnxruntime as o, sys; from amf.ensemble import Ensemble; "
        f"sys.exit(0 if Ensemble({str(ROOT / 'model')!r}).device == 'cuda' else 1)"
    )
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True).returncode == 0


def run_once(cmd: list[str]) -> dict:
    """One fresh process; its stage times plus start-up (wall clock minus the stages)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode != 0:
        raise SystemExit(f"benchmark run failed: {' '.join(cmd)}\n{p.stderr[-2000:]}")
    r = json.loads(p.stdout.strip().splitlines()[-1])
    r["total"] = wall
    # CPU seconds (user + system, all threads): far less sensitive than wall time to other
    # processes on a shared machine, though spinning worker threads count in it too
    r["cpu"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    r["startup"] = wall - sum(r[s] for s in STAGES[1:])
    return r


def command(case: str, input_dir: str, out: str, python: str) -> list[str]:
    if case == "baseline":
        return [
            sys.executable,
            "-m",
            "bench.baseline",
            "--input",
            input_dir,
            "--output",
            out,
            "--weights",
            str(models.baseline_weights()),
        ]
    graph = models.GRAPHS.get(case.rsplit("-", 1)[-1])  # a -merged or -fp16 case runs that graph
    cmd = [python, "-m", "bench.stages", "--input", input_dir, "--output", out, "--model", str(model_for(case))]
    return cmd + (["--graph", graph] if graph else [])


def machine() -> str:
    import os

    from evaluation.preflight import cpu_name  # the preflight's timing line names the machine the same way

    return f"{cpu_name()}, {os.cpu_count()} logical CPUs, Python {platform.python_version()}"


def table(runs: dict[str, list[dict]]) -> str:
    """Per case: medians, and the best (shortest) run. × baseline = the case's figure over the
    baseline's, both taken over the same interleaved run (paired ratios are in --json)."""
    lines = [
        "| case | device / path | runs | wall s (median) | wall s (best) | start-up | imports | load | infer "
        "| write | × baseline (median) | × baseline (best) | CPU s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    med = {
        case: {k: statistics.median(r[k] for r in rs) for k in ("total", "cpu") + STAGES} for case, rs in runs.items()
    }
    best = {case: min(r["total"] for r in rs) for case, rs in runs.items()}
    for case, rs in runs.items():
        m = med[case]
        path = rs[0]["device"] + (f" / {rs[0]['variant']}" if rs[0]["variant"] else " / members")
        if case == "baseline":
            path = "cpu / torch, 1 image at a time"
        lines.append(
            f"| {case} | {path} | {len(rs)} | {m['total']:.2f} | {best[case]:.2f} | "
            + " | ".join(f"{m[s]:.2f}" for s in STAGES)
            + f" | {m['total'] / med['baseline']['total']:.2f} | {best[case] / best['baseline']:.2f}"
            f" | {m['cpu']:.2f} |"
        )
    return "\n".join(lines)


def report(runs: dict[str, list[dict]], input_dir: str, gpu: bool, name: str) -> str:
    rounds = len(runs[next(c for c in runs if c != "baseline")])
    out = [
        f"Machine: {name}. Stack: {runs['baseline'][0]['n']} patches ({input_dir}). "
        f"Median of {rounds} fresh-process runs per case (baseline: {len(runs['baseline'])}); seconds.",
        "",
        table(runs),
    ]
    for sep, mer in (
        ("shipped-members", "shipped-merged"),
        ("convnext5-128", "convnext5-128-merged"),
        ("convnext5-224", "convnext5-224-merged"),
    ):
        if sep in runs and mer in runs:
            wall = statistics.median(m["total"] / s["total"] for s, m in zip(runs[sep], runs[mer]))
            cpu = statistics.median(m["cpu"] / s["cpu"] for s, m in zip(runs[sep], runs[mer]))
            out += [
                "",
                f"{mer} / {sep} (same round) = {wall:.2f} wall, {cpu:.2f} CPU "
                f"(median over rounds; < 1: the merged graph is faster)",
            ]
    if not gpu:
        out += ["", "fp16 on GPU: not measured (onnxruntime's CUDA provider does not load on this machine)."]
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=first_sentence(__doc__))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cases", nargs="*", default=None, help=f"default: {CPU_CASES} (+ {GPU_CASES} on CUDA)")
    ap.add_argument("--input", default="test/input", help="a job folder (relative to the repository)")
    ap.add_argument("--python", default=sys.executable, help="python of the ONNX runs (e.g. .venv-runtime)")
    ap.add_argument("--json", default=None, help="also write every run's numbers here")
    ap.add_argument("--from-json", default=None, help="print the table of a run saved with --json, run nothing")
    a = ap.parse_args(argv)
    if a.from_json:
        saved = json.loads(Path(a.from_json).read_text())
        print(report(saved["runs"], saved.get("input", "test/input"), saved.get("gpu", False), saved["machine"]))
        return 0
    gpu = cuda_works()
    cases = a.cases or CPU_CASES + (GPU_CASES if gpu else [])
    print(f"preparing models for {cases} ...", file=sys.stderr)
    models.baseline_weights()
    for c in cases:
        model_for(c)
    runs: dict[str, list[dict]] = {"baseline": []}
    ratios: dict[str, list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for rnd in range(a.repeats):
            for case in cases:
                base = run_once(command("baseline", a.input, f"{tmp}/b", a.python))
                r = run_once(command(case, a.input, f"{tmp}/{case}", a.python))
                runs["baseline"].append(base)
                runs.setdefault(case, []).append(r)
                ratios.setdefault(case, []).append((r["total"] / base["total"], r["cpu"] / base["cpu"]))
                print(
                    f"round {rnd + 1}/{a.repeats} {case}: {r['total']:.2f} s (baseline {base['total']:.2f} s)",
                    file=sys.stderr,
                )
    print(report(runs, a.input, gpu, machine()))
    if a.json:
        Path(a.json).write_text(
            json.dumps(
                {"machine": machine(), "input": a.input, "gpu": gpu, "runs": runs, "paired_ratios": ratios}, indent=1
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
