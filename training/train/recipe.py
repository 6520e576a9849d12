"""The domain-robust recipe ("Mix, Align, Distil", Atey et al., MIDOG 2025): each part switchable.

MixStyle (Zhou et al., ICLR 2021): in training, with probability p per batch, the feature statistics
  (per-sample, per-channel mean and std) of a stage's output are mixed with those of a shuffled batch
  partner, lambda ~ Beta(alpha, alpha). Shapes, the batch order and the labels are unchanged; in eval mode
  it is the identity, so nothing of it is exported. Where ("auto"):
    CNNs  timm's feature_info stages at stride 4 and 8 (the early and mid stages: ResNet layer1/layer2,
          ConvNeXt stages.0/stages.1)
    ViTs  the transformer blocks at about 1/3 and 2/3 of the depth (blocks[round(d/3)-1], blocks[round(2d/3)-1]);
          statistics over the patch tokens (class/register tokens pass through)
  or a list of module names of the timm model.
Alignment (align): the features refined by the attention module (models.EmbeddingSE) are L2-normalised;
  for each weak domain label (Scanner, Origin, Species, Tumor) and each class present in the batch, the
  mean feature of every domain value is pulled to the class's batch mean: the loss is the mean squared
  distance, averaged over classes and labels (class-conditional domain-mean alignment, a linear-kernel
  MMD). A label with one value in the batch adds nothing. align.estimator: "batch_means" (the above) is biased:
  with no domain difference at all it still equals the sampling noise of a mean of a few figures (about
  (1 - |mu|^2) / n per value), so at batch 64 it is mostly noise and its gradient mostly shrinks every class's
  spread; "unbiased" is the U-statistic of the same squared distances (pairs of distinct figures only, mean over
  pairs of values with two or more figures): zero in expectation, and zero gradient in expectation, where the
  domains do not differ, so what it pulls on is the domain difference itself. It can be negative (within a domain,
  figures less alike than across domains: noise), and the loss takes max(0, it): minimised below 0 it would spread
  each domain's figures apart instead of aligning them (an ablation arm at align.weight 5 without the clamp never
  learned on MIDOG21: BCE stayed at ln 2 for 16 epochs while the estimate swung either side of 0).
  Whether it acts: training logs, beside it, the same estimator on the same batch with the domain labels
  shuffled (alignment_control); a term no larger than its shuffled control aligns nothing.
EMA teacher (timm.utils.ModelEmaV3): after every optimiser step teacher = d*teacher + (1-d)*student.
  d = ema.decay, or with ema.horizon_epochs H: 1 - 1 / (H * steps per epoch of one process), a horizon of H
  epochs whatever the batch size, data size or number of processes (teacher_decay). With ema.warmup,
  d = decay * step / W rises linearly over the first W = ema.warmup_epochs epochs of optimiser steps (W = 0:
  no warm-up) and equals that decay from step W on (timm's own warm-up, 1 - (1 + step)^(-2/3), stays below
  the configured decay for 1000 steps at 0.99 and 31,600 at 0.999: longer than most runs here). The decay in effect is
  recorded per epoch (epochs.csv ema_decay) and at the end (done.json). The student also fits the
  teacher's prediction: T^2 * KL(teacher || student) on the two-class distributions at temperature T.
Look:  python -m training.inspect recipe CONFIG   (where MixStyle goes for the configured backbone)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# ---- MixStyle -----------------------------------------------------------------------------------


class MixStyle:
    """Mixes per-sample feature statistics; called from forward hooks on the chosen modules."""

    def __init__(
        self,
        p: float = 0.5,
        alpha: float = 0.1,
        eps: float = 1e-6,
        prefix_tokens: int = 0,
        generator: torch.Generator | None = None,
    ):
        self.p, self.alpha, self.eps, self.prefix = float(p), float(alpha), eps, int(prefix_tokens)
        self.beta = torch.distributions.Beta(torch.tensor(self.alpha), torch.tensor(self.alpha))
        self.generator = generator
        self.active = True

    def _rand(self) -> float:
        return float(torch.rand((), generator=self.generator))

    def mix(self, x: torch.Tensor, channels: int | None = None) -> torch.Tensor:
        """NCHW, NHWC (channels given) or N x tokens x C -> same shape with mixed statistics."""
        b = x.shape[0]
        if b < 2 or self._rand() >= self.p:
            return x
        if x.dim() == 4:
            dims = (1, 2) if channels is not None and x.shape[-1] == channels and x.shape[1] != channels else (2, 3)
            body, head = x, None
        elif x.dim() == 3:
            dims = (1,)
            head, body = x[:, : self.prefix], x[:, self.prefix :]
        else:
            return x
        dtype = body.dtype
        body = body.float()
        mu = body.mean(dim=dims, keepdim=True).detach()  # as the original: statistics carry no gradient
        sig = (body.var(dim=dims, keepdim=True) + self.eps).sqrt().detach()
        normed = (body - mu) / sig
        lam = self.beta.sample((b,))
        perm = torch.randperm(b, generator=self.generator)
        if x.is_cuda:  # a copy from pageable memory would wait for the GPU's queue to drain; pinned ones do not
            lam, perm = lam.pin_memory(), perm.pin_memory()
        lam = lam.to(x.device, non_blocking=True).view(b, *([1] * (body.dim() - 1)))
        perm = perm.to(x.device, non_blocking=True)
        mu_mix = mu * lam + mu[perm] * (1 - lam)
        sig_mix = sig * lam + sig[perm] * (1 - lam)
        out = (normed * sig_mix + mu_mix).to(dtype)
        return out if head is None else torch.cat([head, out], dim=1)


def mixstyle_targets(timm_model: nn.Module, where="auto") -> list[tuple[str, int | None]]:
    """(module name, channels) of the early and mid stages (see the docstring), or WHERE's names."""
    names = dict(timm_model.named_modules())
    info = list(getattr(timm_model, "feature_info", []) or [])
    chans = {f["module"]: f.get("num_chs") for f in info}
    if where != "auto":
        missing = [w for w in where if w not in names]
        if missing:
            raise ValueError(f"mixstyle.where: no module {missing} in the backbone")
        return [(w, chans.get(w)) for w in where]
    blocks = getattr(timm_model, "blocks", None)
    if (
        isinstance(blocks, (nn.Sequential, nn.ModuleList))
        and len(blocks) >= 3
        and len({f.get("reduction") for f in info}) <= 1
    ):  # ViT-like: one resolution throughout
        d = len(blocks)
        return [(f"blocks.{max(0, round(d / 3) - 1)}", None), (f"blocks.{max(0, round(2 * d / 3) - 1)}", None)]
    stages = [f for f in info if f.get("reduction", 0) >= 4]
    if len(stages) < 2:
        raise ValueError("mixstyle.where=auto: this backbone has no feature_info stages; name the modules")
    return [(stages[0]["module"], stages[0].get("num_chs")), (stages[1]["module"], stages[1].get("num_chs"))]


