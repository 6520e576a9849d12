"""What a model folder may say of the machine that made it: no absolute path.

The manifest's provenance (training.export) and the card (training.card: card.json, hence README.md) go into the
image and the model tarball, to other machines. Every path they record goes through relocate():
  a run folder (keys RUN_KEYS)         relative to the runs folder: the recipe run's parent, which is the pipeline's
                                       --runs; a run elsewhere as given when relative, else by its name
  a data file or folder (DATA_KEYS)    as given when relative (to the project, where the commands run), else
                                       relative to the project when inside it, else by its name
A reader compares a recorded run with a folder through names_run(). test/test_model_paths.py holds every file an
export and a card write to this.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RUN_KEYS = frozenset({"run", "base_run", "run_a", "run_b", "loso_run", "oof_run", "from_run", "cv_run"})
DATA_KEYS = frozenset({"dir", "official_labels", "weights", "synthetic", "csv", "images"})


def _inside(path: Path, folder: Path) -> str | None:
    """PATH relative to FOLDER (both made absolute), or None when it is not inside it."""
    a, f = Path(os.path.abspath(path)), Path(os.path.abspath(folder))
    return a.relative_to(f).as_posix() if a == f or f in a.parents else None


def portable_run(path, root) -> str:
    """A run folder as a model folder names it: relative to ROOT (the runs folder) when inside it; else as given
    when relative, else by its name."""
    inside = _inside(Path(path), Path(root)) if root is not None else None
    if inside is not None:
        return inside
    return Path(path).as_posix() if not Path(path).is_absolute() else Path(path).name


def portable_data(path) -> str:
    """A data file or folder as a model folder names it: as given when relative; relative to the project when
    inside it; else by its name."""
    if not Path(path).is_absolute():
        return Path(path).as_posix()
    inside = _inside(Path(path), ROOT)
    return inside if inside is not None else Path(path).name


def relocate(obj, root):
    """OBJ (card.json, a manifest's provenance: dicts, lists, values) with every path it records made portable:
    the string values of RUN_KEYS by portable_run (ROOT: the runs folder), of DATA_KEYS (also as the last part of a
    dotted --set key, data.official_labels) by portable_data."""
    if isinstance(obj, list):
        return [relocate(v, root) for v in obj]
    if not isinstance(obj, dict):
        return obj
    out = {}
    for k, v in obj.items():
        leaf = str(k).rsplit(".", 1)[-1]
        if isinstance(v, str) and v and k in RUN_KEYS:
            out[k] = portable_run(v, root)
        elif isinstance(v, str) and v and leaf in DATA_KEYS:
            out[k] = portable_data(v)
        else:
            out[k] = relocate(v, root)
    return out


def names_run(recorded, path, root) -> bool:
    """Whether RECORDED (a run as a model folder names it, or an absolute path from before relocate) is the
    folder PATH, whose runs folder is ROOT."""
    if not recorded or path is None:
        return False
    if Path(recorded).is_absolute():
        return Path(recorded).resolve() == Path(path).resolve()
    return recorded == portable_run(path, root)


def names_runs(recorded: list, paths: list, root) -> bool:
    """Whether RECORDED names the folders PATHS, one each, in any order."""
    left = list(recorded)
    for path in paths:
        match = next((r for r in left if names_run(r, path, root)), None)
        if match is None:
            return False
        left.remove(match)
    return not left


def absolute_paths(text: str) -> list[str]:
    """The absolute filesystem paths TEXT names (two parts or more, e.g. /work/runs/x): what a model folder's file
    must not hold (a path of the machine that made it). Unix paths; a Windows drive path (C:\\...) too."""
    import re

    unix = re.findall(r"(?:^|[\s\"'`(=\[,:])(/[\w.-]+(?:/[\w.-]+)+)", text)
    windows = re.findall(r"\b[A-Za-z]:\\[\w.\\ -]+", text)
    return [*unix, *windows]
