"""The GPU self-check: one command that measures training and the container on the GPU(s) it finds, and says
what it skipped.

  python -m bench.gpu_check [--out bench/results/gpu-NAME.json] [--device auto|cpu] [--quick] [--input JOB]

  train   training images/s with the real data path (bench.train_throughput: training's own train_step, the
          augmentation on 128-px patches, then the model step): ConvNeXt-Small 224 px plain and full recipe (the
          targets on an H100/H200: >= 1,500 and >= 1,200 img/s) and the default model's config
          (training/configs/default_model.yaml), each through the device path (data.device_augment) and the
          DataLoader path                                                                   needs a CUDA GPU
  ddp     two-rank parity of what the ranks are fed on the device path (bench.ddp_parity): nccl on two GPUs,
          else gloo on the CPU; the union of the ranks' views must be one process's, their k-th views differ
  onnx    the container's members (model/) on test/input's 16-patch stack: time per stack on the CPU, and on
          onnxruntime's CUDA provider with the largest probability difference from the CPU (at most 1e-3)
                                                                        the CUDA side needs the CUDA provider
  fp16    the same members converted to fp16 as training.export --precision fp16 converts them (float32 input and
          output), in a model folder of their own, through the container: time per stack on the CPU (onnxruntime's
          CPU provider casts to float32 around the operators it has no float16 kernel for) and on the CUDA provider
          (float16 kernels), each with the largest probability difference from the fp32 members on the CPU (at
          most 1e-3, export.fp16_tol's default) and the time against the fp32 members' on the same provider
                                                                        the CUDA side needs the CUDA provider
On a machine without a GPU (or with --device cpu) the CPU parts run and the rest is listed as skipped, with the
reason. Prints a Markdown table for BENCHMARKS.md naming the device ("not measured" where skipped); --out writes
everything as JSON. Exit status 0 when every check that ran holds (parity, probability difference), 1 otherwise;
speeds are reported against their targets, never enforced. --quick: fewer steps and repeats (a first look). --input:
another job folder than test/input for the onnx and fp16 parts (real patches: python -m evaluation pack DATA OUT
--limit 16 makes one, OUT/jobs/<first>/input).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROB_TOL = 1e-3  # the Docker test's tolerance on confidences
# (model, px, batch, recipe, base config, target img/s or None)
TRAIN_CASES = (
    ("convnext_small", 224, 128, "plain", "smoke", 1500),
    ("convnext_small", 224, 128, "full", "smoke", 1200),
    ("mobilenetv3_small_100", 128, 64, "full", "default_model", None),
)
LOADERS = ("device", "cpu")


def plan(gpus: int, cuda_provider: bool) -> dict:
    """Each part -> None (it runs) or why it is skipped, for GPUS CUDA devices and onnxruntime's CUDA provider;
    ddp_backend: nccl on two GPUs, else gloo on the CPU."""
    no_gpu = "no CUDA GPU here" if gpus == 0 else None
    return {
        "train": no_gpu,
        "ddp": None,
        "ddp_backend": "nccl" if gpus >= 2 else "gloo",
        "onnx_cpu": None,
        "onnx_cuda": no_gpu
        or (None if cuda_provider else "onnxruntime has no CUDA provider here (pip install onnxruntime-gpu)"),
        "fp16_cpu": None,
        "fp16_cuda": no_gpu
        or (None if cuda_provider else "onnxruntime has no CUDA provider here (pip install onnxruntime-gpu)"),
    }


def machine(gpus: int) -> dict:
    import onnxruntime
    import torch

    names = [torch.cuda.get_device_name(i) for i in range(gpus)]
    cpu = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    return {
        "device": ", ".join(names) if names else f"CPU only ({cpu})",
        "gpus": names,
        "cpu": cpu,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "onnxruntime": onnxruntime.__version__,
        "providers": onnxruntime.get_available_providers(),
        "date": time.strftime("%Y-%m-%d"),
    }


# ---- the parts ------------------------------------------------------------------------------------------


def train_part(quick: bool) -> dict:
    import torch

    from bench.train_throughput import measure

    torch.backends.cudnn.benchmark = True
    steps, warmup = (5, 3) if quick else (30, 10)
    workers = max(1, min(12, (os.cpu_count() or 2) - 2))
    rows = []
    for model, size, batch, recipe, base, target in TRAIN_CASES:
        for loader in LOADERS:
            r = measure(model, size, batch, steps, warmup, recipe, torch.device("cuda"), loader, workers, False, base)
            r["target"] = target
            rows.append(r)
            print(
                f"  train {model} {size} px {recipe} ({base}), {loader} path: {r['images_per_s']:.0f} img/s", flush=True
            )
    return {"rows": rows, "ok": True}


def ddp_part(backend: str) -> dict:
    """bench.ddp_parity: one process, then two ranks (nccl on two GPUs, gloo on the CPU), compared."""
    from bench.ddp_parity import compare

    device = "cuda" if backend == "nccl" else "cpu"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    with tempfile.TemporaryDirectory() as tmp:
        runs = (
            ("single", [sys.executable, "-m", "bench.ddp_parity"]),
            (
                "ranks",
                [
                    sys.executable,
                    "-m",
                    "torch.distributed.run",
                    "--standalone",
                    "--nproc_per_node=2",
                    "-m",
                    "bench.ddp_parity",
                ],
            ),
        )
        for name, cmd in runs:
            p = subprocess.run(
                [*cmd, "--out", f"{tmp}/{name}", "--device", device], cwd=ROOT, env=env, capture_output=True, text=True
            )
            if p.returncode != 0:
                return {"ok": False, "backend": backend, "error": (p.stderr or p.stdout).strip()[-2000:]}
        result = compare(f"{tmp}/single", f"{tmp}/ranks")
    ok = (
        result["views_within_one_level"]
        and result["positions_distinct"]
        and result["same_kth_view_rank0_rank1"] == 0
        and result["rank0_generators_equal_single"]
        and result["rank_generators_differ"]
    )
    return {"ok": bool(ok), "backend": backend, **result}


SAMPLE_JOB = ROOT / "test" / "input"


def onnx_part(device: str, quick: bool, model=None, job=SAMPLE_JOB) -> dict:
    """The shipped ensemble (or MODEL, a model folder) on JOB's stack (test/input's) on DEVICE: median seconds per
    stack and the probabilities."""
    from amf.ensemble import Ensemble
    from amf.jobs import find_stack, read_stack

    stack = read_stack(find_stack(Path(job)))
    ens = Ensemble(model or ROOT / "model", device=device)
    if ens.device != device:
        return {"ok": False, "error": f"asked for {device}, onnxruntime ran on {ens.device}"}
    probs = ens.predict_proba(stack)  # the first run also warms up
    times = []
    for _ in range(2 if quick else 7):
        t = time.perf_counter()
        ens.predict_proba(stack)
        times.append(time.perf_counter() - t)
    return {
        "ok": True,
        "device": device,
        "patches": len(stack),
        "tta": ens.manifest.tta,
        "members": len(ens.manifest.members),
        "seconds_per_stack": round(statistics.median(times), 4),
        "probabilities": [float(p) for p in probs],
    }


def run(device: str = "auto", quick: bool = False, log=print, job=SAMPLE_JOB) -> dict:
    """Every part this machine allows (see plan), as one result dict; the onnx and fp16 parts on JOB's stack."""
    import onnxruntime
    import torch

    gpus = torch.cuda.device_count() if device != "cpu" and torch.cuda.is_available() else 0
    steps = plan(gpus, "CUDAExecutionProvider" in onnxruntime.get_available_providers())
    result = {**machine(gpus), "quick": quick, "job": str(job), "parts": {}}
    parts = result["parts"]

    def do(name, fn, *args):
        if steps[name] is not None:
            parts[name] = {"status": "skipped", "reason": steps[name]}
            log(f"{name}: skipped ({steps[name]})")
            return
        log(f"{name}: running")
        parts[name] = {"status": "measured", **fn(*args)}

    do("train", train_part, quick)
    do("ddp", ddp_part, steps["ddp_backend"])
    do("onnx_cpu", onnx_part, "cpu", quick, None, job)
    do("onnx_cuda", onnx_part, "cuda", quick, None, job)
    with tempfile.TemporaryDirectory() as tmp:
        half = fp16_model(ROOT / "model", Path(tmp) / "fp16")
        do("fp16_cpu", fp16_part, "cpu", quick, half, job)
        do("fp16_cuda", fp16_part, "cuda", quick, half, job)
    compare_parts(parts)
    result["ok"] = all(p.get("ok", True) for p in parts.values())
    return result


