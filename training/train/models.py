"""The classifier: a timm backbone (pooled embedding) -> optional attention -> one logit for atypical.

create_classifier(cfg) is the one call that builds it, for training, export and the benchmark:
  model.backbone     any timm name: convnext_small, vit_small_patch8_224,
                     hf-hub:1aurent/vit_small_patch8_224.lunit_dino, hf-hub:MahmoodLab/UNI2-h,
                     hf-hub:paige-ai/Virchow2, hf-hub:bioptimus/H-optimus-0, DINOv3 ...
  model.pretrained   fetch the hub weights (timm / Hugging Face; gated models need HF_TOKEN)
  model.weights      or load a local weights file into the backbone (offline); give the timm architecture
                     name then (an hf-hub: name needs the hub for its config even without weights). Every
                     tensor must fit (one error names the keys that do not); one line says how many loaded
  (the hub: training/train/hub.py; unreachable, it fails within seconds unless the files are in the local cache)
  model.kwargs       extra timm.create_model arguments; "py:timm.layers.SwiGLUPacked" names a Python object
  model.finetune     full | lora (peft LoRA on model.lora.target_modules; folded into the weights before
                     export) | frozen (backbone frozen and kept in eval mode; the attention and head train)
The attention module, EmbeddingSE (squeeze-and-excitation, Hu et al. 2018, applied to the pooled
embedding: z * sigmoid(W2 relu(W1 z))), refines the features that the head classifies and that the
alignment loss (training/train/recipe.py) aligns across domains; present when model.attention is true, or ("auto",
the default) when align.enabled. It is a part of
the exported model (a few thousand multiply-adds per patch).
Look:  python -m training.inspect models CONFIG   (builds the model: its size and a forward pass's shape)
"""

from __future__ import annotations

import contextlib
import copy
import sys

import torch
from torch import nn

from amf import AmfError, one_line
from amf.preprocess import IMAGENET_MEAN, IMAGENET_STD
from training.train import hub


class EmbeddingSE(nn.Module):
    """Squeeze-and-excitation gate on a pooled embedding (the alignment's attention module)."""

    def __init__(self, dim: int, reduction: int = 4):
        super().__init__()
        hidden = max(8, dim // reduction)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        nn.init.zeros_(self.fc2.weight)  # gate 2*sigmoid(0) = 1: the identity at initialisation,
        nn.init.zeros_(self.fc2.bias)  # so a pretrained backbone's features reach the head unchanged

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z * (2.0 * torch.sigmoid(self.fc2(torch.relu(self.fc1(z)))))


class Classifier(nn.Module):
    """backbone (timm, num_classes=0: pooled embedding) -> attention -> dropout -> Linear -> (N, 1) logit."""

    def __init__(
        self,
        backbone: nn.Module,
        num_features: int,
        attention: bool,
        head_dropout: float = 0.0,
        frozen_backbone: bool = False,
        attention_reduction: int = 4,
    ):
        super().__init__()
        self.backbone = backbone
        self.attention = EmbeddingSE(num_features, attention_reduction) if attention else nn.Identity()
        self.dropout = nn.Dropout(head_dropout)
        self.head = nn.Linear(num_features, 1)
        self.frozen_backbone = frozen_backbone
        self.__dict__["timm_model"] = backbone  # the raw timm model, unregistered (hooks, feature_info)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen_backbone:
            self.backbone.eval()  # frozen: no BN statistics updates, no dropout or drop-path
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.attention(self.backbone(x))

    def forward(self, x: torch.Tensor, return_features: bool = False):
        z = self.features(x)
        logit = self.head(self.dropout(z))
        return (logit, z) if return_features else logit


def _hub_error(name: str, e: Exception, offline: str | None = None) -> AmfError:
    """One whole line for a backbone the hub did not give: gated, unreachable (OFFLINE: why, from training.train.hub)
    and not cached, or another hub failure (its message shortened at a sentence's end)."""
    text = " ".join(f"{type(e).__name__}: {e}".split())
    low = text.lower()
    repo = name[len("hf-hub:") :] if name.startswith("hf-hub:") else name
    if "gated" in low or "401" in low or "403" in low or "restricted" in low:
        return AmfError(
            f"model {name} is gated: accept its licence on https://huggingface.co/{repo.split('@')[0]} "
            f"and set HF_TOKEN (or give a local file as model.weights)"
        )
    if offline:
        return AmfError(hub.offline_error(name, offline))
    return AmfError(
        f"cannot fetch the weights or config of {name} ({shorten(text)}); set model.weights to a local weights file "
        "with the timm architecture name, or model.pretrained: false"
    )


def shorten(text: str, limit: int = 300) -> str:
    """TEXT up to LIMIT characters, cut after its last whole sentence (else its last whole word, with an ellipsis)."""
    if len(text) <= limit:
        return text
    head = text[:limit]
    end = head.rfind(". ")
    return head[: end + 1] if end > limit // 3 else head[: head.rfind(" ")] + " …"


def python_object(value):
    """A model.kwargs value; "py:package.module.Name" names a Python object (UNI2-h's mlp_layer, act_layer)."""
    if isinstance(value, str) and value.startswith("py:"):
        import importlib

        module, _, attr = value[3:].rpartition(".")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError, ValueError):
            raise AmfError(f"model.kwargs: cannot import {value[3:]}") from None
    return value


