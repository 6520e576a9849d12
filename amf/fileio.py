"""File I/O: atomic writes (a reader, or the platform, never sees half a file) and checked JSON reads."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from amf import AmfError, one_line

MAX_JSON_BYTES = 64 * 2**20  # inputs, manifests, ground truth and results are kilobytes to a few MB


def write_error(path, e: OSError) -> AmfError:
    """An OSError while writing PATH as the one line 'cannot write PATH: reason'."""
    return AmfError(f"cannot write {path}: {one_line(e.strerror or e)}")


def write_text_atomic(path, text: str) -> None:
    """Write TEXT (UTF-8) to a temporary file beside PATH, fsync, then rename: readers never see half a
    file. Any OSError (no such folder, read-only, disk full, PATH a folder) is one AmfError line, and no
    temporary file is left behind."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path, data: bytes) -> None:
    """write_text_atomic for bytes."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise write_error(path, e) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as e:
        raise write_error(path, e) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def remove_stale(path) -> None:
    """Remove PATH, an output left by an earlier run, so that a failed run leaves none (a folder
    there is left for the writer to name)."""
    path = Path(path)
    try:
        if path.is_symlink() or path.is_file():
            path.unlink()
    except OSError as e:
        raise AmfError(f"cannot remove the earlier {path}: {one_line(e.strerror or e)}") from None


def read_json(path, what: str):
    """Parse PATH; one AmfError line, naming WHAT and PATH, if it is missing, unreadable, larger than
    MAX_JSON_BYTES or not JSON (absurd content too: nesting too deep to parse, numbers too long)."""
    path = Path(path)
    if not path.is_file():
        raise AmfError(f"no {what}: {path} does not exist")
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_JSON_BYTES + 1)
        if len(data) > MAX_JSON_BYTES:
            raise AmfError(f"{what} {path} is larger than {MAX_JSON_BYTES // 2**20} MiB")
        return json.loads(data.decode("utf-8"))
    except RecursionError:
        raise AmfError(f"{what} {path} is not valid JSON (nested too deeply)") from None
    except MemoryError:
        raise AmfError(f"{what} {path} is not valid JSON (too large to parse)") from None
    except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise AmfError(f"{what} {path} is not valid JSON ({one_line(e)})") from None
