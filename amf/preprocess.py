"""Patch preprocessing, shared by training's data loader and the container.

The one rule for odd inputs (documented in the README):
  1. dtype -> uint8: uint8 as is; 16-bit integers scaled by 255/65535; bool x255;
     floats taken as [0, 1] when their maximum is <= 1, else as [0, 255]; then clipped and rounded.
  2. channels -> RGB: gray (HxW or HxWx1) is repeated to 3 channels; gray+alpha and RGBA drop
     the alpha channel (no compositing); more than 4 channels is an error.
  3. geometry: a non-square patch is centre-cropped to a square of its shorter side (the figure sits
     at the centre); then each ensemble member resizes to its own input size with its own method.
Normalisation is (x / 255 - mean) / std per channel, float32, NCHW.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from amf import AmfError

RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


def to_uint8(img: np.ndarray) -> np.ndarray:
    """Any numeric array -> uint8, by rule 1."""
    if img.dtype == np.uint8:
        return img
    if img.dtype == np.bool_:
        return img.astype(np.uint8) * 255
    if img.dtype in (np.uint16, np.int16):
        scaled = img.astype(np.float64) * (255.0 / 65535.0)
    elif np.issubdtype(img.dtype, np.integer):
        scaled = img.astype(np.float64)
    elif np.issubdtype(img.dtype, np.floating):
        if not np.isfinite(img).all():
            raise AmfError("image has NaN or infinite pixel values")
        scaled = img.astype(np.float64)
        if scaled.size and scaled.max() <= 1.0:
            scaled = scaled * 255.0
    else:
        raise AmfError(f"unsupported pixel type {img.dtype}")
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def to_rgb(img: np.ndarray) -> np.ndarray:
    """HxW or HxWxC -> HxWx3 by rule 2."""
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3:
        raise AmfError(f"a patch must be 2-D (gray) or 3-D (HxWxC), got shape {img.shape}")
    channels = img.shape[2]
    if channels in (1, 2):
        return np.repeat(img[:, :, :1], 3, axis=2)
    if channels in (3, 4):
        return img[:, :, :3]
    raise AmfError(f"a patch must have 1 to 4 channels, got {channels}")


def centre_square(img: np.ndarray) -> np.ndarray:
    """Centre-crop HxWxC to a square of the shorter side (rule 3)."""
    h, w = img.shape[:2]
    side = min(h, w)
    if side == 0:
        raise AmfError(f"empty patch of size {h}x{w}")
    top, left = (h - side) // 2, (w - side) // 2
    return img[top:top + side, left:left + side]


def canonical_patch(img: np.ndarray) -> np.ndarray:
    """Any single patch -> square HxWx3 uint8 (rules 1-3, before resizing)."""
    return np.ascontiguousarray(centre_square(to_rgb(to_uint8(np.asarray(img)))))


def resize(img: np.ndarray, size: int, method: str = "bilinear") -> np.ndarray:
    """Square HxWx3 uint8 -> size x size x 3 uint8 with Pillow; a no-op at the right size."""
    if img.shape[0] == size and img.shape[1] == size:
        return img
    if method not in RESAMPLE:
        raise AmfError(f"unknown resize method {method!r}; use one of {sorted(RESAMPLE)}")
    return np.asarray(Image.fromarray(img).resize((size, size), RESAMPLE[method]))


def normalize(batch: np.ndarray, mean, std) -> np.ndarray:
    """NxHxWx3 uint8 -> Nx3xHxW float32, (x/255 - mean) / std."""
    x = batch.astype(np.float32) * np.float32(1.0 / 255.0)
    x -= np.asarray(mean, dtype=np.float32)
    x /= np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def prepare(patches, size: int, mean, std, method: str = "bilinear") -> np.ndarray:
    """A list (or NxHxWxC array) of patches -> the model's Nx3xSxS float32 input."""
    batch = np.stack([resize(canonical_patch(p), size, method) for p in patches])
    return normalize(batch, mean, std)
