"""Makes the project's sample job, test/input, from nothing but a seed.

Real MIDOG patches cannot be committed, so these 16 patches are drawn: an eosin-pink stroma with
haematoxylin-blue nuclei, and a dark, condensed figure at the centre (a compact one for 'normal'
looking figures, a scattered, multipolar one for 'atypical' looking ones). 128x128 RGB uint8,
written like the organisers' sample: inputs.json and a deflate-compressed multi-page TIFF.
Run:  python test/make_sample_input.py [OUT_DIR] [--n 16] [--seed 2025] [--format tiff|mha]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere


def draw_patch(rng: np.random.Generator, atypical_look: bool, size: int = 128) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    img = np.empty((size, size, 3), np.float32)
    img[:] = np.array([236, 190, 214]) + rng.normal(0, 6, 3)  # eosin stroma
    img += rng.normal(0, 5, (size, size, 1))
    for _ in range(rng.integers(6, 14)):  # background nuclei
        cy, cx, r = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(5, 10)
        d = ((yy - cy) ** 2 + (xx - cx) ** 2) / r**2
        img = np.where((d < 1)[..., None], img * 0.55 + np.array([120, 90, 170]) * 0.45, img)
    c = size / 2
    blobs = rng.integers(3, 6) if atypical_look else 1
    for k in range(blobs):  # the figure: condensed chromatin at the centre
        ang = 2 * np.pi * k / blobs + rng.uniform(0, 1)
        off = rng.uniform(6, 14) if atypical_look else 0.0
        cy, cx = c + off * np.sin(ang), c + off * np.cos(ang)
        ry, rx = (rng.uniform(3, 6), rng.uniform(3, 6)) if atypical_look else (rng.uniform(4, 6), rng.uniform(9, 13))
        d = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
        img = np.where((d < 1)[..., None], np.array([60, 30, 90]) + rng.normal(0, 8, (size, size, 3)), img)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_job(out_dir, n: int = 16, seed: int = 2025, fmt: str = "tiff", name: str | None = None) -> Path:
    rng = np.random.default_rng(seed)
    patches = [draw_patch(rng, atypical_look=bool(i % 4 == 3)) for i in range(n)]
    return write_job(out_dir, patches, fmt=fmt, name=name)


def write_job(out_dir, patches, fmt: str = "tiff", name: str | None = None) -> Path:
    """Write a platform-style job folder: inputs.json + images/<slug>/<name> (amf.jobs.write_job)."""
    from amf import jobs

    if fmt not in ("tif", "tiff", "mha"):
        raise ValueError(f"unknown format {fmt}")
    return jobs.write_job(Path(out_dir), list(patches), name or f"stack_0.{fmt}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", nargs="?", default=str(Path(__file__).parent / "input"))
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--seed", type=int, default=2025)
    ap.add_argument("--format", default="tiff", choices=["tiff", "mha"])
    a = ap.parse_args()
    print(make_job(a.out, a.n, a.seed, a.format))
