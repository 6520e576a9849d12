"""training/augment.py's device ops and training/train/gpu_augment.py (the device data path) against augment.py's
CPU ops, on the CPU.

The two paths draw from different random streams, so they are compared by the statistics of many draws from
the same patches; every tolerance is 4 standard errors of the difference (or of a share against its
expected value), computed from the draws themselves. The resize is bounded against amf.preprocess.resize
(Pillow, what the container runs) on generated and on real patches.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from training_layout import patch as layout_patch

from amf.preprocess import normalize as np_normalize
from amf.preprocess import resize as np_resize
from training import augment as A
from training.augment import Augment
from training.config import DEFAULTS
from training.train import gpu_augment as G
from training.train.recipe import alignment_loss, alignment_loss_loops

SIGMAS = 4.0
OFF = {
    "flip": False,
    "rot90": False,
    "hed_scale": 0.0,
    "hed_shift": 0.0,
    "brightness": 0.0,
    "contrast": 0.0,
    "saturation": 0.0,
    "affine_p": 0.0,
    "blur_p": 0.0,
}
RESIZE_BOUND_LEVELS = 1  # documented in training/train/gpu_augment.py and BENCHMARKS.md


def only(**on) -> dict:
    cfg = copy.deepcopy(DEFAULTS["augment"])
    cfg.update(OFF)
    cfg.update(on)
    return cfg


def both_paths(img: np.ndarray, cfg: dict, n: int, seed: int = 0):
    """N augmented draws of IMG on each path -> two float arrays N x H x W x 3."""
    aug = Augment(cfg)
    cpu = np.stack([aug(img, np.random.default_rng((seed, i))) for i in range(n)]).astype(np.float64)
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float().expand(n, -1, -1, -1).contiguous()
    params = A.device_params(cfg, n, G.epoch_generator(seed, 0))
    dev = A.augment_batch(x, params, cfg).permute(0, 2, 3, 1).numpy().astype(np.float64)
    return cpu, dev


def same_mean(a: np.ndarray, b: np.ndarray, what: str):
    """Means of per-draw statistics A and B (N x ...) agree within SIGMAS standard errors."""
    se = np.sqrt(a.var(0, ddof=1) / len(a) + b.var(0, ddof=1) / len(b))
    diff = np.abs(a.mean(0) - b.mean(0))
    assert np.all(diff <= SIGMAS * se + 1e-9), f"{what}: means {a.mean(0)} vs {b.mean(0)}, se {se}"


def same_spread(a: np.ndarray, b: np.ndarray, what: str):
    """Standard deviations of A and B agree within SIGMAS standard errors (se of s ~ s / sqrt(2(n-1)))."""
    sa, sb = a.std(0, ddof=1), b.std(0, ddof=1)
    se = np.sqrt(sa**2 / (2 * (len(a) - 1)) + sb**2 / (2 * (len(b) - 1)))
    assert np.all(np.abs(sa - sb) <= SIGMAS * se + 1e-9), f"{what}: spreads {sa} vs {sb}, se {se}"


def share_is(hits: np.ndarray, p: float, what: str):
    n = len(hits)
    assert abs(hits.mean() - p) <= SIGMAS * np.sqrt(p * (1 - p) / n), f"{what}: share {hits.mean():.3f}, expected {p}"


def he_patch(seed: int = 0) -> np.ndarray:
    """The centre 64 x 64 of a generated H&E-like figure patch (small: many draws stay quick)."""
    return np.ascontiguousarray(layout_patch(np.random.default_rng(seed), atypical=True)[32:96, 32:96])


# ---- flips and rotations --------------------------------------------------------------------------


def dihedral_index(out: np.ndarray, img: np.ndarray) -> int:
    """Which of the 8 (rot90 k, flip) images OUT is: k + 4 * flip."""
    for flip in (0, 1):
        for k in range(4):
            ref = np.rot90(img, k)
            if np.array_equal(out, ref[:, ::-1] if flip else ref):
                return k + 4 * flip
    raise AssertionError("not a flip/rotation of the patch")


def test_flip_and_rotation_shares():
    img = np.zeros((32, 32, 3), np.uint8)
    img[2:6, 2:20] = (255, 0, 0)  # an L: no symmetry, every one of the 8 images is distinct
    img[2:14, 2:6] = (0, 255, 0)
    n = 1600
    cpu, dev = both_paths(img, only(flip=True, rot90=True), n)
    for name, draws in (("cpu", cpu), ("device", dev)):
        idx = np.array([dihedral_index(d.astype(np.uint8), img) for d in draws])
        share_is(idx >= 4, 0.5, f"{name} flips")
        for k in range(4):
            share_is(idx % 4 == k, 0.25, f"{name} rotation {k}")
        for t in range(8):
            share_is(idx == t, 1 / 8, f"{name} image {t}")


# ---- HED jitter, colour jitter ----------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("part", [{"hed_scale": 0.05}, {"hed_shift": 0.01}, {"hed_scale": 0.05, "hed_shift": 0.01}])
def test_hed_jitter_channel_mean_and_spread(part):
    """Scale and shift apart (together, the shift's spread hides a 20 % error in the scale's)."""
    cpu, dev = both_paths(he_patch(), only(**part), 1000)
    a, b = cpu.mean(axis=(1, 2)), dev.mean(axis=(1, 2))  # per draw, per channel
    assert a.std(0).min() > 0.5  # the jitter moves the colour (else the comparison would be empty)
    same_mean(a, b, "HED: per-channel mean")
    same_spread(a, b, "HED: per-channel mean's spread over draws")
    same_mean(cpu.std(axis=(1, 2)), dev.std(axis=(1, 2)), "HED: per-channel contrast")


class FixedDraws:
    """A numpy Generator stand-in that returns the given values in turn (uniform only)."""

    def __init__(self, *values):
        self.values = list(values)

    def uniform(self, lo, hi, n=None):
        return self.values.pop(0) if n is None else np.array([self.values.pop(0) for _ in range(n)])


def params(**values) -> torch.Tensor:
    p = A.device_params(only(), 1, G.epoch_generator(0, 0))
    for name, v in values.items():
        p[0, A.P[name]] = v
    return p


def test_parts_match_the_cpu_path_with_the_same_parameters():
    """Given the same parameters, each part gives the CPU path's image (to one uint8 level at most)."""
    from training import augment

    img = he_patch(1)
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float()

    def check(out, ref, levels):
        assert np.abs(out[0].permute(1, 2, 0).numpy() - ref.astype(np.float64)).max() <= levels

    a, b = [1.03, 0.97, 1.04], [0.006, -0.008, 0.002]
    check(
        A.hed_batch(x, params(hed_a0=a[0], hed_a1=a[1], hed_a2=a[2], hed_b0=b[0], hed_b1=b[1], hed_b2=b[2])),
        augment.hed_jitter(img, FixedDraws(*[v - 1 for v in a], *b), 0.05, 0.01),
        1,
    )
    check(
        A.enhance_batch(
            x,
            params(brightness=1.07, contrast=0.93, saturation=1.08),
            only(brightness=0.1, contrast=0.1, saturation=0.1),
        ),
        augment.enhance(img, FixedDraws(0.07, -0.07, 0.08), 0.1, 0.1, 0.1),
        1,
    )
    check(
        A.affine_batch(x, params(affine=1, angle=np.radians(12.0), scale=0.93, tx=0.04, ty=-0.03)),
        augment.affine(img, FixedDraws(12.0, 0.93, 0.04, -0.03), 15.0, (0.9, 1.1), 0.05),
        1,
    )
    assert torch.equal(A.augment_batch(x, params(), only()), x)  # everything off: the patch itself


