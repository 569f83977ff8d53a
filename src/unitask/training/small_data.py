"""What a fine-tune does so that small and skewed data still teach it: a floor on optimizer steps
(more epochs on a small train split; early stopping still ends training on validation), and loss
weights per label that lift the rare labels of a skewed classification task."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from unitask.tasks.text import TextTask

WEIGHTED_TYPES = ("classification", "pair_classification")


def budget_epochs(settings: Any, examples: int, args: Any) -> float:
    """`settings.epochs`, raised to the epochs that make `settings.min_steps` optimizer steps over
    `examples` training features with `args`' global batch; unchanged when `max_steps` caps training."""
    if not settings.min_steps or settings.max_steps:
        return settings.epochs
    batch = args.per_device_train_batch_size * args.world_size * args.gradient_accumulation_steps
    return max(settings.epochs, math.ceil(settings.min_steps / math.ceil(examples / batch)))


def label_weights(task: TextTask, frame: pd.DataFrame, balance: float) -> list[float] | None:
    """Loss weight per label, proportional to count ** -balance over the train rows and scaled to a mean
    of 1 per row: 0 weighs rows equally (None is returned), 1 is scikit-learn's `class_weight="balanced"`
    (every label carries the same total weight). Weighting a row's loss by this is drawing labels with
    probability proportional to count ** (1 - balance): a temperature 1 / (1 - balance) over labels."""
    if not balance or task.type not in WEIGHTED_TYPES:
        return None
    counts = np.bincount(np.asarray(task.targets(frame), dtype=int), minlength=task.num_labels()).astype(float)
    weights = np.where(counts > 0, np.maximum(counts, 1) ** -balance, 0.0)
    return (weights * counts.sum() / (weights * counts).sum()).tolist()
