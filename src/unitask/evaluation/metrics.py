"""Metrics by task type, on decoded outputs: label names, scores, tag sequences or answer texts.

Every model (TF-IDF baseline, fine-tune, multi-task, fusion) is scored by the same functions, so a
comparison across models compares like with like. `task_metrics` picks the set for a task type.
"""

from __future__ import annotations

import collections
import re
import string
from typing import Any

import numpy as np

MAIN_METRIC = {
    "classification": "macro_f1",
    "pair_classification": "macro_f1",
    "multimodal_classification": "macro_f1",
    "regression": "pearson",
    "token_classification": "f1",
    "extractive_qa": "f1",
}

# main metrics reported in percent; `unit_score` scales them to 0-1 where scores of tasks are averaged
PERCENT_METRICS = {"extractive_qa": {"exact_match", "f1"}}


def unit_score(task_type: str, metric: str, value: float) -> float:
    """`value` of `metric` on the 0-1 scale of the other metrics (SQuAD's percentages / 100)."""
    return value / 100 if metric in PERCENT_METRICS.get(task_type, ()) else value


def classification_metrics(gold: list[Any], predicted: list[Any]) -> dict[str, float]:
    """Accuracy and macro precision, recall and F1 (scikit-learn; a class never predicted scores 0)."""
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    precision, recall, f1, _ = precision_recall_fscore_support(gold, predicted, average="macro", zero_division=0)
    return {
        "accuracy": float(accuracy_score(gold, predicted)),
        "macro_precision": float(precision),
        "macro_recall": float(recall),
        "macro_f1": float(f1),
    }


def group_accuracy(gold: list[Any], predicted: list[Any], groups: list[str]) -> dict[str, dict[str, float]]:
    """Accuracy and row count per group (e.g. per question kind), groups in sorted order."""
    from sklearn.metrics import accuracy_score

    by_group: dict[str, dict[str, float]] = {}
    for group in sorted(set(groups)):
        rows = [i for i, g in enumerate(groups) if g == group]
        by_group[group] = {"accuracy": float(accuracy_score([gold[i] for i in rows], [predicted[i] for i in rows])),
                           "rows": len(rows)}  # fmt: skip
    return by_group


def per_class_report(gold: list[Any], predicted: list[Any], labels: list[str]) -> dict[str, dict[str, float]]:
    """Precision, recall, F1 and support per label (scikit-learn's classification report)."""
    from sklearn.metrics import classification_report

    report = classification_report(gold, predicted, labels=labels, output_dict=True, zero_division=0)
    return {label: {k: float(v) for k, v in report[label].items()} for label in labels}


def confusion(gold: list[Any], predicted: list[Any], labels: list[str]) -> list[list[int]]:
    """Confusion matrix: row = gold label, column = predicted label, both in `labels` order."""
    from sklearn.metrics import confusion_matrix

    return confusion_matrix(gold, predicted, labels=labels).tolist()


def regression_metrics(gold: list[float], predicted: list[float]) -> dict[str, float]:
    """Pearson and Spearman correlation (0 when either side is constant), MSE, RMSE and MAE."""
    from scipy.stats import pearsonr, spearmanr

    y_true, y_pred = np.asarray(gold, dtype=float), np.asarray(predicted, dtype=float)
    constant = np.ptp(y_pred) == 0 or np.ptp(y_true) == 0
    mse = float(np.mean((y_true - y_pred) ** 2))
    return {
        "pearson": 0.0 if constant else float(pearsonr(y_true, y_pred).statistic),
        "spearman": 0.0 if constant else float(spearmanr(y_true, y_pred).statistic),
        "mse": mse,
        "rmse": float(np.sqrt(mse)),
        "mae": float(np.mean(np.abs(y_true - y_pred))),
    }


def entity_spans(tags: list[str]) -> set[tuple[str, int, int]]:
    """BIO tags -> {(type, start, end)} with `end` exclusive, as seqeval's default (conlleval) mode
    chunks them: an I- tag that does not continue an entity of its type starts one."""
    from seqeval.metrics.sequence_labeling import get_entities

    return {(kind, start, end + 1) for kind, start, end in get_entities(list(tags))}


def entity_metrics(gold: list[list[str]], predicted: list[list[str]]) -> dict[str, float]:
    """Entity-level micro precision/recall/F1 (seqeval's default mode: exact span and type, as
    conlleval) and token accuracy; 0 where nothing is predicted or nothing is there to find."""
    from seqeval.metrics import accuracy_score, precision_score, recall_score
    from seqeval.metrics import f1_score as seqeval_f1

    if not any(gold) and not any(predicted):
        return {"precision": 0.0, "recall": 0.0, "f1": 0.0, "accuracy": 0.0}
    gold, predicted = [list(g) for g in gold], [list(p) for p in predicted]
    return {
        "precision": float(precision_score(gold, predicted, zero_division=0)),
        "recall": float(recall_score(gold, predicted, zero_division=0)),
        "f1": float(seqeval_f1(gold, predicted, zero_division=0)),
        "accuracy": float(accuracy_score(gold, predicted)),
    }


def normalize_answer(text: str) -> str:
    """SQuAD normalization: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def squad_metrics(golds: list[list[str]], predictions: list[str]) -> dict[str, float]:
    """Exact match and token F1 in percent, each the best over an example's gold answers: the official
    SQuAD v1.1 arithmetic (tests/test_metrics.py checks it against torchmetrics' port of that script);
    an example without gold answers counts as the answer ""."""

    def f1(gold: str, pred: str) -> float:
        g, p = normalize_answer(gold).split(), normalize_answer(pred).split()
        if not g or not p:
            return float(g == p)
        common = sum((collections.Counter(g) & collections.Counter(p)).values())
        if common == 0:
            return 0.0
        precision, recall = common / len(p), common / len(g)
        return 2 * precision * recall / (precision + recall)

    exact = [max(normalize_answer(g) == normalize_answer(p) for g in gs or [""]) for gs, p in zip(golds, predictions)]
    f1s = [max(f1(g, p) for g in gs or [""]) for gs, p in zip(golds, predictions)]
    n = max(len(predictions), 1)
    return {"exact_match": 100.0 * sum(exact) / n, "f1": 100.0 * sum(f1s) / n}


SCORERS = {
    "classification": classification_metrics,
    "pair_classification": classification_metrics,
    "multimodal_classification": classification_metrics,
    "regression": regression_metrics,
    "token_classification": entity_metrics,
    "extractive_qa": squad_metrics,
}


# the field of a decoded output (see `TextTask.decode`) that is compared with the gold value
OUTPUT_KEY = {
    "classification": "label",
    "pair_classification": "label",
    "multimodal_classification": "label",
    "regression": "value",
    "token_classification": "tags",
    "extractive_qa": "answer",
}


def task_metrics(task_type: str, gold: list[Any], outputs: list[dict[str, Any]]) -> dict[str, float]:
    """The metrics of `task_type` for gold values and decoded outputs (one per example)."""
    key = OUTPUT_KEY[task_type]
    return SCORERS[task_type](gold, [output[key] for output in outputs])
