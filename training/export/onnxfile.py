"""ONNX files as the export writes them: fp16 conversion, the standard's node order, saving past protobuf's 2 GB.
Torch-free: the export (training/export/members.py) and the benchmarks (bench/single_graph.py, bench/gpu_check.py)
use the same functions."""

from __future__ import annotations

from pathlib import Path

from amf import AmfError

PROTOBUF_LIMIT = 1_800_000_000  # bytes of weights above which a file's weights go to FILE.data beside it


def to_fp16(model):
    """MODEL (an fp32 ONNX file's path, or a ModelProto) -> an fp16 ModelProto: onnxruntime's float16 converter,
    weights and compute in float16, the float32 input and output kept (keep_io_types: a Cast at each end), its nodes
    in topological order. Given a path, the converter infers shapes from the file, which works past protobuf's 2 GB."""
    import warnings

    from onnxruntime.transformers.float16 import convert_float_to_float16

    with warnings.catch_warnings():  # its notes on values clamped to float16's range are for the parity check to judge
        warnings.simplefilter("ignore")
        proto = convert_float_to_float16(str(model) if isinstance(model, (str, Path)) else model, keep_io_types=True)
    return topologically_sorted(proto)


def topologically_sorted(proto):
    """PROTO with its graph's nodes in an order where each comes after the nodes whose outputs it reads, as the ONNX
    standard asks: the float16 converter appends the input's Cast at the end of the list, which onnxruntime sorts out
    but onnx's checker and shape inference (the preflight's memory estimate) do not."""
    graph = proto.graph
    ready = {"", *(i.name for i in graph.input), *(t.name for t in graph.initializer)}
    pending, ordered = list(graph.node), []
    while pending:
        now = [all(i in ready for i in n.input) for n in pending]
        if not any(now):
            raise AmfError(f"the fp16 graph has a cycle or an input nothing makes: {list(pending[0].input)}")
        ordered += [n for n, go in zip(pending, now) if go]
        ready.update(o for n, go in zip(pending, now) if go for o in n.output)
        pending = [n for n, go in zip(pending, now) if not go]
    ordered = [type(n).FromString(n.SerializeToString()) for n in ordered]  # copies: the list is cleared next
    del graph.node[:]
    graph.node.extend(ordered)
    return proto


def save_onnx(proto, path: Path) -> None:
    """PATH from PROTO, its weights inside (over PROTOBUF_LIMIT: in one PATH.data beside it)."""
    import onnx

    weights = sum(len(t.raw_data) for t in proto.graph.initializer)
    if weights > PROTOBUF_LIMIT:
        onnx.save(
            proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=f"{path.name}.data"
        )
    else:
        onnx.save(proto, str(path))
