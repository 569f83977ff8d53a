"""One interface to every saved model: rows in, one output per row out.

A saved model folder holds `unitask-model.json` with its `kind`; `load_predictor(folder)` returns the
matching `Predictor`. Rows look like {"task", "text"[, "text_pair"][, "image"]}; each output follows
the task type (see `TextTask.decode`): {"label", "scores"}, {"value"}, {"tags", "entities"} or
{"answer", "start", "end", "score"}. A row that cannot be answered (unknown task, missing field,
unreadable image) gets {"error": "..."} and the rest of the batch is still answered.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any, Protocol

from unitask.errors import ConfigError

MANIFEST = "unitask-model.json"
# kind -> "module:class"; the class has `load(folder) -> Predictor`
KINDS = {
    "multitask": "unitask.inference.multitask:MultitaskPredictor",
    "fusion": "unitask.inference.fusion:FusionPredictor",
}


class Predictor(Protocol):
    tasks: dict[str, str]  # task name -> task type, for every task the model answers

    def predict(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One output per row, in order; a row's problem is reported in that row as {"error": ...}."""


def read_manifest(folder: Path) -> dict[str, Any]:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise ConfigError(
            f"{folder}: not a saved unitask model (no {MANIFEST})",
            hint="point at the output folder of `unitask multitask` or `unitask fusion`",
        )
    return json.loads(path.read_text(encoding="utf-8"))


def load_predictor(folder: str | Path) -> Predictor:
    """The predictor for a saved model folder, chosen by the `kind` in its manifest."""
    folder = Path(folder)
    kind = read_manifest(folder).get("kind")
    if kind not in KINDS:
        raise ConfigError(f"{folder / MANIFEST}: unknown model kind {kind!r}", hint=f"kinds: {', '.join(KINDS)}")
    module, _, name = KINDS[kind].partition(":")
    return getattr(importlib.import_module(module), name).load(folder)


def missing_fields(row: dict[str, Any], fields: tuple[str, ...]) -> str | None:
    """An error message naming the fields a row lacks (None or "" counts as missing), or None."""
    missing = [f for f in fields if row.get(f) is None or row.get(f) == ""]
    return f"row for task '{row.get('task')}' lacks {', '.join(missing)}" if missing else None
