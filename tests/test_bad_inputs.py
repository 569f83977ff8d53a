"""The bad-input corpus (tests/bad_inputs.yaml) through the CLI: every broken config or dataset exits
non-zero with a short message saying what, where and how to fix it, prints no traceback (unless
--debug), and leaves the outputs of earlier stages byte for byte as they were."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from conftest import REPO, TINY_BERT, keyword_rows, single_thread_env, write_project

from unitask.cli import main

CASES: list[dict[str, Any]] = yaml.safe_load((Path(__file__).parent / "bad_inputs.yaml").read_text())
OUTPUTS = ("data", "reports")  # what earlier stages wrote


@pytest.fixture(scope="module")
def ready_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project with a classification and a NER task, fetched, prepared and validated."""
    root = tmp_path_factory.mktemp("ready")
    (root / "raw").mkdir()
    pd.DataFrame(keyword_rows(60)).to_csv(root / "raw" / "reviews.csv", index=False)
    sentences = [f"alice\tB-per\nvisits\tO\nplace{i}\tO\n" for i in range(40)]
    (root / "raw" / "ner.conll").write_text("\n".join(sentences))
    tasks = {
        "reviews": {
            "type": "classification",
            "source": {"kind": "local", "path": "raw/reviews.csv"},
            "read": {"format": "csv"},
            "columns": {"text": "text", "label": "label"},
            "labels": ["neg", "pos"],
        },
        "ner": {
            "type": "token_classification",
            "source": {"kind": "local", "path": "raw/ner.conll"},
            "read": {"format": "conll", "sep": "\t"},
            "columns": {"tokens": "tokens", "tags": "tags"},
            "labels": ["O", "B-per"],
        },
    }
    write_project(
        root,
        tasks,
        model={"backbone_config": TINY_BERT, "max_length": 32},
        validate={"data_docs": False},
        finetune={"max_steps": 1, "bf16": False},
    )
    for command in (["data", "fetch"], ["prepare"], ["validate"]):
        assert main([*command, "--params", str(root / "params.yaml")]) == 0
    return root


def _snapshot(root: Path, own: list[str]) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for top in OUTPUTS
        for p in sorted((root / top).rglob("*"))
        if p.is_file() and not any(p.relative_to(root).is_relative_to(o) for o in own)
    }


def _break(root: Path, case: dict[str, Any]) -> None:
    for rel, text in (case.get("write") or {}).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    for rel, text in (case.get("append") or {}).items():
        with (root / rel).open("a") as out:
            out.write(text)
    for rel in case.get("delete") or []:
        shutil.rmtree(root / rel)
    if "leak" in case:  # copy a test row into train: the leakage check must catch it
        folder = root / "data" / "prepared" / case["leak"]
        train, test = (pd.read_parquet(folder / f"{s}.parquet") for s in ("train", "test"))
        pd.concat([train, test.head(1)]).to_parquet(folder / "train.parquet")


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_bad_input_is_refused_cleanly(ready_project: Path, tmp_path: Path, case: dict[str, Any], capsys) -> None:
    root = tmp_path / "project"
    shutil.copytree(ready_project, root)
    _break(root, case)
    own = case.get("own", [])
    before = _snapshot(root, own)
    args = ["--params", str(root / case.get("params", "params.yaml"))]
    for item in case.get("set") or []:
        args += ["--set", item]
    if "then" in case:  # a first step that must succeed (e.g. fetch new raw data), then the failing one
        assert main([*case["command"], *args]) == 0, capsys.readouterr().err
        before = _snapshot(root, own)
        code = main([*case["then"], *args])
    else:
        code = main([*case["command"], *args])
    err = capsys.readouterr().err
    assert code == case["exit"], err
    assert "Traceback" not in err
    message = err[err.index("unitask: error: ") :]  # after any progress bars
    assert "fix: " in message, f"no how-to-fix in: {message}"
    assert len(message.splitlines()) <= 12, message
    for text in case["expect"]:
        assert text in err, err
    assert _snapshot(root, own) == before, "earlier outputs changed"


def test_debug_shows_the_traceback(ready_project: Path) -> None:
    """The same error through the installed console script: one line by default, the traceback with --debug."""
    args = ["prepare", "--params", str(ready_project / "params.yaml"), "--task", "nope"]
    quiet = subprocess.run(
        [sys.executable, "-m", "unitask.cli", *args], capture_output=True, text=True, env=single_thread_env(), cwd=REPO
    )
    loud = subprocess.run(
        [sys.executable, "-m", "unitask.cli", *args, "--debug"],
        capture_output=True,
        text=True,
        env=single_thread_env(),
        cwd=REPO,
    )
    assert quiet.returncode == 2 and "Traceback" not in quiet.stderr and "tasks.nope: no such task" in quiet.stderr
    assert loud.returncode != 0 and "Traceback" in loud.stderr and "ConfigError" in loud.stderr
