"""Peak memory of inference.py on stacks of N patches, each run a fresh process as the platform runs it.

A stack of N 128x128 RGB patches (the 16 patches of the project's sample job, test/input, repeated)
is written as the platform hands it (compressed .mha, or --format tiff: deflated multi-page TIFF);
inference.py runs on it in a fresh process and the peak resident memory of that process (ru_maxrss,
from os.wait4) is reported with its wall time. The default Ns are 16 (what the platform sends),
1,000, and amf.jobs.MAX_PATCHES (the cap on one stack).
Run:  python -m bench.memory [--n 16 1000 10000] [--model model] [--format mha|tiff]
      [--inference PATH]   (another inference.py, e.g. an older checkout, for a before/after)
Prints a markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from amf import jobs  # noqa: E402


def peak_of(cmd: list[str]) -> tuple[float, float]:
    """Run CMD; (peak resident MiB of that process, wall seconds)."""
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)  # the rusage of this one child
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            err.seek(0)
            lines = err.read().decode(errors="replace").strip().splitlines() or [f"exit {proc.returncode}"]
            sys.exit(f"error: {cmd[1]} failed: {lines[-1]}")
    return usage.ru_maxrss / 1024, wall  # ru_maxrss is in KiB on Linux


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="+", default=[16, 1000, jobs.MAX_PATCHES])
    ap.add_argument("--model", default=str(ROOT / "model"))
    ap.add_argument("--format", choices=["mha", "tiff"], default="mha")
    ap.add_argument("--inference", default=str(ROOT / "inference.py"))
    a = ap.parse_args(argv)
    sample = [p.copy() for p in jobs.read_stack(jobs.find_stack(ROOT / "test" / "input"))]
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
        f"Python {platform.python_version()}; {a.inference}; model {a.model}; format {a.format}\n"
    )
    print("| patches | stack file MB | decoded pixels MB | peak RSS MB | wall s |")
    print("|---|---|---|---|---|")
    for n in a.n:
        with tempfile.TemporaryDirectory() as tmp:
            stack = jobs.write_job(
                Path(tmp) / "input", [sample[i % len(sample)] for i in range(n)], f"stack.{a.format}"
            )
            peak, wall = peak_of(
                [
                    sys.executable,
                    a.inference,
                    "--input",
                    str(Path(tmp) / "input"),
                    "--output",
                    str(Path(tmp) / "output"),
                    "--model",
                    a.model,
                    "--quiet",
                ]
            )
            print(
                f"| {n:,} | {stack.stat().st_size / 1e6:.1f} | {n * 128 * 128 * 3 / 1e6:.1f} | {peak:.0f} "
                f"| {wall:.1f} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
