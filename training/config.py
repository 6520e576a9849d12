"""Training configuration: the defaults, YAML loading, dotted overrides, validation.

A config file (training/configs/*.yaml) names only what differs from DEFAULTS; an unknown key is
an error (a typo must not silently train the default), and so is a value of the wrong type: every
value (file or override) must have its default's type (an integer where the default is an integer,
true/false where it is a bool, a number where it is a float: an integer or a text like 1e-4 is
taken as one, text, a list whose items have the type of the default's items, a mapping). The few
keys whose default is a word or None standing for another type say so in ALSO and NONE_TYPES; any
other None default takes any value. The free-form sections are checked by their own rules (check_kwargs,
check_extra). Every config text (a file, a --set value, a run's config.yaml) is read by parse():
UTF-8, at most MAX_CONFIG_BYTES, no YAML tags, plain values only (mappings with text keys, lists, text,
numbers, true/false, null), nested at most MAX_DEPTH deep and at most MAX_EXPANDED in expanded size (aliases
counted each time they are used: an alias bomb is refused before anything reads it). Each recipe part has its
own switch:

  model      timm backbone, pretrained (hub) or a local weights file, finetune full|lora|frozen
  data       input size, resize method, mean/std ("auto": the backbone's pretrained_cfg), extra sets,
             synthetic folder, soft labels
  splits     kfold (by slide, balanced) | leave-one-scanner-out | -tumour-out | -source-out | all (every figure
             trains one member, none held out: train.selection last)
  imbalance  sampler (class-balanced sampling) | loss (BCE pos_weight) | none
  augment    flips, 90-degree rotations, HED jitter, colour jitter, small affine, blur
  mixstyle   style mixing of feature statistics at early and mid stages
  align      SE attention on the embedding + class-conditional domain-mean alignment loss
  ema        EMA teacher, temperature-scaled KL distillation
  train      epochs, batch, AdamW, cosine with warm-up, bf16/channels_last on GPU, which epoch is kept
             (train.selection: last | inner | validation, see training/train/kfold.py), lr with the world size
  log        TensorBoard event files, Weights & Biases, progress lines (training/train/tracking.py, progress.py)

Look:  python -m training.inspect config training/configs/smoke.yaml [train.epochs=3 ...]   (the resolved config)
"""

from __future__ import annotations

import contextlib
import copy
import math
import re
from pathlib import Path

import yaml

from amf import AmfError, one_line
from amf.jobs import MAX_SIDE
from amf.preprocess import TTA_MODES
from training import augment

CONFIG_DIR = Path(__file__).resolve().parent / "configs"

