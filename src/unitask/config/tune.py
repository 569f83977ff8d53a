"""`tune:`: hyperparameter search of a stage's settings (Optuna locally, a Katib manifest for clusters)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from unitask.config.base import ProjectPath, Strict
from unitask.config.stages import Finetune

Tunable = Literal["learning_rate", "batch_size", "epochs", "warmup_ratio", "weight_decay", "dropout", "head_l1"]


class SearchRange(Strict):
    """One parameter's search space: a range (`low`, `high`, `log`) or a list of `choices`."""

    low: float | None = None
    high: float | None = None
    log: bool = Field(default=False, description="sample the range on a log scale (learning rates)")
    choices: list[float] | None = Field(default=None, min_length=1, description="instead of a range: these values")

    @model_validator(mode="after")
    def _one_kind(self) -> SearchRange:
        if self.choices is not None:
            if self.low is not None or self.high is not None:
                raise ValueError("give either low/high or choices, not both")
            return self
        if self.low is None or self.high is None:
            raise ValueError("give low and high (a range) or choices (a list)")
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("a log range needs low > 0")
        return self


class Katib(Strict):
    """The Katib `Experiment` that `unitask tune` writes beside its result, for the same search on a cluster."""

    parallel_trials: int = Field(default=2, gt=0, description="trials running at once")
    max_failed_trials: int = Field(default=3, ge=0, description="failed trials before the experiment fails")
    goal: float | None = Field(default=None, description="stop once a trial reaches this validation metric")
    workspace_pvc: str = Field(
        default="unitask-workspace",
        description="PersistentVolumeClaim holding the project (params.yaml, data/prepared, the encoder), mounted as the working directory",
    )
    mount_path: str = Field(default="/workspace", description="where the workspace is mounted in the trial pod")


class Tune(Strict):
    """`unitask tune --stage finetune --task NAME`: TPE search with median pruning, every trial a child
    MLflow run; each trial trains with `budget` applied so that a small search runs on CPU in minutes."""

    trials: int = Field(default=8, gt=0, description="trials to run (fewer when `timeout` ends the search)")
    timeout: float | None = Field(default=None, gt=0, description="seconds for the whole search; null: no limit")
    seed: int = Field(default=0, description="seed of the TPE sampler")
    pruner_startup_trials: int = Field(default=2, ge=0, description="trials that finish unpruned before pruning starts")
    pruner_warmup: int = Field(default=0, ge=0, description="evaluations of a trial before it may be pruned")
    budget: dict[str, Any] = Field(
        default_factory=lambda: {"max_train_rows": 1000, "min_steps": None},
        description="finetune keys every trial (and the Katib trials) train with, e.g. {max_train_rows: 1000}; "
        "min_steps: null keeps the floor on optimizer steps from overriding the epochs the search chooses",
    )
    space: dict[Tunable, SearchRange] = Field(
        default_factory=lambda: {
            "learning_rate": SearchRange(low=1e-5, high=3e-4, log=True),
            "batch_size": SearchRange(choices=[16, 32]),
            "epochs": SearchRange(choices=[1, 2, 3]),
            "warmup_ratio": SearchRange(low=0.0, high=0.2),
            "weight_decay": SearchRange(low=0.0, high=0.1),
        },
        min_length=1,
        description="finetune key -> its search range or choices",
    )
    output: ProjectPath = Field(default="reports/tune", description="<output>/<task>.yaml (best params), <task>-katib.yaml")
    katib: Katib = Katib()

    @model_validator(mode="after")
    def _budget(self) -> Tune:
        fields = set(Finetune.model_fields) - {"tasks", "per_task"}
        bad = sorted(set(self.budget) - fields)
        if bad:
            raise ValueError(f"budget: {bad} are not finetune keys")
        both = sorted(set(self.budget) & set(self.space))
        if both:
            raise ValueError(f"budget: {both} are searched (in space); drop them from budget")
        if "epochs" in self.space and self.budget.get("max_steps"):
            raise ValueError("budget: max_steps overrides epochs, which space searches; cap max_train_rows instead")
        try:
            Finetune.model_validate(self.budget)
        except ValidationError as exc:
            err = exc.errors()[0]
            raise ValueError(f"budget.{'.'.join(map(str, err['loc']))}: {err['msg']}") from None
        return self


def integer_key(key: str) -> bool:
    """True for finetune keys that take whole numbers (batch_size): searched as int."""
    return Finetune.model_fields[key].annotation is int
