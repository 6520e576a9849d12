"""What bench/baseline.py and bench/stages.py share: the command line's --input/--output and the one JSON
line of stage timings they print (bench/container.py reads it). Standard library only (argparse, json):
both scripts time their own imports, so importing this must cost next to nothing."""

import argparse
import json


def job_parser(doc: str) -> argparse.ArgumentParser:
    """A parser described by DOC's first line, with the job folder to read and the folder to write."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--input", required=True)
    ap.add_argument("--output", required=True)
    return ap


def print_stages(t0: float, t1: float, t2: float, t3: float, t4: float, n: int, device: str, variant) -> None:
    """Seconds of imports (T0-T1), load (T1-T2), infer (T2-T3) and write (T3-T4), with the patch count,
    the device and the merged graph's kind that ran (None: the members, or no ensemble)."""
    print(
        json.dumps(
            {
                "imports": t1 - t0,
                "load": t2 - t1,
                "infer": t3 - t2,
                "write": t4 - t3,
                "n": n,
                "device": device,
                "variant": variant,
            }
        )
    )
