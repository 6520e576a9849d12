"""The one rule for every command that writes into a folder it did not create (a model folder: training.pipeline's
--model-out, training.export's --out, training.card's --model, training.export.install's target; evaluation's pack
OUT, score --out and preflight --out): it writes only where a file is the toolkit's own or absent, and removes only
its own.

  python3 -m training.ownership MODEL_DIR   (do_save.sh; any python3: this module needs the standard library only)
      exit 2 and one line when MODEL_DIR holds a file its manifest and card do not name (it would ship)

A file is the toolkit's own when a record of the folder's kind (Kind) names it:
  model folder   ensemble.json (the manifest, schema amf-ensemble): itself, each member's file and its .data,
                 expected_output.json, training_fingerprints.bin; card.json (training.card's, with "runs" and
                 "ensemble"): itself, README.md, oof.csv and every predictions/ file it lists
  report folder  metrics.json (evaluation score's, with "aggregates"): itself and the files it lists
  preflight      preflight.json (evaluation preflight's, schema amf-preflight): itself and the files it lists
  pack folder    no record: nothing in it is the toolkit's
A name that leads outside the folder (absolute, a '..' part, or through a link) is never its own: nothing outside the
folder is written or removed.
claim() refuses, in one AmfError line naming the folder and the first few files:
  - a file the command would write that exists and is not the toolkit's: never written over, whatever the flag;
  - a folder that holds anything and no record of the kind (not the toolkit's: a folder of the user's own, a data
    folder, a run folder, the project root), unless --beside: the command then writes beside those files.
install() puts a scratch folder's files in place, replacing the records it replaces whole: the old files they name
and the new content lacks are removed; a file no record names stays, whatever it is called.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from amf import AmfError, report_error
from amf.fileio import read_json

MANIFEST = "ensemble.json"  # amf.manifest.MANIFEST_NAME (test_ownership holds them equal; amf.manifest needs numpy)
EXPECTED_OUTPUT = "expected_output.json"  # the container's result on the sample job (training.export writes it)
FINGERPRINTS = "training_fingerprints.bin"  # the training figures' fingerprints (training/export/fingerprint.py)
CARD_JSON, OOF_CSV, README = "card.json", "oof.csv", "README.md"  # the model card's files (training.card)
PREDICTIONS = "predictions"  # the card's folder of every other run's out-of-fold predictions it reports
METRICS = "metrics.json"  # evaluation score's result, naming the report's other files ("files")
PREFLIGHT_JSON = "preflight.json"  # evaluation preflight's record, naming its other files ("files")
SHOWN = 5  # files named in a refusal
BESIDE_HELP = "write beside the files of a folder that is not the toolkit's (never over them)"


def _strings(values) -> list[str]:
    return [v for v in values if isinstance(v, str)] if isinstance(values, (list, dict)) else []


def manifest_names(d) -> list[str] | None:
    if not isinstance(d, dict) or d.get("schema") != "amf-ensemble":
        return None
    entries = [e for e in [*(d.get("members") or []), *(d.get("variants") or [])] if isinstance(e, dict)]
    files = _strings([e.get("file") for e in entries])
    return [MANIFEST, EXPECTED_OUTPUT, FINGERPRINTS, *files, *(f"{f}.data" for f in files)]


def card_names(d) -> list[str] | None:
    if not isinstance(d, dict) or not {"runs", "ensemble"} <= set(d):  # every layout of training.card's has both
        return None
    return [CARD_JSON, README, OOF_CSV, *_strings(d.get("predictions") or {})]


def report_names(d) -> list[str] | None:
    if not isinstance(d, dict) or "aggregates" not in d:
        return None
    return [METRICS, *_strings(d.get("files") or [])]


def preflight_names(d) -> list[str] | None:
    if not isinstance(d, dict) or d.get("schema") != "amf-preflight":
        return None
    return [PREFLIGHT_JSON, *_strings(d.get("files") or [])]


@dataclass(frozen=True)
class Kind:
    """A kind of folder the toolkit writes: its records (file name -> the names it makes the toolkit's, None when
    the file is not such a record) and the files an install moves last, in order (the records and what describes
    the content: a reader never finds them naming files not yet there)."""

    what: str
    records: dict = field(default_factory=dict)
    last: tuple = ()


MODEL = Kind(
    "model folder", {MANIFEST: manifest_names, CARD_JSON: card_names}, (MANIFEST, EXPECTED_OUTPUT, CARD_JSON, README)
)
REPORT = Kind("report folder", {METRICS: report_names}, (METRICS,))
PREFLIGHT = Kind("preflight folder", {PREFLIGHT_JSON: preflight_names}, (PREFLIGHT_JSON,))
PACK = Kind("pack folder")


def inside(folder: Path, name: str) -> bool:
    """NAME is a path inside FOLDER (relative, no '..', not leading out through a link)."""
    if not name or PurePosixPath(name).is_absolute() or ".." in PurePosixPath(name).parts or "\\" in name:
        return False
    return (folder / name).resolve().is_relative_to(folder.resolve())


def named(folder, kind: Kind) -> dict[str, set[str]]:
    """Each record of KIND in FOLDER -> the names it makes the toolkit's, those inside FOLDER (a file of a record's
    name that is no such record, or a link, counts as none)."""
    folder, out = Path(folder), {}
    for record, names_of in kind.records.items():
        path = folder / record
        try:
            if path.is_symlink() or not path.is_file():
                continue
            names = names_of(read_json(path, record))
        except AmfError:
            continue
        if names is not None:
            out[record] = {n for n in names if inside(folder, n)}
    return out


def owned(folder, kind: Kind) -> set[str]:
    return set().union(*named(folder, kind).values())


def is_temporary(name: str) -> bool:
    """A scratch folder or temporary file of the toolkit (scratch(), amf.fileio.write_atomic), left only by a
    killed process: never the user's, never shipped by an install."""
    return name.startswith(".") and name.endswith(".tmp")


