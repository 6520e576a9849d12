"""Capture what C and C++ libraries print straight to file descriptor 2.

ITK's MetaIO reader and onnxruntime's provider loader write their complaints to the process's
stderr themselves, around Python's sys.stderr. The entrypoint promises one line per problem, so
the code that calls them catches that text here and folds the useful part into its own line.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile

from amf import one_line


@contextlib.contextmanager
def captured():
    """with captured() as text: ...  -> text[0] is what fd 2 received inside the block
    (nothing is captured, and text[0] is empty, where no temporary file can be made)."""
    text: list[str] = []
    try:
        tmp = tempfile.TemporaryFile()  # noqa: SIM115 (closed in the finally below; fd 2 points at it meanwhile)
    except OSError:
        text.append("")
        yield text
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        os.dup2(tmp.fileno(), 2)
        try:
            yield text
        finally:
            os.dup2(saved, 2)
            tmp.seek(0)
            text.append(tmp.read().decode("utf-8", errors="replace"))
    finally:
        os.close(saved)
        tmp.close()


def short_line(text: str, limit: int = 300) -> str:
    """Native log text -> one line of at most LIMIT characters: ANSI colour codes gone, then amf.one_line
    (line breaks and runs of spaces squeezed), cut with "..." when longer."""
    import re

    line = one_line(re.sub(r"\x1b\[[0-9;]*m", "", text))
    return line if len(line) <= limit else line[: limit - 3] + "..."