def colour_stats(draws: np.ndarray) -> np.ndarray:
    """Per draw: mean luma (brightness), luma spread (contrast), mean max-min over channels (saturation)."""
    luma = draws @ np.array([0.299, 0.587, 0.114])
    chroma = draws.max(-1) - draws.min(-1)
    return np.stack([luma.mean(axis=(1, 2)), luma.std(axis=(1, 2)), chroma.mean(axis=(1, 2))], 1)


@pytest.mark.parametrize("part", ["brightness", "contrast", "saturation"])
def test_colour_jitter_effects(part):
    cpu, dev = both_paths(he_patch(2), only(**{part: 0.1}), 400)
    a, b = colour_stats(cpu), colour_stats(dev)
    assert a.std(0).max() > 0.5
    same_mean(a, b, f"{part}: brightness/contrast/saturation")
    same_spread(a, b, f"{part}: their spread over draws")


# ---- affine ------------------------------------------------------------------------------------


def marker_patch(size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Grey patch with a red and a blue Gaussian dot symmetric about the centre; returns (patch, offset)."""
    yy, xx = np.mgrid[:size, :size] + 0.5
    c, v = size / 2, np.array([18.0, 10.0])
    img = np.full((size, size, 3), 128.0)
    for sign, ch in ((1, 0), (-1, 2)):
        dot = np.exp(-((xx - c - sign * v[0]) ** 2 + (yy - c - sign * v[1]) ** 2) / (2 * 2.0**2))
        img[..., ch] += 127 * dot
        img[..., 2 - ch] -= 127 * dot
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), v


def marker_geometry(draws: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Per draw: translation x, y (fraction of the side), scale, angle (degrees) of the two dots."""
    size = draws.shape[1]
    yy, xx = np.mgrid[:size, :size] + 0.5
    out = []
    for d in draws:
        pts = []
        for w in (np.clip(d[..., 0] - d[..., 2], 0, None), np.clip(d[..., 2] - d[..., 0], 0, None)):
            pts.append(np.array([(w * xx).sum(), (w * yy).sum()]) / w.sum())
        mid, vec = (pts[0] + pts[1]) / 2, (pts[0] - pts[1]) / 2
        angle = np.degrees(np.arctan2(vec[1], vec[0]) - np.arctan2(v[1], v[0]))
        out.append([*(mid - size / 2) / size, np.linalg.norm(vec) / np.linalg.norm(v), angle])
    return np.array(out)


@pytest.mark.slow
def test_affine_ranges():
    img, v = marker_patch()
    cfg = only(affine_p=1.0)
    cpu, dev = both_paths(img, cfg, 400)
    a, b = marker_geometry(cpu, v), marker_geometry(dev, v)
    lo = np.array([-cfg["translate"], -cfg["translate"], cfg["scale"][0], -cfg["degrees"]])
    hi = -lo
    hi[2] = cfg["scale"][1]
    slack = np.array([0.002, 0.002, 0.005, 0.3])  # the dots' centroids after bilinear resampling
    for name, g in (("cpu", a), ("device", b)):
        assert np.all(g.min(0) >= lo - slack) and np.all(g.max(0) <= hi + slack), (name, g.min(0), g.max(0))
        assert np.all(g.max(0) - g.min(0) >= 0.8 * (hi - lo)), (name, "the draws do not span the ranges")
    same_mean(a, b, "affine: translation, scale, angle")
    same_spread(a, b, "affine: their spread")


def test_affine_probability():
    img, _ = marker_patch(64)
    cpu, dev = both_paths(img, only(affine_p=0.5), 600)
    for name, draws in (("cpu", cpu), ("device", dev)):
        share_is(np.array([not np.array_equal(d, img) for d in draws]), 0.5, f"{name} affine share")


# ---- blur and the whole chain -----------------------------------------------------------------


def sharpness(draws: np.ndarray) -> np.ndarray:
    return np.abs(np.diff(draws, axis=2)).mean(axis=(1, 2, 3))


def test_blur_share_and_strength():
    img = he_patch(3)
    cfg = only(blur_p=0.5, blur_sigma=[0.5, 1.0])  # sigma >= 0.5: every blurred draw is visibly blurred
    cpu, dev = both_paths(img, cfg, 400)
    base = sharpness(img[None].astype(np.float64))[0]
    a, b = sharpness(cpu), sharpness(dev)
    for name, s in (("cpu", a), ("device", b)):
        share_is(s < 0.9 * base, 0.5, f"{name} blurred share")
    same_mean(a[a < 0.9 * base], b[b < 0.9 * base], "blur: sharpness of blurred draws")


@pytest.mark.slow
def test_default_chain_statistics():
    img = he_patch(4)
    cfg = copy.deepcopy(DEFAULTS["augment"])
    cpu, dev = both_paths(img, cfg, 400)
    a, b = cpu.mean(axis=(1, 2)), dev.mean(axis=(1, 2))
    same_mean(a, b, "default chain: per-channel mean")
    same_spread(a, b, "default chain: per-channel mean's spread")
    same_mean(colour_stats(cpu), colour_stats(dev), "default chain: brightness/contrast/saturation")
    same_mean(sharpness(cpu)[:, None], sharpness(dev)[:, None], "default chain: sharpness")


def test_every_draw_has_its_own_parameters_and_epochs_differ():
    cfg = copy.deepcopy(DEFAULTS["augment"])
    p0 = A.device_params(cfg, 64, G.epoch_generator(7, 0))
    assert torch.equal(p0, A.device_params(cfg, 64, G.epoch_generator(7, 0)))  # reproducible
    assert not torch.equal(p0, A.device_params(cfg, 64, G.epoch_generator(7, 1)))  # another epoch, other draws
    for name in ("angle", "scale", "hed_a0", "brightness", "sigma"):
        assert len(torch.unique(p0[:, A.P[name]])) == 64, name


# ---- resize and normalisation against amf.preprocess ----------------------------------------------


def resize_difference(patches: np.ndarray, size: int) -> tuple[float, float]:
    """Largest |device - amf.preprocess| after resize (uint8 levels) and after normalisation."""
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    ref = np.stack([np_resize(p, size) for p in patches])
    x = torch.from_numpy(patches).permute(0, 3, 1, 2).float()
    out = G.resize(x, size)
    levels = float(np.abs(out.permute(0, 2, 3, 1).numpy() - ref).max())
    normed = float(np.abs(G.normalize(out, mean, std).numpy() - np_normalize(ref, mean, std)).max())
    return levels, normed


def check_resize_bound(patches: np.ndarray):
    for size in (96, 128, 224):
        levels, normed = resize_difference(patches, size)
        print(f"resize 128 -> {size}: max {levels:.0f} uint8 level(s), {normed:.5f} after normalisation")
        if size == patches.shape[1]:
            assert levels == 0 and normed < 1e-6  # no-op, as amf.preprocess.resize
        assert levels <= RESIZE_BOUND_LEVELS
        assert normed <= RESIZE_BOUND_LEVELS / 255 / 0.224 + 1e-5


def test_resize_bound_generated_patches():
    rng = np.random.default_rng(0)
    check_resize_bound(np.stack([layout_patch(rng, i % 2 == 0) for i in range(32)]))


@pytest.mark.slow
def test_resize_bound_real_patches(breast_dir):
    from training.data import OFFICIAL_IMAGES, decode

    files = sorted((breast_dir / OFFICIAL_IMAGES).glob("*.png"))[::7][:200]
    check_resize_bound(np.stack([decode(f) for f in files]))


# ---- the batches -----------------------------------------------------------------------------------


def device_batches(n: int = 29, memory_gb: float = 4.0, augment=None):
    import pandas as pd

    from training.data import PatchDataset
    from training.train.kfold import EpochSampler

    rng = np.random.default_rng(0)
    cache = [layout_patch(rng, i % 3 == 0) for i in range(n)]
    df = pd.DataFrame({"path": ["-"] * n, "label": [int(i % 3 == 0) for i in range(n)], "soft": 0.0})
    rows = np.arange(5, n)  # the training rows are a subset of the table
    cfg = augment or copy.deepcopy(DEFAULTS["augment"])
    ds = PatchDataset(df, rows, 96, [0.5] * 3, [0.25] * 3, "bilinear", Augment(cfg), cache, seed=3)
    sampler = EpochSampler(len(rows), seed=3)
    return G.DeviceBatches(ds, sampler, 8, cfg, torch.device("cpu"), memory_gb), sampler, ds


@pytest.mark.slow
def test_device_batches_follow_the_sampler_and_are_reproducible():
    batches, sampler, ds = device_batches()
    sampler.set_epoch(2)
    got = list(batches)
    assert len(got) == len(batches) == len(ds) // 8
    order = ds.indices[np.array([index for index, _ in sampler])]
    assert np.array_equal(torch.cat([r for _, _, r in got]).numpy(), order[: len(got) * 8])
    for x, t, r in got:
        assert x.shape == (8, 3, 96, 96) and x.dtype == torch.float32
        assert np.array_equal(t.numpy(), ds.targets[r.numpy()])
    again = list(batches)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(got, again))
    sampler.set_epoch(3)
    assert not torch.equal(next(iter(batches))[0], got[0][0])


