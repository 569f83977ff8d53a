"""`evaluate:` (which models' test predictions to score and compare) and `register:` (the served
model's name, what it bundles, and the gate that decides whether a new version becomes champion)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from unitask.config.base import ProjectPath, Strict

MODEL_NAME = r"^[a-z][a-z0-9_]*$"


class Evaluate(Strict):
    """`unitask evaluate`: scores reports/predictions/<model>/<task>.jsonl of each model and compares them."""

    models: list[str] = Field(
        default=["baseline", "finetune", "multitask", "fusion", "fusion_text", "fusion_image", "llm", "llm_zeroshot"],
        min_length=1,
        description="models to compare (folders under reports/predictions); each must have predictions",
    )
    output: ProjectPath = Field(
        default="reports/evaluate",
        description="metrics/ (the DVC metrics: each model's main metric per task and split), comparison.json, comparison.md, report.json, plots/",
    )
    curves: bool = Field(
        default=True, description="pull training curves from the latest MLflow run of each training stage"
    )

    @field_validator("models")
    @classmethod
    def _names(cls, models: list[str]) -> list[str]:
        import re

        bad = [m for m in models if not re.match(MODEL_NAME, m)]
        if bad:
            raise ValueError(f"{bad} must match {MODEL_NAME}")
        if len(set(models)) != len(models):
            raise ValueError(f"{models} lists a model twice")
        return models


class Gate(Strict):
    """When a new version replaces the champion: it beats the champion on `primary` and no task's main
    metric (0-1 scale; extractive QA's percent / 100) drops by more than `max_task_regression`."""

    primary: str = Field(
        default="mean",
        description="mean: the mean of the per-task main metrics; or a task name: that task's main metric",
    )
    min_improvement: float = Field(
        default=0.0, ge=0, description="the new primary must exceed the champion's by more than this"
    )
    max_task_regression: float = Field(
        default=0.01, ge=0, description="largest allowed drop of one task's main metric against the champion"
    )


# the models a served task can be routed to (the pyfunc's artifacts)
ServedModel = Literal["multitask", "fusion", "llm"]


class Register(Strict):
    """`unitask register`: one MLflow pyfunc that answers every task (by default the multi-task model,
    plus the fusion model for text+image tasks; `routes` sends tasks elsewhere, e.g. to the LLM),
    registered as `name` with aliases challenger/champion."""

    name: str = Field(default="unitask", min_length=1, description="the registered model's name")
    include_fusion: bool = Field(
        default=True, description="bundle fusion.output too (text+image tasks); false: the multi-task model only"
    )
    routes: dict[str, ServedModel] = Field(
        default_factory=dict,
        description="task -> the model that answers it (multitask, fusion or llm); unlisted tasks: multitask for "
        "text tasks, fusion for text+image tasks. A route to llm bundles llm.output",
    )
    gate: Gate = Gate()
    output: ProjectPath = Field(default="reports/register.json", description="the decision and the numbers behind it")
