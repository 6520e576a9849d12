"""Grand Challenge algorithm-job I/O for Track 2.

/input/inputs.json lists the job's sockets; the set of slugs picks the handler (Grand Challenge's
convention). The one Track 2 interface takes a stack of ROI cut-outs and returns one result list.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from amf import AmfError, native_stderr
from amf.fileio import read_json, write_text_atomic
from amf.preprocess import canonical_patch

INPUT_SLUG = "stacked-histopathology-roi-cropouts"
OUTPUT_SLUG = "multiple-mitotic-figure-classification"
OUTPUT_FILE = f"{OUTPUT_SLUG}.json"
IMAGE_SUFFIXES = (".mha", ".tif", ".tiff")


def read_inputs(input_dir) -> list[dict]:
    """Parse INPUT/inputs.json: a list of socket values, each with interface.slug."""
    path = Path(input_dir) / "inputs.json"
    inputs = read_json(path, "inputs.json")
    if not isinstance(inputs, list) or not all(
            isinstance(v, dict) and isinstance(v.get("interface"), dict)
            and isinstance(v["interface"].get("slug"), str) for v in inputs):
        raise AmfError(f"{path} must be a list of socket values, each with interface.slug")
    return inputs


def interface_key(inputs: list[dict]) -> tuple[str, ...]:
    return tuple(sorted(v["interface"]["slug"] for v in inputs))


def image_name(inputs: list[dict], slug: str = INPUT_SLUG) -> str | None:
    """The user-given name of the stack (the organisers match ground truth on it)."""
    for v in inputs:
        if v["interface"]["slug"] == slug and isinstance(v.get("image"), dict):
            return v["image"].get("name")
    return None


def find_stack(input_dir, slug: str = INPUT_SLUG) -> Path:
    """The one image file under INPUT/images/<slug>/."""
    folder = Path(input_dir) / "images" / slug
    if not folder.is_dir():
        raise AmfError(f"no image folder {folder}")
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    if not images:
        others = f" (found {', '.join(p.name for p in files)})" if files else ""
        raise AmfError(f"no .mha/.tif/.tiff image in {folder}{others}")
    if len(images) > 1:
        raise AmfError(f"expected one image in {folder}, found {len(images)}: "
                       f"{', '.join(p.name for p in images)}")
    return images[0]


def read_stack(path) -> list[np.ndarray]:
    """A stack file (.mha or multi-page .tif/.tiff) -> list of HxWx3 uint8 patches, in stack order.

    SimpleITK reads both: a 3-D image is a stack of 2-D pages (z is the patch index); a 2-D image is
    a stack of one. Each patch goes through amf.preprocess.canonical_patch (the documented rule).
    """
    import SimpleITK as sitk  # imported here so that tools needing only the schema stay light

    path = Path(path)
    try:
        with native_stderr.captured() as printed:  # ITK's MetaIO prints its reasons to fd 2
            img = sitk.ReadImage(str(path))
    except RuntimeError as e:
        raise AmfError(f"cannot read image {path.name}: {_itk_reason(str(e), printed[0])}") from None
    arr = sitk.GetArrayViewFromImage(img)
    dim, comps = img.GetDimension(), img.GetNumberOfComponentsPerPixel()
    if dim == 2:
        arr = arr[None]
    elif dim != 3:
        raise AmfError(f"image {path.name} has {dim} dimensions; expected a 2-D patch or a 3-D stack")
    if comps == 1 and arr.ndim == 3:  # z, y, x gray -> z, y, x, 1
        arr = arr[..., None]
    if arr.shape[0] == 0 or arr.size == 0:
        raise AmfError(f"image {path.name} is an empty stack")
    try:
        return [canonical_patch(np.array(page)) for page in arr]
    except AmfError as e:
        raise AmfError(f"image {path.name}: {e}") from None


def _itk_reason(message: str, printed: str) -> str:
    """The informative part of an ITK exception (its 'ERROR' line, less the object address) plus
    whatever the reader printed on its own, as one line."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    errors = [line for line in lines if "ERROR" in line]
    reason = errors[-1] if errors else (lines[-1] if lines else "unreadable")
    reason = re.sub(r"^(ITK ERROR: \w+\(0x[0-9a-f]+\): |sitk::ERROR: )", "", reason)
    if printed.strip():
        reason += f" ({native_stderr.one_line(printed, 160)})"
    return reason


def write_results(output_dir, results: list[dict]) -> Path:
    """Write OUTPUT/multiple-mitotic-figure-classification.json atomically."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / OUTPUT_FILE
    write_text_atomic(path, json.dumps(results, indent=2) + "\n")
    return path
