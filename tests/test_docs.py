"""The documentation site builds strictly (a broken link fails it) and its reference pages are what
the config schema and the stage declarations generate (a stale page fails)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from unitask.cli import main

MKDOCS = [sys.executable, "-m", "mkdocs", "build", "--strict"]  # not --quiet: it hides the warnings strict counts


def site_copy(tmp_path: Path) -> Path:
    root = tmp_path / "site-src"
    shutil.copytree(REPO / "docs", root / "docs")
    shutil.copy(REPO / "mkdocs.yml", root / "mkdocs.yml")
    return root


def build(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MKDOCS, "--site-dir", str(root / "site")], cwd=root, capture_output=True, text=True)


def test_the_site_builds_strictly_and_a_broken_link_fails_it(tmp_path: Path) -> None:
    root = site_copy(tmp_path)
    done = build(root)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (root / "site" / "reference" / "config" / "index.html").is_file()
    page = root / "docs" / "stages" / "pretrain.md"
    page.write_text(page.read_text() + "\nSee [the missing page](nowhere.md).\n")
    broken = build(root)
    assert broken.returncode != 0 and "nowhere.md" in broken.stderr


def test_reference_pages_are_current_and_a_stale_one_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["docs", "--check", "--params", str(REPO / "params.yaml")]) == 0
    root = tmp_path / "project"
    shutil.copytree(REPO / "docs", root / "docs")
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    shutil.copy(REPO / "README.md", root / "README.md")
    page = root / "docs" / "reference" / "config.md"
    page.write_text(page.read_text().replace("cap every task (smoke runs)", "an old description"))
    capsys.readouterr()
    assert main(["docs", "--check", "--params", str(root / "params.yaml")]) == 2
    assert "reference/config.md out of date" in capsys.readouterr().err
    assert main(["docs", "--params", str(root / "params.yaml")]) == 0
    assert main(["docs", "--check", "--params", str(root / "params.yaml")]) == 0
