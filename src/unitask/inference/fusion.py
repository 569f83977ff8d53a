"""Answer text+image rows with the models saved by `unitask fusion`.

`FusionPredictor.load(folder)` takes a task folder (`<fusion.output>/<task>`) or the whole
`fusion.output`, whose manifest lists the task folders. A row is {"task", "text", "image"}, where
`image` is a file path, raw bytes or a base64 string; it gets {"label", "scores"}, or {"error": ...}
when its task, text or image is missing or the image cannot be read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from unitask.errors import DataError
from unitask.images import open_image
from unitask.inference import missing_fields
from unitask.models import read_manifest
from unitask.models.fusion import FusionCollator, LateFusion, load_fusion
from unitask.tasks.sequence import label_outputs, softmax


class TaskModel:
    """One task's model with its tokenizer, image processor and label names."""

    def __init__(self, model: LateFusion, tokenizer: Any, processor: Any, manifest: dict[str, Any]) -> None:
        self.model, self.labels = model, list(manifest["labels"])
        self.modalities = model.modalities
        self.max_length = int(manifest["max_length"])
        self.tokenizer = tokenizer
        self.collate = FusionCollator(tokenizer, processor, self.modalities)

    def inputs(self, row: dict[str, Any]) -> dict[str, Any]:
        """Features of one row; DataError naming what is wrong with it."""
        problem = missing_fields(row, self.modalities)
        if problem:
            raise DataError(problem)
        features: dict[str, Any] = {}
        if "text" in self.modalities:
            features["input_ids"] = self.tokenizer(str(row["text"]), truncation=True, max_length=self.max_length)["input_ids"]
        if "image" in self.modalities:
            features["image"] = open_image(row["image"])
        return features

    @torch.no_grad()
    def predict(self, features: list[dict[str, Any]]) -> list[dict[str, Any]]:
        logits = self.model(**self.collate(features)).logits
        return label_outputs(softmax(logits.float().numpy()), self.labels)


class FusionPredictor:
    """The Predictor (see `unitask.inference`) of one or more fusion task models."""

    def __init__(self, models: dict[str, TaskModel], batch_size: int = 32) -> None:
        self.models, self.batch_size = models, batch_size
        self.tasks = {name: "multimodal_classification" for name in models}

    @classmethod
    def load(cls, folder: str | Path) -> FusionPredictor:
        folder = Path(folder)
        manifest = read_manifest(folder)
        if "spec" in manifest:  # a task folder
            return cls({manifest["task"]: TaskModel(*load_fusion(folder))})
        return cls({task: TaskModel(*load_fusion(folder / sub)) for task, sub in manifest["folders"].items()})

    def predict(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        outputs: list[dict[str, Any] | None] = [None] * len(rows)
        pending: dict[str, list[tuple[int, dict[str, Any]]]] = {}
        for i, row in enumerate(rows):
            task = row.get("task") or (next(iter(self.models)) if len(self.models) == 1 else None)
            if task not in self.models:
                outputs[i] = {"error": f"this model does not answer task '{task}'; it answers {', '.join(self.models)}"}
                continue
            try:
                pending.setdefault(task, []).append((i, self.models[task].inputs(row)))
            except DataError as exc:
                outputs[i] = {"error": exc.message}
        for task, items in pending.items():
            for start in range(0, len(items), self.batch_size):
                batch = items[start : start + self.batch_size]
                for (i, _), output in zip(batch, self.models[task].predict([f for _, f in batch])):
                    outputs[i] = output
        return [o for o in outputs if o is not None]  # every row has one by now

