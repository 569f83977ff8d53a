"""Token classification (e.g. NER with BIO tags): one tag per word, learned on its first subword."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from unitask.errors import DataError
from unitask.evaluation.metrics import entity_spans
from unitask.tasks.features import features_dataset

if TYPE_CHECKING:
    import pandas as pd
    from datasets import Dataset

    from unitask.config import TaskConfig

IGNORE = -100  # the label of subwords after the first and of special tokens: no loss, not scored


class TokenClassificationTask:
    auto_model = "AutoModelForTokenClassification"
    type = "token_classification"
    main_metric = "f1"

    def __init__(self, name: str, config: TaskConfig) -> None:
        self.name = name
        self.config = config

    def labels(self) -> list[str]:
        return list(self.config.labels or [])

    def num_labels(self) -> int:
        return len(self.labels())

    def encode(self, frame: pd.DataFrame, tokenizer: Any, max_length: int) -> Dataset:
        return features_dataset(self.encode_columns(frame, tokenizer, max_length))

    def encode_columns(self, frame: pd.DataFrame, tokenizer: Any, max_length: int) -> dict[str, list[Any]]:
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
        return {**encoded, "labels": labels}

    def collator(self, tokenizer: Any) -> Any:
        from transformers import DataCollatorForTokenClassification

        return DataCollatorForTokenClassification(tokenizer, label_pad_token_id=IGNORE)

    def gold(self, frame: pd.DataFrame) -> list[list[str]]:
        return [[str(t) for t in row] for row in frame["tags"]]

    def decode(self, predictions: Any, features: Dataset | dict[str, list[Any]], frame: pd.DataFrame) -> list[dict[str, Any]]:
        """Each word's tag from its first subword; words cut off by model.max_length are tagged O."""
        names = self.labels()
        outputs = []
        for pred, first, tokens in zip(np.asarray(predictions).argmax(-1), features["labels"], frame["tokens"]):
            words = [str(w) for w in tokens]
            tags = [names[p] for p, label in zip(pred, first) if label != IGNORE]
            tags += ["O"] * (len(words) - len(tags))
            entities = [
                {"entity": kind, "start": start, "end": end, "text": " ".join(words[start:end])}
                for kind, start, end in sorted(entity_spans(tags), key=lambda s: s[1])
            ]
            outputs.append({"tags": tags, "entities": entities})
        return outputs
