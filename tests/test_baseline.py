"""`unitask baseline`: TF-IDF + a linear model on the same prepared splits and metrics as fine-tuning."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import text_project

from unitask.baselines import baseline
from unitask.cli import main
from unitask.config import load_config
from unitask.tracking import tracking_uri


@pytest.mark.parametrize(("kind", "metric"), [("classification", "macro_f1"), ("pair_classification", "macro_f1"), ("regression", "pearson")])
def test_baseline_learns_keyword_tasks(tmp_path: Path, kind: str, metric: str) -> None:
    import mlflow

    cfg = load_config(text_project(tmp_path, kind))
    summary = baseline(cfg, "toy")
    assert summary["main_metric"] == metric
    assert summary["validation"][metric] > 0.9 and summary["test"][metric] > 0.9, summary
    assert summary["C"] in (0.1, 1.0, 10.0, 100.0)
    assert json.loads((tmp_path / "reports" / "baseline" / "toy.json").read_text()) == summary
    mlflow.set_tracking_uri(tracking_uri(cfg))
    (run,) = mlflow.search_runs(experiment_names=["unitask"], output_format="list")
    assert run.data.tags["unitask.stage"] == "baseline"
    assert run.data.metrics[f"test/toy/{metric}"] == pytest.approx(summary["test"][metric])


def test_cli_scores_every_applicable_task(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["baseline", "--params", str(text_project(tmp_path, "classification"))]) == 0
    assert capsys.readouterr().out.startswith("toy\tvalidation macro_f1 ")


def test_no_baseline_for_token_classification(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    params = text_project(tmp_path, "token_classification")
    assert main(["baseline", "--params", str(params), "--task", "toy"]) == 2
    assert "no TF-IDF baseline for type 'token_classification'" in capsys.readouterr().err