DEFAULTS = {
    "name": "",
    "model": {
        "backbone": "convnext_small",  # any timm name, including hf-hub:ORG/NAME
        "pretrained": False,  # fetch the hub weights (needs the network, maybe a token)
        "weights": None,  # or a local file (.safetensors/.pth) of the backbone's weights
        "kwargs": {},  # extra timm.create_model arguments (e.g. init_values for UNI2-h)
        "finetune": "full",  # full | lora | frozen (train the head on a frozen backbone)
        "lora": {"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": ["qkv"]},
        "drop_path": 0.0,
        "head_dropout": 0.0,
        # the attention gate on the embedding (models.EmbeddingSE): "auto" = present with align.enabled (so a
        # run without alignment had none); true/false decide alone, so that a control run without the alignment
        # loss can keep the recipe's architecture
        "attention": "auto",
    },
    "data": {
        "input_size": 128,
        "resize": "bilinear",  # amf.preprocess.RESAMPLE
        "mean": "auto",  # "auto": the backbone's pretrained_cfg, else ImageNet
        "std": "auto",
        "label": "majority",  # AMF -> 1 (atypical), NMF -> 0
        "soft_labels": False,  # target = share of experts voting AMF
        "extra": [],  # [{name, dir}] in either layout, or [{name, csv, images}] in the official columns
        "official_labels": None,  # an official label table (CSV) naming the scanners of AMi-Br's MIDOG21 figures
        "dedup_radius": 10.0,  # px: same slide, centres this close -> one figure
        "synthetic": None,  # folder of synthetic atypical PNGs (train only)
        "skip_missing": False,  # skip missing/unreadable images (with a count) instead of failing
        "preload": True,  # decode every PNG once into memory
        "num_workers": 2,
        "device_augment": "auto",  # auto (on CUDA) | true | false: training batches gathered from the
        # preloaded patches, augmented, resized, normalised on the training
        # device (training/train/gpu_augment.py); false: DataLoader workers (CPU)
        "device_memory_gb": 4.0,  # patches above this stay in pinned host memory, copied per batch
    },
    # kfold | leave_scanner_out | leave_tumor_out | leave_source_out (the source: an AMi-Br dataset, an extra set) |
    # all (one member trained on every figure, none held out; training/splits.py)
    "splits": {"kind": "kfold", "folds": 5, "seed": 0, "tries": 16},
    "imbalance": {"mode": "sampler"},  # sampler | loss | none
    "augment": augment.DEFAULTS,  # enabled, and each step's keys (training/augment.py STEPS, in their order)
    "mixstyle": {"enabled": True, "p": 0.5, "alpha": 0.1, "where": "auto"},  # auto: early+mid stages
    # align.columns: the weak domain labels whose class-conditional feature means are pulled together. Scanner
    # only: it is the one acquisition-only label. On the full official set Origin splits the species (UMC
    # Utrecht: all human; FU Berlin: mast cell tumour only) and Tumor/Species are biology: aligning them pulls
    # together figures whose morphology genuinely differs. (On the breast slice only Scanner varies, so the
    # earlier default, all four, acted as Scanner alone there; no full-set ablation was run.)
    # align.estimator: batch_means (biased: equals its shuffled control where the domains do not differ) |
    # unbiased (zero in expectation there); training/train/recipe.py
    "align": {
        "enabled": True,
        "weight": 0.1,
        "columns": ["Scanner"],
        "estimator": "batch_means",
        "attention_reduction": 4,  # the attention module's (EmbeddingSE) hidden width: dim / this
    },
    "ema": {
        "enabled": True,
        "decay": 0.999,  # per optimiser step
        # horizon_epochs: the teacher's horizon, 1 / (1 - decay) steps, in epochs: with it set the decay is derived
        # from each process's steps per epoch (ema.decay and decay_scaling do not act); null: ema.decay
        "horizon_epochs": None,
        # decay_scaling: none (ema.decay per step whatever the number of processes: with G of them an epoch has
        # G x fewer steps, so the teacher's horizon in epochs is G x longer) | world (decay ** G per step: the
        # horizon in epochs of one process). training/train/ddp.py; the line at the start of a fold says which
        "decay_scaling": "none",
        "warmup": True,  # warmup: decay ramps linearly from 0 ...
        "warmup_epochs": 1.0,  # ... to ema.decay over this many epochs
        "kd_weight": 0.5,
        "temperature": 2.0,
        "evaluate": True,
    },  # evaluate/export the teacher
    "train": {
        "epochs": 20,
        "batch_size": 64,
        "lr": 3e-4,
        # lr_scaling: none (train.lr whatever the number of processes; the global batch is batch_size x G) |
        # linear (train.lr x G: the linear scaling rule for the G x larger global batch). training/train/ddp.py
        "lr_scaling": "none",
        "head_lr_scale": 1.0,  # lr multiplier for the new head and attention
        "weight_decay": 0.05,
        "warmup_epochs": 1.0,
        "grad_clip": 1.0,
        "label_smoothing": 0.0,
        "amp": "auto",  # auto (bf16 on CUDA) | bf16 | off
        "channels_last": "auto",  # auto (on CUDA) | true | false
        "selection": "last",  # last (fixed length) | inner (epoch chosen on an inner split of the
        # training folds) | validation (on the held-out fold: optimistic)
        "inner_folds": 5,  # inner: 1 of this many slide-grouped parts of the training folds
        "select": "balanced_accuracy",  # balanced_accuracy | roc_auc (the metric inner/validation selects on)
        "max_steps_per_epoch": None,  # cap for quick checks
        "eval_batch_size": 256,
        "compile": False,  # torch.compile the training forward (see BENCHMARKS.md)
        "seed": 0,
    },
    # export.precision: fp32 | fp16 (half the file; float32 input and output, training/export/members.py); fp16_tol:
    # the largest |P(atypical) fp16 - fp32| on real patches an fp16 member may show (docs/training.md, Shipping a
    # foundation model: the container's own output checks hold confidences to 1e-3)
    "export": {"tta": "none", "opset": 17, "parity_tol": 1e-3, "precision": "fp32", "fp16_tol": 1e-3},
    # what a person watching the run sees besides epochs.csv (training/train/tracking.py, training/train/progress.py)
    "log": {
        "tensorboard": "auto",  # auto (where the package is installed) | true | false: event files in fold{k}/
        "images": 32,  # augmented training patches in the one grid per fold (first batch; 0: none)
        "wandb": False,  # Weights & Biases, one run per fold (needs the wandb package)
        "wandb_project": "amf",
        "wandb_name": "",  # "": CONFIG_NAME-RUN_FOLDER-fold{k}; the group is the run folder's name
        "wandb_mode": "auto",  # auto (wandb's own: WANDB_MODE, e.g. offline) | online | offline | disabled
        "progress_s": 60.0,  # seconds between plain progress lines when the output is not a terminal
    },
}

