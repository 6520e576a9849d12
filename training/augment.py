"""Every training augmentation, defined once (STEPS): its config keys and defaults, when it acts, its CPU op, its
device op, its parameters on the device path and its words on the model card.

The steps, in the order they apply (config section `augment`; enabled: false switches all of them off):
  dihedral   flip, rot90: dihedral symmetry (a mitotic figure has no orientation)
  affine     with probability affine_p: rotation +-degrees, scale, translation (fraction of the side), on a
             reflect-padded copy so that no empty corners appear; the figure stays near the centre
  stain      hed_scale, hed_shift: stain jitter in HED space (Tellez et al. 2018): scikit-image's rgb2hed/hed2rgb
             colour deconvolution (Ruifrok & Johnston's published vectors, the matrix exactly as
             skimage.color.rgb_from_hed, rows not normalised; hed_from_rgb its inverse; the same log/exp conversion
             as skimage's separate_stains/combine_stains, except that negative densities are not clipped to 0, so a
             zero jitter gives the patch back). Each of haematoxylin, eosin and the residual (DAB) density is scaled
             by 1+U(-scale,scale) and shifted by U(-shift,shift) (densities on skimage's 0..~0.2 scale)
  colour     brightness, contrast, saturation: Pillow ImageEnhance factors 1+U(-v,v)
  blur       with probability blur_p: Gaussian blur, sigma in blur_sigma (px at the patch's own size)
The CPU path (Augment: one square HxWx3 uint8 patch, numpy + Pillow, before resizing, in DataLoader workers) draws
from the numpy Generator passed in: the same generator state gives the same patch. The device path (augment_batch:
a batch in torch on the training device, training/train/gpu_augment.py makes the batches) does the same with the same
meaning: Pillow's AFFINE convention via grid_sample, ImageEnhance as blends with Pillow's integer grey, Pillow's
GaussianBlur as a Gaussian of the same sigma, every stage rounded (or truncated, where Pillow does) to uint8
levels; its parameters are one table per batch (device_params: each step's columns, drawn for every figure whether
the step is on or not, so that a switch never moves another step's draws). The two paths draw from different
streams: the same distribution of augmentations, not the same images (test/test_gpu_augment.py).
A new augmentation is one Step in STEPS: config.DEFAULTS["augment"], both paths, the device path's parameter table
and the card's augmentation line all read it.
Look at one:  python -m training.inspect augment IMAGE.png OUT.png [--seed 0]
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

# Ruifrok & Johnston stain vectors (rows: haematoxylin, eosin, DAB): scikit-image's rgb_from_hed, as published
# (not row-normalised; no cross product for the third row), and its inverse, skimage's hed_from_rgb
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED)
LOG_ADJUST = np.log(1e-6)
GRAY_WEIGHTS = (19595, 38470, 7471)  # Pillow's RGB -> L: (R*19595 + G*38470 + B*7471 + 0x8000) >> 16


# ---- the CPU ops: one patch, numpy + Pillow ----------------------------------------------------------------


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


def dihedral(img: np.ndarray, rng: np.random.Generator, c: dict) -> np.ndarray:
    if c["rot90"]:
        img = np.rot90(img, int(rng.integers(4)))
    if c["flip"] and rng.random() < 0.5:
        img = img[:, ::-1]
    return np.ascontiguousarray(img)


# ---- the device ops: a batch N x 3 x H x W (float, uint8 levels) and its parameter table, in torch -------------


def quantise(x):
    """Round to uint8 levels (Pillow and the CPU ops round their outputs), kept as float."""
    return x.round().clamp_(0, 255)


def dihedral_batch(x, p):
    """np.rot90(img, k) then img[:, ::-1] of the CPU op, per sample (NCHW, square)."""
    import torch

    rot, flip, out = p[:, P["rot"]], p[:, P["flip"]], x
    for k in (1, 2, 3):
        out = torch.where((rot == k).view(-1, 1, 1, 1), torch.rot90(x, k, dims=(2, 3)), out)
    return torch.where((flip > 0).view(-1, 1, 1, 1), out.flip(3), out)


def affine_batch(x, p):
    """affine per sample: Pillow's AFFINE (output pixel centre -> input) on a reflect-padded copy."""
    import torch
    import torch.nn.functional as F

    n, _, h, w = x.shape
    pad = h // 4
    big = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    side = h + 2 * pad
    c = side / 2.0
    cos = torch.cos(p[:, P["angle"]]) / p[:, P["scale"]]
    sin = torch.sin(p[:, P["angle"]]) / p[:, P["scale"]]
    cx, cy = c + p[:, P["tx"]] * h, c + p[:, P["ty"]] * h
    centres = torch.arange(h, device=x.device, dtype=x.dtype) + pad + 0.5  # the crop's pixel centres
    u, v = centres.view(1, 1, h), centres.view(1, h, 1)
    du, dv = u - cx.view(n, 1, 1), v - cy.view(n, 1, 1)
    xin = cos.view(n, 1, 1) * du + sin.view(n, 1, 1) * dv + c
    yin = -sin.view(n, 1, 1) * du + cos.view(n, 1, 1) * dv + c
    grid = torch.stack([2 * xin / side - 1, 2 * yin / side - 1], dim=-1)  # align_corners=False: pixel centres
    # Pillow's bilinear transform truncates to uint8 (no +0.5)
    out = torch.floor(F.grid_sample(big, grid, mode="bilinear", padding_mode="zeros", align_corners=False))
    return torch.where((p[:, P["affine"]] > 0).view(-1, 1, 1, 1), out, x)


