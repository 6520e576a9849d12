"""H&E augmentation of one square HxWx3 uint8 patch (numpy + Pillow), before resizing.

Each part is switched and sized in the config's `augment` section:
  flip, rot90    dihedral symmetry (a mitotic figure has no orientation)
  hed_scale, hed_shift   stain jitter in HED space (Tellez et al. 2018): scikit-image's rgb2hed/hed2rgb
                 colour deconvolution (Ruifrok & Johnston's published vectors, the matrix exactly as
                 skimage.color.rgb_from_hed, rows not normalised; hed_from_rgb its inverse; the same
                 log/exp conversion as skimage's separate_stains/combine_stains, except that negative
                 densities are not clipped to 0, so a zero jitter gives the patch back). Each of
                 haematoxylin, eosin and the residual (DAB) density is scaled by 1+U(-scale,scale) and
                 shifted by U(-shift,shift) (densities on skimage's 0..~0.2 scale)
  brightness, contrast, saturation   Pillow ImageEnhance factors 1+U(-v,v)
  affine         with probability affine_p: rotation +-degrees, scale, translation (fraction of the side),
                 on a reflect-padded copy so that no empty corners appear; the figure stays near the centre
  blur           with probability blur_p: Gaussian blur, sigma in blur_sigma (px at the patch's own size)
Randomness comes only from the numpy Generator passed in: the same generator state gives the same patch.
Run:  python -m training.augment IMAGE.png OUT.png [--seed 0]
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

# Ruifrok & Johnston stain vectors (rows: haematoxylin, eosin, DAB): scikit-image's rgb_from_hed, as published
# (not row-normalised; no cross product for the third row), and its inverse, skimage's hed_from_rgb
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED)
LOG_ADJUST = np.log(1e-6)


def rgb_to_hed(rgb: np.ndarray) -> np.ndarray:
    """RGB in 0..1 (..., 3) -> stain densities (..., 3): skimage's separate_stains(rgb, hed_from_rgb), unclipped."""
    return (np.log(np.maximum(rgb, 1e-6)) / LOG_ADJUST) @ HED_FROM_RGB


def hed_to_rgb(hed: np.ndarray) -> np.ndarray:
    """Stain densities (..., 3) -> RGB (..., 3), not clipped: skimage's combine_stains(hed, rgb_from_hed)."""
    return np.exp(-(hed * -LOG_ADJUST) @ RGB_FROM_HED)


def hed_jitter(img: np.ndarray, rng: np.random.Generator, scale: float, shift: float) -> np.ndarray:
    """Scale and shift the stain densities (skimage's separate_stains, jitter, combine_stains) -> RGB uint8."""
    hed = rgb_to_hed(img.astype(np.float64) / 255.0)
    alpha = 1.0 + rng.uniform(-scale, scale, 3)
    beta = rng.uniform(-shift, shift, 3)
    out = hed_to_rgb(hed * alpha + beta)
    return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)


def affine(img: np.ndarray, rng: np.random.Generator, degrees: float, scale, translate: float) -> np.ndarray:
    """Rotate/scale/translate about the centre on a reflect-padded copy; same size out."""
    h = img.shape[0]
    pad = h // 4
    big = Image.fromarray(np.pad(img, ((pad, pad), (pad, pad), (0, 0)), mode="reflect"))
    angle = math.radians(rng.uniform(-degrees, degrees))
    s = rng.uniform(scale[0], scale[1])
    tx, ty = rng.uniform(-translate, translate, 2) * h
    c = big.size[0] / 2.0
    # Pillow's AFFINE maps output (x, y) to input; build the inverse of rotate(angle)*scale(s)+shift
    cos, sin = math.cos(angle) / s, math.sin(angle) / s
    a, b, d, e = cos, sin, -sin, cos
    cx, cy = c + tx, c + ty
    coeffs = (a, b, c - a * cx - b * cy, d, e, c - d * cx - e * cy)
    out = big.transform(big.size, Image.Transform.AFFINE, coeffs, resample=Image.Resampling.BILINEAR)
    return np.asarray(out)[pad : pad + h, pad : pad + h]


def enhance(
    img: np.ndarray, rng: np.random.Generator, brightness: float, contrast: float, saturation: float
) -> np.ndarray:
    pil = Image.fromarray(img)
    for op, v in (
        (ImageEnhance.Brightness, brightness),
        (ImageEnhance.Contrast, contrast),
        (ImageEnhance.Color, saturation),
    ):
        if v > 0:
            pil = op(pil).enhance(1.0 + rng.uniform(-v, v))
    return np.asarray(pil)


def blur(img: np.ndarray, rng: np.random.Generator, sigma) -> np.ndarray:
    return np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(rng.uniform(sigma[0], sigma[1]))))


class Augment:
    """The configured chain; call with (HxWx3 uint8, Generator) -> HxWx3 uint8."""

    def __init__(self, cfg: dict):
        self.cfg = dict(cfg)

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        c = self.cfg
        if not c.get("enabled", True):
            return img
        if c["rot90"]:
            img = np.rot90(img, int(rng.integers(4)))
        if c["flip"] and rng.random() < 0.5:
            img = img[:, ::-1]
        img = np.ascontiguousarray(img)
        if c["affine_p"] > 0 and rng.random() < c["affine_p"]:
            img = affine(img, rng, c["degrees"], c["scale"], c["translate"])
        if c["hed_scale"] > 0 or c["hed_shift"] > 0:
            img = hed_jitter(img, rng, c["hed_scale"], c["hed_shift"])
        if max(c["brightness"], c["contrast"], c["saturation"]) > 0:
            img = enhance(img, rng, c["brightness"], c["contrast"], c["saturation"])
        if c["blur_p"] > 0 and rng.random() < c["blur_p"]:
            img = blur(img, rng, c["blur_sigma"])
        return np.ascontiguousarray(img, dtype=np.uint8)


def main(argv=None) -> int:
    from amf import report_error
    from amf.cli import EXPECTED, ArgumentParser, as_error, non_negative_int
    from amf.preprocess import canonical_patch
    from training.config import DEFAULTS

    ap = ArgumentParser(prog="python -m training.augment", description=__doc__.splitlines()[0])
    ap.add_argument("image")
    ap.add_argument("out")
    ap.add_argument("--seed", type=non_negative_int, default=0)
    a = ap.parse_args(argv)
    try:  # PIL's errors for a file that is no image are OSErrors
        src = canonical_patch(np.asarray(Image.open(a.image).convert("RGB")))
        Image.fromarray(Augment(DEFAULTS["augment"])(src, np.random.default_rng(a.seed))).save(a.out)
    except EXPECTED as e:
        return report_error(as_error(e))
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
