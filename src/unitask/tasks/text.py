"""The interface every text task type implements for training: encode, collate, head, metrics.

`text_task(cfg, name)` returns the implementation for a task's type. Fine-tuning, multi-task and
fusion training use the same objects, so each piece is a separate method.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from unitask.errors import ConfigError, DataError

if TYPE_CHECKING:
    import pandas as pd
    from datasets import Dataset

    from unitask.config import Config


class TextTask(Protocol):
    name: str
    type: str  # the task type (TASK_TYPES)
    auto_model: str  # the transformers `AutoModelFor*` class that adds the head
    main_metric: str  # the validation metric to select and early-stop on (greater is better)

    def labels(self) -> list[str] | None:
        """Label names in head order (None for a numeric target)."""

    def num_labels(self) -> int:
        """Outputs of the head."""

    def encode(self, frame: pd.DataFrame, tokenizer: Any, max_length: int) -> Dataset:
        """Prepared rows -> model features (unpadded) with their training targets:
        `features_dataset(encode_columns(...))`."""

    def encode_columns(self, frame: pd.DataFrame, tokenizer: Any, max_length: int) -> dict[str, list[Any]]:
        """The same features as columns of Python lists (what the served predictor batches)."""

    def collator(self, tokenizer: Any) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
        """Pads a batch of features dynamically."""

    def gold(self, frame: pd.DataFrame) -> list[Any]:
        """The target of each row of `frame`, as `unitask.evaluation.metrics.task_metrics` takes it."""

    def decode(self, predictions: Any, features: Dataset | dict[str, list[Any]], frame: pd.DataFrame) -> list[dict[str, Any]]:
        """Model outputs over `features` (encoded from `frame`, as a Dataset or its columns) -> one output per row of `frame`:
        {"label", "scores"}, {"value"}, {"tags", "entities"} or {"answer", "start", "end", "score"}."""


def task_scores(task: TextTask, predictions: Any, features: Dataset, frame: pd.DataFrame) -> dict[str, float]:
    """The task type's metrics for raw model predictions over `features`."""
    from unitask.evaluation.metrics import task_metrics

    return task_metrics(task.type, task.gold(frame), task.decode(predictions, features, frame))


def text_task(cfg: Config, name: str) -> TextTask:
    """The training implementation of task `name`; ConfigError for an unknown or non-text task."""
    task = cfg.task(name)
    if task.type in ("classification", "pair_classification", "regression"):
        from unitask.tasks.sequence import SequenceTask

        return SequenceTask(name, task)
    if task.type == "token_classification":
        from unitask.tasks.token_classification import TokenClassificationTask

        return TokenClassificationTask(name, task)
    if task.type == "extractive_qa":
        from unitask.tasks.extractive_qa import ExtractiveQATask

        settings = cfg.finetune_for(name)
        return ExtractiveQATask(name, task, settings.doc_stride, settings.max_answer_length)
    raise ConfigError(
        f"tasks.{name}: type '{task.type}' is not a text task",
        hint="fine-tune text tasks only; text+image tasks are trained by fusion",
    )


def read_split(cfg: Config, name: str, split: str) -> pd.DataFrame:
    """One prepared split of task `name`; DataError when `unitask prepare` has not written it."""
    import pandas as pd

    path = cfg.path(cfg.paths.prepared) / name / f"{split}.parquet"
    if not path.is_file():
        raise DataError(f"{path}: no prepared split", hint=f"run `unitask prepare --task {name}` first")
    return pd.read_parquet(path)
