"""amf: the container's runtime, exactly: every module here is imported by inference.py and needs only
requirements.txt (numpy, pillow, SimpleITK, onnxruntime). Training imports it too (the same preprocessing,
manifest and result rules); what only training or evaluation needs lives in training/.

- preprocess: one rule for turning any patch into the model's float input
- manifest:   the ensemble description (model/ensemble.json), read and written here only
- results:    the platform's result schema (write and validate)
- jobs:       Grand Challenge I/O (inputs.json, stacks as .mha/.tif(f), atomic output)
- ensemble:   onnxruntime sessions, CUDA with CPU fallback
- cli:        the one-line error rule for command lines
- fileio:     atomic writes, the one checked JSON reader, bounded UTF-8 text reads
- native_stderr: what ITK and onnxruntime print on fd 2, folded into one line
"""

import sys

__version__ = "0.1.0"


class AmfError(Exception):
    """A problem with the input, the model or the output: reported as one line, exit non-zero."""


def one_line(e: BaseException | str) -> str:
    """An exception's message (or any text) on one line, whitespace squeezed (the one-line error rule: no
    tracebacks, no wrapped text)."""
    return " ".join(str(e).split())


def report_error(e: BaseException) -> int:
    """The command-line end of an AmfError: its one line on stderr, and the exit status 2."""
    print(f"error: {one_line(e)}", file=sys.stderr)
    return 2
