"""Install a model folder (a pipeline's --model-out, an export with its card) into the container's model/, whole.

  python -m training.export.install FROM [--to model] [--beside]        (make install-model FROM=DIR)

FROM must be a model folder the container reads (amf.manifest.load: its manifest, every member there). The files its
manifest and card name (training.ownership) are copied into a scratch folder inside TO and installed there,
replacing the model TO held whole: what its manifest and card named and the new model lacks is removed (its other
members, its predictions/ files), nothing else is; a file of FROM that neither names is left out, and said so.
TO follows training.ownership's rule: new, empty, or a model folder, else refused in one line (--beside: write beside
its files); a file of TO that no manifest or card there names is never written over.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from amf import AmfError, manifest, report_error
from amf.cli import EXPECTED, ArgumentParser, as_error
from training import ownership
from training.ownership import MODEL

ROOT = Path(__file__).resolve().parents[2]


def install_model(source, to, beside: bool = False, log=print) -> list[str]:
    """SOURCE's model (the files its manifest and card name) into TO, replacing TO's model whole; the names
    installed."""
    source, to = Path(source), Path(to)
    manifest.load(source)  # the container reads it: its members are there, inside it
    if to.exists() and source.resolve() == to.resolve():
        raise AmfError(f"{source} is {to} itself: nothing to install")
    files = sorted(n for n in ownership.owned(source, MODEL) if (source / n).is_file())
    ownership.claim(to, files, MODEL, beside)
    with ownership.scratch(to, "install") as tmp:
        for name in files:
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / name, tmp / name)
        ownership.install(tmp, to, MODEL, log=log)
    left = ownership.unnamed(source)
    if left:
        log(f"left out {ownership.listing(left)}: {source}'s manifest and card do not name them")
    log(f"installed {source} into {to}: {len(files)} files ({ownership.listing(files)})")
    return files


def main(argv=None) -> int:
    ap = ArgumentParser.from_doc("python -m training.export.install", __doc__)
    ap.add_argument("source", metavar="FROM", help="the model folder to install")
    ap.add_argument("--to", default=str(ROOT / "model"), help="the model folder to replace (default: model/)")
    ap.add_argument("--beside", action="store_true", help=ownership.BESIDE_HELP)
    a = ap.parse_args(argv)
    try:
        install_model(a.source, a.to, a.beside)
    except EXPECTED as e:
        return report_error(as_error(e))
    return 0


if __name__ == "__main__":
    sys.exit(main())
