"""The training augmentation of training/augment.py on a whole batch, in torch, on the training device.

The CPU path augments one patch at a time (numpy + Pillow) in DataLoader workers; on a GPU that starves the
model (an H100 waited on 12 workers 78 % of the time). Here the decoded uint8 patches (data.preload's cache)
live on the device as one N x H x W x 3 tensor and every step's batch is gathered, augmented, resized and
normalised there, in the same order and with the same meaning as augment.Augment:
  rot90, flip    torch.rot90 / flip per sample (exact)
  affine         reflect-padded copy (pad side//4, numpy's "reflect"), rotation/scale/translation about the
                 centre with Pillow's AFFINE convention (pixel centres, bilinear) via grid_sample, cropped back
  hed jitter     the same colour deconvolution with augment.RGB_FROM_HED / HED_FROM_RGB (imported, never
                 redefined: whatever matrix augment.py holds is the one used here)
  brightness, contrast, saturation   Pillow's ImageEnhance: blend with black / the mean grey level / the
                 per-pixel grey (ITU-R 601-2 luma, Pillow's integer weights), truncated to uint8 as Image.blend does
  blur           Gaussian of the drawn sigma (Pillow's GaussianBlur is three box passes of the same variance),
                 edges replicated
  resize         F.interpolate bilinear with antialias=True (a port of Pillow's resampling), rounded to uint8
                 levels: within 1 level of amf.preprocess.resize (identical at the patch's own size), then
                 amf.preprocess's normalisation (x/255 - mean)/std
Every stage rounds (or truncates, where Pillow does) to uint8 levels as the CPU path does between its steps.
Each draw position of an epoch (the EpochSampler's whole draw order, before it is shared out among the ranks) gets
its own parameters: one table per epoch, drawn on the CPU from a torch.Generator seeded by (run seed, epoch), row d
for draw d, whichever rank takes it (epoch_params). So the k-th figure of every rank is augmented differently,
the union of G ranks' views is one process's, a run is reproducible, and the parameters do not depend on the
device; each batch's rows go to the device in one copy.
The CPU and device paths draw from different streams, so they give the same distribution of augmentations,
not the same images (test/test_gpu_augment.py compares their statistics and bounds the resize against
amf.preprocess.resize).

Why a short torch module and not kornia: kornia would be a new dependency (not installed here, so not
benchmarked) for ~150 lines of standard ops, and it would not do the same thing as the CPU path: its colour
jitter follows torchvision's definitions rather than Pillow's ImageEnhance, it has no HED jitter, and its warps
pad with grid_sample's modes (whose "reflection" mirrors about the border, numpy's "symmetric", not the
"reflect" of augment.affine). The ops used here are those kornia is built from (grid_sample, conv2d,
interpolate), so it would not be faster either; this module stays one readable page.
Validation stays on the CPU path (amf.preprocess: exactly what the container runs).
Run:  python -m training.gpu_augment IMAGE.png OUT.png [--seed 0]   (a grid of 16 draws, for a look)
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from amf import AmfError
from amf.cli import ArgumentParser
from training.augment import HED_FROM_RGB, LOG_ADJUST, RGB_FROM_HED

# torch's antialiased bilinear is a port of Pillow's: within 1 uint8 level of amf.preprocess.resize (measured on
# 200 real breast patches at 64, 96, 224 px; test_gpu_augment bounds it). Bicubic differs by up to 5 levels
# (Pillow clips its overshoot between the two passes), so data.resize=bicubic keeps the CPU path.
RESIZE_MODES = ("bilinear",)
GRAY_WEIGHTS = (19595, 38470, 7471)  # Pillow's RGB -> L: (R*19595 + G*38470 + B*7471 + 0x8000) >> 16

# the columns of one figure's parameter row (draw() -> (n, len(PARAMS)) float32)
PARAMS = (
    "rot",
    "flip",
    "affine",
    "angle",
    "scale",
    "tx",
    "ty",
    "hed_a0",
    "hed_a1",
    "hed_a2",
    "hed_b0",
    "hed_b1",
    "hed_b2",
    "brightness",
    "contrast",
    "saturation",
    "blur",
    "sigma",
)
P = {name: i for i, name in enumerate(PARAMS)}


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The augmentation stream of one epoch: a function of (run seed, epoch) only."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([int(seed), int(epoch)]).generate_state(1)[0]))


def epoch_params(cfg: dict, n: int, seed: int, epoch: int) -> torch.Tensor:
    """The parameters of an epoch's N draw positions (row d: draw d, on whichever rank): a function of the run
    seed, the epoch and the position only, whatever the number of ranks or the batch size."""
    return draw(cfg, n, epoch_generator(seed, epoch))


def draw(cfg: dict, n: int, generator: torch.Generator) -> torch.Tensor:
    """Parameters for N figures (CPU, float32, columns PARAMS); switched-off parts get their identity value."""

    def u(lo, hi, *shape):
        return lo + (hi - lo) * torch.rand((n, *shape), generator=generator, dtype=torch.float64)

    out = torch.zeros(n, len(PARAMS), dtype=torch.float64)
    out[:, P["rot"]] = torch.randint(0, 4, (n,), generator=generator) * bool(cfg["rot90"])
    out[:, P["flip"]] = (u(0, 1) < 0.5) * bool(cfg["flip"])
    out[:, P["affine"]] = u(0, 1) < cfg["affine_p"]
    out[:, P["angle"]] = torch.deg2rad(u(-cfg["degrees"], cfg["degrees"]))
    out[:, P["scale"]] = u(cfg["scale"][0], cfg["scale"][1])
    out[:, P["tx"] : P["ty"] + 1] = u(-cfg["translate"], cfg["translate"], 2)
    out[:, P["hed_a0"] : P["hed_a2"] + 1] = 1.0 + u(-cfg["hed_scale"], cfg["hed_scale"], 3)
    out[:, P["hed_b0"] : P["hed_b2"] + 1] = u(-cfg["hed_shift"], cfg["hed_shift"], 3)
    for name in ("brightness", "contrast", "saturation"):
        out[:, P[name]] = 1.0 + u(-cfg[name], cfg[name])
    out[:, P["blur"]] = u(0, 1) < cfg["blur_p"]
    out[:, P["sigma"]] = u(cfg["blur_sigma"][0], cfg["blur_sigma"][1])
    return out.float()


def quantise(x: torch.Tensor) -> torch.Tensor:
    """Round to uint8 levels (Pillow and augment.py round their outputs), kept as float."""
    return x.round().clamp_(0, 255)


def dihedral(x: torch.Tensor, rot: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """np.rot90(img, k) then img[:, ::-1] of augment.Augment, per sample (NCHW, square)."""
    out = x
    for k in (1, 2, 3):
        out = torch.where((rot == k).view(-1, 1, 1, 1), torch.rot90(x, k, dims=(2, 3)), out)
    return torch.where((flip > 0).view(-1, 1, 1, 1), out.flip(3), out)


def affine(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """augment.affine per sample: Pillow's AFFINE (output pixel centre -> input) on a reflect-padded copy."""
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


