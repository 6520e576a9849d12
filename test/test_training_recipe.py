"""Each recipe switch changes the loss or the batch as it should (CPU, tiny random models)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from amf.preprocess import prepare
from training import config as config_io
from training.augment import Augment, hed_jitter
from training.train.kfold import EpochSampler, cosine_with_warmup
from training.train.models import EmbeddingSE, create_classifier, load_for_export, lora_folded_state_dict
from training.train.recipe import (
    MixStyle,
    alignment_control,
    alignment_loss,
    attach_mixstyle,
    kd_loss,
    make_teacher,
    mixstyle_targets,
    teacher_decay,
)


def cfg_with(*overrides):
    return config_io.load("smoke", list(overrides))


# ---- EMA teacher + distillation ----------------------------------------------------------------


def test_ema_teacher_moves_by_the_configured_rate():
    torch.manual_seed(0)
    model = create_classifier(cfg_with())
    teacher = make_teacher(model, {"decay": 0.9, "warmup": False})
    before = {k: v.clone() for k, v in teacher.module.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    teacher.update(model)  # no step: the configured decay itself
    student = model.state_dict()
    for key, t in teacher.module.state_dict().items():
        if t.dtype.is_floating_point:
            assert torch.allclose(t, 0.9 * before[key] + 0.1 * student[key], atol=1e-6), key
    moved = teacher.module.head.weight - before["head.weight"]
    assert torch.allclose(moved, torch.full_like(moved, 0.1), atol=1e-6)  # 1 - decay of the student's +1


def test_kd_loss_is_temperature_scaled_kl():
    s, t = torch.tensor([0.3, -1.0, 2.0]), torch.tensor([0.3, -1.0, 2.0])
    assert kd_loss(s, t, 2.0).item() == pytest.approx(0.0, abs=1e-7)
    t2 = torch.tensor([1.0, 1.0, -1.0])
    for T in (1.0, 2.0, 4.0):
        p, q = torch.sigmoid(t2 / T), torch.sigmoid(s / T)
        kl = p * torch.log(p / q) + (1 - p) * torch.log((1 - p) / (1 - q))
        assert kd_loss(s, t2, T).item() == pytest.approx((kl.mean() * T * T).item(), rel=1e-5)
    s_req = s.clone().requires_grad_(True)
    kd_loss(s_req, t2, 2.0).backward()
    assert (torch.sign(s_req.grad) == -torch.sign(t2 - s)).all()  # pulled towards the teacher


# ---- MixStyle -----------------------------------------------------------------------------------


def test_mixstyle_mixes_statistics_keeps_shapes_and_labels():
    g = torch.Generator().manual_seed(0)
    mix = MixStyle(p=1.0, alpha=0.1, generator=g)
    x = torch.randn(8, 4, 6, 6) * torch.arange(1, 9).view(8, 1, 1, 1) + torch.arange(8).view(8, 1, 1, 1)
    y = torch.arange(8) % 2
    y0 = y.clone()
    out = mix.mix(x)
    assert out.shape == x.shape and torch.equal(y, y0)
    assert not torch.allclose(out.mean(dim=(2, 3)), x.mean(dim=(2, 3)))  # styles changed
    norm = lambda t: (t - t.mean((2, 3), keepdim=True)) / t.std((2, 3), keepdim=True)  # noqa: E731
    assert torch.allclose(norm(out), norm(x), atol=1e-3)  # content (normalised features) kept
    assert torch.equal(MixStyle(p=0.0).mix(x), x)
    tokens = torch.randn(4, 1 + 9, 16)
    mixed = MixStyle(p=1.0, prefix_tokens=1, generator=g).mix(tokens)
    assert mixed.shape == tokens.shape and torch.equal(mixed[:, :1], tokens[:, :1])  # class token untouched


@pytest.mark.slow
def test_mixstyle_places_and_acts_only_in_training():
    cfg = cfg_with()
    model = create_classifier(cfg)
    assert [n for n, _ in mixstyle_targets(model.timm_model)] == ["stages.0", "stages.1"]  # stride 4 and 8
    vit = create_classifier(cfg_with("model.backbone=test_vit"))
    assert [n for n, _ in mixstyle_targets(vit.timm_model)] == ["blocks.1", "blocks.3"]  # 1/3, 2/3 of 6
    x = torch.randn(6, 3, 64, 64)
    torch.manual_seed(0)
    plain = copy.deepcopy(model).train()
    attach_mixstyle(model.timm_model, {"p": 1.0, "alpha": 0.1, "where": "auto"}, torch.Generator().manual_seed(0))
    model.eval(), plain.eval()
    assert torch.allclose(model(x), plain(x))  # eval: identity, nothing to export
    model.train(), plain.train()
    assert not torch.allclose(model(x), plain(x))


# ---- alignment ----------------------------------------------------------------------------------


def test_alignment_loss_zero_when_aligned_positive_when_shifted():
    torch.manual_seed(0)
    base = torch.randn(16, 8)
    labels = torch.tensor([0, 1] * 8)
    domains = torch.tensor([[0], [0], [1], [1]] * 4)
    twin = torch.cat([base[:8], base[:8]])  # both domains hold the same features per class
    dom_twin = torch.tensor([[0]] * 8 + [[1]] * 8)
    assert alignment_loss(twin, labels, dom_twin).item() == pytest.approx(0.0, abs=1e-7)
    shifted = base + 3.0 * domains.float()  # domain 1 moved away
    f = shifted.clone().requires_grad_(True)
    loss = alignment_loss(f, labels, domains)
    assert loss.item() > alignment_loss(base, labels, domains).item() > 0
    loss.backward()
    assert f.grad.abs().sum() > 0
    one = torch.zeros(16, 1, dtype=torch.long)  # one domain value: nothing to align
    assert alignment_loss(base, labels, one).item() == 0.0


def unbiased_by_pairs(features, labels, domains):
    """The unbiased alignment written out: for each label and class, each pair of values with two or more figures,
    |mu_g - mu_h|^2 from distinct pairs of figures only; the mean over pairs, then over (label, class)."""
    z = torch.nn.functional.normalize(features.double(), dim=1)
    terms = []
    for j in range(domains.shape[1]):
        for c in (0, 1):
            groups = [z[(labels == c) & (domains[:, j] == v)] for v in torch.unique(domains[:, j])]
            groups = [g for g in groups if len(g) >= 2]
            pairs = []
            for a in range(len(groups)):
                for b in range(a + 1, len(groups)):
                    g, h = groups[a], groups[b]
                    within = [(g[i] @ g[k]).item() for i in range(len(g)) for k in range(len(g)) if i != k]
                    within_h = [(h[i] @ h[k]).item() for i in range(len(h)) for k in range(len(h)) if i != k]
                    cross = (g @ h.T).mean().item()
                    pairs.append(np.mean(within) + np.mean(within_h) - 2 * cross)
            if pairs:
                terms.append(np.mean(pairs))
    return float(np.mean(terms)) if terms else 0.0


def test_unbiased_alignment_is_the_pairwise_u_statistic():
    torch.manual_seed(1)
    f = torch.randn(40, 6)
    labels = torch.randint(0, 2, (40,))
    domains = torch.stack([torch.randint(0, 3, (40,)), torch.randint(0, 2, (40,))], 1)
    domains[0, 0] = 4  # a value with one figure: no pair it can join
    got = alignment_loss(f, labels, domains, estimator="unbiased").item()
    assert got == pytest.approx(unbiased_by_pairs(f, labels, domains), abs=1e-5)


def test_unbiased_alignment_is_zero_on_average_where_domains_do_not_differ():
    """Null: features independent of the domain labels. The batch-means loss sits at its noise floor (and equals
    its shuffled control); the unbiased one averages zero. With a real shift, both see it, and the unbiased one
    estimates the shifted means' squared distance."""
    gen = torch.Generator().manual_seed(0)
    labels = torch.tensor([0, 1] * 32)
    domains = torch.tensor([0, 0, 1, 1] * 16).view(-1, 1)
    biased, unbiased, control, shifted = [], [], [], []
    for _ in range(300):
        f = torch.randn(64, 16, generator=gen)
        biased.append(alignment_loss(f, labels, domains).item())
        unbiased.append(alignment_loss(f, labels, domains, estimator="unbiased").item())
        control.append(alignment_control(f, labels, domains, None, "batch_means", gen).item())
        g = f.clone()
        g[domains[:, 0] == 1, 0] += 2.0  # domain 1 moved along one axis
        shifted.append(alignment_loss(g, labels, domains, estimator="unbiased").item())
    se = np.std(unbiased) / np.sqrt(len(unbiased))
    assert abs(np.mean(unbiased)) < 3 * se
    assert np.mean(biased) > 10 * se and np.mean(biased) == pytest.approx(np.mean(control), rel=0.1)
    assert np.mean(shifted) > 20 * se