CHOICES = {
    "model.finetune": ("full", "lora", "frozen"),
    "splits.kind": ("kfold", "leave_scanner_out", "leave_tumor_out", "leave_source_out", "all"),
    "imbalance.mode": ("sampler", "loss", "none"),
    "train.amp": ("auto", "bf16", "off"),
    "data.device_augment": ("auto", True, False),
    "model.attention": ("auto", True, False),
    "train.select": ("balanced_accuracy", "roc_auc"),
    "train.selection": ("last", "inner", "validation"),
    "export.tta": TTA_MODES,  # amf.preprocess.TTA_VIEWS
    "export.precision": ("fp32", "fp16"),
    "train.lr_scaling": ("none", "linear"),
    "ema.decay_scaling": ("none", "world"),
    "align.estimator": ("batch_means", "unbiased"),
    "log.tensorboard": ("auto", True, False),
    "log.wandb_mode": ("auto", "online", "offline", "disabled"),
}

# keys whose value is free-form (no nested key check against DEFAULTS): check_kwargs and check_extra apply instead
FREE = {"model.kwargs", "data.extra"}
# model.kwargs values "py:NAME" import NAME (training.train.models.python_object): only from these packages
PY_PACKAGES = ("timm.", "torch.nn.")
# model.kwargs keys that create_backbone sets itself
RESERVED_KWARGS = {"model_name", "pretrained", "num_classes", "pretrained_cfg_overlay", "checkpoint_path"}
EXTRA_KEYS = {"name", "dir", "csv", "images", "slide_prefix"}  # a data.extra entry (training/data.py)
EXTRA_RESERVED = {"official", "synthetic"}  # the sources training/data.py names itself

# every config text: a file, a --set value, a run folder's config.yaml (the shipped configs are 1-3 KB)
MAX_CONFIG_BYTES = 2**20
MAX_EXPANDED = 2**20  # nodes + characters of text, aliases counted each time they are used
MAX_DEPTH = 32  # DEFAULTS nest 3 deep

# defaults that are a word standing for a value of another type: an example of that type
ALSO = {
    "data.mean": [0.0],
    "data.std": [0.0],
    "mixstyle.where": [""],
    "train.channels_last": False,
    "data.device_augment": False,
    "model.attention": False,
    "log.tensorboard": False,
}
# None defaults that stand for a value of one type: an example of it (other None defaults take anything)
NONE_TYPES = {
    "model.weights": "",
    "data.synthetic": "",
    "data.official_labels": "",
    "train.max_steps_per_epoch": 0,
    "ema.horizon_epochs": 0.0,
}
TYPE_NAMES = {
    bool: ("true or false", "true/false values"),
    int: ("an integer", "integers"),
    float: ("a number", "numbers"),
    str: ("text", "texts"),
    list: ("a list", "lists"),
    dict: ("a mapping", "mappings"),
}


