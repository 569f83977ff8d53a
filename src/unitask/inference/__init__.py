"""One interface to every saved model: rows in, one output per row out.

A saved model folder holds `unitask-model.json` with its `kind`; `load_predictor(folder)` returns the
matching `Predictor`; a `Router` answers rows of several models' tasks. Rows look like {"task", "text"[, "text_pair"][, "image"]}; each output follows
the task type (see `TextTask.decode`): {"label", "scores"}, {"value"}, {"tags", "entities"} or
{"answer", "start", "end", "score"}. A row that cannot be answered (unknown task, missing field,
unreadable image) gets {"error": "..."} and the rest of the batch is still answered.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Protocol

from unitask.errors import ConfigError
from unitask.models import MANIFEST, read_manifest
# kind -> "module:class"; the class has `load(folder) -> Predictor`
KINDS = {
    "multitask": "unitask.inference.multitask:MultitaskPredictor",
    "fusion": "unitask.inference.fusion:FusionPredictor",
    "llm": "unitask.llm.predictor:LlmPredictor",
}


class Predictor(Protocol):
    tasks: dict[str, str]  # task name -> task type, for every task the model answers

    def predict(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One output per row, in order; a row's problem is reported in that row as {"error": ...}."""


def load_predictor(folder: str | Path, **options: Any) -> Predictor:
    """The predictor for a saved model folder, chosen by the `kind` in its manifest (`options` go to its
    `load`, e.g. an LLM's bundled `base`)."""
    folder = Path(folder)
    kind = read_manifest(folder).get("kind")
    if kind not in KINDS:
        raise ConfigError(f"{folder / MANIFEST}: unknown model kind {kind!r}", hint=f"kinds: {', '.join(KINDS)}")
    module, _, name = KINDS[kind].partition(":")
    return getattr(importlib.import_module(module), name).load(folder, **options)


def missing_fields(row: dict[str, Any], fields: tuple[str, ...]) -> str | None:
    """An error message naming the fields a row lacks (None or "" counts as missing), or None."""
    missing = [f for f in fields if row.get(f) is None or row.get(f) == ""]
    return f"row for task '{row.get('task')}' lacks {', '.join(missing)}" if missing else None


# the fields a text row needs per task type (after `text_aliases`); token classification takes
# `tokens` instead of `text`
TEXT_FIELDS = {
    "classification": ("text",),
    "regression": ("text",),
    "pair_classification": ("text", "text_pair"),
    "token_classification": ("text",),
    "extractive_qa": ("text", "text_pair"),
}


def text_aliases(row: dict[str, Any]) -> dict[str, Any]:
    """A copy of the row with `question`/`context` as the QA names of `text`/`text_pair`."""
    row = dict(row)
    if row.get("text") in (None, "") and row.get("question"):
        row["text"] = row["question"]
    if row.get("text_pair") in (None, "") and row.get("context"):
        row["text_pair"] = row["context"]
    return row


def check_text_rows(
    rows: list[dict[str, Any]], tasks: dict[str, str]
) -> tuple[list[dict[str, Any]], list[dict[str, Any] | None], dict[str, list[int]]]:
    """A text predictor's input rows against its `tasks` (name -> type): (the rows with `text_aliases`
    applied, an {"error"} output for each row that names an unknown task or lacks a field and None for
    the others, and the indices of the answerable rows of each task, in order)."""
    rows = [text_aliases(row) for row in rows]
    outputs: list[dict[str, Any] | None] = [None] * len(rows)
    groups: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        name = row.get("task")
        if name not in tasks:
            outputs[i] = {"error": f"unknown task {name!r}; this model answers {', '.join(tasks)}"}
            continue
        fields = () if tasks[name] == "token_classification" and row.get("tokens") else TEXT_FIELDS[tasks[name]]
        if problem := missing_fields(row, fields):
            outputs[i] = {"error": problem}
            continue
        groups.setdefault(name, []).append(i)
    return rows, outputs, groups


class Router:
    """Predictors in priority order; a task goes to the first predictor that answers it, or with
    `routes` ({task: predictor name}) to the one named there (and only those tasks are answered)."""

    def __init__(self, predictors: dict[str, Predictor], routes: dict[str, str] | None = None) -> None:
        self.predictors = predictors
        self.routes: dict[str, str] = {}
        self.tasks: dict[str, str] = {}
        for task, name in (routes or {}).items():
            if task not in predictors[name].tasks:
                raise ConfigError(f"routes: the {name} model does not answer task '{task}'",
                                  hint=f"it answers: {', '.join(predictors[name].tasks)}")
            self.routes[task], self.tasks[task] = name, predictors[name].tasks[task]
        for name, predictor in predictors.items() if routes is None else ():
            for task, kind in predictor.tasks.items():
                self.routes.setdefault(task, name)
                self.tasks.setdefault(task, kind)

    def predict(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One output per row, in order; rows of one predictor go to it as one batch."""
        outputs: list[dict[str, Any] | None] = [None] * len(rows)
        groups: dict[str, list[int]] = {}
        for i, row in enumerate(rows):
            task = row.get("task") if isinstance(row, dict) else None
            if not task:
                outputs[i] = {"error": "row has no 'task'; rows look like {task, text[, text_pair][, image]}"}
            elif task not in self.routes:
                outputs[i] = {"error": f"unknown task '{task}'; this model answers: {', '.join(sorted(self.routes))}"}
            else:
                groups.setdefault(self.routes[task], []).append(i)
        for name, index in groups.items():
            try:
                answers = self.predictors[name].predict([rows[i] for i in index])
            except Exception as exc:  # noqa: BLE001 - one predictor's failure must not fail other rows
                answers = [{"error": f"{name} model failed: {type(exc).__name__}: {exc}"} for _ in index]
            for i, answer in zip(index, answers):
                outputs[i] = answer
        return [o if o is not None else {"error": "no output"} for o in outputs]
