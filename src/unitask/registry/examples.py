"""Input rows for the served model built from test rows: the logged input example, and the check
that the bundle answers every task before it is registered."""

from __future__ import annotations

import base64
from typing import Any

from unitask.config import Config
from unitask.tasks.text import read_split


def input_row(cfg: Config, task: str, kind: str, example: dict[str, Any]) -> dict[str, Any]:
    """A prepared row -> the served model's input row {task, text[, text_pair][, image]}; the image goes
    as base64, so that the example is answered wherever the model is served."""
    if kind == "token_classification":
        return {"task": task, "text": " ".join(str(t) for t in example["tokens"])}
    if kind == "extractive_qa":
        return {"task": task, "text": str(example["question"]), "text_pair": str(example["context"])}
    row = {"task": task, "text": str(example["text"])}
    if "text_pair" in example:
        row["text_pair"] = str(example["text_pair"])
    if "image" in example:  # a path relative to the project root (see `unitask.images`)
        row["image"] = base64.b64encode(cfg.path(str(example["image"])).read_bytes()).decode("ascii")
    return row


def example_rows(cfg: Config, routes: dict[str, str], types: dict[str, str]) -> list[dict[str, Any]]:
    """One input row per served task: the first row of its test split."""
    return [input_row(cfg, task, types[task], read_split(cfg, task, "test").iloc[0].to_dict()) for task in routes]


def as_frame(rows: list[dict[str, Any]]) -> Any:
    """Rows -> a DataFrame with None (not NaN) where a row lacks a column, as MLflow stores examples."""
    import pandas as pd

    frame = pd.DataFrame(rows).astype(object)
    return frame.where(frame.notna(), None)
