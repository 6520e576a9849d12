"""The README's Layout section names every source file, and every name it gives exists."""

from __future__ import annotations

import re

import pytest
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


def named(text: str) -> tuple[set[str], set[str]]:
    """The modules TEXT runs (`python -m X`, `-m X`) or names in backticks (`training.x`), and the source paths it
    names (`training/x.py`, amf/..., bench/..., evaluation/...)."""
    modules = set(re.findall(r"(?:python |torchrun .*?)-m ([a-z_][\w.]*)", text))
    modules |= set(re.findall(r"`((?:training|amf|bench|evaluation)\.[a-z_][\w.]*)[`:\s(]", text))
    paths = set(re.findall(r"\b((?:training|amf|bench|evaluation|test)/[\w/]+\.(?:py|md|yaml))\b", text))
    return modules, paths


def resolvable(module: str) -> bool:
    """MODULE, or MODULE less its last part (a function or constant of it), is a module of the project or Python."""
    import importlib.util

    for name in (module, module.rpartition(".")[0]):
        try:
            if name and importlib.util.find_spec(name) is not None:
                return True
        except ModuleNotFoundError:
            pass
    return False


@pytest.mark.parametrize("doc", ["README.md", "BENCHMARKS.md", "model/README.md"])
def test_every_command_and_source_path_a_document_names_exists(doc):
    """A module moved or renamed leaves no stale command behind: every `python -m` command, backticked module and
    source path of the README, the benchmarks and the shipped model card exists (the card must re-render byte for
    byte, so its names stay valid)."""
    modules, paths = named((ROOT / doc).read_text())
    missing = sorted(m for m in modules if m not in {"pytest", "venv", "pip"} and not resolvable(m))
    missing += sorted(p for p in paths if not (ROOT / p).exists())
    assert not missing, f"{doc} names what the tree lacks: {missing}"
