"""Augment a task's training rows, afresh each epoch (`EpochAugmented`); labels stay with their rows.

Each epoch, every training row is augmented with probability `augment.rows` by one operation drawn
from the enabled ones (as in EDA, Wei & Zou 2019); the rest stay as they are. Sequence tasks augment
their text (both texts of a pair), token classification its words with their tags. Extractive QA is
refused: deleting or inserting words would move the answer spans, and a changed question length
changes how many windows a long context is cut into.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from torch.utils.data import Dataset

from unitask.augment.text import OPERATIONS, augment_words, operation
from unitask.errors import ConfigError

if TYPE_CHECKING:
    import pandas as pd

    from unitask.config import Augment

TEXT_COLUMNS = {"classification": ("text",), "regression": ("text",), "pair_classification": ("text", "text_pair")}


def mask_token(tokenizer: Any) -> str | None:
    """The token that masking writes: the tokenizer's mask token, else its unknown token."""
    return getattr(tokenizer, "mask_token", None) or getattr(tokenizer, "unk_token", None)


def augment_frame(frame: pd.DataFrame, task_type: str, settings: Augment, seed: int, mask: str | None) -> pd.DataFrame:
    """A copy of `frame` with a seeded share of its rows augmented; same rows, order and labels."""
    if task_type not in (*TEXT_COLUMNS, "token_classification"):
        raise ConfigError(
            f"finetune.augment: tasks of type {task_type} cannot be augmented",
            hint="augment classification, pair classification, regression or token classification "
            "tasks only (extractive QA: word edits would move the answer spans); set the task's "
            "tasks.<task>.finetune.augment operations to 0",
        )
    if settings.mask > 0 and mask is None:
        raise ConfigError(
            "finetune.augment.mask: the tokenizer has neither a mask nor an unknown token",
            hint="set finetune.augment.mask to 0 for this model",
        )
    ops = [operation(name, getattr(settings, name), mask) for name in OPERATIONS if getattr(settings, name) > 0]
    rng = random.Random(seed)
    out = frame.copy()
    if task_type == "token_classification":
        rows = [(list(map(str, w)), list(map(str, t))) for w, t in zip(frame["tokens"], frame["tags"])]
        rows = [
            augment_words(w, t, rng.choice(ops), rng) if ops and rng.random() < settings.rows else (w, t) for w, t in rows
        ]
        out["tokens"] = [w for w, _ in rows]
        out["tags"] = [t for _, t in rows]
        return out
    columns = TEXT_COLUMNS[task_type]
    texts = {c: frame[c].astype(str).tolist() for c in columns}
    for i in range(len(frame)):
        if ops and rng.random() < settings.rows:
            op = rng.choice(ops)
            for c in columns:
                texts[c][i] = " ".join(augment_words(texts[c][i].split(), None, op, rng)[0])
    for c in columns:
        out[c] = texts[c]
    return out


class EpochAugmented(Dataset):
    """Training features re-drawn at each epoch's start (Trainer calls `set_epoch`): the rows of
    `frame` augmented with seed (seed, epoch), then encoded. Seeding by epoch makes DDP ranks agree
    and a resumed run see the same data. One feature per row, so the length stays fixed."""

    def __init__(
        self,
        frame: pd.DataFrame,
        encode: Callable[[pd.DataFrame], Any],
        task_type: str,
        settings: Augment,
        seed: int,
        mask: str | None,
    ) -> None:
        self.frame, self.encode, self.task_type = frame, encode, task_type
        self.settings, self.seed, self.mask = settings, seed, mask
        self.epoch: int | None = None
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        if epoch == self.epoch:
            return
        rows = augment_frame(self.frame, self.task_type, self.settings, self.seed * 100_003 + epoch, self.mask)
        self.features = self.encode(rows)
        if len(self.features) != len(self.frame):
            raise ValueError(f"{len(self.features)} features for {len(self.frame)} rows: one per row expected")
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.frame)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.features[index]