def fp16_model(src: Path, dst: Path) -> Path:
    """SRC's members converted to fp16 into the model folder DST (training.export.onnxfile.to_fp16, the export's own
    converter; the manifest's members marked fp16, nothing else changed)."""
    import dataclasses

    from amf.manifest import load, save
    from training.export.onnxfile import save_onnx, to_fp16

    m = load(src)
    dst.mkdir(parents=True, exist_ok=True)
    for member in m.members:
        save_onnx(to_fp16(src / member.file), dst / member.file)
    save(dataclasses.replace(m, members=[dataclasses.replace(x, precision="fp16") for x in m.members]), dst)
    return dst


def fp16_part(device: str, quick: bool, folder: Path, job=SAMPLE_JOB) -> dict:
    """The shipped members in fp16 (FOLDER, fp16_model's) on JOB's stack on DEVICE, as onnx_part measures."""
    out = onnx_part(device, quick, folder, job)
    if out.get("ok"):
        out["bytes"] = sum(p.stat().st_size for p in folder.glob("*.onnx"))
        out["fp32_bytes"] = sum(p.stat().st_size for p in (ROOT / "model").glob("*.onnx"))
    return out


def compare_parts(parts: dict) -> None:
    """The differences the table reports: the CUDA provider against the CPU, each fp16 case against the fp32
    members on the CPU (both within PROB_TOL), each fp16 case's time against the fp32 members' on its provider."""
    cpu = parts["onnx_cpu"]
    for name, same in (("onnx_cuda", None), ("fp16_cpu", "onnx_cpu"), ("fp16_cuda", "onnx_cuda")):
        p = parts[name]
        if not (cpu.get("ok") and p.get("ok")):
            continue
        diff = max(abs(a - b) for a, b in zip(cpu["probabilities"], p["probabilities"]))
        p["max_probability_diff_vs_cpu"] = diff
        p["ok"] = diff <= PROB_TOL
        if same and parts[same].get("ok") and "seconds_per_stack" in parts[same]:
            p["time_vs_fp32"] = round(p["seconds_per_stack"] / parts[same]["seconds_per_stack"], 3)