def attach_mixstyle(timm_model: nn.Module, mcfg: dict, generator: torch.Generator | None = None):
    """Forward hooks that apply MixStyle while the hooked module is in training mode. Returns (mixer, names)."""
    mixer = MixStyle(
        mcfg["p"], mcfg["alpha"], prefix_tokens=getattr(timm_model, "num_prefix_tokens", 0), generator=generator
    )
    modules = dict(timm_model.named_modules())
    targets = mixstyle_targets(timm_model, mcfg.get("where", "auto"))
    for name, ch in targets:

        def hook(module, inputs, output, ch=ch):
            if not module.training or not mixer.active or not torch.is_tensor(output):
                return None
            return mixer.mix(output, ch)

        modules[name].register_forward_hook(hook)
    return mixer, [n for n, _ in targets]


# ---- alignment ----------------------------------------------------------------------------------


ESTIMATORS = ("batch_means", "unbiased")  # align.estimator


def alignment_loss(
    features: torch.Tensor,
    labels: torch.Tensor,
    domains: torch.Tensor,
    num_values: int | None = None,
    estimator: str = "batch_means",
) -> torch.Tensor:
    """features (B, D); labels (B,) in {0,1}; domains (B, L) integer codes >= 0 of L weak domain labels.

    Mean over labels and classes of the mean squared distance between each domain value's mean
    (L2-normalised) feature and the class's batch mean. 0 when no label has two values in a class.
    Vectorised (one index_add over (label, class, value) groups, no loop over values, no host
    synchronisation when NUM_VALUES, an upper bound of the codes, is given); the same value as
    alignment_loss_loops, the readable reference. ESTIMATOR "unbiased": unbiased_alignment of the same groups.
    """
    z = F.normalize(features.float(), dim=1)
    b, dim = z.shape
    n_labels = domains.shape[1]
    labels = labels.round().long()
    if num_values is None:
        num_values = int(domains.max()) + 1 if domains.numel() else 1
    in_class = (labels == 0) | (labels == 1)  # other labels take part in no class, as in the reference
    cls = labels.clamp(0, 1)
    # group of (sample, label j): (j, class, value); sums and counts of z per group
    groups = (torch.arange(n_labels, device=z.device) * 2 + cls.view(b, 1)) * num_values + domains
    groups = groups.view(-1)
    weight = in_class.to(z.dtype).repeat_interleave(n_labels)
    n_groups = n_labels * 2 * num_values
    sums = z.new_zeros(n_groups, dim).index_add_(0, groups, z.repeat_interleave(n_labels, 0) * weight.view(-1, 1))
    counts = z.new_zeros(n_groups).index_add_(0, groups, weight)
    means = sums / counts.clamp_min(1).view(-1, 1)
    # the class's batch mean is the same for every label j: the sum over the values of (j, class)
    sums = sums.view(n_labels, 2, num_values, dim)
    counts = counts.view(n_labels, 2, num_values)
    if estimator == "unbiased":
        return unbiased_alignment(sums, counts, features)
    centre = sums.sum(2) / counts.sum(2).clamp_min(1).unsqueeze(-1)  # (L, 2, D)
    present = counts > 0
    dist = ((means.view(n_labels, 2, num_values, dim) - centre.unsqueeze(2)) ** 2).sum(-1) * present
    n_present = present.sum(2)
    valid = n_present >= 2
    terms = dist.sum(2) / n_present.clamp_min(1)
    n_terms = valid.sum()
    # no valid term: 0, through the features so that the graph is kept (DDP)
    return (terms * valid).sum() / n_terms.clamp_min(1) + features.sum() * 0.0


