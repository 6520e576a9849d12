"""training.export.fingerprint: a figure's fingerprint is its decoded canonical patch's (a PNG re-encoded, the same
patch in a TIFF or MHA stack alike; one pixel value apart differs); the file's format and every way it can be broken
(one error, never a wrong count); export's install replaces or drops an older one; the container never reads it;
the command that adds one to an exported model; the shipped model's file names its training figures."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from make_sample_input import draw_patch
from PIL import Image

from amf import AmfError, jobs
from amf import manifest as manifest_io
from training.data import decode
from training.export import fingerprint

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def patches():
    rng = np.random.default_rng(4)
    return [draw_patch(rng, i % 2 == 1) for i in range(5)]


def test_a_patch_hashes_alike_however_it_is_stored(patches, tmp_path):
    want = fingerprint.digests(patches)
    assert len(set(want.tolist())) == len(patches)
    # PNGs written at two compression levels, and a 16-bit one whose values the input rule scales back
    for level in (0, 9):
        for i, p in enumerate(patches):
            Image.fromarray(p).save(tmp_path / f"{level}_{i}.png", compress_level=level)
        assert np.array_equal(fingerprint.digests(decode(tmp_path / f"{level}_{i}.png") for i in range(5)), want)
    assert (tmp_path / "0_0.png").read_bytes() != (tmp_path / "9_0.png").read_bytes()  # other files, same patch
    grey = patches[0][:, :, 0]
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "grey16.png")  # 257 = 65535 / 255
    assert fingerprint.patch_digest(decode(tmp_path / "grey16.png")) == fingerprint.patch_digest(np.dstack([grey] * 3))
    # the same patches inside a TIFF and an MHA stack, read by the container's reader
    for name in ("s.tiff", "s.mha"):
        jobs.write_stack(tmp_path / name, patches)
        assert np.array_equal(fingerprint.digests(jobs.read_stack(tmp_path / name)), want)
    # one pixel value apart, and the same bytes in another shape: other fingerprints
    changed = patches[2].copy()
    changed[64, 64, 1] ^= 1
    assert fingerprint.patch_digest(changed) != want[2]
    assert fingerprint.patch_digest(patches[2].reshape(64, 256, 3)) != want[2]  # centre-cropped to 64 x 64


def test_the_file_round_trip_and_its_size(patches, tmp_path):
    values = fingerprint.digests(patches)
    path = fingerprint.write(tmp_path / fingerprint.FILE, np.concatenate([values, values[:2]]))  # duplicates once
    assert np.array_equal(fingerprint.read(path), np.sort(values))
    assert path.stat().st_size == 24 + 8 * len(patches)
    described = fingerprint.describe(path)
    assert described == {
        "file": fingerprint.FILE,
        "figures": len(patches),
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
    }
    big = fingerprint.encode(np.arange(11_937, dtype=np.uint64))  # the whole official set: well under 1 MB
    assert len(big) == 24 + 8 * 11_937 < 100_000


def broken(good: bytes) -> dict[str, tuple[bytes, str]]:
    n = (len(good) - 24) // 8
    body = good[:-8]
    unsorted = body[:16] + body[24:32] + body[16:24] + body[32:]  # two digests swapped, checksum made anew
    return {
        "empty": (b"", "not a fingerprint file"),
        "another format": (b"\x89PNG\r\n\x1a\n" + good[8:], "not a fingerprint file"),
        "truncated header": (good[:12], "truncated"),
        "truncated": (good[:-3], "truncated or has extra bytes"),
        "extra bytes": (good + b"\x00" * 8, "truncated or has extra bytes"),
        "count too large": (good[:8] + (n + 1).to_bytes(8, "big") + good[16:], "truncated or has extra bytes"),
        "a flipped bit": (good[:20] + bytes([good[20] ^ 1]) + good[21:], "checksum"),
        "out of order": (unsorted + hashlib.blake2b(unsorted, digest_size=8).digest(), "ascending"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "empty",
        "another format",
        "truncated header",
        "truncated",
        "extra bytes",
        "count too large",
        "a flipped bit",
        "out of order",
    ],
)
def test_a_broken_file_is_one_error(patches, tmp_path, case):
    good = fingerprint.encode(fingerprint.digests(patches))
    data, message = broken(good)[case]
    (tmp_path / "f.bin").write_bytes(data)
    with pytest.raises(AmfError, match=message) as err:
        fingerprint.read(tmp_path / "f.bin")
    assert str(tmp_path / "f.bin") in str(err.value) and "\n" not in str(err.value)


def test_the_container_never_reads_the_file(tmp_path):
    """A garbage fingerprint file changes nothing for the manifest reader or the entrypoint."""
    from toy_models import make_toy_ensemble

    import inference

    model = make_toy_ensemble(tmp_path / "model", members=1).parent
    plain = inference.run(ROOT / "test" / "input", tmp_path / "a", model)
    (model / fingerprint.FILE).write_bytes(b"garbage")
    manifest_io.load(model)
    assert inference.run(ROOT / "test" / "input", tmp_path / "b", model) == plain


def test_install_replaces_or_drops_an_older_fingerprint(tmp_path):
    from toy_models import make_toy_ensemble

    from training.export.folder import install

    out = make_toy_ensemble(tmp_path / "out", members=1).parent
    (out / fingerprint.FILE).write_bytes(b"an older model's")
    new = make_toy_ensemble(tmp_path / "new", members=1, seed=5).parent
    fingerprint.write(new / fingerprint.FILE, [1, 2, 3])
    install(new, out)
    assert fingerprint.read(out / fingerprint.FILE).tolist() == [1, 2, 3]
    newer = make_toy_ensemble(tmp_path / "newer", members=1, seed=6).parent  # a model without one
    install(newer, out)
    assert not (out / fingerprint.FILE).exists()
    manifest_io.load(out)


def test_the_command_adds_a_fingerprint_from_a_run_or_a_data_folder(tmp_path, capsys):
    from toy_models import make_toy_ensemble
    from training_layout import make_layout, make_split_run

    from training import config as config_io

    data = make_layout(tmp_path / "data", n_slides=4, per_slide=4)
    run, table = make_split_run(tmp_path / "run", data)
    model = make_toy_ensemble(tmp_path / "model", members=1).parent
    want = np.sort(fingerprint.digests(decode(p) for p in table["path"]))

    with pytest.raises(SystemExit) as done:
        fingerprint.main([str(model)])
    assert done.value.code == 2 and "--run" in capsys.readouterr().err
    assert fingerprint.main([str(model), "--run", str(run.path)]) == 0
    assert np.array_equal(fingerprint.read(model / fingerprint.FILE), want)
    assert "16 distinct figures" in capsys.readouterr().out

    # --data: read as training reads it with the manifest's config; the count must match its out-of-fold results
    path = model / manifest_io.MANIFEST_NAME
    doc = json.loads(path.read_text())
    doc["provenance"] = {"config": config_io.DEFAULTS, "oof_metrics": {"n": 15}}
    path.write_text(json.dumps(doc))
    (model / fingerprint.FILE).unlink()
    assert fingerprint.main([str(model), "--data", str(data)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "16 real figures" in err and "15" in err and "\n" not in err
    assert not (model / fingerprint.FILE).exists()
    doc["provenance"]["oof_metrics"]["n"] = 16
    path.write_text(json.dumps(doc))
    assert fingerprint.main([str(model), "--data", str(data)]) == 0
    assert np.array_equal(fingerprint.read(model / fingerprint.FILE), want)

    shutil.rmtree(data / "MIDOG25_Binary_Classification_Train_Set")
    assert fingerprint.main([str(model), "--run", str(run.path)]) == 2
    assert "training images are missing" in capsys.readouterr().err


@pytest.mark.slow  # decodes the whole breast slice
def test_the_shipped_model_names_its_training_figures():
    """model/training_fingerprints.bin holds exactly the figures of the card's out-of-fold table (model/oof.csv: every
    figure of the data folder the card names, each held out by one member and trained on by the others), read in
    that folder's layout (v3: amibr-train, AMi-Br's)."""
    from conftest import model_data_dir

    from training.data import read_labelled

    card = json.loads((ROOT / "model" / "card.json").read_text())
    paths = read_labelled(model_data_dir(card)).set_index("image_id")["path"]
    oof = pd.read_csv(ROOT / "model" / "oof.csv", dtype={"image_id": str})
    want = np.sort(fingerprint.digests(decode(paths[i]) for i in oof["image_id"]))
    assert np.array_equal(fingerprint.read(ROOT / "model" / fingerprint.FILE), want)
