"""Backbone creation: local weights file, clear errors for the offline hub and gated models, ONNX contract."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from amf import AmfError
from training import config as config_io
from training.export.members import export_member, parity
from training.train.models import create_backbone, create_classifier, load_for_export, lora_folded_state_dict


@pytest.mark.slow
def test_local_weights_file_is_loaded(tmp_path):
    torch.manual_seed(1)
    src = create_backbone({"backbone": "test_vit", "pretrained": False}, img_size=32)
    path = tmp_path / "weights.pth"
    torch.save(src.state_dict(), path)
    torch.manual_seed(2)
    loaded = create_backbone({"backbone": "test_vit", "pretrained": False, "weights": str(path)}, img_size=32)
    fresh = create_backbone({"backbone": "test_vit", "pretrained": False}, img_size=32)
    a, b, c = src.state_dict(), loaded.state_dict(), fresh.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    with pytest.raises(AmfError, match="no file"):
        create_backbone({"backbone": "test_vit", "pretrained": False, "weights": str(tmp_path / "none.pth")})


def test_local_weights_say_how_many_loaded_or_name_what_does_not_fit(tmp_path, capsys):
    """A hub-style weights file (classifier included) loads with one line and no warnings, also through training's
    config resolution; a file with one renamed tensor is one error line naming it both ways."""
    import warnings

    import timm

    from training import inspect
    from training.train import kfold as train

    state = timm.create_model("test_convnext").state_dict()
    right, renamed = tmp_path / "right.pth", tmp_path / "renamed.pth"
    torch.save(state, right)
    state["stem.0.renamed"] = state.pop("stem.0.weight")
    torch.save(state, renamed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert inspect.main(["models", "smoke", f"model.weights={right}"]) == 0
        cfg = train.resolve_normalisation(config_io.load("smoke", [f"model.weights={right}"]))
        train.create_classifier(cfg, log=print)
    assert [str(w.message) for w in caught] == []
    out = capsys.readouterr().out.splitlines()
    n = len(timm.create_model("test_convnext", num_classes=0).state_dict())
    assert out.count(f"loaded {n} of {n} backbone tensors from {right}") == 2  # inspect models, then training's build
    assert inspect.main(["models", "smoke", f"model.weights={renamed}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: model.weights {renamed} does not fit test_convnext")
    assert "missing from the file (stem.0.weight)" in err[0] and "does not have (stem.0.renamed)" in err[0]


@pytest.mark.slow
def test_unreachable_hub_and_gated_model_messages(monkeypatch):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(AmfError, match="test_vit needs files from the Hugging Face hub.*HF_HUB_OFFLINE.*model.weights"):
        create_backbone({"backbone": "test_vit", "pretrained": True})
    import timm

    class GatedRepoError(Exception):
        pass

    def gated(*a, **k):
        raise GatedRepoError("401 Client Error. Cannot access gated repo for url https://huggingface.co/...")

    monkeypatch.setattr(timm, "create_model", gated)
    with pytest.raises(AmfError, match="MahmoodLab/UNI2-h is gated.*HF_TOKEN"):
        create_backbone({"backbone": "hf-hub:MahmoodLab/UNI2-h", "pretrained": True})


def test_unknown_model_and_bad_kwargs_are_clear():
    with pytest.raises(AmfError, match="unknown timm model"):
        create_backbone({"backbone": "no_such_net", "pretrained": False})
    with pytest.raises(AmfError, match="model.kwargs: cannot import"):
        create_backbone({"backbone": "test_vit", "pretrained": False, "kwargs": {"act_layer": "py:torch.nn.NoSuch"}})
    layer = create_backbone({"backbone": "test_vit", "pretrained": False, "kwargs": {"act_layer": "py:torch.nn.SiLU"}})
    assert isinstance(layer.blocks[0].mlp.act, torch.nn.SiLU)


@pytest.mark.slow
def test_onnx_member_contract(tmp_path):
    import onnx

    cfg = config_io.load("smoke", ["model.backbone=test_vit", "data.input_size=32"])
    model = load_for_export(cfg, lora_folded_state_dict(create_classifier(cfg)))
    path = export_member(model, tmp_path, "m.onnx", 32)
    proto = onnx.load(str(path))
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    (inp,), (out,) = proto.graph.input, proto.graph.output
    assert inp.name == "input" and out.name == "logit"
    assert inp.type.tensor_type.shape.dim[0].dim_param  # dynamic batch
    assert out.type.tensor_type.shape.dim[1].dim_value == 1
    x = np.random.default_rng(0).standard_normal((5, 3, 32, 32)).astype(np.float32)
    assert parity(model, path, {"five": x})["five"] <= 1e-4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # one file, no temporary left over


@pytest.mark.parametrize(
    "attention, align, gated",
    [("auto", True, True), ("auto", False, False), (True, False, True), (False, True, False)],
)
def test_attention_gate_follows_model_attention(attention, align, gated):
    """model.attention decides the gate alone (a control without the alignment loss can keep the recipe's
    architecture); "auto" keeps the old rule, present with align.enabled."""
    from training.train.models import EmbeddingSE

    cfg = config_io.load("smoke", [f"model.attention={str(attention).lower()}", f"align.enabled={str(align).lower()}"])
    assert isinstance(create_classifier(cfg).attention, EmbeddingSE) is gated
