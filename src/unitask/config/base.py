"""The base of every config section."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict


class _ProjectPathMarker:
    """Metadata of `ProjectPath` fields: `Config.check_paths` resolves each at load time."""


PROJECT_PATH = _ProjectPathMarker()
# a path relative to the project root that must stay inside it (or inside `paths.roots`)
ProjectPath = Annotated[str, PROJECT_PATH]


def project_paths(section: Any, prefix: str = "") -> dict[str, str]:
    """{'dotted.key': value} for every `ProjectPath` field set in `section` and the sections under it."""
    found: dict[str, str] = {}
    if isinstance(section, dict):
        for key, value in section.items():
            found.update(project_paths(value, f"{prefix}{key}."))
        return found
    if not isinstance(section, BaseModel):
        return found
    for name, field in type(section).model_fields.items():
        value = getattr(section, name)
        if PROJECT_PATH in field.metadata and isinstance(value, str):
            found[prefix + name] = value
        else:
            found.update(project_paths(value, f"{prefix}{name}."))
    return found


class Strict(BaseModel):
    """A config section: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)
