"""Patch preprocessing, shared by training's data loader and the container.

The one rule for odd inputs (docs/container.md, "Input rule"):
  1. dtype -> uint8, decided once per stack (a 2-D image or a training PNG is a stack of one):
     uint8 as is; 16-bit integers scaled by 255/65535; bool x255; other integers (int8, int32,
     uint32, int64, ...) taken as 0..255 and refused when a value lies outside; floats taken as
     [0, 1] when the stack's maximum is <= 1, else as [0, 255]; then clipped and rounded.
  2. channels -> RGB: gray (HxW or HxWx1) is repeated to 3 channels; gray+alpha and RGBA drop
     the alpha channel (no compositing); more than 4 channels is an error.
  3. geometry: a non-square patch is centre-cropped to a square of its shorter side (the figure sits
     at the centre); then each ensemble member resizes to its own input size with its own method.
Normalisation is (x / 255 - mean) / std per channel, float32, NCHW.
Test-time augmentation (the manifest's "tta"): TTA_VIEWS, the one list of modes and their views.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from amf import AmfError

# ImageNet's channel statistics: the normalisation of timm's ImageNet backbones, and the fallback for a
# backbone whose pretrained_cfg names none.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


def pixel_scale(pages) -> float:
    """Rule 1's factor from PAGES' pixel values to 0..255, decided once for the whole stack (an
    N x ... array or a list of pages of one pixel type): in a [0, 255] float stack a dark page
    stays dark. Refuses NaN/infinite floats and integers it cannot map without guessing."""
    dtypes = {np.asarray(p).dtype for p in pages} if not isinstance(pages, np.ndarray) else {pages.dtype}
    if len(dtypes) > 1:
        raise AmfError(f"the pages of one stack must share one pixel type, got {sorted(map(str, dtypes))}")
    dtype = dtypes.pop() if dtypes else np.dtype(np.uint8)
    if dtype == np.uint8:
        return 1.0
    if dtype == np.bool_:
        return 255.0
    if dtype in (np.uint16, np.int16):
        return 255.0 / 65535.0
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        raise AmfError(f"unsupported pixel type {dtype}")
    lo, hi = np.inf, -np.inf
    for page in pages:  # page by page: no stack-sized temporary
        page = np.asarray(page)
        if not page.size:
            continue
        if np.issubdtype(dtype, np.floating) and not np.isfinite(page).all():
            raise AmfError("image has NaN or infinite pixel values")
        lo, hi = min(lo, page.min().item()), max(hi, page.max().item())
    if np.issubdtype(dtype, np.floating):
        return 255.0 if hi <= 1.0 else 1.0
    if lo < 0 or hi > 255:
        raise AmfError(
            f"pixel type {dtype} holds values {lo}..{hi}; integers other than uint8, uint16 and int16 "
            f"must lie in 0..255"
        )
    return 1.0


def to_uint8(img: np.ndarray, scale: float | None = None) -> np.ndarray:
    """Any numeric array -> uint8 by rule 1, with the stack's SCALE (amf.preprocess.pixel_scale;
    decided from IMG alone when not given: IMG is then a stack of one)."""
    if img.dtype == np.uint8:
        return img
    if scale is None:
        scale = pixel_scale([img])
    if img.dtype == np.bool_:
        return img.astype(np.uint8) * 255
    return np.clip(np.rint(img.astype(np.float64) * scale), 0, 255).astype(np.uint8)


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
    return img[top : top + side, left : left + side]


def canonical_patch(img: np.ndarray, scale: float | None = None) -> np.ndarray:
    """Any single patch -> square HxWx3 uint8 (rules 1-3, before resizing); SCALE as in to_uint8."""
    return np.ascontiguousarray(centre_square(to_rgb(to_uint8(np.asarray(img), scale))))


class Stack(Sequence):
    """N pages of any pixel type and layout, seen as canonical patches one page at a time.

    PAGES is an N x H x W [x C] array (usually a view into the image reader's buffer; OWNER keeps that
    buffer alive) or a list of pages. Nothing is copied whole: a long stack costs its own buffer plus
    the chunk being prepared. Rule 1's scale is decided here, once for the stack, and the first page is
    made canonical at once so that a layout error (rules 2-3, the same for every page) shows up here.
    """

    def __init__(self, pages, owner=None):
        self.pages = pages if isinstance(pages, np.ndarray) else [np.asarray(p) for p in pages]
        self.owner = owner
        self.scale = pixel_scale(self.pages)
        if len(self.pages):
            self[0]

    def __len__(self) -> int:
        return len(self.pages)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return canonical_patch(self.pages[i], self.scale)


def as_stack(patches) -> Stack:
    """PATCHES (a Stack, an N x H x W [x C] array or a list of pages) as a Stack."""
    return patches if isinstance(patches, Stack) else Stack(patches)


def resize(img: np.ndarray, size: int, method: str = "bilinear") -> np.ndarray:
    """Square HxWx3 uint8 -> size x size x 3 uint8 with Pillow; a no-op at the right size."""
    if img.shape[0] == size and img.shape[1] == size:
        return img
    if method not in RESAMPLE:
        raise AmfError(f"unknown resize method {method!r}; use one of {sorted(RESAMPLE)}")
    return np.asarray(Image.fromarray(img).resize((size, size), RESAMPLE[method]))


def _d4(x: np.ndarray) -> list[np.ndarray]:
    rots = [np.rot90(x, k, axes=(2, 3)) for k in range(4)]
    return rots + [r[..., ::-1] for r in rots]


# each mode's views of a prepared N x 3 x S x S batch, identity first: the manifest's vocabulary, what the container
# averages, what training re-predicts under and what its config may name (a new mode is one entry here)
TTA_VIEWS = {
    "none": lambda x: [x],
    "flips": lambda x: [x, x[..., ::-1], x[..., ::-1, :]],
    "d4": _d4,
}
TTA_MODES = tuple(TTA_VIEWS)


def tta_views(x: np.ndarray, mode: str) -> list[np.ndarray]:
    """NCHW -> the list of augmented views of MODE (identity first)."""
    if mode not in TTA_VIEWS:
        raise AmfError(f"unknown tta mode {mode!r}")
    return TTA_VIEWS[mode](x)


def normalize(batch: np.ndarray, mean, std) -> np.ndarray:
    """NxHxWx3 uint8 -> Nx3xHxW float32, (x/255 - mean) / std."""
    x = batch.astype(np.float32) * np.float32(1.0 / 255.0)
    x -= np.asarray(mean, dtype=np.float32)
    x /= np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def prepare(patches, size: int, mean, std, method: str = "bilinear") -> np.ndarray:
    """A list (or NxHxWxC array, or Stack) of patches, one stack for rule 1 -> the model's Nx3xSxS
    float32 input."""
    batch = np.stack([resize(p, size, method) for p in as_stack(patches)])
    return normalize(batch, mean, std)
