"""Extractive QA (SQuAD style): the answer is a span of the context, predicted as start and end tokens.

Long contexts are cut into overlapping windows (`doc_stride`); offsets map tokens back to characters,
and the best-scoring valid span over an example's windows is its answer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from unitask.errors import ConfigError
from unitask.tasks.features import features_dataset

if TYPE_CHECKING:
    import pandas as pd
    from datasets import Dataset

    from unitask.config import TaskConfig

N_BEST = 20  # start and end candidates per window


def _answers(value: Any) -> tuple[list[str], list[int]]:
    """A SQuAD `answers` cell -> (texts, character starts)."""
    return [str(t) for t in value["text"]], [int(s) for s in value["answer_start"]]


class ExtractiveQATask:
    auto_model = "AutoModelForQuestionAnswering"
    type = "extractive_qa"
    main_metric = "f1"

    def __init__(self, name: str, config: TaskConfig, doc_stride: int, max_answer_length: int) -> None:
        self.name = name
        self.config = config
        self.doc_stride = doc_stride
        self.max_answer_length = max_answer_length

    def labels(self) -> None:
        return None

    def num_labels(self) -> int:
        return 2

    def encode(self, frame: pd.DataFrame, tokenizer: Any, max_length: int) -> Dataset:
        return features_dataset(self.encode_columns(frame, tokenizer, max_length))

    def encode_columns(self, frame: pd.DataFrame, tokenizer: Any, max_length: int) -> dict[str, list[Any]]:
        """Windows of (question, context) with start/end token targets (CLS when the answer is
        outside the window), character offsets of context tokens, and the example index."""
        if self.doc_stride >= max_length // 2:
            raise ConfigError(
                f"finetune.doc_stride: {self.doc_stride} leaves no room in windows of model.max_length={max_length}",
                hint="use a doc_stride below half of model.max_length",
            )
        encoded = tokenizer(
            frame["question"].astype(str).str.lstrip().tolist(),
            frame["context"].astype(str).tolist(),
            truncation="only_second",
            max_length=max_length,
            stride=self.doc_stride,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
        )
        examples = encoded.pop("overflow_to_sample_mapping")
        answers = [_answers(a) for a in frame["answers"]]
        starts, ends, offsets = [], [], []
        for i, window in enumerate(encoded.pop("offset_mapping")):
            sequence = encoded.sequence_ids(i)
            context = [k for k, s in enumerate(sequence) if s == 1]
            offsets.append([list(o) if sequence[k] == 1 else None for k, o in enumerate(window)])
            start, end = 0, 0
            texts, chars = answers[examples[i]]
            if texts and context:
                first, last = chars[0], chars[0] + len(texts[0])
                lo, hi = context[0], context[-1]
                if window[lo][0] <= first and window[hi][1] >= last:
                    start = next(k for k in range(lo, hi + 1) if window[k][1] > first)
                    end = next(k for k in range(hi, lo - 1, -1) if window[k][0] < last)
            starts.append(start)
            ends.append(end)
        return {
            **encoded,
            "start_positions": starts,
            "end_positions": ends,
            "offset_mapping": offsets,
            "example_index": list(examples),
        }

    def collator(self, tokenizer: Any) -> Any:
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(tokenizer)

    def gold(self, frame: pd.DataFrame) -> list[list[str]]:
        return [_answers(a)[0] for a in frame["answers"]]

    def decode(self, predictions: Any, features: Dataset | dict[str, list[Any]], frame: pd.DataFrame) -> list[dict[str, Any]]:
        """The best valid span per example over all of its windows ("" when none is valid)."""
        start_logits, end_logits = (np.asarray(p) for p in predictions)
        contexts = frame["context"].astype(str).tolist()
        best: dict[int, tuple[float, int, int]] = {}
        for starts, ends, offsets, example in zip(
            start_logits, end_logits, features["offset_mapping"], features["example_index"]
        ):
            n = len(offsets)
            for s in np.argsort(starts[:n])[-N_BEST:]:
                for e in np.argsort(ends[:n])[-N_BEST:]:
                    if offsets[s] is None or offsets[e] is None or not 0 <= e - s < self.max_answer_length:
                        continue
                    score = float(starts[s] + ends[e])
                    if score > best.get(example, (-np.inf, 0, 0))[0]:
                        best[example] = (score, offsets[s][0], offsets[e][1])
        outputs = []
        for i, context in enumerate(contexts):
            score, start, end = best.get(i, (0.0, 0, 0))
            outputs.append({"answer": context[start:end], "start": start, "end": end, "score": score})
        return outputs