def unbiased_alignment(sums: torch.Tensor, counts: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """The unbiased squared distance between domain means: SUMS (L, 2, V, D) of unit features and COUNTS (L, 2, V)
    per (label, class, value). For two values g, h with n >= 2 figures each, |mu_g - mu_h|^2 is estimated by
    U_g + U_h - 2 S_g.S_h / (n_g n_h), U_g = (|S_g|^2 - n_g) / (n_g (n_g - 1)) (distinct pairs only: |z|^2 = 1);
    the mean over such pairs of values, then over the (label, class) with at least one pair."""
    n = counts
    ok = n >= 2
    u = ((sums * sums).sum(-1) - n) / (n * (n - 1)).clamp_min(1)  # (L, 2, V)
    gram = torch.einsum("lcvd,lcwd->lcvw", sums, sums) / (n.unsqueeze(-1) * n.unsqueeze(-2)).clamp_min(1)
    dist = u.unsqueeze(-1) + u.unsqueeze(-2) - 2 * gram  # (L, 2, V, V)
    pair = ok.unsqueeze(-1) & ok.unsqueeze(-2)
    pair = pair & torch.ones_like(pair).triu(1)  # each pair of distinct values once
    n_pairs = pair.sum((-1, -2))
    terms = (dist * pair).sum((-1, -2)) / n_pairs.clamp_min(1)
    valid = n_pairs > 0
    return (terms * valid).sum() / valid.sum().clamp_min(1) + features.sum() * 0.0


def alignment_control(
    features: torch.Tensor,
    labels: torch.Tensor,
    domains: torch.Tensor,
    num_values: int | None,
    estimator: str,
    generator: torch.Generator,
) -> torch.Tensor:
    """The alignment loss of the same batch with its domain labels shuffled across the batch (no gradient): what
    the estimator gives where the domains carry no information. GENERATOR (CPU) draws the shuffle, so that the
    control leaves the training's own random streams alone."""
    perm = torch.randperm(domains.shape[0], generator=generator).to(domains.device, non_blocking=True)
    with torch.no_grad():
        return alignment_loss(features.detach(), labels, domains[perm], num_values, estimator)


def alignment_loss_loops(features: torch.Tensor, labels: torch.Tensor, domains: torch.Tensor) -> torch.Tensor:
    """The reference implementation of alignment_loss (loops over labels, classes and values)."""
    z = F.normalize(features.float(), dim=1)
    labels = labels.round().long()
    terms = []
    for j in range(domains.shape[1]):
        d = domains[:, j]
        for c in (0, 1):
            in_c = labels == c
            values = torch.unique(d[in_c])
            if len(values) < 2:
                continue
            centre = z[in_c].mean(0)
            means = torch.stack([z[in_c & (d == v)].mean(0) for v in values])
            terms.append(((means - centre) ** 2).sum(1).mean())
    if not terms:
        return features.sum() * 0.0  # keeps the graph (DDP) with a zero loss
    return torch.stack(terms).mean()


# ---- EMA teacher --------------------------------------------------------------------------------


def teacher_decay(ecfg: dict, steps_per_epoch: int) -> float:
    """The teacher's decay per optimiser step: ema.decay, or with ema.horizon_epochs H the decay whose horizon,
    1 / (1 - d) steps, is H epochs of STEPS_PER_EPOCH (one process's steps: with G processes an epoch has G x
    fewer, so the decay follows and the horizon in epochs does not change)."""
    horizon = ecfg.get("horizon_epochs")
    if horizon is None:
        return float(ecfg["decay"])
    return 1.0 - 1.0 / max(1.0, float(horizon) * max(1, int(steps_per_epoch)))


def ema_decay(step: int | None, decay: float, warmup_steps: int) -> float:
    """The teacher's decay after optimiser step STEP (1-based): decay * step / warmup_steps, then decay."""
    if step is None or warmup_steps <= 0:
        return float(decay)
    return float(decay) * min(1.0, step / warmup_steps)


def make_teacher(model: nn.Module, ecfg: dict, steps_per_epoch: int = 0):
    """timm's ModelEmaV3 with this module's warm-up (ema_decay): teacher_decay acts after
    round(ema.warmup_epochs * steps_per_epoch) steps. teacher.last_decay is the decay of the last update."""
    from timm.utils import ModelEmaV3

    warmup_steps = int(round(float(ecfg.get("warmup_epochs", 1.0)) * steps_per_epoch)) if ecfg.get("warmup") else 0

    class Teacher(ModelEmaV3):
        def get_decay(self, step=None):
            self.last_decay = ema_decay(step, self.decay, self.warmup_steps)
            return self.last_decay

    teacher = Teacher(model, decay=teacher_decay(ecfg, steps_per_epoch), use_warmup=False)
    teacher.warmup_steps, teacher.last_decay = warmup_steps, None
    return teacher


def kd_loss(student_logit: torch.Tensor, teacher_logit: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(teacher || student) for one-logit (two-class) outputs, mean over the batch."""
    t = float(temperature)
    s, te = student_logit.float().view(-1) / t, teacher_logit.float().view(-1) / t
    p_t = torch.sigmoid(te)
    kl = p_t * (F.logsigmoid(te) - F.logsigmoid(s)) + (1 - p_t) * (F.logsigmoid(-te) - F.logsigmoid(-s))
    return kl.mean() * t * t
