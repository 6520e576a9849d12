"""The training batches made on the training device: gathered, augmented, resized and normalised there.

The CPU path augments one patch at a time (numpy + Pillow) in DataLoader workers; on a GPU that starves the
model (an H100 waited on 12 workers 78 % of the time). Here the decoded uint8 patches (data.preload's cache)
live on the device as one N x H x W x 3 tensor and every step's batch is gathered, augmented (training/augment.py's
steps, their device ops: augment_batch), resized and normalised there, in the same order as the CPU path:
  resize         F.interpolate bilinear with antialias=True (a port of Pillow's resampling), rounded to uint8
                 levels: within 1 level of amf.preprocess.resize (identical at the patch's own size), then
                 amf.preprocess's normalisation (x/255 - mean)/std
Each draw position of an epoch (the EpochSampler's whole draw order, before it is shared out among the ranks) gets
its own parameters: one table per epoch (augment.device_params), drawn on the CPU from a torch.Generator seeded by
(run seed, epoch), row d for draw d, whichever rank takes it (epoch_params). So the k-th figure of every rank is
augmented differently, the union of G ranks' views is one process's, a run is reproducible, and the parameters do
not depend on the device; each batch's rows go to the device in one copy.
The CPU and device paths draw from different streams, so they give the same distribution of augmentations,
not the same images (test/test_gpu_augment.py compares their statistics and bounds the resize against
amf.preprocess.resize).

Why a short torch module and not kornia: kornia would be a new dependency (not installed here, so not
benchmarked) for ~150 lines of standard ops, and it would not do the same thing as the CPU path: its colour
jitter follows torchvision's definitions rather than Pillow's ImageEnhance, it has no HED jitter, and its warps
pad with grid_sample's modes (whose "reflection" mirrors about the border, numpy's "symmetric", not the
"reflect" of augment.affine). The ops used here are those kornia is built from (grid_sample, conv2d,
interpolate), so it would not be faster either.
Validation stays on the CPU path (amf.preprocess: exactly what the container runs).
Look at it:  python -m training.inspect gpu_augment IMAGE.png OUT.png [--seed 0]   (a grid of 16 draws)
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from amf import AmfError
from training.augment import augment_batch, device_params, quantise

# torch's antialiased bilinear is a port of Pillow's: within 1 uint8 level of amf.preprocess.resize (measured on
# 200 real breast patches at 64, 96, 224 px; test_gpu_augment bounds it). Bicubic differs by up to 5 levels
# (Pillow clips its overshoot between the two passes), so data.resize=bicubic keeps the CPU path.
RESIZE_MODES = ("bilinear",)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The augmentation stream of one epoch: a function of (run seed, epoch) only."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([int(seed), int(epoch)]).generate_state(1)[0]))


def epoch_params(cfg: dict, n: int, seed: int, epoch: int) -> torch.Tensor:
    """The parameters of an epoch's N draw positions (row d: draw d, on whichever rank): a function of the run
    seed, the epoch and the position only, whatever the number of ranks or the batch size."""
    return device_params(cfg, n, epoch_generator(seed, epoch))


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
