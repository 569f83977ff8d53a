"""Validation and test predictions of every model, one JSON line per example: {"gold": ..., **decoded output}.

Training stages write them, test at `reports/predictions/<model>/<task>.jsonl` and validation at
`reports/predictions/<model>/validation/<task>.jsonl`; `unitask evaluate` scores and compares both,
so evaluation needs no model loaded and every model is scored alike. Validation scores decide (the
registry gate); test scores are only reported.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from unitask.atomic import atomic_file, json_value
from unitask.config import Config
from unitask.errors import DataError

Split = Literal["validation", "test"]
SCORED_SPLITS: tuple[Split, ...] = ("validation", "test")


def predictions_path(cfg: Config, model: str, task: str, split: Split = "test") -> Path:
    folder = cfg.path(cfg.paths.reports) / "predictions" / model
    return (folder if split == "test" else folder / split) / f"{task}.jsonl"


def write_predictions(
    cfg: Config, model: str, task: str, gold: list[Any], outputs: list[dict[str, Any]], split: Split = "test"
) -> Path:
    """Write `model`'s decoded outputs for `task`'s `split` rows beside their gold values (atomically)."""
    if len(gold) != len(outputs):
        raise ValueError(f"{model}/{task}/{split}: {len(gold)} gold values but {len(outputs)} outputs")
    path = predictions_path(cfg, model, task, split)
    with atomic_file(path) as tmp:
        with tmp.open("w", encoding="utf-8") as out:
            for value, output in zip(gold, outputs):
                out.write(json.dumps({"gold": json_value(value), **output}) + "\n")
    return path


def read_predictions(cfg: Config, model: str, task: str, split: Split = "test") -> tuple[list[Any], list[dict[str, Any]]]:
    """(gold values, decoded outputs) of `model` on `task`'s `split`; DataError when the stage has not run."""
    path = predictions_path(cfg, model, task, split)
    if not path.is_file():
        raise DataError(
            f"{path}: no {split} predictions of model '{model}' for task '{task}'",
            hint="run (or rerun, if it predates validation predictions) that training stage first",
        )
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    return [row.pop("gold") for row in rows], rows
