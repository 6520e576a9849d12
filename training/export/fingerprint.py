"""Which figures a model trained on, by content: MODEL_DIR/training_fingerprints.bin.

  python -m training.export.fingerprint MODEL_DIR --run RUN [--data DATA]   (the run's splits.csv figures)
  python -m training.export.fingerprint MODEL_DIR --data DATA               (what training reads from DATA with the
                                                                      config the manifest records)

A figure's fingerprint is an 8-byte BLAKE2b digest of its decoded canonical patch (amf.preprocess.canonical_patch:
square HxWx3 uint8, shape included), so a PNG re-encoded with other compression, or the same patch inside a TIFF
or MHA stack, has the same fingerprint, and a patch that differs by one pixel value does not. training.export
writes the file for every figure of the run's splits.csv (each is in some member's training data) and records
its count and SHA-256 in the manifest's provenance (training_figures); this command adds it to a model exported
before that, checking the figure count against the manifest's out-of-fold results. Offline evaluation
(evaluation.score) hashes the patches of the jobs it scores and counts those the model trained on.
The container never reads the file. Torch-free.

The file: MAGIC (8 bytes), the count N (uint64, big-endian), N distinct digests in ascending order (8 bytes
each, big-endian), and an 8-byte BLAKE2b checksum of all that precedes it: 24 + 8 N bytes (95 kB for the
11,937 official figures). A file that is truncated, has extra bytes, another magic, a wrong checksum or
digests out of order is one error, never a wrong count.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np

from amf import AmfError, one_line
from amf.fileio import write_bytes_atomic
from amf.preprocess import canonical_patch
from training.ownership import FINGERPRINTS as FILE  # the model folder's name for it

MAGIC = b"AMF-FP\x00\x01"  # the format's name and version 1
DIGEST = 8  # bytes: two sets of 12,000 figures share a digest by chance with probability ~1e-11
HEADER = len(MAGIC) + 8
MAX_BYTES = 64 * 2**20  # 8 million figures: far beyond any training set


def patch_digest(patch) -> int:
    """The fingerprint of one patch (any pixel type or layout: made canonical first), as an integer."""
    p = canonical_patch(np.asarray(patch))
    h = hashlib.blake2b(digest_size=DIGEST)
    h.update("x".join(map(str, p.shape)).encode() + b"|")
    h.update(p.tobytes())
    return int.from_bytes(h.digest(), "big")


def digests(patches) -> np.ndarray:
    """The fingerprints of PATCHES, in order, as uint64."""
    return np.array([patch_digest(p) for p in patches], dtype=np.uint64)


def _checksum(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=DIGEST).digest()


def encode(values) -> bytes:
    """The file's bytes for a set of fingerprints (duplicates count once)."""
    values = np.unique(np.asarray(values, dtype=np.uint64))
    body = MAGIC + len(values).to_bytes(8, "big") + values.astype(">u8").tobytes()
    return body + _checksum(body)


def write(path, values) -> Path:
    """Write the fingerprint file atomically."""
    write_bytes_atomic(path, encode(values))
    return Path(path)


def read(path) -> np.ndarray:
    """The sorted fingerprints in PATH (uint64); one AmfError naming PATH for anything not this format."""
    path = Path(path)
    where = f"fingerprint file {path}"
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as e:
        raise AmfError(f"{where} cannot be read ({one_line(e.strerror or e)})") from None
    if len(data) > MAX_BYTES:
        raise AmfError(f"{where} is larger than {MAX_BYTES // 2**20} MiB: not a fingerprint file")
    if not data or not data.startswith(MAGIC[: len(data)]):
        raise AmfError(f"{where} is not a fingerprint file (it does not start with {MAGIC!r})")
    if len(data) < HEADER + DIGEST:
        raise AmfError(f"{where} is truncated ({len(data)} bytes)")
    n = int.from_bytes(data[len(MAGIC) : HEADER], "big")
    if len(data) != HEADER + DIGEST * n + DIGEST:
        raise AmfError(
            f"{where} is truncated or has extra bytes: {len(data)} bytes for {n} fingerprints "
            f"(expected {HEADER + DIGEST * n + DIGEST})"
        )
    if _checksum(data[:-DIGEST]) != data[-DIGEST:]:
        raise AmfError(f"{where} is corrupt (its checksum does not match)")
    values = np.frombuffer(data, ">u8", count=n, offset=HEADER).astype(np.uint64)
    if n > 1 and not (values[1:] > values[:-1]).all():
        raise AmfError(f"{where} is corrupt (fingerprints not in ascending order)")
    return values


