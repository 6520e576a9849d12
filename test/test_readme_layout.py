"""The README's Layout section names every source file, and every name it gives exists."""

from __future__ import annotations

import re

from conftest import ROOT


def layout_paths() -> set[str]:
    text = (ROOT / "README.md").read_text()
    block = text.split("## Layout", 1)[1].split("```", 2)[1]
    paths, parents = set(), {}
    for line in block.splitlines():
        if not line.strip():
            continue
        depth = (len(line) - len(line.lstrip(" "))) // 2
        name = line.split()[0]
        path = f"{parents[depth - 1]}/{name.rstrip('/')}" if depth else name.rstrip("/")
        parents[depth] = path
        paths.add(path + ("/" if name.endswith("/") else ""))
    return paths


def source_files() -> set[str]:
    """Python files of the runtime, training, evaluation and benchmarks, and test/'s helpers (not its tests)."""
    files = {
        p.relative_to(ROOT).as_posix()
        for d in ("amf", "training", "evaluation", "bench")
        for p in (ROOT / d).rglob("*.py")
    }
    files |= {
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "test").glob("*.py")
        if not p.name.startswith(("test_", "conftest"))
    }
    return {f for f in files if not f.endswith("__init__.py") and "/.cache/" not in f} | {"inference.py"}


def test_every_source_file_is_in_the_layout():
    listed = layout_paths()
    missing = sorted(source_files() - listed)
    assert not missing, f"not in the README's Layout: {missing}"


def test_every_name_in_the_layout_exists():
    absent = sorted(p for p in layout_paths() if not (ROOT / p.rstrip("/")).exists())
    assert not absent, f"the README's Layout names what the tree lacks: {absent}"


def test_the_layout_parser_reads_nesting():
    listed = layout_paths()
    assert {"amf/", "amf/jobs.py", "evaluation/", "evaluation/score.py", ".ci/run"} <= listed
    assert not any(re.search(r"\s", p) for p in listed)
