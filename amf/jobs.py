"""Grand Challenge algorithm-job I/O for Track 2.

/input/inputs.json lists the job's sockets; the set of slugs picks the handler (Grand Challenge's
convention). The one Track 2 interface takes a stack of ROI cut-outs and returns one result list.
Readers (read_inputs, find_stack, read_stack) and the result writer serve the container; the job
writer (write_job, write_stack) makes such an /input folder, for offline evaluation
(evaluation.pack), the project's sample job (test/make_sample_input.py), tests and benchmarks.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from amf import AmfError, native_stderr
from amf.fileio import read_json, remove_stale, write_error, write_text_atomic
from amf.preprocess import Stack

INPUT_SLUG = "stacked-histopathology-roi-cropouts"
OUTPUT_SLUG = "multiple-mitotic-figure-classification"
OUTPUT_FILE = f"{OUTPUT_SLUG}.json"
IMAGE_IO = {".mha": "MetaImageIO", ".tif": "TIFFImageIO", ".tiff": "TIFFImageIO"}  # suffix, any case
IMAGE_SUFFIXES = tuple(IMAGE_IO)
# Caps on one stack, checked on the header before anything is decoded (the platform sends up to 16
# patches of 128x128 RGB, 0.8 MB): beyond them a hostile or broken file would exhaust memory.
MAX_PATCHES = 10_000
MAX_SIDE = 1024  # pixels, each side of a patch
MAX_BYTES = 2**30  # decoded pixel data


def read_inputs(input_dir) -> list[dict]:
    """Parse INPUT/inputs.json: a list of socket values, each with interface.slug."""
    path = Path(input_dir) / "inputs.json"
    inputs = read_json(path, "inputs.json")
    if not isinstance(inputs, list) or not all(
        isinstance(v, dict) and isinstance(v.get("interface"), dict) and isinstance(v["interface"].get("slug"), str)
        for v in inputs
    ):
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
        raise AmfError(f"expected one image in {folder}, found {len(images)}: {', '.join(p.name for p in images)}")
    return images[0]


def read_stack(path) -> Stack:
    """A stack file (.mha or multi-page .tif/.tiff) -> its patches, in stack order, as a Stack (a
    sequence of HxWx3 uint8 patches made one at a time from a view of the decoded pixels by
    amf.preprocess's rule; nothing is copied whole).

    SimpleITK reads both: a 3-D image is a stack of 2-D pages (z is the patch index); a 2-D image is
    a stack of one. The header is read first and a stack beyond the caps (MAX_PATCHES, MAX_SIDE,
    MAX_BYTES) is refused before a byte is decoded. Whatever ITK prints while it reads (e.g.
    'Uncompress failed' for a corrupt payload, after which it returns zeros and raises nothing) is an
    error too.
    """
    import SimpleITK as sitk  # imported here so that tools needing only the schema stay light

    path = Path(path)
    if path.suffix.lower() not in IMAGE_IO:
        raise AmfError(f"cannot read image {path.name}: not a .mha/.tif/.tiff file")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.SetImageIO(IMAGE_IO[path.suffix.lower()])  # by suffix: ITK itself knows no "STACK.MHA"
    failure = None
    with native_stderr.captured() as printed:  # ITK's readers print their reasons to fd 2
        try:
            reader.ReadImageInformation()
            check_header(path.name, reader)
            img = reader.Execute()
        except RuntimeError as e:
            failure = str(e)
    if failure is not None:
        raise AmfError(f"cannot read image {path.name}: {_itk_reason(failure, printed[0])}")
    if printed[0].strip():
        raise AmfError(f"cannot read image {path.name}: {native_stderr.short_line(printed[0], 200)}")
    arr = sitk.GetArrayViewFromImage(img)  # a view: no copy of the pixels
    if img.GetDimension() == 2:
        arr = arr[None]
    if img.GetNumberOfComponentsPerPixel() == 1:  # z, y, x gray -> z, y, x, 1
        arr = arr[..., None]
    try:
        return Stack(arr, owner=img)
    except AmfError as e:
        raise AmfError(f"image {path.name}: {e}") from None


def check_header(name: str, reader) -> None:
    """Refuse, from the header alone, what is not a stack or is beyond the caps."""
    import SimpleITK as sitk

    dim, size, comps = reader.GetDimension(), reader.GetSize(), reader.GetNumberOfComponents()
    if dim not in (2, 3):
        raise AmfError(f"image {name} has {dim} dimensions; expected a 2-D patch or a 3-D stack")
    width, height, n = size[0], size[1], size[2] if dim == 3 else 1
    if 0 in (width, height, n):
        raise AmfError(f"image {name} is an empty stack")
    if n > MAX_PATCHES:
        raise AmfError(f"image {name} holds {n} patches; at most {MAX_PATCHES} are read")
    if max(width, height) > MAX_SIDE:
        raise AmfError(f"image {name} has {width}x{height} pixel patches; a patch side is at most {MAX_SIDE}")
    pixel = sitk.Image([1, 1], reader.GetPixelID(), comps)  # one pixel: its byte size
    nbytes = width * height * n * sitk.GetArrayViewFromImage(pixel).nbytes
    if nbytes > MAX_BYTES:
        raise AmfError(
            f"image {name} decodes to {nbytes / 2**30:.1f} GiB of pixels; at most {MAX_BYTES / 2**30:.0f} GiB are read"
        )


def _itk_reason(message: str, printed: str) -> str:
    """The informative part of an ITK exception (its 'ERROR' line, less the object address) plus
    whatever the reader printed on its own, as one line."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    errors = [line for line in lines if "ERROR" in line]
    reason = errors[-1] if errors else (lines[-1] if lines else "unreadable")
    reason = re.sub(r"^(ITK ERROR: \w+\(0x[0-9a-f]+\): |sitk::ERROR: )", "", reason)
    if printed.strip():
        reason += f" ({native_stderr.short_line(printed, 160)})"
    return reason


def write_stack(path, patches) -> None:
    """One stack file as the platform hands it over: a deflated multi-page RGB TIFF (like the
    organisers' sample) or a compressed 3-D vector .mha (z = patch index)."""
    path = Path(path)
    if path.suffix in (".tif", ".tiff"):
        from PIL import Image

        pages = [Image.fromarray(p) for p in patches]
        pages[0].save(path, save_all=True, append_images=pages[1:], compression="tiff_adobe_deflate")
    elif path.suffix == ".mha":
        import SimpleITK as sitk

        sitk.WriteImage(sitk.GetImageFromArray(np.stack(patches), isVector=True), str(path), True)
    else:
        raise ValueError(f"unknown stack format {path.suffix}")


def write_job(input_dir, patches, name: str) -> Path:
    """A job's /input: inputs.json naming the stack NAME, and the stack (HxWx3 uint8 PATCHES) under
    images/<slug>/NAME; returns the stack's path. The reverse of read_inputs + find_stack + read_stack."""
    input_dir = Path(input_dir)
    folder = input_dir / "images" / INPUT_SLUG
    folder.mkdir(parents=True, exist_ok=True)
    write_stack(folder / name, list(patches))
    inputs = [
        {
            "file": None,
            "image": {"name": name},
            "value": None,
            "interface": {
                "slug": INPUT_SLUG,
                "kind": "Image",
                "super_kind": "Image",
                "relative_path": f"images/{INPUT_SLUG}",
                "example_value": None,
            },
        }
    ]
    (input_dir / "inputs.json").write_text(json.dumps(inputs, indent=4) + "\n")
    return folder / name


def result_path(output_dir) -> Path:
    return Path(output_dir) / OUTPUT_FILE


def remove_result(output_dir) -> None:
    """Remove a result file left by an earlier run: a run that fails leaves no result at all."""
    remove_stale(result_path(output_dir))


def write_results(output_dir, results: list[dict]) -> Path:
    """Write OUTPUT/multiple-mitotic-figure-classification.json atomically (making OUTPUT if
    needed); any failure is the one line 'cannot write PATH: reason'."""
    path = result_path(output_dir)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise AmfError(f"cannot write {path}: {path.parent} is a file, not a folder") from None
    except OSError as e:
        raise write_error(path, e) from None
    write_text_atomic(path, json.dumps(results, indent=2) + "\n")
    return path