def hed_batch(x, p):
    """hed_jitter per sample: scale and shift the stain optical densities."""
    import torch

    hed_from_rgb = torch.as_tensor(HED_FROM_RGB, dtype=x.dtype, device=x.device)
    rgb_from_hed = torch.as_tensor(RGB_FROM_HED, dtype=x.dtype, device=x.device)
    rgb = (x / 255.0).clamp_min(1e-6)
    hed = torch.einsum("nchw,cd->ndhw", torch.log(rgb) / LOG_ADJUST, hed_from_rgb)
    alpha = p[:, P["hed_a0"] : P["hed_a2"] + 1].view(-1, 3, 1, 1)
    beta = p[:, P["hed_b0"] : P["hed_b2"] + 1].view(-1, 3, 1, 1)
    log_rgb = torch.einsum("nchw,cd->ndhw", -(hed * alpha + beta) * -LOG_ADJUST, rgb_from_hed)
    return quantise(torch.exp(log_rgb) * 255.0)


def gray(x):
    """Pillow's convert("L") of integer-valued RGB (exact in float32), N x 1 x H x W."""
    import torch

    r, g, b = GRAY_WEIGHTS
    return torch.floor((x[:, 0:1] * r + x[:, 1:2] * g + x[:, 2:3] * b + 32768) / 65536)


def blend(degenerate, x, factor):
    """Image.blend(degenerate, x, factor): clipped and truncated to uint8 levels as Pillow does."""
    import torch

    f = factor.view(-1, 1, 1, 1)
    return torch.floor((degenerate + f * (x - degenerate)).clamp(0, 255))


def enhance_batch(x, p, c: dict):
    """enhance: ImageEnhance.Brightness, Contrast, Color in that order (each only if switched on)."""
    import torch

    if c["brightness"] > 0:
        x = blend(torch.zeros_like(x), x, p[:, P["brightness"]])
    if c["contrast"] > 0:
        mean = torch.floor(gray(x).mean(dim=(1, 2, 3), keepdim=True) + 0.5)
        x = blend(mean.expand_as(x), x, p[:, P["contrast"]])
    if c["saturation"] > 0:
        x = blend(gray(x).expand_as(x), x, p[:, P["saturation"]])
    return x


