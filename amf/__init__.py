"""amf: the torch-free core shared by the container and by training.

- preprocess: one rule for turning any patch into the model's float input
- manifest:   the ensemble description (model/ensemble.json), read and written here only
- results:    the platform's result schema (write and validate)
- jobs:       Grand Challenge I/O (inputs.json, stacks as .mha/.tif(f), atomic output)
- ensemble:   onnxruntime sessions, CUDA with CPU fallback
- metrics:    the organisers' Track 2 metrics, shared by training and evaluation
"""

import sys

__version__ = "0.1.0"


class AmfError(Exception):
    """A problem with the input, the model or the output: reported as one line, exit non-zero."""


def one_line(e: BaseException) -> str:
    """An exception's message on one line (the one-line error rule: no tracebacks, no wrapped text)."""
    return " ".join(str(e).split())


def report_error(e: BaseException) -> int:
    """The command-line end of an AmfError: its one line on stderr, and the exit status 2."""
    print(f"error: {one_line(e)}", file=sys.stderr)
    return 2