def create_backbone(mcfg: dict, pretrained: bool | None = None, img_size: int | None = None, log=print) -> nn.Module:
    """The timm model without its classifier (num_classes=0): forward gives the pooled embedding.

    Models that take img_size (ViTs) are built for the training input size (timm resamples pretrained
    position embeddings once, at load time), so the graph has no resize in it; CNNs ignore it.
    """
    import timm

    name = mcfg["backbone"]
    pretrained = mcfg["pretrained"] if pretrained is None else pretrained
    kwargs = {k: python_object(v) for k, v in (mcfg.get("kwargs") or {}).items()}
    if mcfg.get("drop_path"):
        kwargs["drop_path_rate"] = float(mcfg["drop_path"])
    weights = mcfg.get("weights")
    if weights:
        from pathlib import Path

        if not Path(weights).is_file():
            raise AmfError(f"model.weights: no file {weights}")
        pretrained = False  # random initialisation, then the file (load_weights)
    if not name.startswith("hf-hub:") and not timm.is_model(name):
        raise AmfError(f"unknown timm model {name!r} (timm {timm.__version__}); see timm.list_models()")
    offline = hub.unreachable() if hub.needs_hub(mcfg, pretrained) else None
    try:
        model = None
        if img_size and "img_size" not in kwargs:
            with contextlib.suppress(TypeError):  # a model without an img_size argument (CNNs)
                model = timm.create_model(name, pretrained=pretrained, num_classes=0, img_size=img_size, **kwargs)
        if model is None:
            model = timm.create_model(name, pretrained=pretrained, num_classes=0, **kwargs)
    except TypeError as e:  # an argument this architecture does not take (drop_path_rate, a kwargs key)
        raise AmfError(f"model {name}: {one_line(e)[:200]} (check model.drop_path and model.kwargs)") from None
    except Exception as e:  # huggingface_hub / requests errors have their own types
        raise _hub_error(name, e, offline) from None
    if weights:
        load_weights(model, weights, name, log)
    return model


def load_weights(model: nn.Module, path, name: str, log=print) -> None:
    """model.weights into a freshly built backbone, as timm loads hub weights: timm's reader (safetensors, or a torch
    file read with weights_only, unwrapped from its state_dict/model key), the architecture's checkpoint filter
    (e.g. a ViT's position embeddings resampled to the input size), the pretrained classifier left out. Every
    tensor must fit: one AmfError naming the missing, unexpected and misshapen keys; one line LOG when loaded."""
    from timm.models import load_state_dict

    try:
        state = load_state_dict(str(path))
        filter_fn = getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)
        if filter_fn is not None:
            state = filter_fn(state, model)
    except Exception as e:  # not a weights file, or one the architecture's filter cannot read
        raise AmfError(f"model.weights {path} is not a weights file of {name}: {shorten(one_line(e), 200)}") from None
    own = model.state_dict()
    classifier = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or ()
    for c in (classifier,) if isinstance(classifier, str) else classifier:  # the hub weights' head: not ours
        for key in (f"{c}.weight", f"{c}.bias"):
            if key not in own:
                state.pop(key, None)
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} in the file, {tuple(own[k].shape)} here"
        for k in own
        if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = [
            f"{len(keys)} {what} ({', '.join(keys[:4])}{', ...' if len(keys) > 4 else ''})"
            for what, keys in (
                ("tensor(s) of the model missing from the file", missing),
                ("tensor(s) of the file the model does not have", unexpected),
                ("of other shape", shapes),
            )
            if keys
        ]
        raise AmfError(f"model.weights {path} does not fit {name}: " + "; ".join(parts))
    model.load_state_dict(state, strict=False)
    log(f"loaded {len(own) - len(missing)} of {len(own)} backbone tensors from {path}")


