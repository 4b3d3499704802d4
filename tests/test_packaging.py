"""A normal (non-editable) install runs: the wheel built from this checkout holds every package and data
file, and ``ctloop`` works from a clean virtual environment outside the repository (issue 13, item 1).

The wheel is built from a copy of the checkout (``pip wheel --no-deps --no-build-isolation``: offline,
no build folder left in the tree) and installed into a fresh venv whose only view of the system's
site-packages is a path in a ``.pth`` file: torch and the other dependencies import from there, but
the system's ``.pth`` files (the editable install's finder among them) are never run, so the checkout
is not importable and a module missing from the wheel fails here as it would for a user.

Every command runs from a temporary folder that is not the checkout, and the test checks that each
module resolved into the venv's site-packages. The full ``ctloop demo --quick`` from a wheel takes
minutes, so this test only imports the demo's entry point (``ctloop demo --help`` and
``infra.demo.runner``); the full demo from an installed wheel is run by hand (README "Production").
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_IGNORE = shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__", "*.so", ".ctloop",
                                 ".pytest_cache", ".benchmarks", "results", "tests", ".whl", ".gl", "shared")


def _packages() -> list[str]:
    """Every importable package of the checkout (a folder with __init__.py), tests excluded."""
    out = []
    for init in ROOT.rglob("__init__.py"):
        rel = init.parent.relative_to(ROOT)
        if rel.parts and rel.parts[0] in ("tests", "build", ".git") or any(p.startswith(".") for p in rel.parts):
            continue
        if rel.parts[0].endswith(".egg-info"):
            continue
        out.append(".".join(rel.parts))
    return sorted(out)


def _data_files() -> list[str]:
    """Files the code reads at run time, as paths inside the wheel."""
    patterns = ["schemas/*.avsc", "schemas/released/*/*.avsc", "infra/sql/*.sql", "infra/prometheus/*.yml",
                "infra/grafana/**/*.json", "infra/grafana/**/*.yml", "bench/*.py"]
    return sorted({str(p.relative_to(ROOT)) for pattern in patterns for p in ROOT.glob(pattern)})


def _run(cmd: list[str], cwd: Path, env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=str(cwd), env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src") / "ctloop"
    shutil.copytree(ROOT, src, ignore=_IGNORE)
    out = tmp_path_factory.mktemp("wheel")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          "-w", str(out), str(src)], cwd=out, env=dict(os.environ), timeout=300)
    wheels = list(out.glob("ctloop-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> dict:
    """A clean venv with the wheel installed; the system site-packages on its path, its .pth files not run."""
    home = tmp_path_factory.mktemp("venv")
    env_dir = home / "env"
    _run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], cwd=home, env=dict(os.environ))
    python = env_dir / "bin" / "python"
    site = Path(subprocess.check_output([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                        text=True).strip())
    (site / "system-site-packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CTLOOP_", "PYTHON", "VIRTUAL_ENV"))}
    env.update(PATH=f"{env_dir / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}", CTLOOP_DATA_DIR=str(home / "data"))
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q", str(wheel)],
         cwd=home, env=env, timeout=300)
    work = home / "work"
    work.mkdir()
    return {"python": str(python), "ctloop": str(env_dir / "bin" / "ctloop"), "site": site, "cwd": work, "env": env}


@pytest.mark.slow
def test_the_wheel_holds_every_package_and_data_file(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [p for p in _packages() if f"{p.replace('.', '/')}/__init__.py" not in names]
    assert not missing, f"packages left out of the wheel: {missing}"
    assert "infra.commands" in _packages() and "infra.demo" in _packages()
    missing = [f for f in _data_files() if f not in names]
    assert not missing, f"data files left out of the wheel: {missing}"
    assert not [n for n in names if n.startswith("tests/")], "tests do not ship"


@pytest.mark.slow
def test_ctloop_runs_from_the_installed_wheel_outside_the_checkout(venv):
    run = lambda *cmd, **kw: _run(list(cmd), cwd=venv["cwd"], env=venv["env"], **kw)  # noqa: E731
    # the checkout is not importable: each module comes from the venv's site-packages
    packages = _packages()
    probe = ("import importlib, json, sys\n"
             f"mods = {packages!r} + ['infra.cli', 'infra.demo.runner', 'infra.commands.demo', 'processors.worker',"
             " 'trainers.worker']\n"
             "print(json.dumps({m: importlib.import_module(m).__file__ for m in mods}))\n")
    files = json.loads(run(venv["python"], "-c", probe).stdout.strip().splitlines()[-1])
    outside = {m: f for m, f in files.items() if not Path(f).resolve().is_relative_to(venv["site"].resolve())}
    assert not outside, f"imported from outside the installed wheel: {outside}"

    helptext = run(venv["ctloop"], "--help").stdout
    for command in ("process", "train", "sink", "demo", "bench", "settings", "status"):
        assert command in helptext, f"`ctloop --help` does not list {command}"
    settings = run(venv["ctloop"], "settings").stdout
    assert "CTLOOP_BOOTSTRAP_SERVERS" in settings or "bootstrap_servers" in settings
    assert "--quick" in run(venv["ctloop"], "demo", "--help").stdout

    # the data files are found where the installed code looks for them
    data = ("import json\n"
            "from streams.catalog import SchemaCatalog\n"
            "from infra.clickhouse import SQL_DIR\n"
            "from infra.demo.bench import discover\n"
            "catalog = SchemaCatalog()\n"
            "print(json.dumps({'schemas': len(list(catalog)), 'released': len(catalog._released), 'dir': str(catalog.directory),"
            " 'sql': len(list(SQL_DIR.glob('*.sql'))), 'bench': [p.name for p in discover()]}))\n")
    found = json.loads(run(venv["python"], "-c", data).stdout.strip().splitlines()[-1])
    assert found["sql"] == len(list((ROOT / "infra/sql").glob("*.sql")))
    assert "faults.py" in found["bench"]
    assert found["schemas"] == len(list((ROOT / "schemas").glob("*.avsc")))
    assert found["released"] > 0, "schemas/released/ is not in the wheel: old events would not decode"
    assert Path(found["dir"]).resolve().is_relative_to(venv["site"].resolve())
