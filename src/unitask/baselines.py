"""TF-IDF + linear model baselines for text classification and regression (scikit-learn).

The same prepared splits and metrics as `unitask finetune`, so that a fine-tuned encoder has a cheap
bar to beat: word 1-2 grams, logistic regression (classes) or ridge (scores), with the strength
picked on the validation split.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from unitask.atomic import write_json
from unitask.config import SPLITS, Config
from unitask.errors import ConfigError
from unitask.evaluation.metrics import classification_metrics, regression_metrics
from unitask.evaluation.predictions import SCORED_SPLITS, write_predictions
from unitask.tasks.sequence import SequenceTask, label_outputs
from unitask.tasks.text import read_split
from unitask.tracking import log_datasets, log_trained_model, stage_run

BASELINE_TYPES = ("classification", "pair_classification", "regression")
STRENGTHS = (0.1, 1.0, 10.0, 100.0)  # C of logistic regression; ridge uses alpha = 1 / C


def baseline(cfg: Config, name: str) -> dict[str, Any]:
    """Fit on train, pick C on validation, score validation and test; write reports/baseline/<name>.json."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression, Ridge

    config = cfg.task(name)
    if config.type not in BASELINE_TYPES:
        raise ConfigError(
            f"tasks.{name}: no TF-IDF baseline for type '{config.type}'",
            hint=f"baselines cover {', '.join(BASELINE_TYPES)}",
        )
    task = SequenceTask(name, config)
    frames = {split: read_split(cfg, name, split) for split in SPLITS}
    texts = {
        split: (f["text"].astype(str) + (" [SEP] " + f["text_pair"].astype(str) if "text_pair" in f else "")).tolist()
        for split, f in frames.items()
    }
    targets = {split: task.targets(f) for split, f in frames.items()}
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    x = {"train": vectorizer.fit_transform(texts["train"])}
    x.update({split: vectorizer.transform(texts[split]) for split in ("validation", "test")})
    score = regression_metrics if task.regression else classification_metrics

    def fit(strength: float) -> Any:
        if task.regression:
            return Ridge(alpha=1.0 / strength).fit(x["train"], targets["train"])
        return LogisticRegression(C=strength, max_iter=2000).fit(x["train"], targets["train"])

    models = {c: fit(c) for c in STRENGTHS}
    best = max(STRENGTHS, key=lambda c: score(targets["validation"], models[c].predict(x["validation"]))[task.main_metric])
    summary: dict[str, Any] = {
        "task": name,
        "type": config.type,
        "model": "tfidf+ridge" if task.regression else "tfidf+logistic_regression",
        "C": best,
        "main_metric": task.main_metric,
        "features": len(vectorizer.vocabulary_),
    }
    model = models[best]
    for split in SCORED_SPLITS:
        summary[split] = score(targets[split], model.predict(x[split]))
        if task.regression:
            outputs = [{"value": float(v)} for v in model.predict(x[split])]
        else:
            probabilities = np.zeros((len(frames[split]), task.num_labels()))
            probabilities[:, model.classes_] = model.predict_proba(x[split])  # classes seen in training
            outputs = label_outputs(probabilities, task.labels() or [])
        write_predictions(cfg, "baseline", name, task.gold(frames[split]), outputs, split)
    write_json(cfg.path(cfg.paths.reports) / "baseline" / f"{name}.json", summary)
    with stage_run(cfg, "baseline", name, params={k: summary[k] for k in ("type", "model", "C", "features")}):
        import joblib

        log_datasets(cfg, [name])
        with tempfile.TemporaryDirectory() as tmp:  # the fitted vectorizer and model, as a LoggedModel
            joblib.dump({"vectorizer": vectorizer, "model": models[best]}, Path(tmp) / "model.joblib")
            log_trained_model(f"baseline-{name}", Path(tmp), {s: {name: summary[s]} for s in ("validation", "test")})
    return summary


def baseline_tasks(cfg: Config) -> list[str]:
    """Declared tasks a TF-IDF baseline applies to."""
    return [name for name, task in cfg.tasks.items() if task.type in BASELINE_TYPES]
