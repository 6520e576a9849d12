"""The training device, chosen once and said before anything trains: never a silent fall-back to the CPU.

  --device auto   CUDA when torch sees a GPU, else the CPU; one line says which and why
  --device cuda   a GPU, or one error naming what torch sees (its version and CUDA build, the GPUs it counts, the
                  NVIDIA driver loaded, torch's own complaint) and what to do
  --device cpu    the CPU
The development environment's torch (requirements-dev.txt, from PyPI) is built for CUDA 13.0, which needs an NVIDIA
driver >= 580; with an older driver torch sees no GPU. docs/training.md, "The training environment" says how to
install a torch build for an older driver.
Look:  python -m training.inspect device [auto|cuda|cpu]   (the device training would use, or the error)
"""

from __future__ import annotations

import warnings
from pathlib import Path

from amf import AmfError, one_line

# the oldest Linux driver each CUDA major version runs on (NVIDIA's CUDA compatibility tables; minor-version
# compatibility within a major version)
MIN_DRIVER = {"11": "450.80.02", "12": "525.60.13", "13": "580"}
DRIVER_FILE = Path("/proc/driver/nvidia/version")  # present when the NVIDIA kernel driver is loaded


def driver() -> str:
    """The loaded NVIDIA driver, in words."""
    try:
        first = DRIVER_FILE.read_text().splitlines()[0]
    except (OSError, IndexError):
        return f"no NVIDIA driver loaded (no {DRIVER_FILE})"
    version = next((w for w in first.split() if w.count(".") >= 1 and w.replace(".", "").isdigit()), None)
    return f"NVIDIA driver {version}" if version else f"NVIDIA driver: {one_line(first)[:80]}"


def torch_sees() -> tuple[int, str]:
    """(GPUs torch counts, what torch sees in words: its build, the GPU count, the driver, and the warning torch
    gives when CUDA does not initialise, e.g. a driver too old for its build)."""
    import torch

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    build = f"torch.version.cuda {torch.version.cuda}" if torch.version.cuda else "torch.version.cuda None: a CPU build"
    said = [one_line(w.message) for w in caught if "cuda" in str(w.message).lower()]
    text = f"torch {torch.__version__} ({build}) sees {count} GPU(s); "
    text += driver() + (f"; torch says: {said[0]}" if said else "")
    return count, text


def advice() -> str:
    """What to do when the GPU that was asked for is not seen."""
    import torch

    major = (torch.version.cuda or "").split(".")[0]
    where = 'docs/training.md, "The training environment"'
    if not major:
        return f"install a CUDA build of torch ({where}), or train with --device cpu"
    return (
        f"a CUDA {torch.version.cuda} build needs an NVIDIA driver >= {MIN_DRIVER.get(major, 'that version')}: update "
        f"the driver (nvidia-smi shows it), or install the torch build for the driver you have ({where}), or train "
        "with --device cpu"
    )


def choose(asked: str = "auto", local_rank: int = 0):
    """(torch.device, why): the device ASKED for (auto, cuda, cpu); LOCAL_RANK picks the GPU of a torchrun process.
    A GPU asked for and not there is one AmfError naming what torch sees."""
    import torch

    if asked == "cpu":
        return torch.device("cpu"), "--device cpu"
    count, sees = torch_sees()
    if count > local_rank:
        name = torch.cuda.get_device_name(local_rank)
        return torch.device(f"cuda:{local_rank}"), f"{name}; {sees}" + ("" if asked == "cuda" else " (--device auto)")
    if count:  # a GPU for some processes only: torchrun started more of them than there are GPUs
        raise AmfError(f"--device {asked}: no GPU {local_rank} for torchrun's LOCAL_RANK {local_rank}, {sees}")
    if asked == "cuda":
        raise AmfError(f"--device cuda needs a GPU, and {sees}: {advice()}")
    return torch.device("cpu"), f"{sees}: training on the CPU (--device auto; --device cuda stops here instead)"
