"""amf.fileio: the one JSON reader and the one atomic writer fail with one AmfError line, never a
traceback, and the writer leaves neither half a file nor a temporary one."""

from __future__ import annotations

import errno
import os

import pytest

from amf import AmfError, fileio


@pytest.mark.parametrize(
    "text,why",
    [
        ("[" * 100_000, "nested too deeply"),
        ('{"a": ' * 50_000, "nested too deeply"),
        ("1" * 10_000, "not valid JSON"),
        ("\xff", "not valid JSON"),
    ],
    ids=["nested lists", "nested objects", "10000-digit number", "not UTF-8"],
)
def test_absurd_json_is_one_line(text, why, tmp_path):
    path = tmp_path / "x.json"
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(AmfError, match=why):
        fileio.read_json(path, "inputs.json")


def test_json_larger_than_the_cap_is_refused_unread(tmp_path, monkeypatch):
    monkeypatch.setattr(fileio, "MAX_JSON_BYTES", 100)
    path = tmp_path / "x.json"
    path.write_text("[" + "1, " * 40 + "1]")  # 123 bytes of valid JSON
    with pytest.raises(AmfError, match=f"manifest {path} is larger than"):
        fileio.read_json(path, "manifest")
    path.write_text("[1, 2]")
    assert fileio.read_json(path, "manifest") == [1, 2]


def test_write_errors_are_one_line_naming_the_path(tmp_path, monkeypatch):
    with pytest.raises(AmfError, match=f"cannot write {tmp_path / 'no' / 'x.json'}: No such file or directory"):
        fileio.write_text_atomic(tmp_path / "no" / "x.json", "{}")
    (tmp_path / "d").mkdir()
    with pytest.raises(AmfError, match=f"cannot write {tmp_path / 'd'}: Is a directory"):
        fileio.write_text_atomic(tmp_path / "d", "{}")
    (tmp_path / "x.json").write_text("old")

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(AmfError, match=f"cannot write {tmp_path / 'x.json'}: No space left on device"):
        fileio.write_text_atomic(tmp_path / "x.json", "new")
    assert (tmp_path / "x.json").read_text() == "old"  # the old file whole, not half a new one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "x.json"]  # no temporary file left


def test_remove_stale_removes_files_and_links(tmp_path):
    (tmp_path / "r.json").write_text("old")
    fileio.remove_stale(tmp_path / "r.json")
    fileio.remove_stale(tmp_path / "r.json")  # nothing there: nothing to do
    (tmp_path / "link.json").symlink_to(tmp_path / "nowhere")
    fileio.remove_stale(tmp_path / "link.json")
    assert list(tmp_path.iterdir()) == []