def entries(folder: Path) -> list[str]:
    """FOLDER's entries but the toolkit's temporaries, sorted, a folder as 'name/'."""
    return sorted(
        p.name + ("/" if p.is_dir() and not p.is_symlink() else "")
        for p in folder.iterdir()
        if not is_temporary(p.name)
    )


def files_under(folder, temporaries: bool = False) -> list[str]:
    """Every file and link under FOLDER (links not followed), as relative POSIX names, sorted; the toolkit's
    temporaries only with TEMPORARIES."""
    folder, out = Path(folder), []
    for root, dirs, files in os.walk(folder):
        links = [d for d in dirs if Path(root, d).is_symlink()]
        dirs[:] = [d for d in dirs if d not in links and (temporaries or not is_temporary(d))]
        rel = Path(root).relative_to(folder)
        out += [(rel / f).as_posix() for f in [*files, *links] if temporaries or not is_temporary(f)]
    return sorted(out)


def listing(names, shown: int = SHOWN) -> str:
    names = list(names)
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def in_the_way(folder: Path, names, mine: set[str]) -> list[str]:
    """The NAMES that exist in FOLDER and are not in MINE (the toolkit's own), and the parts of their paths that
    are no folder of FOLDER's own (a file, or a link that may lead out)."""
    out = set()
    for name in names:
        parts = PurePosixPath(name).parts
        for i in range(1, len(parts) + 1):
            part, path = "/".join(parts[:i]), folder.joinpath(*parts[:i])
            if not (path.exists() or path.is_symlink()):
                break
            if i == len(parts) and part not in mine or i < len(parts) and (path.is_symlink() or not path.is_dir()):
                out.add(part)
                break
    return sorted(out)