def test_alignment_control_shuffles_the_domains_only():
    f = torch.randn(32, 8)
    labels = torch.tensor([0, 1] * 16)
    domains = torch.tensor([[0], [0], [1], [1]] * 8)
    f[domains[:, 0] == 1] += 3.0
    real = alignment_loss(f, labels, domains).item()
    a = alignment_control(f, labels, domains, None, "batch_means", torch.Generator().manual_seed(3)).item()
    b = alignment_control(f, labels, domains, None, "batch_means", torch.Generator().manual_seed(3)).item()
    assert a == b and a < real / 4  # seeded; shuffled labels no longer separate the moved figures
    x = f.clone().requires_grad_(True)
    alignment_control(x, labels, domains, None, "unbiased", torch.Generator())
    assert x.grad is None  # a measurement, never part of the loss


def test_teacher_horizon_in_epochs_sets_the_decay():
    assert teacher_decay({"decay": 0.99, "horizon_epochs": None}, 36) == 0.99
    d = teacher_decay({"decay": 0.99, "horizon_epochs": 5.0}, 36)
    assert 1 / (1 - d) == pytest.approx(5 * 36)
    # with G processes an epoch has G x fewer steps per process: the decay follows, the horizon in epochs stays
    d4 = teacher_decay({"decay": 0.99, "horizon_epochs": 5.0}, 9)
    assert 1 / (1 - d4) / 9 == pytest.approx(5.0)
    t = make_teacher(create_classifier(cfg_with()), {"decay": 0.5, "horizon_epochs": 2.0, "warmup": False}, 10)
    assert t.decay == pytest.approx(1 - 1 / 20)


