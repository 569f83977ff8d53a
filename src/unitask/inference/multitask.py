"""Answers every task of a saved multi-task model: one encoder pass per input, the head picked by task.

Row fields by task type: `text` (classification, regression; token classification splits it on
white space, or takes `tokens`), `text` and `text_pair` (pair classification), and `text` as the
question with `text_pair` as the context (extractive QA; `question`/`context` work too).

A request is answered with one encoder pass over all of its rows, whatever their tasks: each task's rows
are encoded exactly as in training (QA contexts as doc-stride windows, token classification with its
word alignment), the features of every task are sorted by length and run through the encoder together
in batches of at most BATCH_SIZE cut where padding would cost more than another call (`length_batches`),
each task's head takes its rows' encoder outputs, and each task decodes its own rows, in the
request's order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import DataCollatorWithPadding

from unitask.config import TaskConfig
from unitask.inference import check_text_rows
from unitask.models.multitask import (
    SEQUENCE_TYPES,
    MultitaskModel,
    load_multitask,
    pooled,
)
from unitask.tasks.text import TextTask

BATCH_SIZE = 32  # rows an encoder call takes at most
# what one more encoder call costs, in padded tokens: its fixed cost (MiniLM, 2 CPU threads: ~38 ms for a
# 4-token row against ~1 ms a token in a 32 x 32 batch, on a busy machine) over the cost of a token
BATCH_COST = 32
PAD = -100  # how Trainer pads predictions of different lengths; decoding ignores it

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


def length_batches(lengths: list[int]) -> list[tuple[int, int]]:
    """Rows sorted by length, longest first -> (start, end) of each batch: at most BATCH_SIZE rows, cut
    where the padded tokens plus BATCH_COST per batch are least (dynamic programming), so that a few
    long rows do not pad a request's short ones, whatever their tasks."""
    cost, cut = [0.0] + [float("inf")] * len(lengths), [0] * (len(lengths) + 1)
    for end in range(1, len(lengths) + 1):
        for start in range(max(0, end - BATCH_SIZE), end):
            total = cost[start] + (end - start) * lengths[start] + BATCH_COST  # padded to its first (longest) row
            if total < cost[end]:
                cost[end], cut[end] = total, start
    spans, end = [], len(lengths)
    while end > 0:
        spans.append((cut[end], end))
        end = cut[end]
    return spans[::-1]


def _stack(parts: list[np.ndarray]) -> np.ndarray:
    """Outputs of some rows each -> one array, shorter sequences padded with PAD (as Trainer does)."""
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
        self.collate = DataCollatorWithPadding(tokenizer)  # pads the encoder inputs of mixed tasks alike

    @classmethod
    def load(cls, folder: str | Path) -> MultitaskPredictor:
        model, tokenizer, manifest = load_multitask(Path(folder))
        return cls(model, tokenizer, manifest)

    def predict(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        rows, outputs, groups = check_text_rows(rows, self.tasks)
        frames, features = {}, {}
        for name, index in groups.items():
            frames[name] = input_frame(self._objects[name], [rows[i] for i in index])
            # plain columns, not a Dataset: building and indexing one cost ~15% of a one-row request
            features[name] = self._objects[name].encode_columns(frames[name], self.tokenizer, self.max_length)
        predictions = self._heads(features)
        for name, index in groups.items():
            for i, output in zip(index, self._objects[name].decode(predictions[name], features[name], frames[name])):
                outputs[i] = output
        return outputs  # type: ignore[return-value]

    @torch.no_grad()
    def _heads(self, features: dict[str, dict[str, list[Any]]]) -> dict[str, Any]:
        """Each task's head outputs on its encoded features, as Trainer predicts them (one row per
        feature, token outputs padded with PAD), from one encoder pass over every task's features."""
        inputs = {
            name: {c: columns[c] for c in ("input_ids", "attention_mask", "token_type_ids") if c in columns}
            for name, columns in features.items()
        }
        lengths = {name: [len(ids) for ids in columns["input_ids"]] for name, columns in inputs.items()}
        # every (task, feature index), longest first, so that a batch's rows have similar lengths
        order = sorted(((name, k) for name in features for k in range(len(lengths[name]))), key=lambda f: -lengths[f[0]][f[1]])
        outputs: dict[str, list[Any]] = {name: [None] * len(lengths[name]) for name in features}
        for start, end in length_batches([lengths[name][k] for name, k in order]):
            chunk = order[start:end]
            batch = self.collate([{c: values[k] for c, values in inputs[name].items()} for name, k in chunk])
            encoded = self.model.encoder(**batch)
            sequence = pooled(encoded, batch["attention_mask"])
            rows: dict[str, list[int]] = {}  # the batch rows of each task
            for j, (name, _) in enumerate(chunk):
                rows.setdefault(name, []).append(j)
            for name, index in rows.items():
                picked = torch.tensor(index)
                out = self.model.head_outputs(name, encoded.last_hidden_state[picked], sequence[picked])
                keys = ("start_logits", "end_logits") if self.tasks[name] == "extractive_qa" else ("logits",)
                values = [out[key].float().numpy() for key in keys]
                for r, j in enumerate(index):
                    k = chunk[j][1]
                    # a token-level output cut to its feature's length: the rest is the batch's padding
                    cut = slice(None) if self.tasks[name] in SEQUENCE_TYPES else slice(lengths[name][k])
                    outputs[name][k] = [v[r, cut][None] for v in values]
        predictions: dict[str, Any] = {}
        for name, parts in outputs.items():
            stacked = [_stack([part[key] for part in parts]) for key in range(len(parts[0]))]
            predictions[name] = tuple(stacked) if self.tasks[name] == "extractive_qa" else stacked[0]
        return predictions