# ---- the table --------------------------------------------------------------------------------------------


def table(result: dict) -> str:
    """The Markdown table of RESULT for BENCHMARKS.md (skipped parts: "not measured", with the reason)."""
    parts = result["parts"]
    lines = [
        f"GPU self-check (`python -m bench.gpu_check`), {result['date']}: {result['device']}; torch {result['torch']}"
        f" (CUDA {result['cuda']}), onnxruntime {result['onnxruntime']}{' (--quick)' if result.get('quick') else ''}"
        + (
            f"; the onnx and fp16 parts on the job `{result['job']}`"
            if result.get("job", str(SAMPLE_JOB)) != str(SAMPLE_JOB)
            else ""
        ),
        "",
        "| check | what | measured | target |",
        "|---|---|---|---|",
    ]

    def skipped(part, what, target="") -> None:
        lines.append(f"| {part} | {what} | not measured ({parts[part]['reason']}) | {target} |")

    train = parts["train"]
    for model, size, batch, recipe, base, target in TRAIN_CASES:
        for loader in LOADERS:
            config = "" if base == "smoke" else f" ({base}.yaml)"
            what = f"{model} {size} px, batch {batch}, {recipe} recipe{config}, {loader} data path"
            tgt = f">= {target:,} img/s" if target else ""
            if train["status"] == "skipped":
                skipped("train", what, tgt)
                continue
            row = next(
                r
                for r in train["rows"]
                if (r["model"], r["size"], r["recipe"], r["config"]) == (model, size, recipe, base)
                and r["data"].startswith(loader)
            )
            met = "" if not target else (" (met)" if row["images_per_s"] >= target else " (not met)")
            lines.append(f"| train | {what} | {row['images_per_s']:,.0f} img/s{met} | {tgt} |")
    ddp = parts["ddp"]
    if ddp["status"] == "skipped":
        skipped("ddp", "two-rank parity of the augmentation")
    elif "error" in ddp:
        lines.append(f"| ddp | two ranks ({ddp['backend']}) | failed: {ddp['error'].splitlines()[-1]} | runs |")
    else:
        same = "yes" if ddp["views_equal"] else "within one level" if ddp.get("views_within_one_level") else "no"
        lines.append(
            f"| ddp | two ranks ({ddp['backend']}, device path): union of the ranks' views = one process's, "
            f"{ddp['positions']} positions | {same} (max diff {ddp['max_abs_diff']:g}); "
            f"k-th views alike on {ddp['same_kth_view_rank0_rank1']} of {ddp['kth_views_compared']}; rank seeds "
            f"{'differ' if ddp['rank_generators_differ'] else 'alike'} | yes; 0 of {ddp['kth_views_compared']} |"
        )
    cases = (
        ("onnx_cpu", "the shipped members", "CPU"),
        ("onnx_cuda", "the shipped members", "CUDA provider"),
        ("fp16_cpu", "the shipped members in fp16", "CPU"),
        ("fp16_cuda", "the shipped members in fp16", "CUDA provider"),
    )
    for part, which, where in cases:
        p = parts[part]
        what = f"{which} on {where}, 16-patch stack"
        if p["status"] == "skipped":
            skipped(part, what)
        elif "error" in p:
            lines.append(f"| {part} | {what} | failed: {p['error']} | |")
        else:
            count = which.replace("members", f"{p['members']} members")
            what = f"{count} ({p['tta']} TTA) on {where}, {p['patches']}-patch stack"
            if "bytes" in p:
                what += f", {p['bytes'] / 1e6:.1f} MB (fp32 {p['fp32_bytes'] / 1e6:.1f} MB)"
            diff = p.get("max_probability_diff_vs_cpu")
            extra = ""
            if diff is not None:
                against = "the fp32 members on the CPU" if part.startswith("fp16") else "the CPU"
                extra = f"; largest probability difference from {against} {diff:.1e}"
            if p.get("time_vs_fp32") is not None:
                extra += f"; {p['time_vs_fp32']:.2f}x the fp32 members' time there"
            lines.append(
                f"| {part} | {what} | {p['seconds_per_stack']:.3f} s per stack{extra} | "
                f"{f'<= {PROB_TOL:g}' if diff is not None else ''} |"
            )
    return "\n".join(lines)


def main(argv=None) -> int:
    from amf import AmfError, report_error
    from amf.cli import ArgumentParser

    ap = ArgumentParser.from_doc("python -m bench.gpu_check", __doc__)
    ap.add_argument("--out", default=None, help="write the whole result here (JSON)")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu"], help="cpu: the CPU parts only")
    ap.add_argument("--quick", action="store_true", help="fewer steps and repeats")
    ap.add_argument("--input", default=str(SAMPLE_JOB), help="the job folder of the onnx and fp16 parts")
    a = ap.parse_args(argv)
    result = run(a.device, a.quick, job=a.input)
    print()
    print(table(result))
    if a.out:
        from amf.fileio import write_text_atomic

        try:
            write_text_atomic(a.out, json.dumps(result, indent=2) + "\n")
        except AmfError as e:
            return report_error(e)
        print(f"\nwritten {a.out}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
