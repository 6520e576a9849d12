"""File I/O: atomic writes (a reader, or the platform, never sees half a file), checked and bounded reads."""

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


def write_atomic(path, write, binary: bool = False) -> None:
    """WRITE(file) into a temporary file beside PATH, fsync, then rename: readers never see half a file.
    The temporary name holds the process id and a random part (tempfile.mkstemp, created exclusively), so two
    writers of one PATH never share it. Any OSError (no such folder, read-only, disk full, PATH a folder) is
    one AmfError line, and no temporary file is left behind."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    except OSError as e:
        raise write_error(path, e) from None
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as e:
        raise write_error(path, e) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text_atomic(path, text: str) -> None:
    """TEXT to PATH atomically (write_atomic)."""
    write_atomic(path, lambda f: f.write(text))


def write_bytes_atomic(path, data: bytes) -> None:
    """DATA to PATH atomically (write_atomic)."""
    write_atomic(path, lambda f: f.write(data), binary=True)


def temporaries(folder, name: str) -> list[Path]:
    """The temporary files write_atomic leaves beside FOLDER/NAME only when its process is killed mid-write."""
    return sorted(Path(folder).glob(f".{name}.*.tmp"))


def remove_stale(path) -> None:
    """Remove PATH, an output left by an earlier run, so that a failed run leaves none (a folder
    there is left for the writer to name)."""
    path = Path(path)
    try:
        if path.is_symlink() or path.is_file():
            path.unlink()
    except OSError as e:
        raise AmfError(f"cannot remove the earlier {path}: {one_line(e.strerror or e)}") from None


def read_capped(path, what: str, limit: int) -> bytes:
    """PATH's bytes; one AmfError line, naming WHAT and PATH, if it is missing or larger than LIMIT bytes (read no
    further than that: a huge or endless file costs nothing). An unreadable file raises its OSError."""
    path = Path(path)
    if not path.is_file():
        raise AmfError(f"no {what}: {path} does not exist")
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        size = f"{limit // 2**20} MiB" if limit >= 2**20 else f"{limit} bytes"
        raise AmfError(f"{what} {path} is larger than {size}")
    return data


def read_text(path, what: str, limit: int) -> str:
    """PATH as UTF-8 text (a byte-order mark dropped); one AmfError line, naming WHAT and PATH, if it is missing,
    unreadable, larger than LIMIT bytes or not UTF-8 (text saved in another encoding, e.g. cp1252)."""
    try:
        data = read_capped(path, what, limit)
    except OSError as e:
        raise AmfError(f"cannot read {what} {path}: {one_line(e.strerror or e)}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise AmfError(
            f"{what} {path} is not UTF-8 text (byte {data[e.start : e.start + 1]!r} at offset {e.start}): "
            "save it as UTF-8"
        ) from None


def read_json(path, what: str):
    """Parse PATH; one AmfError line, naming WHAT and PATH, if it is missing, unreadable, larger than
    MAX_JSON_BYTES or not JSON (absurd content too: nesting too deep to parse, numbers too long)."""
    try:
        return json.loads(read_capped(path, what, MAX_JSON_BYTES).decode("utf-8"))
    except RecursionError:
        raise AmfError(f"{what} {path} is not valid JSON (nested too deeply)") from None
    except MemoryError:
        raise AmfError(f"{what} {path} is not valid JSON (too large to parse)") from None
    except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise AmfError(f"{what} {path} is not valid JSON ({one_line(e)})") from None