def test_device_batches_draw_per_position_whatever_the_ranks():
    """Each draw position has its own parameters (gpu_augment.epoch_params): two ranks' batches together are one
    process's, view by view, and the k-th views of the two ranks differ (they used to be alike on every rank)."""
    one, _, ds = device_batches(n=21)
    views = {}
    for rank in (0, 1):
        batches, _, _ = device_batches(n=21)
        batches.sampler = type(one.sampler)(len(ds), seed=3, rank=rank, world=2)
        draws = [d for _, d in batches.sampler]
        views[rank] = dict(zip(draws, torch.cat([x for x, _, _ in batches])))
    single = dict(zip([d for _, d in one.sampler], torch.cat([x for x, _, _ in one])))
    assert set(views[0]).isdisjoint(views[1])
    for rank_views in views.values():
        for d, x in rank_views.items():
            if d in single:
                assert torch.equal(x, single[d]), d
    table = G.epoch_params(DEFAULTS["augment"], len(ds), 3, 0)
    evens, odds = table[0::2][:8], table[1::2][:8]
    assert not any(torch.equal(a, b) for a, b in zip(evens, odds))


@pytest.mark.slow
def test_device_batches_streamed_equal_resident():
    resident, sampler_a, _ = device_batches()
    streamed, sampler_b, _ = device_batches(memory_gb=0.0)
    assert resident.resident and not streamed.resident
    for a, b in zip(resident, streamed):
        assert torch.equal(a[0], b[0]) and torch.equal(a[2], b[2])


