"""The documents a team reads: the front page (README.md) and the reference in docs/.

docs/layout.md names every source file, and every name it gives exists; every command and source path a document
names exists; the front page stays a front page (at most 150 lines, its contents' links resolve) and its
own-submission commands run as written, in order, on a fresh machine (the environment built and activated before
the first python line; every module, config, option, make target and script they name is there); every
`docs/X.md, "Heading"` the code points to is a heading there."""

from __future__ import annotations

import re

import pytest
from conftest import ROOT

DOCS = ["README.md", *sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md"))]


def layout_paths() -> set[str]:
    text = (ROOT / "docs" / "layout.md").read_text()
    block = text.split("# Layout", 1)[1].split("```", 2)[1]
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
    assert not missing, f"not in docs/layout.md: {missing}"


def test_every_name_in_the_layout_exists():
    absent = sorted(p for p in layout_paths() if not (ROOT / p.rstrip("/")).exists())
    assert not absent, f"docs/layout.md names what the tree lacks: {absent}"


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


@pytest.mark.parametrize("doc", [*DOCS, "BENCHMARKS.md", "model/README.md"])
def test_every_command_and_source_path_a_document_names_exists(doc):
    """A module moved or renamed leaves no stale command behind: every `python -m` command, backticked module and
    source path of the front page, the reference, the benchmarks and the shipped model card exists (the card must
    re-render byte for byte, so its names stay valid)."""
    modules, paths = named((ROOT / doc).read_text())
    missing = sorted(m for m in modules if m not in {"pytest", "venv", "pip"} and not resolvable(m))
    missing += sorted(p for p in paths if not (ROOT / p).exists())
    assert not missing, f"{doc} names what the tree lacks: {missing}"


def headings(doc: str) -> dict[str, str]:
    """DOC's headings by their GitHub anchor (lower case, punctuation dropped, spaces to hyphens)."""
    out = {}
    for line in (ROOT / doc).read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip()
            out[re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")] = title
    return out


@pytest.mark.parametrize("doc", DOCS)
def test_every_link_of_the_documents_resolves(doc):
    """Relative links name files that exist, and their #anchors headings there."""
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", (ROOT / doc).read_text()):
        if target.startswith(("http://", "https://")):
            continue
        path, _, anchor = target.partition("#")
        file = (ROOT / doc).parent / path if path else ROOT / doc
        if not file.exists() or (anchor and anchor not in headings(file.relative_to(ROOT).as_posix())):
            broken.append(target)
    assert not broken, f"{doc}: {broken}"


def test_the_front_page_is_a_front_page():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 150
    contents = text.split("## Contents", 1)[1].split("\n## ", 1)[0]
    assert {"two-commands-fresh-machine-python-310", "your-own-submission", "reference"} <= set(
        re.findall(r"\]\(#([\w-]+)\)", contents)
    )
    assert all(f"docs/{d}.md" in contents for d in ("container", "training", "evaluation", "layout"))
    two = text.split("## Two commands", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    assert [line.split()[:2] for line in two.strip().splitlines()] == [["make", "demo"], ["make", "test"]]


def commands(doc: str, section: str | None = None) -> list[str]:
    """The command lines of DOC's bash blocks (of SECTION only, when given), comments dropped, continuations
    joined."""
    text = (ROOT / doc).read_text()
    if section:
        text = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #", 1)[0].split(" # ", 1)[0].strip()
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


def check_runs_as_written(lines: list[str]) -> list[str]:
    """What would stop LINES, run in order in the project's root on a fresh machine: python before the environment
    is built and activated, a module, config, option, make target or script that is not there."""
    import shlex

    from training import config
    from training.pipeline import parser, plan_of

    faults, active, targets = [], False, set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))
    for line in lines:
        for part in (p.strip() for p in line.split("&&")):
            words = shlex.split(part.replace("$DATA", "DATA"))
            words = [w for w in words if not re.fullmatch(r"[A-Z_]+=\S*", w)]  # VAR=value before a command
            if not words:
                continue
            if words[:2] == [".", ".venv/bin/activate"] or words[:1] == ["source"]:
                active = "make dev" in line or active
                continue
            if words[0] == "python":
                if not active:
                    faults.append(f"{part}: python before .venv is built and activated")
                if words[1] == "-m" and not resolvable(words[2]):
                    faults.append(f"{part}: no module {words[2]}")
                if words[2:3] == ["training.pipeline"]:
                    try:
                        plan_of(parser().parse_args(words[3:]))
                    except SystemExit:
                        faults.append(f"{part}: the pipeline refuses its arguments")
                if words[2:4] == ["training.inspect", "config"]:
                    config.load(words[4])
            elif words[0] == "make" and not set(words[1:]) <= targets:
                faults.append(f"{part}: no make target {words[1:]}")
            elif words[0].startswith("./") and not (ROOT / words[0]).is_file():
                faults.append(f"{part}: no script {words[0]}")
    return faults


def test_the_own_submission_commands_run_as_written_in_order():
    lines = commands("README.md", "Your own submission")
    assert lines[0].startswith("DATA=") and lines[1] == "make dev && . .venv/bin/activate"
    assert any("training.pipeline" in line and "--model-out model" in line for line in lines)
    assert any(line.endswith("make test") for line in lines)
    assert not check_runs_as_written(lines)
    # the check sees a python line before the environment, and an option the pipeline does not have
    assert check_runs_as_written(["python -m training.inspect data DATA"])
    assert check_runs_as_written(["make dev && . .venv/bin/activate", "python -m training.pipeline cpu_small --dta D"])


def test_the_cpu_walkthrough_runs_as_written_in_order():
    lines = commands("docs/cpu-walkthrough.md")
    assert sum("training.pipeline cpu_small" in line for line in lines) == 2
    assert not check_runs_as_written(lines)


def test_every_document_heading_the_code_points_to_is_there():
    """`docs/X.md, "Heading"` in the code (an error message, a docstring) names a heading of that document."""
    files = [p for d in ("amf", "training", "evaluation", "bench") for p in (ROOT / d).rglob("*.py")]
    files += [ROOT / "inference.py", *ROOT.glob("*.sh")]
    pointers = {
        (doc, title)
        for f in files
        for doc, title in re.findall(r"((?:docs/[\w-]+|README)\.md), \\?\"([^\"]+)\\?\"", f.read_text())
    }
    assert ("docs/training.md", "The training environment") in pointers  # the device error's
    missing = [(d, t) for d, t in pointers if t not in headings(d).values()]
    assert not missing, missing
