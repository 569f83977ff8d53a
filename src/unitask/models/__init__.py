"""Models: the shared encoder (backbone), task heads, the multi-task model, fusion.

Every saved model folder holds MANIFEST: its `kind` (which `unitask.inference` predictor loads it) and
what that kind needs to build the model again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from unitask.errors import ConfigError

MANIFEST = "unitask-model.json"


def read_manifest(folder: Path) -> dict[str, Any]:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise ConfigError(
            f"{folder}: not a saved unitask model (no {MANIFEST})",
            hint="point at the output folder of `unitask multitask` or `unitask fusion`",
        )
    return json.loads(path.read_text(encoding="utf-8"))
