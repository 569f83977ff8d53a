"""Regularization and stopping settings: dropout reaches the model's config, the head L1 penalty
shrinks the head, and all five settings are logged as MLflow params of the fine-tune run."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import TINY_BERT, text_project

from unitask.config import load_config
from unitask.errors import ConfigError
from unitask.tasks.text import text_task
from unitask.training.model import build_model
from unitask.training.trainer import head_parameters

pytestmark = pytest.mark.usefixtures("single_thread")


def test_dropout_reaches_the_model(tmp_path: Path) -> None:
    from transformers import AutoConfig, AutoModel

    cfg = load_config(text_project(tmp_path, "classification"))
    task = text_task(cfg, "toy")
    default = build_model(cfg, task).config
    assert default.hidden_dropout_prob == 0.1  # BERT's own
    model = build_model(cfg, task, dropout=0.35)  # from model.backbone_config
    for field in ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout"):
        assert getattr(model.config, field) == 0.35
    assert model.dropout.p == 0.35  # the head's dropout module, not just the config

    AutoModel.from_config(AutoConfig.for_model(**TINY_BERT)).save_pretrained(tmp_path / "saved")
    cfg = load_config(text_project(tmp_path, "classification", model={"backbone": "saved", "max_length": 64}))
    model = build_model(cfg, task, dropout=0.2)  # from a saved model
    assert model.config.attention_probs_dropout_prob == 0.2
    assert model.bert.encoder.layer[0].attention.self.dropout.p == 0.2


def _head_l1(tmp_path: Path, head_l1: float) -> tuple[float, float]:
    from unitask.training.finetune import finetune

    root = tmp_path / f"l1-{head_l1}"
    cfg = load_config(text_project(root, "classification", finetune={"epochs": 6, "head_l1": head_l1}))
    summary = finetune(cfg, "toy")
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(root / "models" / "finetune" / "toy")
    return float(sum(p.detach().abs().sum() for p in head_parameters(model))), summary["validation"]["macro_f1"]


def test_head_l1_shrinks_the_head(tmp_path: Path) -> None:
    plain, _ = _head_l1(tmp_path, 0.0)
    penalized, f1 = _head_l1(tmp_path, 0.003)
    assert penalized < 0.8 * plain, (penalized, plain)  # measured: 1.17 vs 1.84
    assert f1 >= 0.9  # still learns the task


def test_head_parameters_are_outside_the_encoder(tmp_path: Path) -> None:
    from transformers import AutoConfig, AutoModel

    cfg = load_config(text_project(tmp_path, "token_classification"))
    model = build_model(cfg, text_task(cfg, "toy"))
    names = {n for n, p in model.named_parameters() if any(p is q for q in head_parameters(model))}
    assert names == {"classifier.weight", "classifier.bias"}
    assert head_parameters(AutoModel.from_config(AutoConfig.for_model(**TINY_BERT))) == []


def test_head_l1_needs_a_head(tmp_path: Path) -> None:
    from transformers import AutoConfig, AutoModel, TrainingArguments

    from unitask.training.trainer import UnitaskTrainer

    encoder = AutoModel.from_config(AutoConfig.for_model(**TINY_BERT))
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    with pytest.raises(ConfigError, match="no head parameters"):
        UnitaskTrainer(model=encoder, args=args, head_l1=0.1)


def test_settings_are_logged_to_mlflow(tmp_path: Path) -> None:
    import mlflow

    from unitask.tracking import tracking_uri
    from unitask.training.finetune import finetune

    settings = {"epochs": 1, "dropout": 0.2, "head_l1": 0.001, "weight_decay": 0.05,
                "early_stopping_patience": None, "max_steps": 3}  # fmt: skip
    cfg = load_config(text_project(tmp_path, "classification", finetune=settings))
    finetune(cfg, "toy")
    mlflow.set_tracking_uri(tracking_uri(cfg))
    (run,) = mlflow.search_runs(experiment_names=["unitask"], output_format="list")
    params = run.data.params
    assert params["finetune.dropout"] == "0.2" and params["finetune.head_l1"] == "0.001"
    assert params["finetune.weight_decay"] == "0.05" and params["finetune.max_steps"] == "3"
    assert params["finetune.early_stopping_patience"] == "None"
    assert params["finetune.augment.deletion"] == "0.0"
