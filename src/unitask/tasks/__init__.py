"""The code of each task type (`unitask.config.task_types` declares the types): encoding, heads,
decoding and metrics, one module per family; `example_keys` names examples for deduplication."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from unitask.atomic import json_value
from unitask.config.task_types import TEXT_ROLES

if TYPE_CHECKING:
    import pandas as pd


def example_keys(frame: pd.DataFrame, roles: tuple[str, ...]) -> list[str]:
    """One string per row naming its example by its input roles: what deduplication, disjoint splits
    and the leakage check compare."""
    if len(roles) == 1 and roles[0] in TEXT_ROLES:
        return [str(v) for v in frame[roles[0]]]
    return [json.dumps([json_value(v) for v in row]) for row in zip(*(frame[r] for r in roles))]
