"""Sequence-level tasks: classification, pair classification (two texts) and regression (a score)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from unitask.errors import DataError

if TYPE_CHECKING:
    import pandas as pd
    from datasets import Dataset

    from unitask.config import TaskConfig


def classification_metrics(y_true: Any, y_pred: Any) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
    }


def regression_metrics(y_true: Any, y_pred: Any) -> dict[str, float]:
    from scipy.stats import pearsonr, spearmanr

    y_true, y_pred = np.asarray(y_true, dtype=float), np.asarray(y_pred, dtype=float)
    constant = np.ptp(y_pred) == 0 or np.ptp(y_true) == 0  # correlation is undefined: report 0
    return {
        "pearson": 0.0 if constant else float(pearsonr(y_true, y_pred).statistic),
        "spearman": 0.0 if constant else float(spearmanr(y_true, y_pred).statistic),
        "rmse": float(np.sqrt(np.mean((y_true - y_pred) ** 2))),
        "mae": float(np.mean(np.abs(y_true - y_pred))),
    }


class SequenceTask:
    """One label (or score) per text or text pair, predicted from the pooled encoder output."""

    auto_model = "AutoModelForSequenceClassification"

    def __init__(self, name: str, config: TaskConfig) -> None:
        self.name = name
        self.config = config
        self.regression = config.type == "regression"
        self.main_metric = "pearson" if self.regression else "macro_f1"

    def labels(self) -> list[str] | None:
        return None if self.regression else list(self.config.labels or [])

    def num_labels(self) -> int:
        return 1 if self.regression else len(self.config.labels or [])

    def targets(self, frame: pd.DataFrame) -> list[float] | list[int]:
        """The label column as floats (regression) or label indices; DataError for unknown labels."""
        if self.regression:
            return frame["label"].astype(float).tolist()
        index = {label: i for i, label in enumerate(self.labels() or [])}
        values = frame["label"].astype(str)
        unknown = sorted(set(values) - set(index))
        if unknown:
            raise DataError(
                f"tasks.{self.name}: labels {unknown[:5]} in the data are not in the declared labels {list(index)}",
                hint="fix tasks.<name>.labels (or label_names) and run `unitask prepare` again",
            )
        return [index[v] for v in values]

    def encode(self, frame: pd.DataFrame, tokenizer: Any, max_length: int) -> Dataset:
        from datasets import Dataset

        pairs = frame["text_pair"].astype(str).tolist() if "text_pair" in frame else None
        encoded = tokenizer(frame["text"].astype(str).tolist(), pairs, truncation=True, max_length=max_length)
        return Dataset.from_dict({**encoded, "labels": self.targets(frame)})

    def collator(self, tokenizer: Any) -> Any:
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(tokenizer)

    def metrics(self, predictions: Any, label_ids: Any, features: Dataset, frame: pd.DataFrame) -> dict[str, float]:
        if self.regression:
            return regression_metrics(label_ids, np.asarray(predictions).reshape(-1))
        return classification_metrics(label_ids, np.asarray(predictions).argmax(-1))
