"""Sequence-level tasks: classification, pair classification (two texts) and regression (a score)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from unitask.errors import DataError
from unitask.evaluation.metrics import MAIN_METRIC
from unitask.tasks.features import features_dataset

if TYPE_CHECKING:
    import pandas as pd
    from datasets import Dataset

    from unitask.config import TaskConfig


class SequenceTask:
    """One label (or score) per text or text pair, predicted from the pooled encoder output."""

    auto_model = "AutoModelForSequenceClassification"

    def __init__(self, name: str, config: TaskConfig) -> None:
        self.name = name
        self.config = config
        self.type = config.type
        self.regression = config.type == "regression"
        self.main_metric = MAIN_METRIC[config.type]

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
        return features_dataset(self.encode_columns(frame, tokenizer, max_length))

    def encode_columns(self, frame: pd.DataFrame, tokenizer: Any, max_length: int) -> dict[str, list[Any]]:
        pairs = frame["text_pair"].astype(str).tolist() if "text_pair" in frame else None
        encoded = tokenizer(frame["text"].astype(str).tolist(), pairs, truncation=True, max_length=max_length)
        return {**encoded, "labels": self.targets(frame)}

    def collator(self, tokenizer: Any) -> Any:
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(tokenizer)

    def gold(self, frame: pd.DataFrame) -> list[Any]:
        return frame["label"].astype(float).tolist() if self.regression else frame["label"].astype(str).tolist()

    def decode(self, predictions: Any, features: Dataset | dict[str, list[Any]], frame: pd.DataFrame) -> list[dict[str, Any]]:
        logits = np.asarray(predictions, dtype=float)
        if self.regression:
            return [{"value": float(v)} for v in logits.reshape(-1)]
        return label_outputs(softmax(logits), self.labels() or [])


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(-1, keepdims=True))
    return shifted / shifted.sum(-1, keepdims=True)


def label_outputs(probabilities: np.ndarray, labels: list[str]) -> list[dict[str, Any]]:
    """Rows of class probabilities -> {"label": the most likely, "scores": probability per label}."""
    return [
        {"label": labels[int(row.argmax())], "scores": {name: float(p) for name, p in zip(labels, row)}}
        for row in probabilities
    ]
