"""Security guarantees: weights only as safetensors (and `torch.load` only with weights_only=True),
no remote code unless the config asks, and no secret from the environment in logs, MLflow or outputs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import REPO, text_project

from unitask.cli import main
from unitask.config import load_config

SECRET = "unitask-planted-secret-6f1d2c"
UNSAFE = {
    r"torch\.load\((?![^)]*weights_only=True)": "torch.load without weights_only=True",
    r"\bpickle\.loads?\(": "pickle.load",
    r"trust_remote_code=True": "trust_remote_code hard-coded on",
    r"safe_serialization=False": "weights saved as pickle",
}
PICKLED = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"}


def test_source_loads_no_pickles_and_no_remote_code() -> None:
    found = []
    for path in sorted((REPO / "src").rglob("*.py")) + sorted((REPO / "components").rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        for pattern, what in UNSAFE.items():
            found += [f"{path.relative_to(REPO)}: {what}" for _ in re.finditer(pattern, text)]
    assert found == []


def test_remote_code_is_off_by_default() -> None:
    assert load_config(REPO / "params.yaml").model.trust_remote_code is False


@pytest.mark.usefixtures("single_thread")
def test_planted_secret_reaches_no_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """A fine-tune run with credentials in its environment: they appear in no log line, MLflow
    param, tag or artifact, metrics file or model folder; and the model folder holds safetensors only."""
    for name in ("AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_PASSWORD", "HF_TOKEN"):
        monkeypatch.setenv(name, SECRET)
    params = text_project(tmp_path, "classification", finetune={"epochs": 1})
    assert main(["finetune", "--task", "toy", "--params", str(params)]) == 0
    captured = capsys.readouterr()
    assert SECRET not in captured.out + captured.err
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.suffix == ".safetensors" for p in files)
    leaked = [str(p.relative_to(tmp_path)) for p in files if SECRET.encode() in p.read_bytes()]
    assert leaked == []  # covers mlflow/mlflow.db (params, tags) and mlflow/artifacts
    model_files = [p for p in (tmp_path / "models").rglob("*") if p.is_file()]
    assert [p.name for p in model_files if p.suffix in PICKLED] == []