def claim(folder, names, kind: Kind, beside: bool = False) -> None:
    """The one check a command makes before it writes NAMES (relative paths) into FOLDER, a KIND, before anything
    else: one AmfError line, and nothing written, for a folder that is not the toolkit's (unless BESIDE) or a file in
    the way (module docstring)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise AmfError(f"{folder} is a file; the {kind.what} to write needs a folder (new or existing)")
    if not folder.is_dir():
        return
    records = named(folder, kind)
    if not records and not beside:
        others = entries(folder)
        if others:
            way = in_the_way(folder, names, set())
            hint = (
                f"; --beside writes beside such files, never over them ({listing(way)} would be in the way)"
                if way
                else "; or --beside to write beside them (never over them)"
            )
            raise AmfError(
                f"{folder} is not empty and is not the toolkit's {kind.what}"
                f"{f' (it holds no {records_of(kind)})' if kind.records else ''}: {listing(others)}: "
                f"choose a new or empty folder{hint}"
            )
    never_over(folder, names, kind, set().union(*records.values()))


def records_of(kind: Kind) -> str:
    return " or ".join(kind.records)


def never_over(folder: Path, names, kind: Kind, mine=None) -> None:
    """One AmfError line when a file of NAMES exists in FOLDER and no record of KIND there names it (MINE: those
    names, when known): never written over, whatever the flag."""
    way = in_the_way(folder, names, owned(folder, kind) if mine is None else mine)
    if way:
        them = "it" if len(way) == 1 else "them"
        raise AmfError(
            f"{folder} holds {listing(way)}, which the toolkit did not write"
            f"{f' (no {records_of(kind)} there names {them})' if kind.records else ''}: never written over; move "
            f"{them} or choose another folder"
        )


@contextlib.contextmanager
def scratch(folder, label: str):
    """A scratch folder inside FOLDER (created, with its parents, if absent; removed again when it is left empty)
    for a command to write its files into before install() moves them: a failed command leaves nothing else; a
    killed one only a temporary (is_temporary)."""
    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder, prefix=f".{label}.{os.getpid()}.", suffix=".tmp"))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if created:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty: nothing was installed


def remove(folder, names, log=None) -> None:
    """Remove each of NAMES (the toolkit's own, in this order) from FOLDER, and each folder that leaves empty."""
    folder, gone = Path(folder), []
    for name in names:
        path = folder / name
        if path.is_symlink() or path.is_file():
            path.unlink()
            gone.append(name)
            for parent in path.parents:
                if parent == folder or not parent.is_relative_to(folder):
                    break
                with contextlib.suppress(OSError):
                    parent.rmdir()
    if gone and log:
        log(f"{folder}: removed the earlier {', '.join(gone)}")


def removable(folder, kind: Kind, replaces=None) -> dict[str, set[str]]:
    """Records REPLACES (default: every record of KIND) of FOLDER -> the names only they make the toolkit's (a file
    another record of FOLDER names stays)."""
    records = named(folder, kind)
    replaces = set(kind.records if replaces is None else replaces)
    kept = set().union(*(names for r, names in records.items() if r not in replaces))
    return {r: names - kept for r, names in records.items() if r in replaces}


def remove_records(folder, kind: Kind, replaces=None, log=None) -> None:
    """Remove the files of FOLDER's records REPLACES (default: all of KIND), each record itself last."""
    old = removable(folder, kind, replaces)
    remove(folder, [n for names in old.values() for n in sorted(names - set(old))] + sorted(old), log)


def install(new_dir, folder, kind: Kind, replaces=None, log=None) -> list[str]:
    """Move NEW_DIR's files into FOLDER (the same file system; the command claim()ed FOLDER first, and a file no
    record names is never written over: checked again here), replacing FOLDER's records REPLACES (default: all of
    KIND) whole: first away what describes the old content and would otherwise outlive it (a replaced record the new
    content lacks, with its files; the old of KIND.last's other files), then the new files, KIND.last last in order,
    then the replaced records' other files the new content lacks. Returns the names moved."""
    new_dir, folder = Path(new_dir), Path(folder)
    new = files_under(new_dir)
    folder.mkdir(parents=True, exist_ok=True)
    never_over(folder, new, kind)
    old = removable(folder, kind, replaces)
    dropped = [r for r in old if r not in new]
    describes = {n for n in kind.last if n not in kind.records} & set().union(*old.values())
    first = sorted(set().union(*(old[r] for r in dropped)) - set(dropped) | describes)
    remove(folder, [*first, *dropped], log)
    order = [n for n in new if n not in kind.last] + [n for n in kind.last if n in new]
    for name in order:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        os.replace(new_dir / name, folder / name)
    leftover = set().union(*old.values()) - set(new) - set(first) - set(dropped)
    remove(folder, sorted(leftover), log)
    return order


def unnamed(folder, kind: Kind = MODEL) -> list[str]:
    """The files under FOLDER that no record of KIND names (the toolkit's temporaries too: they would ship)."""
    mine = owned(folder, kind)
    return [n for n in files_under(folder, temporaries=True) if n not in mine]


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0].startswith("-"):
        print("error: python3 -m training.ownership MODEL_DIR", file=sys.stderr)
        return 2
    folder = Path(argv[0])
    try:
        if MANIFEST not in named(folder, MODEL):
            raise AmfError(f"{folder} is not a model folder: it holds no manifest ({MANIFEST})")
        extra = unnamed(folder)
        if extra:
            raise AmfError(
                f"{folder} holds files its {MANIFEST} and {CARD_JSON} do not name ({listing(extra)}): they would "
                "ship in the image and the model tarball; remove them, or install a model folder whole "
                "(make install-model FROM=DIR)"
            )
    except (AmfError, OSError) as e:
        return report_error(e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
