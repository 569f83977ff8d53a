"""Token classification (e.g. NER with BIO tags): one tag per word, learned on its first subword."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from unitask.errors import DataError

if TYPE_CHECKING:
    import pandas as pd
    from datasets import Dataset

    from unitask.config import TaskConfig

IGNORE = -100  # the label of subwords after the first and of special tokens: no loss, not scored


def entity_spans(tags: list[str]) -> set[tuple[str, int, int]]:
    """BIO tags -> {(type, start, end)}; an I- tag that does not continue an entity starts one (conlleval)."""
    spans: set[tuple[str, int, int]] = set()
    kind: str | None = None
    start = 0
    for i, tag in enumerate([*tags, "O"]):
        prefix, _, name = tag.partition("-")
        if kind is not None and (prefix != "I" or name != kind):
            spans.add((kind, start, i))
            kind = None
        if prefix == "B" or (prefix == "I" and kind is None):
            kind, start = name, i
    return spans


def entity_metrics(gold: list[list[str]], predicted: list[list[str]]) -> dict[str, float]:
    """Entity-level micro precision/recall/F1 (exact span and type) and token accuracy."""
    true_spans = [(i, *s) for i, tags in enumerate(gold) for s in entity_spans(tags)]
    pred_spans = [(i, *s) for i, tags in enumerate(predicted) for s in entity_spans(tags)]
    hits = len(set(true_spans) & set(pred_spans))
    precision = hits / len(pred_spans) if pred_spans else 0.0
    recall = hits / len(true_spans) if true_spans else 0.0
    f1 = 2 * precision * recall / (precision + recall) if hits else 0.0
    pairs = [(g, p) for gs, ps in zip(gold, predicted) for g, p in zip(gs, ps)]
    accuracy = sum(g == p for g, p in pairs) / len(pairs) if pairs else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "accuracy": accuracy}


class TokenClassificationTask:
    auto_model = "AutoModelForTokenClassification"
    main_metric = "f1"

    def __init__(self, name: str, config: TaskConfig) -> None:
        self.name = name
        self.config = config

    def labels(self) -> list[str]:
        return list(self.config.labels or [])

    def num_labels(self) -> int:
        return len(self.labels())

    def encode(self, frame: pd.DataFrame, tokenizer: Any, max_length: int) -> Dataset:
        from datasets import Dataset

        index = {tag: i for i, tag in enumerate(self.labels())}
        words = [[str(w) for w in tokens] for tokens in frame["tokens"]]
        tags = [[str(t) for t in row] for row in frame["tags"]]
        unknown = sorted({t for row in tags for t in row} - set(index))
        if unknown:
            raise DataError(
                f"tasks.{self.name}: tags {unknown[:5]} in the data are not in the declared labels",
                hint="add them to tasks.<name>.labels and run `unitask prepare` again",
            )
        encoded = tokenizer(words, is_split_into_words=True, truncation=True, max_length=max_length)
        labels = []
        for row, row_tags in enumerate(tags):
            previous = None
            aligned = []
            for word in encoded.word_ids(row):
                aligned.append(IGNORE if word is None or word == previous else index[row_tags[word]])
                previous = word
            labels.append(aligned)
        return Dataset.from_dict({**encoded, "labels": labels})

    def collator(self, tokenizer: Any) -> Any:
        from transformers import DataCollatorForTokenClassification

        return DataCollatorForTokenClassification(tokenizer, label_pad_token_id=IGNORE)

    def metrics(self, predictions: Any, label_ids: Any, features: Dataset, frame: pd.DataFrame) -> dict[str, float]:
        names = self.labels()
        predicted = np.asarray(predictions).argmax(-1)
        gold_rows, pred_rows = [], []
        for pred, gold in zip(predicted, np.asarray(label_ids)):
            keep = gold != IGNORE
            gold_rows.append([names[i] for i in gold[keep]])
            pred_rows.append([names[i] for i in pred[keep]])
        return entity_metrics(gold_rows, pred_rows)
