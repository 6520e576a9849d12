"""Shared fixtures: paths to the project and to ../shared/data (tests that need it skip cleanly)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
BREAST = SHARED / "midog25-breast"
LABELS_FULL = SHARED / "midog25-labels-full.csv"
GC_SAMPLE = SHARED / "gc-sample" / "input"

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is not here")
    return path


def model_data_dir(card: dict) -> Path:
    """The data folder a model card names (card.json's data.dir, as given relative to the project or by name; the
    default model's: ../shared/data/amibr-train), here, under ../shared/data, or where $AMF_DATA says (a team's
    data outside the project: AMF_DATA=DATA make test), in any layout training reads; the test skips where it is
    absent."""
    from training.data import find_layout

    named = Path(card["data"].get("dir") or "")
    where = [ROOT / named, SHARED / named.name] + ([Path(os.environ["AMF_DATA"])] if os.environ.get("AMF_DATA") else [])
    return need(next((d for d in where if named.name and find_layout(d)), named))


@pytest.fixture
def breast_dir() -> Path:
    return need(BREAST)


@pytest.fixture
def labels_full() -> Path:
    return need(LABELS_FULL)


@pytest.fixture
def gc_sample() -> Path:
    return need(GC_SAMPLE)


@pytest.fixture
def toy_model(tmp_path) -> Path:
    from toy_models import make_toy_ensemble

    return make_toy_ensemble(tmp_path / "toy_model", members=2).parent