def blur_batch(x, p, max_sigma: float):
    """Separable Gaussian per sample (its own sigma), replicated edges; samples without blur pass through."""
    import torch
    import torch.nn.functional as F

    n, ch, h, w = x.shape
    r = max(1, math.ceil(3 * max_sigma))
    t = torch.arange(-r, r + 1, device=x.device, dtype=x.dtype)
    sigma = p[:, P["sigma"]].clamp_min(1e-3).view(n, 1)
    k = torch.exp(-(t.view(1, -1) ** 2) / (2 * sigma**2))
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(ch, 0)  # (n*ch, 2r+1)
    y = F.pad(x.reshape(1, n * ch, h, w), (r, r, r, r), mode="replicate")
    y = F.conv2d(y, k.view(n * ch, 1, 1, -1), groups=n * ch)
    y = F.conv2d(y, k.view(n * ch, 1, -1, 1), groups=n * ch)
    out = quantise(y.view(n, ch, h, w))
    return torch.where((p[:, P["blur"]] > 0).view(-1, 1, 1, 1), out, x)


# ---- the steps ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One augmentation. DEFAULTS: its config keys (section augment) and their defaults. ON(c): whether it acts
    under the augment settings C, on either path. CPU(img, rng, c): the patch op. COLUMNS and DRAW(d, c): its
    columns of the device path's parameter table and their values for every figure (d.u(lo, hi, *shape) uniform,
    d.integers(high)), drawn in this order. DEVICE(x, p, c): the batch op. CARD(c): its words on the model card,
    with its values (every step has them: the card names every step that acts; None for none of its parts, e.g.
    the dihedral step with both switches off)."""

    name: str
    defaults: dict
    on: Callable
    cpu: Callable
    columns: tuple
    draw: Callable
    device: Callable
    card: Callable


def dihedral_words(c: dict) -> str | None:
    views = [name for key, name in (("flip", "flips"), ("rot90", "90° rotations")) if c.get(key)]
    return ", ".join(views) or None


STEPS = (
    Step(
        "dihedral",
        {"flip": True, "rot90": True},
        on=lambda c: True,  # each switch is drawn and applied inside (the device path zeroes its parameter)
        cpu=dihedral,
        columns=("rot", "flip"),
        draw=lambda d, c: [d.integers(4) * bool(c["rot90"]), (d.u(0, 1) < 0.5) * bool(c["flip"])],
        device=lambda x, p, c: dihedral_batch(x, p),
        card=dihedral_words,
    ),
    Step(
        "affine",
        {"affine_p": 0.5, "degrees": 15.0, "scale": [0.9, 1.1], "translate": 0.05},
        on=lambda c: c["affine_p"] > 0,
        cpu=lambda img, rng, c: (
            affine(img, rng, c["degrees"], c["scale"], c["translate"]) if rng.random() < c["affine_p"] else img
        ),
        columns=("affine", "angle", "scale", "tx", "ty"),
        draw=lambda d, c: [
            d.u(0, 1) < c["affine_p"],
            d.deg2rad(d.u(-c["degrees"], c["degrees"])),
            d.u(c["scale"][0], c["scale"][1]),
            d.u(-c["translate"], c["translate"], 2),
        ],
        device=lambda x, p, c: affine_batch(x, p),
        card=lambda c: (
            f"random affine (p {c['affine_p']}: rotation ±{c['degrees']:g}°, scale "
            f"{c['scale'][0]:g}–{c['scale'][1]:g}, translation ±{c['translate']:g} of the side)"
        ),
    ),
    Step(
        "stain",
        {"hed_scale": 0.05, "hed_shift": 0.01},
        on=lambda c: c["hed_scale"] > 0 or c["hed_shift"] > 0,
        cpu=lambda img, rng, c: hed_jitter(img, rng, c["hed_scale"], c["hed_shift"]),
        columns=("hed_a0", "hed_a1", "hed_a2", "hed_b0", "hed_b1", "hed_b2"),
        draw=lambda d, c: [1.0 + d.u(-c["hed_scale"], c["hed_scale"], 3), d.u(-c["hed_shift"], c["hed_shift"], 3)],
        device=lambda x, p, c: hed_batch(x, p),
        card=lambda c: f"HED stain jitter (scale {c['hed_scale']}, shift {c['hed_shift']})",
    ),
    Step(
        "colour",
        {"brightness": 0.1, "contrast": 0.1, "saturation": 0.1},
        on=lambda c: max(c["brightness"], c["contrast"], c["saturation"]) > 0,
        cpu=lambda img, rng, c: enhance(img, rng, c["brightness"], c["contrast"], c["saturation"]),
        columns=("brightness", "contrast", "saturation"),
        draw=lambda d, c: [1.0 + d.u(-c[k], c[k]) for k in ("brightness", "contrast", "saturation")],
        device=enhance_batch,
        card=lambda c: f"brightness {c['brightness']}, contrast {c['contrast']}, saturation {c['saturation']}",
    ),
    Step(
        "blur",
        {"blur_p": 0.2, "blur_sigma": [0.1, 1.0]},
        on=lambda c: c["blur_p"] > 0,
        cpu=lambda img, rng, c: blur(img, rng, c["blur_sigma"]) if rng.random() < c["blur_p"] else img,
        columns=("blur", "sigma"),
        draw=lambda d, c: [d.u(0, 1) < c["blur_p"], d.u(c["blur_sigma"][0], c["blur_sigma"][1])],
        device=lambda x, p, c: blur_batch(x, p, float(c["blur_sigma"][1])),
        card=lambda c: f"Gaussian blur (p {c['blur_p']}, sigma {c['blur_sigma'][0]:g}–{c['blur_sigma'][1]:g} px)",
    ),
)
DEFAULTS = {"enabled": True} | {key: value for step in STEPS for key, value in step.defaults.items()}
CARD_KEYS = tuple(DEFAULTS)  # the card records every setting: a step that is on is named with its values
COLUMNS = tuple(column for step in STEPS for column in step.columns)  # the device path's parameter table
P = {name: i for i, name in enumerate(COLUMNS)}


def card_words(c: dict) -> str | None:
    """The model card's words for the augment settings C (CARD_KEYS): every step that acts (Step.on), in order;
    None when switched off or when none acts."""
    if not c.get("enabled"):
        return None
    return ", ".join(words for step in STEPS if step.on(c) and (words := step.card(c))) or None


class Augment:
    """The configured chain on the CPU; call with (HxWx3 uint8, Generator) -> HxWx3 uint8."""

    def __init__(self, cfg: dict):
        self.cfg = dict(cfg)

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        c = self.cfg
        if not c.get("enabled", True):
            return img
        for step in STEPS:
            if step.on(c):
                img = step.cpu(img, rng, c)
        return np.ascontiguousarray(img, dtype=np.uint8)


class Draws:
    """The device path's draws for N figures from a torch.Generator (float64 on the CPU)."""

    def __init__(self, n: int, generator):
        import torch

        self.n, self.generator, self.torch = n, generator, torch

    def u(self, lo, hi, *shape):
        return lo + (hi - lo) * self.torch.rand((self.n, *shape), generator=self.generator, dtype=self.torch.float64)

    def integers(self, high: int):
        return self.torch.randint(0, high, (self.n,), generator=self.generator)

    def deg2rad(self, x):
        return self.torch.deg2rad(x)


def device_params(cfg: dict, n: int, generator):
    """Parameters for N figures (CPU, float32, columns COLUMNS); switched-off parts get their identity value."""
    import torch

    d = Draws(n, generator)
    columns = [value for step in STEPS for value in step.draw(d, cfg)]
    return torch.cat([torch.as_tensor(v, dtype=torch.float64).reshape(n, -1) for v in columns], 1).float()


def augment_batch(x, p, cfg: dict):
    """N x 3 x H x W float (uint8 levels) -> augmented, same shape: the CPU chain's steps and switches, each step
    with its rows of P (device_params)."""
    if not cfg.get("enabled", True):
        return x
    for step in STEPS:
        if step.on(cfg):
            x = step.device(x, p, cfg)
    return x