def test_device_batches_without_augmentation_are_the_validation_transform():
    """augment.enabled=false: the device batches are amf.preprocess's resize + normalise up to the bound."""
    cfg = copy.deepcopy(DEFAULTS["augment"])
    cfg["enabled"] = False
    batches, sampler, ds = device_batches(augment=cfg)
    x, _, rows = next(iter(batches))
    ref = np.stack([np_normalize(np_resize(ds.cache[r], 96)[None], ds.mean, ds.std)[0] for r in rows.numpy()])
    assert np.abs(x.numpy() - ref).max() <= RESIZE_BOUND_LEVELS / 255 / 0.25 + 1e-5


def test_wanted():
    cpu, cache = torch.device("cpu"), [np.zeros((8, 8, 3), np.uint8)] * 2
    assert not G.wanted("auto", cpu, cache, "bilinear")
    assert G.wanted(True, cpu, cache, "bilinear")
    assert not G.wanted(False, cpu, cache, "bilinear")
    assert G.wanted("auto", torch.device("cuda"), cache, "bilinear")
    assert not G.wanted("auto", torch.device("cuda"), None, "bilinear")  # no preload: the CPU path
    from amf import AmfError

    for bad in ((None, "bilinear"), (cache + [np.zeros((9, 9, 3), np.uint8)], "bilinear"), (cache, "bicubic")):
        with pytest.raises(AmfError, match="device_augment"):
            G.wanted(True, cpu, *bad)


