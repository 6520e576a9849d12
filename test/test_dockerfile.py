"""The Dockerfile and the Docker scripts, checked without Docker: hadolint, the image's rules, and the
scripts run against a fake `docker` that records its arguments and plays the container."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from compare_output import EXPECTED
from conftest import ROOT

from amf.manifest import load as load_manifest

DOCKERFILE = ROOT / "Dockerfile"
SCRIPTS = ["do_build.sh", "do_test_run.sh", "do_save.sh", "do_save_model.sh"]
RUNTIME_FILES = {"requirements.txt", "inference.py", "amf/", "model/", "resources/"}
BIN = Path(sys.executable).parent


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    lines = [line for line in DOCKERFILE.read_text().splitlines() if not line.lstrip().startswith("#")]
    text = re.sub(r"\\\n", " ", "\n".join(lines))
    return [(m.group(1).upper(), m.group(2).strip()) for m in re.finditer(r"^\s*(\w+)\s+(.*)$", text, re.M)]


def tool(name: str) -> str:
    path = shutil.which(name, path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    assert path, f"{name} is not installed (requirements-dev.txt pins it)"
    return path


def test_hadolint_is_clean():
    p = subprocess.run([tool("hadolint"), str(DOCKERFILE)], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr


def test_base_image_is_a_cuda12_cudnn9_runtime():
    froms = [a for i, a in instructions() if i == "FROM"]
    assert len(froms) == 1
    m = re.fullmatch(r"nvidia/cuda:12\.(\d+)\.\d+-cudnn(\d*)-runtime-ubuntu\d\d\.\d\d", froms[0])
    assert m, froms[0]
    # NVIDIA's tags say "-cudnn-" for cuDNN 9 from CUDA 12.3 on ("-cudnn8-" before)
    assert m.group(2) == "9" or (m.group(2) == "" and int(m.group(1)) >= 3), froms[0]


def test_runtime_requirements_pin_a_cuda12_onnxruntime_and_nothing_heavy():
    reqs = [line.split("#")[0].strip() for line in (ROOT / "requirements.txt").read_text().splitlines()]
    reqs = [r for r in reqs if r]
    names = {re.split(r"[=<>~!\[ ]", r)[0].lower() for r in reqs}
    assert names == {"onnxruntime-gpu", "simpleitk", "numpy", "pillow"}, names
    assert any(re.fullmatch(r"onnxruntime-gpu==1\.22\.\d+", r) for r in reqs), reqs
    assert all("==" in r for r in reqs), "the image's runtime is pinned"


def test_user_env_entrypoint():
    ins = instructions()
    users = [a for i, a in ins if i == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    envs = " ".join(a for i, a in ins if i == "ENV")
    assert re.search(r"\bPYTHONUNBUFFERED=1\b", envs)
    entry = [a for i, a in ins if i == "ENTRYPOINT"]
    assert len(entry) == 1
    argv = json.loads(entry[0])  # exec form
    assert Path(argv[0]).name.startswith("python") and argv[-1] == "inference.py"
    assert [i for i, _ in ins].index("USER") > max(k for k, (i, _) in enumerate(ins) if i in ("RUN", "COPY"))


def test_only_runtime_files_are_copied():
    sources = set()
    for i, a in instructions():
        if i in ("COPY", "ADD"):
            assert i == "COPY", "ADD fetches and unpacks: not wanted here"
            parts = [p for p in a.split() if not p.startswith("--")]
            sources.update(parts[:-1])
    assert sources == RUNTIME_FILES, sources
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*"  # everything else stays out of the build context
    assert {p[1:] for p in patterns if p.startswith("!")} == RUNTIME_FILES


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_are_executable_bash_and_shellcheck_clean(script):
    path = ROOT / script
    assert os.access(path, os.X_OK)
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0
    p = subprocess.run([tool("shellcheck"), str(path)], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout


FAKE_DOCKER = '''#!{python}
"""A stand-in for docker: logs each call; `run` of the image writes FAKE_RESULT into the /output mount."""
import os, shutil, sys
args = sys.argv[1:]
with open(os.environ["FAKE_DOCKER_LOG"], "a") as log:
    log.write("\\x1f".join(args) + "\\n")
if args[:1] == ["run"] and "--entrypoint" not in args:
    out = next(a.split(":")[0] for a in args if a.endswith(":/output"))
    shutil.copy(os.environ["FAKE_RESULT"], os.path.join(out, "multiple-mitotic-figure-classification.json"))
if args[:1] == ["save"]:
    sys.stdout.write("image layers")
'''


@pytest.fixture
def checkout(tmp_path):
    """The scripts and what they read, copied to a folder of their own; a fake docker first on PATH."""
    work = tmp_path / "repo"
    (work / "test").mkdir(parents=True)
    for s in SCRIPTS:
        shutil.copy2(ROOT / s, work / s)
    shutil.copy2(ROOT / "test" / "compare_output.py", work / "test" / "compare_output.py")
    shutil.copytree(ROOT / "test" / "input", work / "test" / "input")
    shutil.copytree(ROOT / "model", work / "model")
    shutil.copytree(ROOT / "amf", work / "amf")  # do_save*.sh check model/ with training/ownership.py, which reads amf
    (work / "training").mkdir()
    for name in ("__init__.py", "ownership.py"):
        shutil.copy2(ROOT / "training" / name, work / "training" / name)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text(FAKE_DOCKER.format(python=sys.executable))
    (bin_dir / "docker").chmod(0o755)
    python3 = shutil.which("python3") or sys.executable
    (bin_dir / "python3").symlink_to(python3)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "FAKE_DOCKER_LOG": str(tmp_path / "docker.log"),
        "FAKE_RESULT": str(EXPECTED),
    }
    return work, env, tmp_path / "docker.log"


def calls(log: Path) -> list[list[str]]:
    return [line.split("\x1f") for line in log.read_text().splitlines()]


def test_do_test_run_runs_like_the_platform_and_compares(checkout):
    work, env, log = checkout
    p = subprocess.run(["bash", str(work / "do_test_run.sh")], capture_output=True, text=True, env=env, cwd=work)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "OK: 16 results match" in p.stdout
    runs = [c for c in calls(log) if c[0] == "run" and "--entrypoint" not in c]
    assert len(runs) == 1
    run = runs[0]
    assert run[run.index("--network") : run.index("--network") + 2] == ["--network", "none"]
    volumes = [run[i + 1] for i, a in enumerate(run) if a == "--volume"]
    assert f"{work}/test/input:/input:ro" in volumes
    assert f"{work}/out/test-run:/output" in volumes
    assert any(v.endswith(":/tmp") for v in volumes)
    has_gpu = subprocess.run("command -v nvidia-smi && nvidia-smi", shell=True, capture_output=True).returncode == 0
    assert ("--gpus" in run) == has_gpu
    assert [c[0] for c in calls(log)][:2] == ["info", "build"]  # the engine asked first


def test_do_test_run_fails_when_the_output_differs(checkout, tmp_path):
    work, env, _ = checkout
    wrong = json.loads(EXPECTED.read_text())
    wrong[3]["confidence"] = min(1.0, wrong[3]["confidence"] + 0.01)
    (tmp_path / "wrong.json").write_text(json.dumps(wrong))
    env["FAKE_RESULT"] = str(tmp_path / "wrong.json")
    p = subprocess.run(["bash", str(work / "do_test_run.sh")], capture_output=True, text=True, env=env, cwd=work)
    assert p.returncode != 0
    assert "[3] confidence" in p.stderr and "FAIL" in p.stderr
    assert "changed on purpose, rewrite its expected output: make expected" in p.stderr  # how to refresh it


@pytest.mark.slow
def test_do_save_writes_the_image_and_a_model_tarball_with_the_manifest_at_its_root(checkout, tmp_path):
    work, env, log = checkout
    p = subprocess.run(["bash", str(work / "do_save.sh"), "my-tag"], capture_output=True, text=True, env=env, cwd=work)
    assert p.returncode == 0, p.stdout + p.stderr
    images = list((work / "out").glob("my-tag_*.tar.gz"))
    models = list((work / "out").glob("model_*.tar.gz"))
    assert len(images) == 1 and len(models) == 1
    assert ["save", "my-tag"] in calls(log)
    unpacked = tmp_path / "opt-ml-model"
    with tarfile.open(models[0]) as tar:
        tar.extractall(unpacked, filter="data")
    m = load_manifest(unpacked)  # ensemble.json at the root, every member beside it
    assert len(m.members) == len(load_manifest(ROOT / "model").members)


NO_ENGINE = """#!/bin/sh
echo "$*" >> "$FAKE_DOCKER_LOG"
echo "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?" >&2
exit 1
"""


@pytest.mark.parametrize("script", ["do_test_run.sh", "do_save.sh", "do_build.sh"])
def test_without_a_docker_engine_the_scripts_stop_first_and_name_what_runs_without_one(checkout, script):
    work, env, log = checkout
    (Path(env["PATH"].split(os.pathsep)[0]) / "docker").write_text(NO_ENGINE)
    p = subprocess.run(["bash", str(work / script)], capture_output=True, text=True, env=env, cwd=work)
    assert p.returncode == 2, p.stdout + p.stderr
    assert p.stderr.strip().splitlines()[-1].startswith("error: no Docker engine answers here")
    assert "Cannot connect" not in p.stderr  # docker's own daemon error is not the message
    assert all(check in p.stdout for check in ("make demo", "make test", "./do_save_model.sh"))
    assert [c.split()[0] for c in log.read_text().splitlines()] == ["info"]  # nothing built, run or saved
    assert not (work / "out").exists()


@pytest.mark.slow  # gzips the shipped model (33 MB)
def test_the_model_tarball_needs_no_docker(checkout, tmp_path):
    work, env, log = checkout
    (Path(env["PATH"].split(os.pathsep)[0]) / "docker").write_text(NO_ENGINE)
    p = subprocess.run(["bash", str(work / "do_save_model.sh")], capture_output=True, text=True, env=env, cwd=work)
    assert p.returncode == 0, p.stdout + p.stderr
    (tarball,) = (work / "out").glob("model_*.tar.gz")
    with tarfile.open(tarball) as tar:
        tar.extractall(tmp_path / "opt-ml-model", filter="data")
    assert load_manifest(tmp_path / "opt-ml-model").members == load_manifest(ROOT / "model").members
    assert not log.exists()  # docker never asked
    shutil.rmtree(work / "model")
    p = subprocess.run(["bash", str(work / "do_save_model.sh")], capture_output=True, text=True, env=env, cwd=work)
    assert p.returncode == 2 and p.stderr.strip().startswith("error: ") and "no ensemble.json" in p.stderr