def describe(path) -> dict:
    """What the manifest's provenance records of a fingerprint file: its name, figure count and SHA-256."""
    path = Path(path)
    return {"file": path.name, "figures": int(len(read(path))), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def of_splits(splits, data_dir=None) -> np.ndarray:
    """The fingerprints of every figure of a run's splits.csv (all folds and the train-only rows: each trained
    some member), decoded as training decodes them; one error naming the missing images."""
    from training.data import decode, image_path

    paths = [image_path(row, data_dir) for _, row in splits.iterrows()]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise AmfError(
            f"{len(missing)} of the run's {len(paths)} training images are missing (e.g. {missing[0]}): the model's "
            "fingerprint needs every one; give the data folder with --data"
        )
    return digests(decode(p) for p in paths)


def of_data(data_dir, cfg: dict) -> tuple:
    """(fingerprints, table) of the figures training reads from DATA_DIR with config CFG
    (training.data.load_dataset: official, extra and synthetic sets, de-duplicated as in training)."""
    import copy

    from training.data import load_dataset

    cfg = copy.deepcopy(cfg)
    cfg["data"]["preload"], cfg["data"]["skip_missing"] = True, False  # decode all of them; none may be missing
    table, cache = load_dataset(data_dir, cfg, log=lambda *a: None)
    return digests(cache), table


def add_to_model(model_dir, run=None, data_dir=None) -> dict:
    """Write MODEL_DIR/FILE from RUN's splits.csv, or from DATA_DIR read with the manifest's config; refuses when
    the figure count differs from the manifest's out-of-fold results (not the data this model trained on)."""
    from amf.manifest import load as load_manifest

    mf = load_manifest(model_dir)
    if run is not None:
        from training.rundir import RunDir

        splits = RunDir(run).read_splits()
        values, held_out = of_splits(splits, data_dir), int((splits["fold"] >= 0).sum())
        source = f"{run}'s splits.csv"
    else:
        from training import config

        if not isinstance(mf.provenance.get("config"), dict):
            raise AmfError(f"{model_dir}: the manifest records no training config; give the run with --run")
        cfg = config.validate(config.merge(config.DEFAULTS, mf.provenance["config"]))
        values, table = of_data(data_dir, cfg)
        held_out, source = int((~table["synthetic"]).sum()), f"{data_dir} with the manifest's config"
    expected = (mf.provenance.get("oof_metrics") or {}).get("n")
    if expected is not None and expected != held_out:
        raise AmfError(
            f"{source} holds {held_out} real figures, the manifest's out-of-fold results {expected}: "
            "not the data this model trained on"
        )
    path = write(Path(model_dir) / FILE, values)
    return describe(path) | {"source": source}


def main(argv=None) -> int:
    from amf import report_error
    from amf.cli import EXPECTED, ArgumentParser, as_error

    ap = ArgumentParser.from_doc("python -m training.export.fingerprint", __doc__)
    ap.add_argument("model", help="an exported model folder (ensemble.json)")
    ap.add_argument("--run", default=None, help="the training run the model was exported from")
    ap.add_argument("--data", default=None, help="the data folder (with --run: where the official images are now)")
    a = ap.parse_args(argv)
    if a.run is None and a.data is None:
        ap.error("give --run RUN (its splits.csv figures) or --data DATA (read with the manifest's config)")
    try:
        done = add_to_model(a.model, a.run, a.data)
    except EXPECTED as e:
        return report_error(as_error(e))
    print(f"wrote {Path(a.model) / FILE}: {done['figures']} distinct figures from {done['source']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
