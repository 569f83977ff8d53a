"""Answers every task of a saved multi-task model: one encoder pass per input, the head picked by task.

Row fields by task type: `text` (classification, regression; token classification splits it on
white space, or takes `tokens`), `text` and `text_pair` (pair classification), and `text` as the
question with `text_pair` as the context (extractive QA; `question`/`context` work too). Rows are
grouped by task, encoded exactly as in training, run in batches, and decoded by the task type.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from unitask.config import TaskConfig
from unitask.inference import missing_fields
from unitask.models.multitask import MultitaskModel, load_multitask
from unitask.tasks.text import TextTask

BATCH_SIZE = 32
PAD = -100  # how Trainer pads predictions of different lengths; decoding ignores it

# the fields a row needs per task type (after the QA aliases are applied)
FIELDS = {
    "classification": ("text",),
    "regression": ("text",),
    "pair_classification": ("text", "text_pair"),
    "token_classification": ("text",),
    "extractive_qa": ("text", "text_pair"),
}


def task_object(name: str, spec: dict[str, Any]) -> TextTask:
    """The task implementation for a manifest entry, without the params file it was trained from."""
    config = TaskConfig.model_validate(spec["config"])
    if spec["type"] in ("classification", "pair_classification", "regression"):
        from unitask.tasks.sequence import SequenceTask

        return SequenceTask(name, config)
    if spec["type"] == "token_classification":
        from unitask.tasks.token_classification import TokenClassificationTask

        return TokenClassificationTask(name, config)
    from unitask.tasks.extractive_qa import ExtractiveQATask

    return ExtractiveQATask(name, config, spec["doc_stride"], spec["max_answer_length"])


def input_frame(task: TextTask, rows: list[dict[str, Any]]) -> Any:
    """Rows -> a prepared-split-like frame, with placeholder targets where training had gold ones."""
    import pandas as pd

    labels = task.labels() or []
    if task.type == "token_classification":
        tokens = [list(r["tokens"]) if r.get("tokens") else str(r["text"]).split() for r in rows]
        return pd.DataFrame({"tokens": tokens, "tags": [[labels[0]] * len(t) for t in tokens]})
    if task.type == "extractive_qa":
        return pd.DataFrame(
            {
                "question": [str(r["text"]) for r in rows],
                "context": [str(r["text_pair"]) for r in rows],
                "answers": [{"text": [], "answer_start": []} for _ in rows],
            }
        )
    frame = pd.DataFrame({"text": [str(r["text"]) for r in rows]})
    if task.type == "pair_classification":
        frame["text_pair"] = [str(r["text_pair"]) for r in rows]
    frame["label"] = [0.0 if task.type == "regression" else labels[0]] * len(rows)
    return frame


def _stack(parts: list[np.ndarray]) -> np.ndarray:
    """Batches of outputs -> one array, shorter sequences padded with PAD (as Trainer does)."""
    if parts[0].ndim == 1 or all(p.shape[1:] == parts[0].shape[1:] for p in parts):
        return np.concatenate(parts)
    width = max(p.shape[1] for p in parts)
    return np.concatenate(
        [np.pad(p, [(0, 0), (0, width - p.shape[1])] + [(0, 0)] * (p.ndim - 2), constant_values=PAD) for p in parts]
    )


class MultitaskPredictor:
    def __init__(self, model: MultitaskModel, tokenizer: Any, manifest: dict[str, Any]) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_length = int(manifest["max_length"])
        self.specs = manifest["tasks"]
        self.tasks = {name: spec["type"] for name, spec in self.specs.items()}
        self._objects = {name: task_object(name, spec) for name, spec in self.specs.items()}

    @classmethod
    def load(cls, folder: str | Path) -> MultitaskPredictor:
        model, tokenizer, manifest = load_multitask(Path(folder))
        return cls(model, tokenizer, manifest)

    def predict(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        rows = [_aliases(row) for row in rows]
        outputs: list[dict[str, Any] | None] = [None] * len(rows)
        groups: dict[str, list[int]] = {}
        for i, row in enumerate(rows):
            name = row.get("task")
            if name not in self.tasks:
                outputs[i] = {"error": f"unknown task {name!r}; this model answers {', '.join(self.tasks)}"}
                continue
            fields = FIELDS[self.tasks[name]]
            if self.tasks[name] == "token_classification" and row.get("tokens"):
                fields = ()
            problem = missing_fields(row, fields)
            if problem:
                outputs[i] = {"error": problem}
                continue
            groups.setdefault(name, []).append(i)
        for name, indices in groups.items():
            for i, output in zip(indices, self._run(name, [rows[i] for i in indices])):
                outputs[i] = output
        return outputs  # type: ignore[return-value]

    @torch.no_grad()
    def _run(self, name: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        task = self._objects[name]
        frame = input_frame(task, rows)
        features = task.encode(frame, self.tokenizer, self.max_length)
        columns = [c for c in ("input_ids", "attention_mask", "token_type_ids") if c in features.column_names]
        collate = task.collator(self.tokenizer)
        task_id = self.model.task_index(name)
        parts: list[list[np.ndarray]] = []
        for start in range(0, len(features), BATCH_SIZE):
            # slicing, not Dataset.select, which hashes a new fingerprint per call (see features_dataset)
            chunk = features[start : start + BATCH_SIZE]
            batch = collate([dict(zip(columns, values)) for values in zip(*(chunk[c] for c in columns))])
            out = self.model(task_id, **{k: v for k, v in batch.items()})
            keys = ("start_logits", "end_logits") if task.type == "extractive_qa" else ("logits",)
            parts.append([out[k].float().numpy() for k in keys])
        stacked = [_stack([p[k] for p in parts]) for k in range(len(parts[0]))]
        predictions = tuple(stacked) if task.type == "extractive_qa" else stacked[0]
        return task.decode(predictions, features, frame)


def _aliases(row: dict[str, Any]) -> dict[str, Any]:
    """`question`/`context` as the QA names of `text`/`text_pair`."""
    row = dict(row)
    if row.get("text") in (None, "") and row.get("question"):
        row["text"] = row["question"]
    if row.get("text_pair") in (None, "") and row.get("context"):
        row["text_pair"] = row["context"]
    return row
