"""Test fixture: tiny random ONNX classifiers built with onnx.helper, and model folders of them.

Conv(3->8, 3x3, stride 2) -> ReLU -> global average pool -> Linear(8->1): takes float32 NCHW
(any H, W), returns one logit per patch, as every ensemble member must. No torch needed.
make_toy_ensemble(dir) writes such members and a manifest marked untrained (trained: false).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from amf.manifest import Manifest, Member, save
from amf.preprocess import IMAGENET_MEAN, IMAGENET_STD


def toy_model(path, size: int | None = 128, seed: int = 0, channels: int = 8):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = rng.normal(0, 0.3, (channels, 3, 3, 3)).astype(np.float32)
    b = rng.normal(0, 0.1, channels).astype(np.float32)
    fc = rng.normal(0, 1.0, (1, channels)).astype(np.float32)
    fcb = np.zeros(1, np.float32)
    spatial = [size, size] if size else ["height", "width"]
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["input", "w", "b"], ["c"], strides=[2, 2], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["r"]),
            helper.make_node("GlobalAveragePool", ["r"], ["g"]),
            helper.make_node("Flatten", ["g"], ["f"]),
            helper.make_node("Gemm", ["f", "fc", "fcb"], ["logit"], transB=1),
        ],
        "toy_amf",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3] + spatial)],
        [helper.make_tensor_value_info("logit", TensorProto.FLOAT, ["batch", 1])],
        [numpy_helper.from_array(a, n) for a, n in ((w, "w"), (b, "b"), (fc, "fc"), (fcb, "fcb"))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by onnxruntime 1.22
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return Path(path)


def make_toy_ensemble(
    out_dir, members: int = 2, sizes=(128,), seed: int = 0, threshold: float = 0.5, tta: str = "none"
) -> Path:
    """A placeholder ensemble folder, manifest marked untrained."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    mem = []
    for i in range(members):
        size = sizes[i % len(sizes)]
        toy_model(out_dir / f"toy{i}.onnx", size=size, seed=seed + i)
        mem.append(
            Member(
                file=f"toy{i}.onnx",
                input_size=size,
                mean=list(IMAGENET_MEAN),
                std=list(IMAGENET_STD),
                resize="bilinear",
                backbone="toy-conv",
                fold=i,
            )
        )
    return save(
        Manifest(
            members=mem,
            threshold=threshold,
            tta=tta,
            trained=False,
            provenance={"note": "untrained placeholder made by test/toy_models.py", "seed": seed},
        ),
        out_dir,
    )
