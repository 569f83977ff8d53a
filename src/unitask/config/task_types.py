"""Task types: which columns (roles) each type needs and how its label behaves.

A task in `params.yaml` names one of these types (`tasks.<name>.type`); adding a task of an existing
type is config only. The code of each type (encoding, head, metrics) is in `unitask.tasks`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

LabelKind = Literal["categorical", "numeric", "tags", "span"]
TEXT_ROLES: tuple[str, ...] = ("text", "text_pair", "question", "context")


@dataclass(frozen=True)
class TaskType:
    name: str
    roles: tuple[str, ...]  # canonical columns a prepared split must have
    inputs: tuple[str, ...]  # roles that identify an example (dedup, disjoint splits, leakage)
    label_kind: LabelKind
    label_role: str  # the role that holds the target

    @property
    def is_text(self) -> bool:
        """True for the text-only types (every type but text+image): what fine-tuning, multi-task
        training and the LLM train."""
        return "image" not in self.roles

    @property
    def has_label_set(self) -> bool:
        """True when `labels` in the config lists the allowed label (or tag) values."""
        return self.label_kind in ("categorical", "tags")


TASK_TYPES: dict[str, TaskType] = {
    t.name: t
    for t in (
        TaskType("classification", ("text", "label"), ("text",), "categorical", "label"),
        TaskType(
            "pair_classification",
            ("text", "text_pair", "label"),
            ("text", "text_pair"),
            "categorical",
            "label",
        ),
        TaskType("regression", ("text", "label"), ("text",), "numeric", "label"),
        TaskType("token_classification", ("tokens", "tags"), ("tokens",), "tags", "tags"),
        TaskType(
            "extractive_qa",
            ("question", "context", "answers"),
            ("question", "context"),
            "span",
            "answers",
        ),
        TaskType(
            "multimodal_classification",
            ("text", "image", "label"),
            ("text", "image"),
            "categorical",
            "label",
        ),
    )
}

ROLES: tuple[str, ...] = tuple(sorted({r for t in TASK_TYPES.values() for r in t.roles}))
