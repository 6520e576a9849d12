"""File I/O: atomic writes (a reader, or the platform, never sees half a file) and checked JSON reads."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from amf import AmfError, one_line


def write_text_atomic(path, text: str) -> None:
    """Write to a temporary file beside PATH, fsync, then rename: readers never see half a file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_json(path, what: str):
    """Parse PATH; one AmfError line, naming WHAT and PATH, if it is missing, unreadable or not JSON."""
    path = Path(path)
    if not path.is_file():
        raise AmfError(f"no {what}: {path} does not exist")
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AmfError(f"{what} {path} is not valid JSON ({one_line(e)})") from None