def normalisation(cfg: dict, backbone: nn.Module) -> tuple[list[float], list[float]]:
    """data.mean/std, or ("auto") the backbone's pretrained_cfg, else ImageNet's."""
    pcfg = getattr(backbone, "pretrained_cfg", {}) or {}
    out = []
    for key, fallback in (("mean", IMAGENET_MEAN), ("std", IMAGENET_STD)):
        value = cfg["data"][key]
        if value == "auto":
            value = pcfg.get(key) or fallback
        if len(value) != 3:
            raise AmfError(f"config: data.{key} must have 3 values")
        out.append([float(v) for v in value])
    return out[0], out[1]


def apply_lora(backbone: nn.Module, lcfg: dict) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    conf = LoraConfig(
        r=int(lcfg.get("r", 8)),
        lora_alpha=int(lcfg.get("alpha", 16)),
        lora_dropout=float(lcfg.get("dropout", 0.0)),
        target_modules=list(lcfg.get("target_modules", ["qkv"])),
    )
    try:
        return get_peft_model(backbone, conf)
    except ValueError as e:
        raise AmfError(
            f"LoRA: {one_line(e)[:300]} (set model.lora.target_modules to Linear layer names of this backbone)"
        ) from None


def create_classifier(cfg: dict, pretrained: bool | None = None, log=print) -> Classifier:
    """The configured classifier (LoRA-wrapped or frozen backbone as asked). pretrained=False for export. LOG gets
    the line that says a model.weights file was loaded."""
    m = cfg["model"]
    backbone = create_backbone(m, pretrained, int(cfg["data"]["input_size"]), log)
    raw = backbone
    if m["finetune"] == "lora":
        backbone = apply_lora(backbone, m.get("lora") or {})
    elif m["finetune"] == "frozen":
        backbone.requires_grad_(False)
    # the pooled embedding's width: after a conv head (MobileNetV3, GhostNet, LCNet) it is head_hidden_size
    width = getattr(raw, "head_hidden_size", None) or raw.num_features
    model = Classifier(
        backbone,
        width,
        attention=has_attention(cfg),
        head_dropout=float(m.get("head_dropout", 0.0)),
        frozen_backbone=m["finetune"] == "frozen",
        attention_reduction=int(cfg["align"]["attention_reduction"]),
    )
    model.__dict__["timm_model"] = raw
    return model


def has_attention(cfg: dict) -> bool:
    """model.attention, or ("auto") whether the alignment is on."""
    attention = cfg["model"].get("attention", "auto")
    return bool(cfg["align"]["enabled"]) if attention == "auto" else bool(attention)


def head_parameters(model: Classifier) -> set[int]:
    """ids of the new (non-backbone) parameters: the attention and the head."""
    return {id(p) for mod in (model.attention, model.head) for p in mod.parameters()}


def lora_folded_state_dict(model: nn.Module) -> dict:
    """A plain state dict: LoRA adapters folded into the weights (peft's merge_and_unload; what export and
    evaluation load); a model without LoRA gives a copy of its own."""
    model = getattr(model, "module", model)  # DDP
    if not hasattr(model.backbone, "merge_and_unload"):
        return {k: v.detach().clone() for k, v in model.state_dict().items()}
    twin = copy.deepcopy(model)
    twin.backbone = twin.backbone.merge_and_unload()
    return {k: v.detach().clone() for k, v in twin.state_dict().items()}


def load_for_export(cfg: dict, state: dict, source="checkpoint") -> Classifier:
    """A plain classifier (no LoRA wrapper, no hooks) with a lora_folded_state_dict, in eval mode, on the CPU.
    A STATE that does not fit (other names, shapes, or no tensors) is one AmfError naming SOURCE."""
    plain = copy.deepcopy(cfg)
    plain["model"] = dict(cfg["model"], finetune="full", pretrained=False, weights=None)
    model = create_classifier(plain, pretrained=False)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except (RuntimeError, TypeError, AttributeError, KeyError) as e:  # torch's: size mismatch, not a state dict
        raise AmfError(f"{source} does not fit {cfg['model']['backbone']}: {one_line(e)[:200]}") from None
    if missing or unexpected:
        raise AmfError(
            f"{source} does not fit {cfg['model']['backbone']}: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    return model.eval()