def test_attention_is_identity_at_start_and_in_the_model():
    se = EmbeddingSE(16)
    z = torch.randn(4, 16)
    assert torch.allclose(se(z), z)
    assert isinstance(create_classifier(cfg_with()).attention, EmbeddingSE)
    assert isinstance(create_classifier(cfg_with("align.enabled=false")).attention, torch.nn.Identity)


def test_attention_width_follows_align_attention_reduction():
    default, narrow = (
        create_classifier(cfg_with()).attention,
        create_classifier(cfg_with("align.attention_reduction=16")).attention,
    )
    width = default.fc1.in_features
    assert default.fc1.out_features == max(8, width // 4)
    assert narrow.fc1.out_features == max(8, width // 16) < default.fc1.out_features
    from amf import AmfError

    with pytest.raises(AmfError, match="attention_reduction"):
        cfg_with("align.attention_reduction=0")


# ---- imbalance, schedule ------------------------------------------------------------------------


def test_weighted_sampler_balances_and_shards():
    labels = np.array([1] * 10 + [0] * 90)
    w = 1.0 / np.bincount(labels)[labels]
    s = EpochSampler(len(labels), w, seed=0)
    s.set_epoch(0)
    draw = np.array([i for i, _ in s])
    assert len(draw) == 100 and 0.35 < labels[draw].mean() < 0.65  # ~half atypical instead of 10%
    plain = np.array([i for i, _ in EpochSampler(100, None, seed=0)])
    assert sorted(plain) == list(range(100))
    r0, r1 = EpochSampler(100, None, 0, 0, 2), EpochSampler(100, None, 0, 1, 2)
    a, b = list(r0), list(r1)
    assert len(a) == len(b) == 50 and not {i for i, _ in a} & {i for i, _ in b}
    assert sorted(d for _, d in a + b) == list(range(100))  # draw positions of the whole epoch, split by rank
    whole = dict((d, i) for i, d in EpochSampler(100, None, seed=0))
    assert all(whole[d] == i for i, d in a + b)  # the same draw order whatever the number of ranks
    e1 = EpochSampler(100, None, seed=0)
    e1.set_epoch(1)
    assert [i for i, _ in e1] != list(plain)


def test_cosine_schedule_with_warmup():
    f = cosine_with_warmup(100, 10)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.5, abs=1e-9) and f(99) < 0.01


def test_weighted_loss_mode_changes_the_loss():
    logits, y = torch.zeros(4), torch.tensor([1.0, 0.0, 0.0, 0.0])
    plain = torch.nn.functional.binary_cross_entropy_with_logits(logits, y)
    weighted = torch.nn.functional.binary_cross_entropy_with_logits(logits, y, pos_weight=torch.tensor(3.0))
    assert weighted > plain


# ---- augmentation -------------------------------------------------------------------------------


def test_augment_is_seeded_and_switchable():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (128, 128, 3), dtype=np.uint8)
    aug = Augment(cfg_with()["augment"])
    a = aug(img, np.random.default_rng(5))
    assert a.shape == img.shape and a.dtype == np.uint8
    assert np.array_equal(a, aug(img, np.random.default_rng(5)))
    assert not np.array_equal(a, img)
    off = Augment(cfg_with("augment.enabled=false")["augment"])
    assert np.array_equal(off(img, np.random.default_rng(5)), img)
    geo = Augment(
        {
            **cfg_with()["augment"],
            "hed_scale": 0,
            "hed_shift": 0,
            "brightness": 0,
            "contrast": 0,
            "saturation": 0,
            "affine_p": 0,
            "blur_p": 0,
        }
    )
    g = geo(img, np.random.default_rng(3))
    assert sorted(map(tuple, g.reshape(-1, 3))) == sorted(map(tuple, img.reshape(-1, 3)))  # pixels only moved
    assert np.array_equal(hed_jitter(img, np.random.default_rng(0), 0.0, 0.0), img)
    stained = hed_jitter(img, np.random.default_rng(0), 0.1, 0.02)
    assert np.abs(stained.astype(int) - img).mean() > 1


