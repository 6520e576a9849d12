"""The image's runtime without the image: a fresh virtual environment from requirements.txt alone
runs inference.py on the project's sample job and gives the model's expected output (model/expected_output.json).

Slow once (pip installs onnxruntime-gpu, about a minute); needs PyPI, as the image build does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from compare_output import EXPECTED, compare
from conftest import GC_SAMPLE, ROOT

from amf.results import validate

pytestmark = pytest.mark.slow  # builds a virtual environment from PyPI (make test-fast leaves it out)

RESULT = "multiple-mitotic-figure-classification.json"


@pytest.fixture(scope="module")
def runtime_python(tmp_path_factory):
    venv = tmp_path_factory.mktemp("runtime") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    p = subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            "-r",
            str(ROOT / "requirements.txt"),
        ],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return python


def clean_env():
    return {
        k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "AMF_MODEL_DIR", "VIRTUAL_ENV", "PYTHONHOME")
    }


def run_inference(python, input_dir, out_dir):
    return subprocess.run(
        [str(python), str(ROOT / "inference.py"), "--input", str(input_dir), "--output", str(out_dir)],
        capture_output=True,
        text=True,
        env=clean_env(),
        cwd=out_dir.parent,
    )


def test_runtime_has_no_torch_or_timm(runtime_python):
    p = subprocess.run(
        [str(runtime_python), "-m", "pip", "list", "--format=json"], capture_output=True, text=True, env=clean_env()
    )
    installed = {d["name"].lower(): d["version"] for d in json.loads(p.stdout)}
    assert installed["onnxruntime-gpu"].startswith("1.22.")
    assert not {"torch", "timm", "torchvision", "onnx"} & set(installed), sorted(installed)
    probe = subprocess.run([str(runtime_python), "-c", "import torch"], capture_output=True, env=clean_env())
    assert probe.returncode != 0


def test_sample_job_in_the_runtime_gives_the_expected_output(runtime_python, tmp_path):
    p = run_inference(runtime_python, ROOT / "test" / "input", tmp_path / "out")
    assert p.returncode == 0, p.stderr
    results = json.loads((tmp_path / "out" / RESULT).read_text())
    expected = json.loads(EXPECTED.read_text())
    assert compare(results, expected) == []


def test_organisers_sample_in_the_runtime(runtime_python, tmp_path):
    if not GC_SAMPLE.exists():
        pytest.skip(f"{GC_SAMPLE} is not here")
    p = run_inference(runtime_python, GC_SAMPLE, tmp_path / "out")
    assert p.returncode == 0, p.stderr
    validate(json.loads((tmp_path / "out" / RESULT).read_text()), 16, "gc-sample")


def test_amf_is_exactly_the_runtime(runtime_python, tmp_path):
    """Every module in amf/ imports in the image's runtime, and inference.py reaches every one of them:
    what only training or evaluation needs (metrics, domains) lives in training/."""
    modules = sorted(p.stem for p in (ROOT / "amf").glob("*.py") if p.stem != "__init__")
    probe = (
        "import sys, runpy\n"
        f"sys.argv = ['inference.py', '--input', 'test/input', '--output', {str(tmp_path / 'out')!r}]\n"
        "try:\n    runpy.run_path('inference.py', run_name='__main__')\nexcept SystemExit as e:\n"
        "    assert not e.code, e.code\n"
        "print(' '.join(sorted(m[4:] for m in sys.modules if m.startswith('amf.'))))"
    )
    p = subprocess.run([str(runtime_python), "-c", probe], capture_output=True, text=True, env=clean_env(), cwd=ROOT)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().splitlines()[-1].split() == modules, (p.stdout, modules)