def parse(text: str, where: str):
    """A config text -> its value, read by yaml.safe_load within the bounds of the module docstring; anything else
    is one AmfError line naming WHERE."""
    if len(text) > MAX_CONFIG_BYTES:
        raise AmfError(f"{where}: larger than {MAX_CONFIG_BYTES // 2**20} MiB; a config is a few KB")
    try:
        if any(isinstance(token, yaml.TagToken) for token in yaml.scan(text)):
            raise AmfError(f"{where}: YAML tags (!...) are not allowed in a config: write plain values")
        value = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise AmfError(f"{where}: not valid YAML ({one_line(e)})") from None
    except RecursionError:  # PyYAML composes nested collections recursively
        raise AmfError(f"{where}: nested too deeply (at most {MAX_DEPTH} levels)") from None
    except ValueError as e:  # e.g. an integer of more than 4300 digits
        raise AmfError(f"{where}: not valid YAML ({one_line(e)[:200]})") from None
    check_plain(value, where)
    return value


def check_plain(value, where: str) -> None:
    """VALUE holds only plain values, nests at most MAX_DEPTH deep and is at most MAX_EXPANDED in expanded size.
    Walked iteratively with a budget: an alias bomb (or a structure that holds itself) stops at the bound."""
    budget, stack = MAX_EXPANDED, [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise AmfError(f"{where}: nested too deeply (at most {MAX_DEPTH} levels)")
        if isinstance(node, dict):
            for key in node:
                if not isinstance(key, str):
                    raise AmfError(f"{where}: the key {key!r} is not text")
            budget -= 1 + sum(len(k) for k in node)
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            budget -= 1
            stack.extend((v, depth + 1) for v in node)
        elif isinstance(node, str):
            budget -= 1 + len(node)
        elif node is None or isinstance(node, (bool, int)):
            budget -= 1
        elif isinstance(node, float):
            if not math.isfinite(node):
                raise AmfError(f"{where}: {node} is not a finite number")
            budget -= 1
        else:  # a date, binary data, a set: nothing in a config
            raise AmfError(f"{where}: {node!r} ({type(node).__name__}) is not a config value; quote it as text")
        if budget < 0:
            raise AmfError(
                f"{where}: larger than {MAX_EXPANDED // 2**20} MiB once its aliases are expanded; a config is a few KB"
            )


def read(path, what: str = "config"):
    """The config file PATH -> its top-level mapping (an empty file: {}), through parse()."""
    from amf.fileio import read_text

    path = Path(path)
    where = f"{what} {path}"
    value = parse(read_text(path, what, MAX_CONFIG_BYTES), where)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise AmfError(
            f"{where}: the top level must be a mapping of sections (model:, data:, ...), not a {_yaml_kind(value)}"
        )
    return value


def _yaml_kind(value) -> str:
    return "list" if isinstance(value, list) else "text" if isinstance(value, str) else type(value).__name__


def merge(base: dict, update: dict, where: str = "") -> dict:
    """Deep-merge UPDATE into a copy of BASE; a key BASE lacks is an error."""
    out = copy.deepcopy(base)
    for key, value in (update or {}).items():
        path = f"{where}.{key}" if where else key
        if key not in out:
            raise AmfError(f"config: unknown key {path!r}")
        if isinstance(out[key], dict) and path not in FREE:
            if not isinstance(value, dict):
                raise AmfError(f"config: {path!r} must be a mapping")
            out[key] = merge(out[key], value, path)
        else:
            out[key] = copy.deepcopy(value)
    return out


def set_dotted(cfg: dict, assignment: str) -> None:
    """'train.epochs=3' -> cfg['train']['epochs'] = 3 (value parsed as YAML)."""
    if "=" not in assignment:
        raise AmfError(f"override {assignment!r} must look like section.key=value")
    key, raw = assignment.split("=", 1)
    parts = key.strip().split(".")
    node = cfg
    for p in parts[:-1]:
        if not isinstance(node.get(p), dict):
            raise AmfError(f"config: unknown key {key!r}")
        node = node[p]
    if parts[-1] not in node:
        raise AmfError(f"config: unknown key {key!r}")
    value = parse(raw, f"override {key.strip()}")
    dotted = ".".join(parts)
    if isinstance(node[parts[-1]], dict) and isinstance(value, dict) and dotted not in FREE:
        value = merge(node[parts[-1]], value, dotted)  # a section's mapping names only what it changes
    node[parts[-1]] = value


def _kind(example) -> type:
    return bool if isinstance(example, bool) else type(example)


def _fits(value, example) -> bool:
    """VALUE has EXAMPLE's type (bools are not integers; a float takes an integer; list items checked)."""
    kind = _kind(example)
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if kind is list and isinstance(value, list) and example:
        return all(_fits(v, example[0]) for v in value)
    return isinstance(value, kind)


def _describe(example) -> str:
    """'an integer', 'a list of numbers' ...: what EXAMPLE's type is called in an error."""
    name = lambda kind, n: TYPE_NAMES[kind][n] if kind in TYPE_NAMES else kind.__name__  # noqa: E731
    if isinstance(example, list) and example:
        return f"a list of {name(_kind(example[0]), 1)}"
    return name(_kind(example), 0)


def check_types(cfg: dict, defaults: dict = DEFAULTS, where: str = "") -> None:
    """Every value against its default's type (module docstring); one line naming key, value and type."""
    for key, default in defaults.items():
        path = f"{where}.{key}" if where else key
        value = cfg[key]
        if isinstance(default, float) and isinstance(value, str):
            with contextlib.suppress(ValueError):  # YAML reads 1e-4 (no dot) as text
                value = cfg[key] = float(value)
        examples = [default] + ([ALSO[path]] if path in ALSO else [])
        if default is None:
            if value is None or path not in NONE_TYPES:
                continue
            examples = [NONE_TYPES[path]]
        if isinstance(default, dict) and path not in FREE and isinstance(value, dict):
            check_types(value, default, path)
        elif not any(_fits(value, e) for e in examples):
            expected = " or ".join(_describe(e) for e in examples)
            raise AmfError(f"config: {path} = {value!r} is not {expected}" + (" or null" if default is None else ""))


def validate(cfg: dict) -> dict:
    check_types(cfg)
    t = cfg["train"]
    for key in ("epochs", "batch_size", "eval_batch_size"):
        if t[key] < 1:
            raise AmfError(f"config: train.{key} must be >= 1, got {t[key]}")
    if t["max_steps_per_epoch"] is not None and t["max_steps_per_epoch"] < 1:
        raise AmfError(f"config: train.max_steps_per_epoch must be >= 1 or null, got {t['max_steps_per_epoch']}")
    if not t["lr"] > 0:
        raise AmfError(f"config: train.lr must be > 0, got {t['lr']}")
    for dotted, allowed in CHOICES.items():
        section, key = dotted.split(".")
        if cfg[section][key] not in allowed:
            raise AmfError(f"config: {dotted} must be one of {allowed}, got {cfg[section][key]!r}")
    if not 8 <= int(cfg["data"]["input_size"]) <= MAX_SIDE:  # a model never sees more than the container's patch cap
        raise AmfError(f"config: data.input_size must be from 8 to {MAX_SIDE}, got {cfg['data']['input_size']}")
    if cfg["log"]["images"] < 0 or not cfg["log"]["progress_s"] > 0:
        raise AmfError("config: log.images must be >= 0 and log.progress_s > 0")
    horizon = cfg["ema"]["horizon_epochs"]
    if horizon is not None and not horizon > 0:
        raise AmfError(f"config: ema.horizon_epochs must be > 0 or null, got {horizon}")
    if int(cfg["align"]["attention_reduction"]) < 1:
        raise AmfError("config: align.attention_reduction must be >= 1")
    if not cfg["export"]["parity_tol"] > 0 or not cfg["export"]["fp16_tol"] > 0:
        raise AmfError("config: export.parity_tol and export.fp16_tol must be > 0")
    if cfg["splits"]["kind"] == "all" and t["selection"] != "last":
        raise AmfError(
            f"config: splits.kind all holds no figure out, so nothing can choose an epoch: train.selection must be "
            f"last (train.epochs fixed in advance from the cross-validated run), got {t['selection']!r}"
        )
    if cfg["splits"]["kind"] == "kfold" and int(cfg["splits"]["folds"]) < 2:
        raise AmfError("config: splits.folds must be >= 2")
    lora = cfg["model"]["lora"]
    if lora["r"] < 1 or lora["alpha"] <= 0 or not 0 <= lora["dropout"] < 1 or not lora["target_modules"]:
        raise AmfError(f"config: model.lora needs r >= 1, alpha > 0, 0 <= dropout < 1 and target_modules, got {lora}")
    check_kwargs(cfg["model"]["kwargs"])
    check_extra(cfg["data"]["extra"])
    return cfg


def check_kwargs(kwargs: dict) -> None:
    """model.kwargs (extra timm.create_model arguments): names of arguments, plain values; "py:NAME" only from
    PY_PACKAGES."""
    for key, value in kwargs.items():
        if not key.isidentifier() or key in RESERVED_KWARGS:
            raise AmfError(f"config: model.kwargs key {key!r} is not an argument it may set")
        if isinstance(value, str) and value.startswith("py:") and not value[3:].startswith(PY_PACKAGES):
            raise AmfError(
                f"config: model.kwargs.{key} = {value!r}: py: names an object of {' or '.join(PY_PACKAGES)} only"
            )


def check_extra(extra: list) -> None:
    """data.extra: mappings of name and dir (a data folder in either layout), or of name, csv, images and
    optionally slide_prefix (the official columns); all text; names unique plain words."""
    names = set()
    for i, entry in enumerate(extra):
        where = f"config: data.extra[{i}]"
        if not isinstance(entry, dict):
            raise AmfError(f"{where}: each data.extra entry is a mapping (name and dir, or name, csv and images)")
        unknown = set(entry) - EXTRA_KEYS
        if unknown:
            raise AmfError(
                f"{where}: unknown key(s) {', '.join(sorted(unknown))} (known: {', '.join(sorted(EXTRA_KEYS))})"
            )
        in_columns = {"name", "csv", "images"} <= set(entry) and "dir" not in entry
        if not (set(entry) == {"name", "dir"} or in_columns):
            raise AmfError(f"{where}: each data.extra entry needs name and dir, or name, csv and images")
        for key, value in entry.items():
            if not isinstance(value, str) or (key != "slide_prefix" and not value.strip()):
                raise AmfError(f"{where}.{key} = {value!r} is not a text")
        name = entry["name"]
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or name in EXTRA_RESERVED or name in names or name in (".", ".."):
            raise AmfError(
                f"{where}.name = {name!r}: a set needs its own name of letters, digits, '_', '-', '.' "
                f"(not {', '.join(sorted(EXTRA_RESERVED))})"
            )
        names.add(name)


def resolve_path(name) -> Path:
    """A config file path, or a bare name looked up in training/configs/ ('smoke' -> smoke.yaml)."""
    p = Path(name)
    if p.is_file():
        return p
    for cand in (CONFIG_DIR / name, CONFIG_DIR / f"{name}.yaml"):
        if cand.is_file():
            return cand
    raise AmfError(f"config {name} not found (nor in {CONFIG_DIR})")


def load(path, overrides=()) -> dict:
    """Read a YAML config over DEFAULTS, apply 'a.b=value' overrides, validate."""
    path = resolve_path(path)
    cfg = merge(DEFAULTS, read(path))
    cfg["name"] = cfg["name"] or path.stem
    for o in overrides:
        set_dotted(cfg, o)
    return validate(cfg)


def dump(cfg: dict) -> str:
    return yaml.safe_dump(cfg, sort_keys=False)


def leaves(d: dict, prefix: str = "") -> dict:
    """A nested config as {"section.key": value}."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out |= leaves(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


def diff(base: dict, other: dict, ignore=("name",)) -> dict:
    """The keys both configs hold on which OTHER differs from BASE, as --set overrides ({"section.key": value})."""
    a, b = leaves(base), leaves(other)
    return {k: b[k] for k in a if k in b and a[k] != b[k] and k not in ignore}


def as_set(overrides: dict) -> str:
    """OVERRIDES ({"section.key": value}) as training.train's --set KEY=VALUE words (YAML values: true, 0.5, [a,b])."""
    import json

    def value(v):
        if isinstance(v, list):
            return "[" + ",".join(value(x) for x in v) + "]"
        return v if isinstance(v, str) else json.dumps(v)

    return " ".join(f"{k}={value(v)}" for k, v in overrides.items())