# ---- the recipe's cost: the vectorised alignment loss -----------------------------------------------


@pytest.mark.slow
def test_alignment_loss_equals_the_loops():
    g = torch.Generator().manual_seed(0)
    worst = 0.0
    for _ in range(60):
        b, n_labels, n_values = (int(torch.randint(lo, hi, (1,), generator=g)) for lo, hi in ((2, 70), (0, 5), (1, 6)))
        f = torch.randn(b, 16, generator=g, requires_grad=True)
        y = torch.randint(0, 2, (b,), generator=g).float()
        d = torch.randint(0, n_values, (b, n_labels), generator=g)
        fast = alignment_loss(f, y, d, num_values=n_values if b % 2 else None)
        ref = alignment_loss_loops(f, y, d)
        (g_fast,), (g_ref,) = torch.autograd.grad(fast, f), torch.autograd.grad(ref, f)
        worst = max(worst, abs(float(fast.detach() - ref.detach())), float((g_fast - g_ref).abs().max()))
    assert worst < 1e-6
    # one class only, or one value per label: zero, with a graph
    f = torch.randn(6, 4, requires_grad=True)
    loss = alignment_loss(f, torch.ones(6), torch.zeros(6, 2, dtype=torch.long))
    assert float(loss.detach()) == 0.0 and loss.requires_grad


# ---- one definition per augmentation ------------------------------------------------------------------


@pytest.mark.parametrize("step", A.STEPS, ids=[s.name for s in A.STEPS])
def test_each_step_is_one_definition_that_both_paths_and_the_config_read(step):
    """A step's keys are config keys with its defaults; on alone (always acting), it changes the patch on both
    paths; every step off, both paths give the patch back; the device table holds its columns."""
    assert {k: DEFAULTS["augment"][k] for k in step.defaults} == step.defaults
    img = he_patch(5)
    on = only(**{**step.defaults, "affine_p": 1.0, "blur_p": 1.0} if step.name in ("affine", "blur") else step.defaults)
    assert step.on(on)
    cpu, dev = both_paths(img, on, 8)
    for name, draws in (("cpu", cpu), ("device", dev)):
        assert any(not np.array_equal(d, img) for d in draws), f"{step.name} does nothing on the {name} path"
    cpu, dev = both_paths(img, only(), 4)
    assert all(np.array_equal(d, img) for d in [*cpu, *dev])
    assert set(step.columns) <= set(A.P) and A.device_params(on, 3, G.epoch_generator(0, 0)).shape == (3, len(A.P))