def test_validation_input_is_the_containers_prepare():
    import pandas as pd

    from training.data import PatchDataset

    rng = np.random.default_rng(0)
    patches = [rng.integers(0, 255, (128, 128, 3), dtype=np.uint8) for _ in range(3)]
    df = pd.DataFrame({"path": ["-"] * 3, "label": [0, 1, 0], "soft": [0.0, 1.0, 0.3]})
    mean, std = [0.7, 0.5, 0.6], [0.2, 0.25, 0.2]
    ds = PatchDataset(df, [0, 1, 2], 96, mean, std, "bilinear", None, patches)
    x = torch.stack([ds[i][0] for i in range(3)]).numpy()
    assert np.array_equal(x, prepare(patches, 96, mean, std, "bilinear"))
    assert ds[1][1].item() == 1.0
    soft = PatchDataset(df, [0, 1, 2], 96, mean, std, cache=patches, soft=True)
    assert soft[2][1].item() == pytest.approx(0.3)


# ---- fine-tuning modes --------------------------------------------------------------------------


@pytest.mark.slow
def test_lora_trains_adapters_only_and_merges_exactly():
    torch.manual_seed(0)
    cfg = cfg_with("model.backbone=test_vit", "model.finetune=lora", "data.input_size=32")
    model = create_classifier(cfg)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith(("head.", "attention.")) for n in trainable)
    with torch.no_grad():  # LoRA B starts at zero; move it so that merging matters
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    x = torch.randn(3, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        ref = model(x)
    plain = load_for_export(cfg, lora_folded_state_dict(model))
    with torch.no_grad():
        assert torch.allclose(plain(x), ref, atol=1e-5)


def test_frozen_backbone_keeps_its_weights_and_statistics():
    cfg = cfg_with("model.backbone=test_resnet", "model.finetune=frozen")
    model = create_classifier(cfg).train()
    before = copy.deepcopy(model.backbone.state_dict())
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    loss = model(torch.randn(4, 3, 64, 64)).sum()
    loss.backward()
    opt.step()
    assert all(torch.equal(before[k], v) for k, v in model.backbone.state_dict().items())
    assert model.head.weight.grad is not None


def test_config_rejects_unknown_keys_and_values():
    from amf import AmfError

    with pytest.raises(AmfError, match="unknown key"):
        cfg_with("train.epocs=3")
    with pytest.raises(AmfError, match="imbalance.mode"):
        cfg_with("imbalance.mode=oversample")
    assert cfg_with("imbalance.mode=loss")["imbalance"]["mode"] == "loss"


def test_the_loss_takes_no_alignment_below_zero(monkeypatch):
    """An unbiased estimate below 0 is logged as it is and adds nothing to the loss (minimised below 0 it would
    spread each domain apart); above 0 it adds align.weight times itself."""
    from training.train import kfold

    cfg = cfg_with("align.estimator=unbiased", "align.weight=3", "ema.enabled=false", "mixstyle.enabled=false")
    model = create_classifier(cfg)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    x, y = torch.randn(4, 3, 64, 64), torch.tensor([0.0, 1.0, 0.0, 1.0])
    batch = (y.long(), torch.tensor([[0], [1], [0], [1]]), 2)
    for value, weighted in ((-0.2, 0.0), (0.2, 0.6)):
        monkeypatch.setattr(kfold, "alignment_loss", lambda f, *a, v=value, **k: f.sum() * 0 + v)
        out = kfold.train_step(model, model, None, opt, x, y, cfg, False, align_batch=batch)
        assert out["align"].item() == pytest.approx(value) and out["w_align"].item() == pytest.approx(weighted)
        assert out["loss"].item() == pytest.approx(out["cls"].item() + weighted, abs=1e-6)
