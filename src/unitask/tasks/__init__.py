"""Task types: which columns (roles) each type needs and how its label behaves.

A task in `params.yaml` names one of these types; adding a task of an existing type is config only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from unitask.atomic import json_value

if TYPE_CHECKING:
    import pandas as pd

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


def example_keys(frame: pd.DataFrame, roles: tuple[str, ...]) -> list[str]:
    """One string per row naming its example by its input roles: what deduplication, disjoint splits
    and the leakage check compare."""
    if len(roles) == 1 and roles[0] in TEXT_ROLES:
        return [str(v) for v in frame[roles[0]]]
    return [json.dumps([json_value(v) for v in row]) for row in zip(*(frame[r] for r in roles))]