def hed_jitter(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """augment.hed_jitter per sample: scale and shift the stain optical densities."""
    hed_from_rgb = torch.as_tensor(HED_FROM_RGB, dtype=x.dtype, device=x.device)
    rgb_from_hed = torch.as_tensor(RGB_FROM_HED, dtype=x.dtype, device=x.device)
    rgb = (x / 255.0).clamp_min(1e-6)
    hed = torch.einsum("nchw,cd->ndhw", torch.log(rgb) / LOG_ADJUST, hed_from_rgb)
    alpha = p[:, P["hed_a0"] : P["hed_a2"] + 1].view(-1, 3, 1, 1)
    beta = p[:, P["hed_b0"] : P["hed_b2"] + 1].view(-1, 3, 1, 1)
    log_rgb = torch.einsum("nchw,cd->ndhw", -(hed * alpha + beta) * -LOG_ADJUST, rgb_from_hed)
    return quantise(torch.exp(log_rgb) * 255.0)


def gray(x: torch.Tensor) -> torch.Tensor:
    """Pillow's convert("L") of integer-valued RGB (exact in float32), N x 1 x H x W."""
    r, g, b = GRAY_WEIGHTS
    return torch.floor((x[:, 0:1] * r + x[:, 1:2] * g + x[:, 2:3] * b + 32768) / 65536)


def blend(degenerate: torch.Tensor, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Image.blend(degenerate, x, factor): clipped and truncated to uint8 levels as Pillow does."""
    f = factor.view(-1, 1, 1, 1)
    return torch.floor((degenerate + f * (x - degenerate)).clamp(0, 255))


def enhance(x: torch.Tensor, p: torch.Tensor, cfg: dict) -> torch.Tensor:
    """augment.enhance: ImageEnhance.Brightness, Contrast, Color in that order (each only if switched on)."""
    if cfg["brightness"] > 0:
        x = blend(torch.zeros_like(x), x, p[:, P["brightness"]])
    if cfg["contrast"] > 0:
        mean = torch.floor(gray(x).mean(dim=(1, 2, 3), keepdim=True) + 0.5)
        x = blend(mean.expand_as(x), x, p[:, P["contrast"]])
    if cfg["saturation"] > 0:
        x = blend(gray(x).expand_as(x), x, p[:, P["saturation"]])
    return x


def gaussian_blur(x: torch.Tensor, p: torch.Tensor, max_sigma: float) -> torch.Tensor:
    """Separable Gaussian per sample (its own sigma), replicated edges; samples without blur pass through."""
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


def augment_batch(x: torch.Tensor, p: torch.Tensor, cfg: dict) -> torch.Tensor:
    """N x 3 x H x W float (uint8 levels) -> augmented, same shape; augment.Augment's chain and switches."""
    if not cfg.get("enabled", True):
        return x
    x = dihedral(x, p[:, P["rot"]], p[:, P["flip"]])
    if cfg["affine_p"] > 0:
        x = affine(x, p)
    if cfg["hed_scale"] > 0 or cfg["hed_shift"] > 0:
        x = hed_jitter(x, p)
    if max(cfg["brightness"], cfg["contrast"], cfg["saturation"]) > 0:
        x = enhance(x, p, cfg)
    if cfg["blur_p"] > 0:
        x = gaussian_blur(x, p, float(cfg["blur_sigma"][1]))
    return x


def resize(x: torch.Tensor, size: int, method: str = "bilinear") -> torch.Tensor:
    """amf.preprocess.resize on a batch (N x 3 x H x W, uint8 levels): antialiased, rounded; no-op at SIZE."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    if method not in RESIZE_MODES:
        raise AmfError(f"data.device_augment: resize {method!r} has no torch equivalent; use one of {RESIZE_MODES}")
    return quantise(F.interpolate(x, size=(size, size), mode=method, antialias=True, align_corners=False))


def normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    """amf.preprocess.normalize: (x/255 - mean) / std per channel."""
    m = torch.as_tensor(mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    return (x * (1.0 / 255.0) - m) / s


# ---- the training batches -----------------------------------------------------------------------


def wanted(setting, device: torch.device, cache, method: str) -> bool:
    """Whether data.device_augment is on: true | false | auto (on CUDA, with a preloaded cache of one patch size)."""
    if setting is False or setting == "false":
        return False
    problem = None
    if cache is None:
        problem = "needs data.preload (the decoded patches)"
    elif len({p.shape for p in cache}) > 1:
        problem = f"needs patches of one size, got {sorted({p.shape[:2] for p in cache})[:4]}"
    elif method not in RESIZE_MODES:
        problem = f"resizes with {RESIZE_MODES}, not {method!r}"
    if setting is True or setting == "true":
        if problem:
            raise AmfError(f"data.device_augment=true {problem}")
        return True
    return device.type == "cuda" and problem is None


class DeviceBatches:
    """The training DataLoader's (x, target, rows) batches, made on DEVICE from a PatchDataset's cache.

    The batch order is the EpochSampler's (same sampler, same epochs); x is float32 N x 3 x S x S on the
    device, target float32 on the device, rows the table rows (CPU int64). The patches of the dataset's
    rows are one uint8 tensor on the device when they fit in MEMORY_GB, else in pinned host memory, from
    which each batch is gathered into one of two pinned buffers and copied asynchronously.
    """

    def __init__(self, ds, sampler, batch: int, augment_cfg: dict, device: torch.device, memory_gb: float = 4.0):
        self.sampler, self.batch, self.cfg, self.device = sampler, int(batch), dict(augment_cfg), device
        self.size, self.mean, self.std, self.method, self.seed = ds.size, ds.mean, ds.std, ds.method, ds.seed
        self.rows = torch.from_numpy(ds.indices)
        self.targets = torch.from_numpy(ds.targets).to(device)  # per table row
        patches = torch.from_numpy(np.stack([ds.cache[int(r)] for r in ds.indices]))  # N x H x W x 3 uint8
        self.pinned = device.type == "cuda"
        self.resident = patches.numel() <= float(memory_gb) * 2**30
        self.patches = patches.to(device) if self.resident else patches.pin_memory() if self.pinned else patches
        self._buffers, self._events = [], [None, None]

    def __len__(self) -> int:
        return len(self.sampler) // self.batch

    def _gather(self, pos: torch.Tensor, i: int) -> torch.Tensor:
        if self.resident:
            return self.patches[pos.to(self.patches.device, non_blocking=True)]
        if not self._buffers:
            self._buffers = [
                torch.empty((self.batch, *self.patches.shape[1:]), dtype=torch.uint8, pin_memory=self.pinned)
                for _ in range(2)
            ]
        j = i % 2
        if self._events[j] is not None:
            self._events[j].synchronize()  # the buffer's previous copy has left
        torch.index_select(self.patches, 0, pos, out=self._buffers[j])
        out = self._buffers[j].to(self.device, non_blocking=True)
        if self.pinned:
            self._events[j] = torch.cuda.Event()
            self._events[j].record()
        else:
            out = out.clone()  # on the CPU .to() returns the buffer itself
        return out

    def __iter__(self):
        # the sampler yields (index, draw position): a draw's parameters are the epoch table's row of its position
        table = epoch_params(self.cfg, self.sampler.n, self.seed, self.sampler.epoch)
        pairs = torch.tensor(list(self.sampler), dtype=torch.long).view(-1, 2)
        order, draws = pairs[:, 0], pairs[:, 1]
        pin = self.device.type == "cuda"
        for i in range(len(order) // self.batch):
            pos = order[i * self.batch : (i + 1) * self.batch]
            pos = pos.pin_memory() if pin else pos  # pinned: its copy to the GPU does not wait for the queue
            params = table[draws[i * self.batch : (i + 1) * self.batch]]
            params = (params.pin_memory() if pin else params).to(self.device, non_blocking=True)
            x = self._gather(pos, i).permute(0, 3, 1, 2).float()
            x = resize(augment_batch(x, params, self.cfg), self.size, self.method)
            rows = self.rows[pos].pin_memory() if pin else self.rows[pos]  # the caller copies them async
            yield normalize(x, self.mean, self.std), self.targets[rows.to(self.device, non_blocking=True)], rows


if __name__ == "__main__":
    from PIL import Image

    from amf.preprocess import canonical_patch
    from training.config import DEFAULTS

    ap = ArgumentParser(prog="python -m training.gpu_augment", description=__doc__.splitlines()[0])
    ap.add_argument("image")
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    src = torch.from_numpy(canonical_patch(np.array(Image.open(a.image).convert("RGB"))))
    x = src.permute(2, 0, 1)[None].float().repeat(16, 1, 1, 1)
    x = augment_batch(x, draw(DEFAULTS["augment"], 16, epoch_generator(a.seed, 0)), DEFAULTS["augment"])
    grid = x.view(4, 4, 3, *x.shape[2:]).permute(0, 3, 1, 4, 2).reshape(4 * x.shape[2], 4 * x.shape[3], 3)
    Image.fromarray(grid.byte().numpy()).save(a.out)
