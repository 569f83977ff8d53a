"""`unitask finetune` on a tiny BERT built from a config: every text task type learns a small
synthetic task, and the outputs (model folder, metrics JSON, one MLflow run) are complete."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import logged_model_files, text_project

from unitask.config import load_config
from unitask.evaluation.metrics import task_metrics
from unitask.evaluation.predictions import read_predictions
from unitask.tasks.features import features_dataset
from unitask.tracking import tracking_uri
from unitask.training.finetune import finetune

# type -> (finetune overrides, main metric, floor well above chance)
CASES = {
    "classification": ({}, "macro_f1", 0.9),  # 3 classes: chance ~0.33
    "pair_classification": ({}, "macro_f1", 0.9),
    "regression": ({"learning_rate": 5e-3}, "pearson", 0.8),  # chance 0
    "token_classification": ({}, "f1", 0.9),  # entity F1; chance ~0
    "extractive_qa": ({}, "f1", 80.0),  # SQuAD F1 in percent; contexts span several windows
}

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.mark.parametrize("kind", CASES)
def test_tiny_model_learns_each_task_type(tmp_path: Path, kind: str) -> None:
    import mlflow
    from mlflow import MlflowClient

    overrides, metric, floor = CASES[kind]
    cfg = load_config(text_project(tmp_path, kind, finetune=overrides))
    summary = finetune(cfg, "toy")

    assert summary["main_metric"] == metric
    assert summary["validation"][metric] >= floor, summary
    assert summary["test"][metric] >= floor, summary

    model_dir = tmp_path / "models" / "finetune" / "toy"
    assert {"model.safetensors", "config.json", "tokenizer.json", "labels.json"} <= {p.name for p in model_dir.iterdir()}
    labels = json.loads((model_dir / "labels.json").read_text())
    assert labels["type"] == kind and labels["labels"] == cfg.tasks["toy"].labels
    assert json.loads((tmp_path / "reports" / "finetune" / "toy.json").read_text()) == json.loads(json.dumps(summary))
    assert not (tmp_path / "models" / "checkpoints" / "finetune" / "toy").exists()
    for split in ("validation", "test"):  # what `unitask evaluate` scores (validation decides, test reports)
        gold, outputs = read_predictions(cfg, "finetune", "toy", split)
        assert len(gold) == len(outputs) > 0
        assert task_metrics(kind, gold, outputs)[metric] == pytest.approx(summary[split][metric]), split

    mlflow.set_tracking_uri(tracking_uri(cfg))
    (run,) = mlflow.search_runs(experiment_names=["unitask"], output_format="list")
    client = MlflowClient()
    losses = [m.value for m in client.get_metric_history(run.info.run_id, "loss")]
    assert len(losses) > 3 and losses[-1] < 0.5 * losses[0], losses
    per_epoch = client.get_metric_history(run.info.run_id, f"eval_{metric}")
    assert len(per_epoch) == cfg.finetune.epochs and per_epoch[-1].value > per_epoch[0].value
    assert run.data.metrics[f"test/toy/{metric}"] == pytest.approx(summary["test"][metric])
    assert run.data.params["type"] == kind and run.data.params["finetune.epochs"] == "10.0"
    assert "model.safetensors" in logged_model_files(run)


def test_features_dataset_holds_what_from_dict_holds() -> None:
    """The task encoders' Dataset (random fingerprint, no table hashing) has from_dict's rows, columns
    and length, QA's None offsets and (start, end) pairs included."""
    from datasets import Dataset

    columns = {
        "input_ids": [[101, 7, 8, 102], [101, 102]],
        "attention_mask": [[1, 1, 1, 1], [1, 1]],
        "labels": [2, 0],
        "offset_mapping": [[None, (0, 3), (4, 6), None], [None, None]],
    }
    ours, theirs = features_dataset(columns), Dataset.from_dict(columns)
    assert ours.column_names == theirs.column_names and len(ours) == len(theirs) == 2
    assert ours.to_list() == theirs.to_list()
    assert ours[0:1]["offset_mapping"] == [[None, [0, 3], [4, 6], None]]
