"""The wheel installs one namespace, `sesflow`: the top-level folders (`common/`, `ingest/`, ...)
become `sesflow.common`, `sesflow.ingest`, ... and nothing is installed under their bare names."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PIP = [sys.executable, "-m", "pip"]
PACKAGES = ("cli", "common", "ingest", "sender", "stats", "tracker")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Built from a copy: setuptools builds in the source tree and would leave build/ behind.
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (ROOT / name).exists():
            shutil.copy(ROOT / name, source / name)
    for folder in ("sesflow", *PACKAGES):
        shutil.copytree(
            ROOT / folder,
            source / folder,
            symlinks=True,
            ignore=shutil.ignore_patterns("__pycache__"),
        )
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [*PIP, "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(source)],
        check=True,
        capture_output=True,
    )
    (path,) = out.glob("sesflow-*.whl")
    return path


def test_the_wheel_holds_only_the_sesflow_namespace(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/", 1)[0] for name in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"sesflow"}
    for package in PACKAGES:
        assert f"sesflow/{package}/__init__.py" in names
    assert "sesflow/common/lua/claim.lua" in names
    assert "sesflow/stats/static/dashboard.html" in names
    assert not [n for n in names if n.startswith("sesflow/") and "/tests/" in n]
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    assert "sesflow = sesflow.cli.main:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_installed_it_imports_as_sesflow_and_never_as_common(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run(
        [*PIP, "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
    )
    assert sorted(p.name for p in target.iterdir() if not p.name.endswith(".dist-info")) == [
        "bin",
        "sesflow",
    ]
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "import sesflow.common.keys, sesflow.cli.main, sesflow.sender.worker;"
        "assert sesflow.common.keys.__file__.startswith(sys.argv[1]), sesflow.common.keys.__file__;"
        "from sesflow.common.scripts import source; assert 'KEYS' in source('claim')\n"
        "try:\n import common\nexcept ModuleNotFoundError: pass\n"
        "else: raise SystemExit('a top-level common is importable')"
    )
    # Run outside the repository, so that its folders are not on the path.
    subprocess.run([sys.executable, "-c", probe, str(target)], check=True, cwd=tmp_path)
